"""Each family against Hugging Face transformers on tiny random weights: the model built from a small
config by transformers (norm weights random too, so that an offset or a dropped norm shows), saved
as a folder, and written as GGUF the way llama.cpp's converter writes it (in F32 and Q8_0); rillet
loads each and must give transformers' logits through the paged cache, in chunked prefill and batched
decode, past the sliding window where the family has one."""
from __future__ import annotations

import pytest
import torch

from rillet.model import ModelLoadError, load_model, native
from rillet.model.architecture import ARCHITECTURES
from tests.model.test_forward_parity import PagedSequences, run_step
from tests.model.tiny_gguf import SPM_VOCAB_SIZE, Q, tiny_llama_tensors, write_gguf, write_model_gguf

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=SPM_VOCAB_SIZE, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
              tie_word_embeddings=False)
WINDOW = 12
FAMILIES = {
    "llama3": ("llama", transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(
        num_hidden_layers=2, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 64})),
    "mistral": ("mistral", transformers.MistralConfig, transformers.MistralForCausalLM, dict(
        num_hidden_layers=2, sliding_window=WINDOW)),
    "qwen2": ("qwen2", transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(num_hidden_layers=2)),
    "qwen3": ("qwen3", transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(num_hidden_layers=2)),
    "gemma3": ("gemma3", transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, dict(
        num_hidden_layers=3, sliding_window=WINDOW, tie_word_embeddings=True, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}})),
}
# A sequence longer than the window, in chunks that cross it, and a short one beside it.
LONG = [(i * 37 + 11) % (SPM_VOCAB_SIZE - 3) + 3 for i in range(40)]
SHORT = [5, 17, 200, 9, 31]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(architecture, the transformers model, its saved folder)."""
    arch_name, config_class, model_class, settings = FAMILIES[request.param]
    torch.manual_seed(0)
    model = model_class(config_class(**{**COMMON, **settings})).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "norm" in name:
                weight.copy_(torch.randn_like(weight) * 0.3 + (0.0 if arch_name == "gemma3" else 1.0))
            elif name.endswith("bias"):
                weight.copy_(torch.randn_like(weight) * 0.5)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    tokenizer_source = write_gguf(folder / "vocab.gguf", tokenizer="llama", tensors=tiny_llama_tensors(SPM_VOCAB_SIZE))
    transformers.AutoTokenizer.from_pretrained(folder, gguf_file=tokenizer_source.name).save_pretrained(folder)
    tokenizer_source.unlink()
    return ARCHITECTURES[arch_name], model, folder


@torch.inference_mode()
def reference(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0].float()


@torch.inference_mode()
def paged_logits(loaded) -> list[torch.Tensor]:
    """LONG and SHORT through the paged cache: chunks of 9 and 14 tokens beside SHORT's prefill,
    then decodes; returns each sequence's logits for all its tokens."""
    cache = loaded.model.allocate_kv_cache(32, 4, torch.float32)
    paged = PagedSequences(2)
    import tests.model.test_forward_parity as parity

    block_size = parity.BLOCK_SIZE
    parity.BLOCK_SIZE = 4  # blocks of 4 tokens: the window spans several, and some are skipped
    try:
        out = [[], []]
        steps = [[LONG[:9], SHORT[:3]], [LONG[9:23], SHORT[3:]]]
        steps += [[[LONG[i]], []] for i in range(23, len(LONG))]
        for step in steps:
            live = [i for i, ids in enumerate(step) if ids]
            got = run_step(loaded, cache, paged, [step[i] if step[i] else [] for i in range(2)])
            for i in live:
                out[i].append(got[i])
        return [torch.cat(chunks) for chunks in out]
    finally:
        parity.BLOCK_SIZE = block_size


def assert_close(got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= tolerance * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("attention", ["native", "pytorch"])
def test_a_folder_gives_transformers_logits(family, attention, monkeypatch):
    """Through the C attention kernel, and through PyTorch's where it cannot run."""
    arch, model, folder = family
    if attention == "pytorch":
        monkeypatch.setattr(native, "paged_decode_attention", lambda *args: None)
    loaded = load_model(str(folder), weight_format="float32")
    assert loaded.config.architecture == arch.name
    long, short = paged_logits(loaded)
    assert_close(long, reference(model, LONG), 2e-5)
    assert_close(short, reference(model, SHORT), 2e-5)


def with_stored_values(model, qtype):
    """A copy of the model whose matrices hold what a file of qtype stores: each quantized by gguf
    and dequantized again, as rillet dequantizes them (rows are quantized in blocks along a row,
    so llama.cpp's reordering of q/k rows changes nothing)."""
    import copy

    import gguf

    stored = copy.deepcopy(model)
    with torch.no_grad():
        for name, weight in stored.named_parameters():
            if weight.dim() == 2 and weight.shape[1] % 32 == 0:
                values = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), qtype), qtype)
                weight.copy_(torch.from_numpy(values.reshape(weight.shape)))
    return stored


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0], ids=["F32", "Q8_0"])
def test_a_gguf_file_gives_the_logits_of_its_own_weights(family, tmp_path, qtype):
    """Against transformers on the values the file stores."""
    arch, model, folder = family
    path = write_model_gguf(tmp_path / f"{arch.name}.gguf", model, arch, qtype)
    loaded = load_model(str(path), weight_format="float32")
    model = with_stored_values(model, qtype)
    long, short = paged_logits(loaded)
    assert_close(long, reference(model, LONG), 2e-5)
    assert_close(short, reference(model, SHORT), 2e-5)


@pytest.mark.parametrize("weight_format", ["quantized", "quantized-int8", "float16"])
def test_the_weight_formats_of_a_quantized_file_stay_close(family, tmp_path, weight_format):
    arch, model, folder = family
    path = write_model_gguf(tmp_path / f"{arch.name}.gguf", model, arch, Q.Q8_0)
    exact = paged_logits(load_model(str(path), weight_format="float32"))
    other = paged_logits(load_model(str(path), weight_format=weight_format))
    tolerance = {"quantized": 1e-4, "quantized-int8": 0.05, "float16": 0.01}[weight_format]
    for got, expected in zip(other, exact):
        assert_close(got, expected, tolerance)


def test_a_tensor_the_family_does_not_read_is_an_error(family, tmp_path):
    arch, model, folder = family
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.extra"] = torch.zeros(3)
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in folder.iterdir():
        if item.name != "model.safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="does not read: model.layers.0.self_attn.q_proj.extra"):
        load_model(str(broken), weight_format="float32")


@pytest.mark.parametrize("weight_format", ["quantized", "quantized-int8"])
def test_the_native_layer_loop_is_the_python_loop_bit_for_bit(family, tmp_path, weight_format):
    """Every family's layers in one native call (biases, q/k norms, sandwich norms, GeGLU, windows
    and a RoPE base per layer included) give exactly what the Python loop over the same kernels gives."""
    arch, model, folder = family
    path = write_model_gguf(tmp_path / f"{arch.name}.gguf", model, arch, Q.Q8_0)
    loaded = load_model(str(path), weight_format=weight_format)
    assert loaded.model.native_layers is not None
    native_logits = paged_logits(loaded)
    loaded.model.native_layers = None
    for got, expected in zip(native_logits, paged_logits(loaded)):
        assert torch.equal(got, expected)
