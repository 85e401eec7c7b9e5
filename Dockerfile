# vocode-server: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t vocode-server .
#   docker compose up -d          (the server and Postgres; see README.md, "Deploy")

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY migrations migrations
COPY assets assets
COPY openapi.yaml ./
RUN cargo build --release --locked --bin vocode-server

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/vocode vocode \
    && install -d -o vocode /var/lib/vocode/recordings
COPY --from=build /src/target/release/vocode-server /usr/local/bin/vocode-server
USER vocode
WORKDIR /var/lib/vocode
ENV LISTEN_ADDR=0.0.0.0:3000
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["vocode-server", "healthcheck"]
ENTRYPOINT ["vocode-server"]
CMD ["serve"]
