"""Schema fuzzing: Schemathesis generates requests for every operation of openapi.yaml (valid and
invalid ones, a bounded number per operation) against the real server, with a valid API key, and
checks that no answer is a 5xx, every answer conforms to the document, and every 4xx has a detail."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10")


def test_every_operation_under_fuzzing(server):
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(pathlib.Path(__file__).parent)}
    run = subprocess.run(
        [
            str(pathlib.Path(sys.executable).with_name("schemathesis")),
            "run",
            str(ROOT / "openapi.yaml"),
            "--url",
            server.base_url,
            "--header",
            f"Authorization: Bearer {server.key}",
            "--checks",
            "not_a_server_error,response_schema_conformance,client_errors_have_a_detail",
            "--max-examples",
            EXAMPLES,
            "--seed",
            "20261126",
            "--phases",
            "examples,coverage,fuzzing",
            "--no-color",
            "--warnings",
            "off",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = run.stdout[-4000:]
    assert run.returncode == 0, f"Schemathesis found problems:\n{summary}\n{run.stderr[-2000:]}"
    assert "passed" in summary and "generated" in summary, summary
