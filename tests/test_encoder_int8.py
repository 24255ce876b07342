"""The encoder's native int8 GEMM (model/csrc/encoder_int8.c): exact int32 sums against an integer reference,
the int8 encoder mode against float on a tiny random BertModel, and the float fallback without the kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import cpu_kernels
from model.bert import BertModel
from model.config import EncoderConfig
from model.encoder_quant import Int8EncoderLinear, is_quantized, quantize_encoder

REPO = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(not cpu_kernels.encoder_available(),
                                  reason=f"encoder kernels: {cpu_kernels.encoder_status()}")


@needs_native
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 63, 7), (7, 65, 13), (97, 300, 385), (200, 130, 64), (13, 1152, 384)])
def test_int8_gemm_equals_the_integer_reference(m: int, n: int, k: int) -> None:
    torch.manual_seed(m * 31 + n)
    layer = Int8EncoderLinear(torch.nn.Linear(k, n))
    x = torch.randn(m, k) * 3
    x[0] = 0.0  # an all-zero row (scale 0)
    a_u8, scales = cpu_kernels.quantize_rows_u8(x, layer.padded_k)
    assert torch.all(a_u8[:, k:] == 128)  # the padding is a quantised zero
    # the activation rounding: round half to even of x / (max|x| / 127)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    assert torch.equal(a_u8[:, :k].long() - 128, torch.round(x / safe[:, None]).long())
    out = cpu_kernels.int8_gemm_s32(a_u8, layer.packed, n, layer.comp)  # [M, N] int32
    reference = (a_u8[:, :k].long() - 128) @ layer.weight_int8.long().T
    assert torch.equal(out.long(), reference)


@needs_native
def test_dequantised_output_matches_the_torch_path_and_float() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 70)
    layer = Int8EncoderLinear(linear)
    x = torch.randn(3, 11, 96)
    native = layer(x)
    assert native.shape == (3, 11, 70)
    torch.testing.assert_close(native, layer.torch_forward(x.reshape(-1, 96)).view(3, 11, 70), rtol=1e-5, atol=1e-5)
    exact = linear(x)
    assert (native - exact).norm() <= 0.02 * exact.norm()


def _embed(model: BertModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = model(ids, mask)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


def test_int8_tiny_bert_stays_close_to_float() -> None:
    torch.manual_seed(0)
    model = BertModel(EncoderConfig.tiny()).eval()
    ids = torch.randint(5, 500, (4, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.inference_mode():
        reference = _embed(model, ids, mask)
        quantize_encoder(model, force=True)  # native kernels when built, else the torch path of the same sums
        assert is_quantized(model)
        cos = (reference * _embed(model, ids, mask)).sum(-1)
    assert float(cos.min()) >= 0.99


def test_without_kernels_the_encoder_stays_float() -> None:
    code = ("import torch; from model import cpu_kernels; from model.bert import BertModel; "
            "from model.config import EncoderConfig; from model.encoder_quant import quantize_encoder, is_quantized; "
            "m = quantize_encoder(BertModel(EncoderConfig.tiny())); "
            "assert not cpu_kernels.encoder_available() and not is_quantized(m), cpu_kernels.encoder_status(); "
            "print(cpu_kernels.encoder_status())")
    env = {**os.environ, "ASSISTANT_CPU_KERNELS": "0"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "off" in proc.stdout
