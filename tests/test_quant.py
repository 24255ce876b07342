"""Weight-only int8 quantisation: exact int8 round trip, small logit error, same greedy text mostly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.config import DecoderConfig
from model.decoder import Decoder
from model.errors import SamplingParamsError
from model.generate import Generator
from model.quant import Int8Linear, quantize_decoder, quantize_weight_int8


def test_quantize_weight_per_channel_symmetric() -> None:
    weight = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-3.0, 1.5, 0.0]])
    q, scales = quantize_weight_int8(weight)
    assert q.dtype == torch.int8 and scales.shape == (3,)
    assert q[0].tolist() == [127, -64, 32] and q[2].tolist() == [-127, 64, 0]  # row max maps to +-127
    assert q[1].tolist() == [0, 0, 0]
    dequant = q.float() * scales[:, None]
    assert torch.allclose(dequant, weight, atol=float(scales.max()) / 2 + 1e-6)


@pytest.mark.parametrize("rows", [1, 3, 40])  # the CPU int8 kernel (decode) and the dequantised path (prefill)
def test_int8_linear_matches_dequantised_float_linear(rows: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(2, rows, 64)
    with torch.no_grad():
        expected = nn.functional.linear(x, layer.dequantized_weight(), linear.bias)
        out = layer(x)
        full = linear(x)
    assert out.shape == (2, rows, 48) and out.dtype == torch.float32
    # bf16 activations in the CPU kernel: relative error ~1e-2 at most
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
