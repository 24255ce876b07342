"""Weight-only int8 / int4 quantisation: exact round trips (int4 re-creates GGUF Q4_1 blocks), kernel path ==
dequantised path, small logit error on a decoder, `quantize="auto"`, an adapter kept exact beside quantised weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.config import DecoderConfig
from model.decoder import Decoder
from model.errors import SamplingParamsError
from model.generate import Generator
from pathlib import Path

import model.quant as quant
from model.generate import resolve_quantize
from model.quant import (FusedSwiGLU, HalfLinear, Int4Linear, Int8Linear, fuse_projections, quantize_decoder,
                         quantize_weight_int4, quantize_weight_int8)


def test_quantize_weight_per_channel_symmetric() -> None:
    weight = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-3.0, 1.5, 0.0]])
    q, scales = quantize_weight_int8(weight)
    assert q.dtype == torch.int8 and scales.shape == (3,)
    assert q[0].tolist() == [127, -64, 32] and q[2].tolist() == [-127, 64, 0]  # row max maps to +-127
    assert q[1].tolist() == [0, 0, 0]
    dequant = q.float() * scales[:, None]
    assert torch.allclose(dequant, weight, atol=float(scales.max()) / 2 + 1e-6)


def use_backend(backend: str, monkeypatch) -> None:
    """native: model.cpu_kernels (skipped when it cannot be built here); torch: torch's CPU kernels only;
    dequant: neither (a torch without the int4 kernel and no C compiler)."""
    from model import cpu_kernels

    if backend == "native" and not cpu_kernels.available():
        pytest.skip(f"native CPU kernels: {cpu_kernels.status()}")
    if backend != "native":
        monkeypatch.setattr(quant, "native_kernels_available", lambda tensor: False)
    if backend == "dequant":
        monkeypatch.setattr(quant, "cpu_int4_kernel_available", lambda: False)
    elif backend == "torch" and not quant.cpu_int4_kernel_available():
        pytest.skip("this torch has no CPU int4 kernel")


@pytest.mark.parametrize("rows", [1, 3, 40])  # the decode kernels (few rows) and the dequantised path (prefill)
@pytest.mark.parametrize("backend", ["native", "torch"])
def test_int8_linear_matches_dequantised_float_linear(rows: int, backend: str, monkeypatch) -> None:
    use_backend(backend, monkeypatch)
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    layer = Int8Linear.from_linear(linear)
    assert (layer.block_scales is not None) == (backend == "native")
    x = torch.randn(2, rows, 64)
    with torch.no_grad():
        expected = nn.functional.linear(x, layer.dequantized_weight(), linear.bias)
        out = layer(x)
        full = linear(x)
    assert out.shape == (2, rows, 48) and out.dtype == torch.float32
    # int8 (native) or bf16 (torch) activations in the CPU kernels: relative error ~1e-2 at most
    assert torch.allclose(out, expected, atol=0.05 * float(expected.abs().max()))
    assert (out - full).abs().max() < 0.05 * float(expected.abs().max())


def test_quantize_decoder_replaces_linears_and_keeps_quality(tiny_tokenizer) -> None:
    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    reference = Decoder(config).init_weights(std=0.3, seed=0).eval()
    quantized = quantize_decoder(Decoder(config).init_weights(std=0.3, seed=0).eval())
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert isinstance(quantized.output, Int8Linear)
    assert quantized.tok_embeddings.weight.dtype == torch.float32  # the lookup table stays float
    tokens = torch.tensor([tiny_tokenizer.encode("The quick brown fox jumps over the lazy dog. 0123456789")])
    with torch.no_grad():
        ref_logits, q_logits = reference(tokens)[0], quantized(tokens)[0]  # [T, V]
    assert (ref_logits - q_logits).abs().max() < 0.1 * ref_logits.abs().max()
    agreement = (ref_logits.argmax(-1) == q_logits.argmax(-1)).float().mean()
    assert agreement >= 0.9
    # it generates through the KV-cache path too (CPU int8 kernel at batch 1)
    gen = Generator(quantized, tiny_tokenizer, device="cpu")
    gen.eos_token_ids = ()
    assert gen.generate("The quick", max_new_tokens=5).generated_tokens == 5


def test_unknown_mode_is_a_clear_error(tiny_tokenizer) -> None:
    decoder = Decoder(DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size))
    with pytest.raises(SamplingParamsError, match="int8"):
        quantize_decoder(decoder, "int3")


# ---- int4 ---------------------------------------------------------------------------------------------------
def test_int4_requantising_gguf_q4_1_blocks_is_exact() -> None:
    """Weights dequantised from GGUF Q4_1 (value = d * q + m per 32) come back bit for bit (in float32)."""
    import gguf

    torch.manual_seed(0)
    weight = torch.randn(16, 128)
    blocks = gguf.quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q4_1)
    q4_1 = torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_1).reshape(16, 128).copy())
    q, scales, mins = quantize_weight_int4(q4_1)
    assert q.dtype == torch.uint8 and int(q.max()) == 15 and int(q.min()) == 0
    assert scales.shape == mins.shape == (16, 4)
    layer = Int4Linear(q, scales, mins, None)
    assert torch.equal(layer.dequantized_weight(), q4_1)


def test_int4_constant_group_and_odd_widths() -> None:
    weight = torch.zeros(4, 64)
    weight[1, :32] = 0.5  # a constant group: scale 0, every value = min
    q, scales, mins = quantize_weight_int4(weight)
    assert torch.equal(Int4Linear(q, scales, mins, None).dequantized_weight(), weight)
    with pytest.raises(ValueError, match="group size"):
        quantize_weight_int4(torch.randn(4, 40))


@pytest.mark.parametrize("rows", [1, 3, 40])  # the decode kernels (few rows) and the dequantised path (prefill)
@pytest.mark.parametrize("backend", ["native", "torch", "dequant"])
def test_int4_linear_matches_dequantised_float_linear(rows: int, backend: str, monkeypatch) -> None:
    use_backend(backend, monkeypatch)
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=True)
    layer = Int4Linear.from_linear(linear)
    assert layer.native == (backend == "native")
    assert (layer.weight_int4pack is not None) == (backend == "torch")
    kernel = backend != "dequant"
    x = torch.randn(2, rows, 64)
    with torch.no_grad():
        expected = nn.functional.linear(x, layer.dequantized_weight(), linear.bias)
        out = layer(x)
        full = linear(x)
    assert out.shape == (2, rows, 96) and out.dtype == torch.float32
    scale = float(expected.abs().max())
    # kernels: int8 (native) or bf16 (torch) activations, relative error ~1e-2; fallback: exact float
    assert (out - expected).abs().max() < (0.02 * scale if kernel and rows <= 16 else 1e-5)
    assert (out - full).abs().max() < 0.1 * scale  # 4-bit weights: still close to the float layer


def test_fused_projections_give_the_same_logits(tiny_tokenizer) -> None:
    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    reference = Decoder(config).init_weights(std=0.3, seed=0).eval()
    fused = fuse_projections(Decoder(config).init_weights(std=0.3, seed=0).eval())
    assert fused.layers[0].attention.wqkv is not None and not hasattr(fused.layers[0].attention, "wq")
    assert isinstance(fused.layers[0].feed_forward, FusedSwiGLU)
    tokens = torch.tensor([tiny_tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens), reference(tokens), rtol=1e-5, atol=1e-5)


def snap_to_int4_grid(decoder: Decoder) -> Decoder:
    """Round every block's linear weights to their int4 values (as a Q4_1 GGUF's weights already are)."""
    with torch.no_grad():
        for name, module in decoder.named_modules():
            if isinstance(module, nn.Linear) and name != "output":
                module.weight.copy_(Int4Linear(*quantize_weight_int4(module.weight), None).dequantized_weight())
    return decoder


def test_quantize_decoder_int4_keeps_quality_and_generates(tiny_tokenizer) -> None:
    """On weights that are 4-bit already (the default GGUF), int4 costs only bf16 activations and fp16 head."""
    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    reference = snap_to_int4_grid(Decoder(config).init_weights(std=0.3, seed=0).eval())
    quantized = quantize_decoder(snap_to_int4_grid(Decoder(config).init_weights(std=0.3, seed=0).eval()), "int4")
    assert not any(isinstance(m, nn.Linear) for m in quantized.modules())
    assert isinstance(quantized.layers[0].attention.wqkv, Int4Linear)
    assert isinstance(quantized.layers[0].feed_forward.w13, Int4Linear)
    from model import cpu_kernels

    if cpu_kernels.available():  # the (tied) head: int8 in blocks of 32 (Q8_0), else float16
        assert isinstance(quantized.output, Int8Linear) and quantized.output.group_size == 32
    else:
        assert isinstance(quantized.output, HalfLinear)
    tokens = torch.tensor([tiny_tokenizer.encode("The quick brown fox jumps over the lazy dog. 0123456789")])
    with torch.no_grad():
        ref_logits, q_logits = reference(tokens)[0], quantized(tokens)[0]  # [T, V]
    assert (ref_logits - q_logits).abs().max() < 0.1 * ref_logits.abs().max()
    assert (ref_logits.argmax(-1) == q_logits.argmax(-1)).float().mean() >= 0.9
    # the KV-cache path (CPU int4 kernel at batch 1) agrees with the dequantised path on a greedy continuation
    gen = Generator(quantized, tiny_tokenizer, device="cpu")
    gen.eos_token_ids = ()
    prompt = tiny_tokenizer.encode("The quick")
    ids = gen.generate(prompt, max_new_tokens=6).token_ids
    assert len(ids) == 6
    with torch.no_grad():
        first = int(quantized(torch.tensor([prompt]))[0, -1].argmax())
    assert ids[0] == first


def test_resolve_quantize_auto_none_and_errors() -> None:
    gguf_q4 = Path("SmolLM2-135M-Instruct.Q4_1.gguf")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_quantize("auto", gguf_q4, cpu) == "int4"
    assert resolve_quantize("auto", gguf_q4, cuda) is None
    assert resolve_quantize("auto", Path("model.F16.gguf"), cpu) is None
    assert resolve_quantize("auto", Path("some-hf-folder"), cpu) is None
    assert resolve_quantize(None, gguf_q4, cpu) is None and resolve_quantize("none", gguf_q4, cpu) is None
    assert resolve_quantize("INT8", gguf_q4, cpu) == "int8"
    with pytest.raises(SamplingParamsError, match="int4"):
        resolve_quantize("int3", gguf_q4, cpu)


def test_load_keeps_the_adapter_exact_beside_quantised_weights(tiny_tokenizer, tmp_path) -> None:
    """Generator.load(adapter=..., quantize="int4") = int4(base) weights + the adapter's exact low-rank update.

    The reference is built independently: the unmerged float LoRA model whose base weights are replaced by
    their int4 round trip. Merging first and quantising after would round a small update away.
    """
    from model.lora import LoraConfig, apply_lora, save_adapter
    from model.weights import save_checkpoint

    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    base = Decoder(config).init_weights(std=0.3, seed=0).eval()
    save_checkpoint(tmp_path / "base", base, tiny_tokenizer, identity="tiny-base")
    tuned = Decoder(config).init_weights(std=0.3, seed=0).eval()
    lora = LoraConfig(rank=4, alpha=8)
    apply_lora(tuned, lora)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_b" in name:
                param.normal_(0, 0.3)
    save_adapter(tmp_path / "adapter", tuned, lora, base_identity="tiny-base")

    gen = Generator.load(str(tmp_path / "base"), device="cpu", adapter=tmp_path / "adapter", quantize="int4")
    assert "+int4" in gen.identity and "adapter" in gen.identity
    with torch.no_grad():  # the reference: float unmerged LoRA over int4-round-tripped base weights
        for name, module in tuned.named_modules():
            if isinstance(module, nn.Linear) and name != "output":
                module.weight.copy_(Int4Linear.from_linear(module).dequantized_weight())
        head = nn.Linear(config.dim, config.vocab_size, bias=False)  # untied: only the head is rounded
        head.weight.copy_(tuned.tok_embeddings.weight)
        if isinstance(gen.decoder.output, Int8Linear):  # int8 blocks of 32 (with the native CPU kernels)
            head.weight.copy_(Int8Linear.from_linear(head, group_size=32).dequantized_weight())
        else:  # float16
            head.weight.copy_(head.weight.half().float())
        tuned.output = head
    # > 24 rows: the int4 layers take their exact dequantise-then-matmul path (decode-sized inputs use the
    # CPU kernels with int8 or bfloat16 activations, which add rounding of their own).
    tokens = torch.tensor([tiny_tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)])
    assert tokens.shape[1] > 24
    with torch.no_grad():
        got = gen.decoder(tokens)
        torch.testing.assert_close(got, tuned(tokens), rtol=1e-4, atol=1e-4)
        assert (got - base(tokens)).abs().max() > 0.1  # the adapter is in there


def test_unmerged_adapter_survives_fused_quantisation_with_partial_targets(tiny_tokenizer) -> None:
    """Only some projections adapted (q and v, not k; up, not gate): the fused side path puts each update on
    the right output rows."""
    from model.lora import LoraConfig, apply_lora

    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    model = Decoder(config).init_weights(seed=2).eval()
    apply_lora(model, LoraConfig(rank=2, alpha=4, targets=("wq", "wv", "w3", "wo")))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_b" in name:
                param.normal_(0, 0.5)
    tokens = torch.tensor([tiny_tokenizer.encode("Attention lets every token look at every other token.")])
    with torch.no_grad():
        expected = model(tokens)  # float, unmerged
        quantize_decoder(model, "int8")
        assert not any(hasattr(m, "lora_a") for m in model.modules())
        got = model(tokens)
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)  # int8 weight error only


@pytest.mark.parametrize("rows", [1, 40])  # float16 matmul (decode) and upcast weight (scoring many rows)
def test_half_linear_matches_float_linear(rows: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=False)
    layer = HalfLinear.from_linear(linear)
    x = torch.randn(rows, 64)
    with torch.no_grad():
        out, full = layer(x), linear(x)
    assert out.dtype == torch.float32 and out.shape == (rows, 48)
    assert (out - full).abs().max() < 2e-3 * float(full.abs().max())
