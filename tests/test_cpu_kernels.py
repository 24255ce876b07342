"""Native CPU kernels (model/csrc/qmatmul.c): the int4/int8 products against an independent float64 reference
of the same arithmetic, the one-call decode step against the torch path, and the fallbacks when the kernels
cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from model import cpu_kernels
from model.config import DecoderConfig
from model.decoder import Decoder
from model.generate import Generator
from model.quant import Int4Linear, Int8Linear, quantize_decoder, quantize_weight_int4, quantize_weight_int8

REPO = Path(__file__).resolve().parents[1]

needs_native = pytest.mark.skipif(not cpu_kernels.available(), reason=f"native kernels: {cpu_kernels.status()}")


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of the kernels' activation rounding: per block of 32, scale = max|x| / 127, round half to even."""
    blocks = x.double().reshape(x.shape[0], -1, 32)  # [M, B, 32]
    scale = blocks.abs().amax(-1) / 127  # [M, B]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(blocks / safe[..., None])  # torch.round: half to even, like lrintf
    return q, scale


def reference_q4(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """sum_b [ d_w d_x sum_i (q_i - 8) xq_i + (m_w + 8 d_w) sum_i x_i ], in float64."""
    xq, xd = quantize_activations(x)  # [M, B, 32], [M, B]
    wq = q.double().reshape(q.shape[0], -1, 32) - 8  # [N, B, 32]
    isum = torch.einsum("mbi,nbi->mnb", xq, wq)  # [M, N, B]
    exact = x.double().reshape(x.shape[0], -1, 32).sum(-1)  # [M, B]
    d, m = d.double(), m.double()
    return (isum * d[None] * xd[:, None]).sum(-1) + exact @ (m + 8 * d).T


def reference_q8(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    xq, xd = quantize_activations(x)
    isum = torch.einsum("mbi,nbi->mnb", xq, q.double().reshape(q.shape[0], -1, 32))
    return (isum * d.double()[None] * xd[:, None]).sum(-1)


@needs_native
@pytest.mark.parametrize("m,n,k", [(1, 1, 32), (1, 96, 576), (3, 7, 64), (5, 33, 128), (17, 40, 96)])
def test_q4_matmul_matches_the_reference_arithmetic(m: int, n: int, k: int) -> None:
    torch.manual_seed(m * 1000 + n)
    weight, x = torch.randn(n, k) * 0.05, torch.randn(m, k) * 3
    x[-1, :32] = 0.0  # an all-zero activation block (scale 0)
    q, d, mins = quantize_weight_int4(weight)
    layer = Int4Linear(q, d, mins, None)
    out = cpu_kernels.q4_matmul(x, layer.weight_nibbles, layer.scales, layer.mins)  # [M, N]
    torch.testing.assert_close(out.double(), reference_q4(x, q, d, mins), rtol=1e-4, atol=1e-4)
    exact = x @ layer.dequantized_weight().T  # only the activations' rounding separates the two
    assert (out - exact).norm() <= 0.02 * exact.norm()


@needs_native
@pytest.mark.parametrize("group", [None, 32])  # per channel (the int8 mode) and Q8_0 blocks (the int4 mode's head)
@pytest.mark.parametrize("m,n,k", [(1, 5, 32), (4, 64, 576), (9, 3, 96)])
def test_q8_matmul_matches_the_reference_arithmetic(m: int, n: int, k: int, group: int | None) -> None:
    torch.manual_seed(m + n)
    weight, x = torch.randn(n, k), torch.randn(m, k)
    q, scales = quantize_weight_int8(weight, group)
    layer = Int8Linear(q, scales, None)
    assert layer.block_scales is not None and layer.block_scales.shape == (n, k // 32)
    out = cpu_kernels.q8_matmul(x, layer.weight_int8, layer.block_scales)
    torch.testing.assert_close(out.double(), reference_q8(x, q, layer.block_scales), rtol=1e-4, atol=1e-4)
    exact = x @ layer.dequantized_weight().T
    assert (out - exact).norm() <= 0.02 * exact.norm()


def quantized_tiny(tokenizer, mode: str, **overrides) -> Decoder:
    config = DecoderConfig.tiny(vocab_size=tokenizer.vocab_size, **overrides)
    decoder = Decoder(config).init_weights(std=0.2, seed=0).eval()
    if config.qkv_bias:
        with torch.no_grad():
            for layer in decoder.layers:
                for proj in (layer.attention.wq, layer.attention.wk, layer.attention.wv):
                    proj.bias.normal_(0, 0.5)
    return quantize_decoder(decoder, mode)


def decode_logits(decoder: Decoder, prompt: list[list[int]], steps: list[int], native: bool,
                  pad_mask: torch.Tensor | None = None, cache_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Prefill `prompt` [B, T] then feed `steps` (the same token for every row) one at a time; logits [n, B, V]."""
    decoder.native_decode = native
    decoder._native_plan = None
    tokens = torch.tensor(prompt)
    batch, length = tokens.shape
    decoder.setup_cache(batch, max(64, length + len(steps)), dtype=cache_dtype)
    out = []
    with torch.inference_mode():
        decoder(tokens, torch.arange(length), pad_mask)
        for i, token in enumerate(steps):
            logits = decoder(torch.full((batch, 1), token), torch.tensor([length + i]), pad_mask)
            out.append(logits[:, -1])
    if native:
        assert decoder._native_plan is not None and decoder._native_plan.supported, "the native step was not used"
    return torch.stack(out)


def assert_same_decoding(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Both paths run the same quantised products; only float summation order differs, which can move an
    activation across an int8 rounding boundary now and then. So: close, and the same argmax."""
    scale = float(expected.abs().max())
    assert (got - expected).abs().max() < 0.02 * scale
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95


@needs_native
@pytest.mark.parametrize("mode", ["int4", "int8"])
@pytest.mark.parametrize("qkv_bias", [False, True])  # Llama and Qwen2 blocks
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_native_decode_step_matches_the_torch_path(tiny_tokenizer, mode: str, qkv_bias: bool,
                                                   cache_dtype: torch.dtype) -> None:
    if cache_dtype == torch.float16 and not cpu_kernels.has_f16c():
        pytest.skip("the native kernels were built without float16 conversions")
    decoder = quantized_tiny(tiny_tokenizer, mode, qkv_bias=qkv_bias)
    prompt = [tiny_tokenizer.encode("The quick brown fox jumps over")]
    steps = tiny_tokenizer.encode(" the lazy dog and runs far away")
    expected = decode_logits(decoder, prompt, steps, native=False, cache_dtype=cache_dtype)
    got = decode_logits(decoder, prompt, steps, native=True, cache_dtype=cache_dtype)
    assert_same_decoding(got, expected)
    if cache_dtype == torch.float16:  # the cache the native step wrote equals what the torch path writes
        cache = decoder.layers[-1].attention.kv_cache
        assert cache.k.dtype == torch.float16
        decoded_k = cache.k[0, :, : len(prompt[0]) + len(steps)].clone()
        decode_logits(decoder, prompt, steps, native=False, cache_dtype=cache_dtype)
        torch.testing.assert_close(decoded_k.float(), cache.k[0, :, : decoded_k.shape[1]].float(), rtol=1e-2, atol=1e-2)


@needs_native
def test_native_decode_with_left_padding_and_lora_side_path(tiny_tokenizer) -> None:
    """A batch of two rows, the first left-padded (pad mask), through int4 layers carrying LoRA updates."""
    from model.lora import LoraConfig, apply_lora
    from model.quant import LowRankUpdate

    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    decoder = Decoder(config).init_weights(std=0.2, seed=0).eval()
    apply_lora(decoder, LoraConfig(rank=4, alpha=8))
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            if "lora_b" in name:
                param.normal_(0, 0.3)
    quantize_decoder(decoder, "int4")
    assert isinstance(decoder.layers[0].attention.wqkv, LowRankUpdate)
    short, long = tiny_tokenizer.encode("A fox"), tiny_tokenizer.encode("The quick brown fox jumps")
    pad = len(long) - len(short)
    prompt = [[0] * pad + short, long]
    pad_mask = torch.ones(2, 64, dtype=torch.bool)
    pad_mask[0, :pad] = False
    steps = tiny_tokenizer.encode(" over the dog")
    expected = decode_logits(decoder, prompt, steps, native=False, pad_mask=pad_mask)
    got = decode_logits(decoder, prompt, steps, native=True, pad_mask=pad_mask)
    assert_same_decoding(got, expected)


@needs_native
def test_generator_batched_greedy_equals_one_by_one_on_native_path(tiny_tokenizer) -> None:
    decoder = quantized_tiny(tiny_tokenizer, "int4")
    gen = Generator(decoder, tiny_tokenizer, device="cpu")
    gen.eos_token_ids = ()
    prompts = ["The quick brown fox", "A dog", "Over the lazy dog it jumps again"]
    batched = gen.generate_batch(prompts, max_new_tokens=8)
    assert decoder._native_plan is not None and decoder._native_plan.supported
    if cpu_kernels.has_f16c():  # the generator keeps the native path's KV cache in float16
        assert gen.kv_cache_dtype == torch.float16
        assert decoder.layers[0].attention.kv_cache.k.dtype == torch.float16
    single = [gen.generate(p, max_new_tokens=8).token_ids for p in prompts]
    assert [r.token_ids for r in batched] == single
    beams = gen.generate(prompts[0], max_new_tokens=6, num_beams=1)  # beam search's path too
    assert beams.token_ids == single[0][:6]


@needs_native
def test_plan_declines_what_it_does_not_cover(tiny_tokenizer) -> None:
    from model.native_decode import DecodePlan

    float_model = Decoder(DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)).init_weights(seed=0).eval()
    assert DecodePlan.build(float_model) is None  # float weights: the torch path
    float_model.setup_cache(1, 16)
    with torch.inference_mode():
        float_model(torch.tensor([[1, 2]]), torch.arange(2))
        float_model(torch.tensor([[3]]), torch.tensor([2]))
    assert float_model._native_plan is not None and not float_model._native_plan.supported
    decoder = quantized_tiny(tiny_tokenizer, "int4")
    plan = DecodePlan.build(decoder)
    assert plan is not None
    holes = torch.ones(1, 16, dtype=torch.bool)
    holes[0, 5] = False  # not a left-padding prefix
    assert plan._row_starts(holes, 10) is False
    prefix = torch.ones(2, 16, dtype=torch.bool)
    prefix[1, :3] = False
    assert plan._row_starts(prefix, 10).tolist() == [0, 3]
    decoder.layers[0].feed_forward.w2 = nn.Identity()  # a swapped module invalidates the plan
    assert plan.signature != DecodePlan.signature_of(decoder) and DecodePlan.build(decoder) is None


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


PROBE = """
import torch
from model import cpu_kernels
from model.config import DecoderConfig
from model.decoder import Decoder
from model.quant import quantize_decoder
d = quantize_decoder(Decoder(DecoderConfig.tiny(vocab_size=64)).init_weights(seed=0).eval(), "int4")
d.setup_cache(1, 16)
with torch.inference_mode():
    d(torch.tensor([[1, 2, 3]]), torch.arange(3))
    logits = d(torch.tensor([[4]]), torch.tensor([3]))
print(cpu_kernels.status())
print(type(d.output).__name__, d._native_plan is not None and d._native_plan.supported, tuple(logits.shape))
"""


@pytest.mark.parametrize("env,expect", [
    ({"ASSISTANT_CPU_KERNELS": "0"}, "off (ASSISTANT_CPU_KERNELS=0)"),
    ({"CC": "", "PATH": "/nonexistent"}, "off: no C compiler found"),  # python is started by its full path
])
def test_without_native_kernels_decoding_falls_back_to_torch(tmp_path, env: dict, expect: str) -> None:
    proc = run_python(PROBE, {**env, "ASSISTANT_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    status, summary = proc.stdout.strip().splitlines()[-2:]
    assert status.startswith(expect)
    assert summary == "HalfLinear False (1, 1, 64)"  # float16 head, torch path, still decoding


def test_a_failing_build_is_reported_and_decoding_still_works(tmp_path) -> None:
    fake_cc = tmp_path / "bin" / "cc"
    fake_cc.parent.mkdir()
    fake_cc.write_text("#!/bin/sh\necho 'cc: fatal error: out of disk space' >&2\nexit 1\n")
    fake_cc.chmod(0o755)
    proc = run_python(PROBE, {"CC": str(fake_cc), "ASSISTANT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    status, summary = proc.stdout.strip().splitlines()[-2:]
    assert status.startswith("off:") and "could not build" in status and "out of disk space" in status
    assert summary == "HalfLinear False (1, 1, 64)"


@needs_native
@pytest.mark.real
def test_native_int4_decoding_keeps_the_real_models_predictions(real_decoder) -> None:
    """Teacher-forced decode of a real text through the native int4 step vs the float32 model: the next-token
    choice agrees almost everywhere and the text's perplexity barely moves."""
    import copy

    tokenizer, reference = real_decoder.tokenizer, real_decoder.model
    text = (REPO / "corpus").glob("*.md").__next__().read_text(encoding="utf-8")
    ids = tokenizer.encode(text)[:160]
    prefix, rest = ids[:32], ids[32:]
    fast = quantize_decoder(copy.deepcopy(reference), "int4")
    half = torch.float16 if cpu_kernels.has_f16c() else torch.float32  # the KV cache as the generator keeps it
    logits = decode_logits(fast, [prefix], rest[:-1], native=True, cache_dtype=half)[:, 0]  # [n, V], teacher-forced
    with torch.inference_mode():
        expected = reference(torch.tensor([ids]))[0, 32:-1]  # the float32 model, one full forward
    targets = torch.tensor(rest[1:])
    agreement = (logits.argmax(-1) == expected.argmax(-1)).float().mean()
    ppl = lambda lg: float(torch.exp(torch.nn.functional.cross_entropy(lg.float(), targets)))  # noqa: E731
    assert agreement >= 0.93, agreement
    assert abs(ppl(logits) - ppl(expected)) < 0.05 * ppl(expected)
