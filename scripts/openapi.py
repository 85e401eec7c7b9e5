#!/usr/bin/env python3
"""Writes openapi.yaml: the upstream Vocode spec's operations that this server implements,
unchanged, with the schemas they use, plus this server's own endpoints (tagged `internal`).

    python3 scripts/openapi.py            # rewrite openapi.yaml
    python3 scripts/openapi.py --check    # exit 1 if openapi.yaml is not what this would write

The upstream document is vendored at tests/contract/upstream-openapi.json. The Rust test
`tests/it/contract.rs` checks the result against it and against the server's router.
Needs PyYAML.
"""
import copy
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "tests" / "contract" / "upstream-openapi.json"
OUTPUT = ROOT / "openapi.yaml"

# The upstream operations the server implements, by operationId.
IMPLEMENTED = [
    "get_prompt", "list_prompts", "create_prompt", "update_prompt",
    "get_voice", "list_voices", "create_voice", "update_voice",
    "get_webhook", "list_webhooks", "create_webhook", "update_webhook",
    "get_vector_database", "list_vector_databases", "create_vector_database",
    "update_vector_database",
    "get_account_connection", "list_account_connections", "create_account_connection",
    "update_account_connection", "add_to_steering_pool", "remove_from_steering_pool",
    "get_action", "list_actions", "create_action", "update_action",
    "get_agent", "list_agents", "create_agent", "update_agent",
    "link_number", "get_number", "list_numbers", "update_number", "cancel_number",
    "get_usage",
    "buy_number",
    "create_call", "get_call", "list_calls", "end_call", "get_recording",
    "metrics_metrics_get",
]

STATUS = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "carrier_mode": {"type": "string", "enum": ["sandbox", "live"]}},
    "required": ["status"],
}
DETAIL = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}

MS = {"type": ["number", "null"], "description": "Milliseconds; null when the turn never got there."}
STAGES = {
    "end_of_turn_ms": "end of speech → the engine decides the turn is over",
    "first_token_ms": "end of speech → the model's first token",
    "first_audio_ms": "end of speech → the voice's first audio",
    "first_frame_ms": "end of speech → the first audio frame sent to the call",
}
TURN = {
    "type": "object",
    "properties": {
        "turn": {"type": "integer", "description": "1 for the first answered turn, and so on."},
        "at": {"type": "string", "format": "date-time", "description": "When its first frame went out."},
        "recognition_ms": {
            **MS,
            "description": "end of speech → the recogniser's final words came in, in ms (null for turns"
            " measured before this stage was).",
        },
        **{name: {**MS, "description": f"{what}, in ms."} for name, what in STAGES.items()},
    },
    "required": ["turn", "at", *STAGES],
}
PERCENTILES = {
    "type": "object",
    "properties": {"p50": MS, "p95": MS},
    "required": ["p50", "p95"],
}
LATENCY = {
    "type": "object",
    "properties": {
        "call_id": {"type": "string", "format": "uuid"},
        "turns": {"type": "array", "items": TURN},
        "summary": {
            "type": "object",
            "description": "Each stage's median and 95th percentile over the call's turns.",
            "properties": {name: PERCENTILES for name in STAGES},
            "required": list(STAGES),
        },
    },
    "required": ["call_id", "turns", "summary"],
}

STEP = {
    "type": "object",
    "properties": {
        "event": {
            "type": "string",
            "enum": ["created", "ringing", "picked_up", "ended", "error"],
            "description": "created: the call was written; ringing: the carrier took it (the"
            " call's `start_time`); picked_up: someone answered; ended / error: it is over.",
        },
        "at": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "When; null for a pick-up the carrier never reported on its own.",
        },
        "status": {"$ref": "#/components/schemas/CallStatus"},
        "stage": {"type": "string", "enum": ["created", "picked_up", "transfer_started", "transfer_successful"]},
        "stage_outcome": {
            "type": ["string", "null"],
            "enum": ["human_unanswered", "call_did_not_connect", "human_disconnected", "bot_disconnected",
                     "transfer_unanswered", "transfer_disconnected", None],
            "description": "On the last step only.",
        },
        "duration_seconds": {"type": ["integer", "null"], "description": "On the last step only."},
    },
    "required": ["event", "at", "status", "stage"],
}
EVENTS = {
    "type": "object",
    "properties": {
        "call_id": {"type": "string", "format": "uuid"},
        "direction": {"type": "string", "enum": ["outbound", "inbound"]},
        "status": {"$ref": "#/components/schemas/CallStatus"},
        "events": {"type": "array", "items": STEP},
    },
    "required": ["call_id", "direction", "status", "events"],
}

