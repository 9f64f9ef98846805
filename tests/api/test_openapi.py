"""The OpenAPI schema is the contract: every status each operation answers with, in OpenAI's
error envelope, every bound the server enforces (rillet/api/openapi.py), checked by schemathesis
against a real server; and methods a path does not have are a 405 naming those it has."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rillet.api.schemas import MAX_STOP_SEQUENCE_CHARS, MAX_STOP_SEQUENCES
from tests.conftest import MODEL_NAME, RunningServer

ERROR_STATUSES = {"400", "401", "403", "404", "405", "408", "413", "422", "429", "431", "500", "503"}
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,unsupported_method,allow_header_conformance")
EXAMPLES = 100  # fuzzed cases per operation: about 700 requests in all, 8 s on two idle cores


def test_every_api_operation_lists_every_error_status_in_the_openai_envelope(http):
    """It listed 200 and 422 only, and its 422 was FastAPI's shape, which the server never sends."""
    schema = http.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/models", "/v1/models/{model_id}"):
        for operation in schema["paths"][path].values():
            responses = operation["responses"]
            assert ERROR_STATUSES <= set(responses), (path, sorted(responses))
            for status in ERROR_STATUSES:
                body = responses[status]["content"]["application/json"]["schema"]
                assert body == {"$ref": "#/components/schemas/ErrorResponse"}
            assert responses["405"]["headers"]["Allow"]["required"] is True
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    health = schema["paths"]["/health"]["get"]["responses"]
    assert "401" not in health and health["503"]["content"]["application/json"]["schema"]["$ref"].endswith("HealthStatus")


def test_the_request_schema_states_the_servers_bounds(http):
    properties = http.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    text, sequences, _ = properties["stop"]["anyOf"]
    assert text["maxLength"] == MAX_STOP_SEQUENCE_CHARS and sequences["maxItems"] == MAX_STOP_SEQUENCES
    assert sequences["items"]["maxLength"] == MAX_STOP_SEQUENCE_CHARS
    assert properties["n"]["anyOf"][0]["maximum"] == 16  # --max-seqs-per-request: a quarter of 64
    assert properties["max_tokens"]["anyOf"][0]["maximum"] == 8191  # the context less the prompt's one token
    assert properties["model"]["enum"] == [MODEL_NAME]
    # Parameters refused unless left at their defaults say so: only those values are in the schema.
    assert properties["modalities"]["anyOf"][0]["items"]["enum"] == ["text"]
    assert properties["audio"]["anyOf"] == [{"type": "null"}]
    assert properties["store"]["anyOf"][0]["enum"] == [False]


def test_the_responses_request_schema_states_the_servers_bounds(http):
    schema = http.get("/openapi.json").json()
    properties = schema["components"]["schemas"]["ResponsesRequest"]["properties"]
    assert properties["max_output_tokens"]["anyOf"][0]["maximum"] == 8191
    assert properties["model"]["enum"] == [MODEL_NAME]
    # Stored responses: only what this stateless server serves; anything else is a 400 naming the field.
    assert properties["store"]["anyOf"][0]["enum"] == [False] and properties["previous_response_id"]["type"] == "null"
    assert properties["truncation"]["anyOf"][0]["enum"] == ["disabled"]
    streamed = schema["paths"]["/v1/responses"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert "response.completed" in streamed["schema"]["properties"]["data"]["description"]


@pytest.mark.parametrize("method, path, allowed", [
    ("TRACE", "/v1/chat/completions", "POST"),
    ("DELETE", "/v1/chat/completions", "POST"),
    ("FROB", "/v1/models", "GET"),
    ("TRACE", "/health", "GET"),
])
def test_a_method_the_path_does_not_have_is_405_with_allow(http, method, path, allowed):
    """TRACE was a 405 without Allow."""
    response = http.request(method, path)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    assert allowed in response.headers["allow"]


@pytest.fixture(scope="module")
def fuzzed():
    running = RunningServer(["--kv-cache-tokens", "2048", "--max-num-seqs", "8"])
    yield running
    running.stop()


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(fuzzed, tmp_path):
    """schemathesis' own runner against the real server: its examples, its coverage of each field's
    edges (and of invalid values), then EXAMPLES fuzzed cases per operation. Completions are held to
    a few tokens (tests/api/schemathesis_hooks.py); what is checked is each answer's status, type,
    headers and body against the schema, and 405s with Allow for the methods a path lacks."""
    root = Path(__file__).resolve().parents[2]
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{fuzzed.base_url}/openapi.json",
               "--checks", CHECKS, "--max-examples", str(EXAMPLES), "--seed", "27", "--workers", "1",
               "--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--suppress-health-check", "all",
               "--report-dir", str(tmp_path)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks", "PYTHONPATH": str(root),
           "NO_COLOR": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    summary = run.stdout[-6000:]
    assert run.returncode == 0, summary
    assert " passed" in summary and "failed" not in summary.split("SUMMARY")[-1], summary
    assert "Traceback" not in fuzzed.output()
    assert httpx.get(f"{fuzzed.base_url}/health").status_code == 200
