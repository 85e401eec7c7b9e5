"""The SDK conformance suite's harness: the real vocode-server binary on a random port, once on
a fresh SQLite database and once on a fresh Postgres database, driven by the official Python SDK
(`vocode-api==0.0.48`)."""

import os
import pathlib
import secrets
import shutil
import subprocess
import tempfile
import uuid

import pytest
from vocode.client import Vocode

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("VOCODE_SERVER_BIN", str(ROOT / "target" / "debug" / "vocode-server"))
PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgres://root@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("REQUIRE_POSTGRES") in ("1", "true")


class Server:
    def __init__(self, backend, db_url):
        self.backend = backend
        self.db_url = db_url
        self.key = "vk_sdk_" + secrets.token_hex(20)
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "SECRETS_KEY": secrets.token_hex(32),
            "VOCODE_API_KEY": self.key,
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            # The built-in sandbox carrier, playing its scenarios twenty times faster.
            "CARRIER_MODE": "sandbox",
            "SANDBOX_TIME_SCALE": "0.05",
            # The sandbox's stand-ins, not the checkout's local speech (tests/it/speech.rs tests that).
            "SPEECH_DIR": "target/no-speech",
        }
        self.log = tempfile.NamedTemporaryFile(prefix=f"vocode-sdk-{backend}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.base_url = None
        for line in self.proc.stdout:
            if line.startswith("vocode-server listening on "):
                self.base_url = line.split()[-1]
                break
        if self.base_url is None:
            raise RuntimeError(f"the server did not start; see {self.log.name}")

    def cli(self, *args):
        out = subprocess.run([BIN, *args], env=self.env, capture_output=True, text=True, check=True)
        return out.stdout

    def new_key(self, user):
        return self.cli("keys", "create", "--user", user).strip().splitlines()[-1]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


def _psql(sql):
    return subprocess.run(
        ["psql", PG_ADMIN, "-v", "ON_ERROR_STOP=1", "-qc", sql], capture_output=True, text=True
    )


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request):
    if request.param == "sqlite":
        folder = tempfile.mkdtemp(prefix="vocode-sdk-")
        srv = Server("sqlite", f"sqlite://{folder}/vocode.db")
        yield srv
        srv.stop()
        shutil.rmtree(folder, ignore_errors=True)
        return
    name = "vocode_sdk_" + uuid.uuid4().hex
    made = _psql(f"CREATE DATABASE {name}") if shutil.which("psql") else None
    if made is None or made.returncode != 0:
        reason = made.stderr.strip() if made else "psql is not installed"
        if REQUIRE_PG:
            pytest.fail(f"REQUIRE_POSTGRES is set but Postgres is not usable: {reason}")
        pytest.skip(f"Postgres suites SKIPPED: {reason}")
    srv = Server("postgres", PG_ADMIN.rsplit("/", 1)[0] + "/" + name)
    yield srv
    srv.stop()
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def client(server):
    return Vocode(base_url=server.base_url, token=server.key)


@pytest.fixture(scope="session")
def other(server):
    """A second user's client: it must see none of the first user's objects."""
    return Vocode(base_url=server.base_url, token=server.new_key("other-" + uuid.uuid4().hex[:8]))