def call_read(summary, description, operation_id, what, schema):
    """One of this server's own read-only views of a caller's call, by id: found as `GET /v1/calls`
    finds it (404 for another user's call, 422 for a bad id)."""
    return {
        "get": {
            "tags": ["internal"],
            "summary": summary,
            "description": description,
            "operationId": operation_id,
            "security": [{"HTTPBearer": []}],
            "parameters": [
                {
                    "name": "id",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid", "title": "Id"},
                }
            ],
            "responses": {
                "200": {
                    "description": what,
                    "content": {"application/json": {"schema": schema}},
                },
                "404": {
                    "description": "No such call of the caller's",
                    "content": {"application/json": {"schema": DETAIL}},
                },
                "422": {
                    "description": "Validation Error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
                    },
                },
            },
        }
    }


# This server's own endpoints: not part of the Vocode API, and marked so.
INTERNAL = {
    "/calls/latency": call_read(
        "A call's turn latencies",
        "When each answered turn of the call's conversation reached each stage, in ms from the end"
        " of the caller's speech (the voice-activity detector's offset or the recogniser's last word's end,"
        " whichever is later; when neither is known, the arrival of the last words), as the server measured"
        " it (the same stages as the `vocode_turn_latency_seconds`"
        " histogram). The caller's own calls only, as `GET /v1/calls`.",
        "get_call_latency",
        "The call's turns, in order",
        LATENCY,
    ),
    "/calls/events": call_read(
        "A call's state timeline",
        "The steps the call went through, with their times, as the server"
        " recorded them: created, ringing (the carrier took the call), picked_up, and ended or"
        " error with the stage outcome. Steps not reached are left out. The caller's own calls"
        " only, as `GET /v1/calls`; the call console (`/console`) draws it.",
        "get_call_events",
        "The call's steps, in order",
        EVENTS,
    ),
    "/health": {
        "get": {
            "tags": ["internal"],
            "summary": "Liveness",
            "description": "The process is up. Needs no authentication.",
            "operationId": "health",
            "responses": {
                "200": {
                    "description": "The process is up",
                    "content": {"application/json": {"schema": STATUS}},
                }
            },
        }
    },
    "/ready": {
        "get": {
            "tags": ["internal"],
            "summary": "Readiness",
            "description": "The database answers. 503 otherwise. Needs no authentication.",
            "operationId": "ready",
            "responses": {
                "200": {
                    "description": "Ready to serve",
                    "content": {"application/json": {"schema": STATUS}},
                },
                "503": {
                    "description": "Not ready",
                    "content": {"application/json": {"schema": DETAIL}},
                },
            },
        }
    },
    "/openapi.json": {
        "get": {
            "tags": ["internal"],
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": {
                    "description": "The OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
}


def refs(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for value in node:
            refs(value, found)


def build():
    upstream = json.loads(UPSTREAM.read_text())
    paths = {}
    wanted = set(IMPLEMENTED)
    for path, item in upstream["paths"].items():
        for method, op in item.items():
            if op.get("operationId") in wanted:
                paths.setdefault(path, {})[method] = copy.deepcopy(op)
                wanted.discard(op["operationId"])
    if wanted:
        sys.exit(f"not in the upstream spec: {sorted(wanted)}")

    schemas = upstream["components"]["schemas"]
    used, todo = set(), set()
    refs(paths, todo)
    while todo:
        name = todo.pop()
        if name in used:
            continue
        used.add(name)
        refs(schemas[name], todo)

    doc = {
        "openapi": upstream["openapi"],
        "info": {
            **upstream["info"],
            "title": "Vocode API (vocode-server)",
            "description": "Vocode's hosted voice-agent API, served by vocode-server, a self-hosted"
            " implementation of it: buy or link phone numbers, place agents on them, and start,"
            " end and inspect calls. Operations tagged `internal` are this server's own.",
        },
        "servers": [{"url": "/", "description": "This server"}],
        "paths": {**paths, **INTERNAL},
        "components": {
            "schemas": {name: schemas[name] for name in schemas if name in used},
            "securitySchemes": upstream["components"]["securitySchemes"],
        },
        "tags": upstream.get("tags", []) + [
            {"name": "internal", "description": "vocode-server's own endpoints."}
        ],
    }
    header = "# Generated by scripts/openapi.py from the upstream Vocode spec; do not edit by hand.\n"
    class NoAliases(yaml.SafeDumper):
        """Writes a schema used twice out twice, not as a YAML anchor and alias."""

        def ignore_aliases(self, data):
            return True

    return header + yaml.dump(doc, Dumper=NoAliases, sort_keys=False, allow_unicode=True, width=100)


def main():
    text = build()
    if "--check" in sys.argv:
        if OUTPUT.read_text() != text:
            sys.exit("openapi.yaml is stale: run python3 scripts/openapi.py")
        return
    OUTPUT.write_text(text)


if __name__ == "__main__":
    main()
