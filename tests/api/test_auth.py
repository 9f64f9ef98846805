"""API keys against a second real server started with keys from a flag, the environment and a file."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import httpx
import openai
import pytest

from rillet.api.auth import KeyConfigError, KeyStore
from tests.api.helpers import chat_body
from tests.conftest import MODEL_NAME, RunningServer, free_port

LIMITED_KEY = "sk-limited-to-another-model"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys_file.write_text(f'''
[[keys]]
id = "limited"
key = "{LIMITED_KEY}"
models = ["some-other-model"]

[[keys]]
id = "hashed"
key_sha256 = "{hashlib.sha256(b"sk-from-hash").hexdigest()}"

[[keys]]
id = "monitoring"
key = "sk-metrics"
metrics = true
rpm = 2
''')
    running = RunningServer(["--api-key", "sk-from-flag", "--api-keys-file", str(keys_file),
                             "--kv-cache-tokens", "2048"], env={"RILLET_API_KEYS": "sk-from-env, sk-second-env"})
    yield running
    running.stop()


def keyed_client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


@pytest.mark.parametrize("key", ["sk-from-flag", "sk-from-env", "sk-second-env", "sk-from-hash"])
def test_each_configured_key_is_accepted(keyed_server, key):
    reply = keyed_client(keyed_server, key).chat.completions.create(**chat_body(max_tokens=1))
    assert reply.usage.completion_tokens == 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-from-flag"}])
def test_missing_or_wrong_key_is_401(keyed_server, headers):
    response = httpx.post(f"{keyed_server.base_url}/v1/chat/completions", json=chat_body(), headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    # 401 comes before anything reads the body, even a malformed one.
    bad_body = httpx.post(f"{keyed_server.base_url}/v1/chat/completions", content=b"{", headers=headers)
    assert bad_body.status_code == 401


def test_official_client_raises_authentication_error(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        keyed_client(keyed_server, "sk-wrong").models.list()


def test_key_limited_to_other_models_gets_403_and_sees_no_models(keyed_server):
    client = keyed_client(keyed_server, LIMITED_KEY)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(**chat_body(max_tokens=1))
    assert caught.value.code == "model_not_allowed"
    assert "some-other-model" not in str(caught.value.body) and "sk-" not in str(caught.value.body)
    assert [m.id for m in client.models.list()] == []
    assert [m.id for m in keyed_client(keyed_server, "sk-from-flag").models.list()] == [MODEL_NAME]


def test_health_stays_open(keyed_server):
    assert httpx.get(f"{keyed_server.base_url}/health").status_code == 200


def test_open_server_needs_no_key(http):
    assert http.get("/v1/models").status_code == 200


def test_key_store_parsing(tmp_path):
    store = KeyStore.from_settings(["a", " ", "b "], None)
    assert [k.key_id for k in store.keys] == ["key-1", "key-2"]
    assert store.find("b").key_id == "key-2" and store.find("c") is None
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\nkey = "x"\nrate_limit_rpm = 5\n')
    with pytest.raises(KeyConfigError, match="unsupported settings"):
        KeyStore.from_settings([], str(bad))
    both = tmp_path / "both.toml"
    both.write_text('[[keys]]\nkey = "x"\nkey_sha256 = "00"\n')
    with pytest.raises(KeyConfigError, match="exactly one"):
        KeyStore.from_settings([], str(both))


def test_metrics_and_openapi_need_a_key_on_a_server_with_keys(keyed_server):
    for path in ("/metrics", "/openapi.json"):
        refused = httpx.get(f"{keyed_server.base_url}{path}")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    allowed = httpx.get(f"{keyed_server.base_url}/openapi.json", headers={"Authorization": "Bearer sk-from-flag"})
    assert allowed.status_code == 200 and '"openapi"' in allowed.text


def test_metrics_need_a_key_marked_for_them_and_are_rate_limited_like_the_rest(keyed_server):
    """Any valid key once read /metrics: every key's traffic, and as often as it liked."""
    for key in ("sk-from-flag", "sk-from-hash"):
        refused = httpx.get(f"{keyed_server.base_url}/metrics", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "metrics_not_allowed"
    reads = [httpx.get(f"{keyed_server.base_url}/metrics", headers={"Authorization": "Bearer sk-metrics"})
             for _ in range(3)]
    assert [read.status_code for read in reads] == [200, 200, 429]  # its rpm of 2
    assert "rillet_kv_blocks_total" in reads[0].text and reads[0].headers["x-ratelimit-limit-requests"] == "2"
    assert reads[2].json()["error"]["code"] == "rate_limit_exceeded"


def test_metrics_and_openapi_stay_open_on_an_open_server(http):
    assert http.get("/metrics").status_code == 200 and http.get("/openapi.json").status_code == 200


SHA = hashlib.sha256(b"k").hexdigest()


@pytest.mark.parametrize("entries, message", [
    ('[[keys]]\nid = "a"\nkey = "x"\nmetrics = "yes"\n', r"keys\[0\] \(id 'a'\)\.metrics must be true or false"),
    ('[[keys]]\nid = "a"\nkey_sha256 = "not-hex"\n', r"keys\[0\] \(id 'a'\)\.key_sha256 must be 64 hexadecimal"),
    (f'[[keys]]\nkey_sha256 = "{SHA[:-2]}"\n', r"keys\[0\] \(id 'file-key-1'\)\.key_sha256 must be 64"),
    ('[[keys]]\nid = "a"\nkey = "x"\nmodels = "SmolLM2-135M-Instruct"\n', r"keys\[0\] \(id 'a'\)\.models must be a list"),
    ('[[keys]]\nid = "a"\nkey = "x"\nmodels = [1]\n', r"\.models must be a list"),
    ('[[keys]]\nid = "a"\nkey = "x"\n[[keys]]\nid = "a"\nkey = "y"\n', r"keys\[1\] \(id 'a'\): the id 'a' is used"),
    ('[[keys]]\nid = "a"\nkey = "x"\n[[keys]]\nid = "b"\nkey = "x"\n', r"keys\[1\] \(id 'b'\) has the same key as .*'a'"),
    ('[[keys]]\nid = 5\nkey = "x"\n', r"keys\[0\]\.id must be a non-empty string"),
    ('[[keys]]\nkey = 7\n', r"\.key must be a non-empty string"),
    ('keys = "sk-1"\n', r"keys must be an array of tables"),
    ('[[keys]]\nid = "key-1"\nkey = "y"\n', r"the id 'key-1' is used by another key"),  # the --api-key's id
])
def test_a_wrong_keys_file_is_one_line_naming_the_entry(tmp_path, entries, message):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(entries)
    with pytest.raises(KeyConfigError, match=message) as caught:
        KeyStore.from_settings(["sk-flag"], str(keys_file))
    assert "\n" not in str(caught.value) and str(keys_file) in str(caught.value)


def test_serve_with_a_wrong_keys_file_exits_1_with_one_line_and_no_traceback(tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text('[[keys]]\nid = "ops"\nkey_sha256 = "zz"\n')
    result = subprocess.run([sys.executable, "-m", "rillet", "serve", "--port", str(free_port()),
                             "--api-keys-file", str(keys_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("rillet: error:")]
    assert "keys[0] (id 'ops').key_sha256" in line
