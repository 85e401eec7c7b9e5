# vocode-server: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t vocode-server .
#   docker compose up -d          (the server's replicas behind a proxy, and Postgres; README.md, "Deploy")
# With the server's own speech (Moonshine and flite, fetched at build time by
# scripts/install-speech; x86_64 only):
#   docker build --build-arg LOCAL_SPEECH=1 -t vocode-server .
#   LOCAL_SPEECH=1 docker compose up -d --build

ARG LOCAL_SPEECH=0

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY migrations migrations
COPY assets assets
COPY openapi.yaml ./
RUN cargo build --release --locked --bin vocode-server

# The local speech's files, checked against their pinned sha256 (empty unless LOCAL_SPEECH=1).
FROM debian:bookworm-slim AS speech
ARG LOCAL_SPEECH
COPY scripts/install-speech /src/scripts/install-speech
RUN mkdir -p /opt/vocode/speech \
    && if [ "$LOCAL_SPEECH" = "1" ]; then \
         apt-get update \
         && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip flite \
         && SPEECH_DIR=/opt/vocode/speech SPEECH_CACHE=/tmp/speech-cache /src/scripts/install-speech; \
       fi

FROM debian:bookworm-slim
ARG LOCAL_SPEECH
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && if [ "$LOCAL_SPEECH" = "1" ]; then apt-get install -y --no-install-recommends flite; fi \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/vocode vocode \
    && install -d -o vocode /var/lib/vocode/recordings
COPY --from=build /src/target/release/vocode-server /usr/local/bin/vocode-server
COPY --from=speech /opt/vocode/speech /opt/vocode/speech
ENV SPEECH_DIR=/opt/vocode/speech
USER vocode
WORKDIR /var/lib/vocode
ENV LISTEN_ADDR=0.0.0.0:3000
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["vocode-server", "healthcheck"]
ENTRYPOINT ["vocode-server"]
CMD ["serve"]
