"""The encoder's int16 mode (model/csrc/encoder_int16.c, model.encoder_quant's Int16 classes): exact int32 sums
against an integer reference, the fused row epilogues against float64, the int16 attention against the same
arithmetic in torch and against float64 attention, the whole int16 BertModel against float32 (tiny random and
the real MiniLM), and the Encoder's embedding copy."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import cpu_kernels
from model.bert import BertModel
from model.config import EncoderConfig
from model.encoder import Encoder
from model.encoder_quant import (INT32_MAX, Int16BertModel, Int16Linear, PackedRows, int16_levels, pack_weight_int16,
                                 quantize_encoder_int16, quantize_rows_int16, quantize_weight_int16)

REPO = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(not cpu_kernels.encoder16_available(),
                                  reason=f"encoder int16 kernels: {cpu_kernels.encoder16_status()}")

TEXTS = [
    "The shared MIME-info database maps file names and magic numbers to MIME types.",
    "Call parigp with -p to set the number of threads; each thread has its own stack.",
    "Rainwater tanks cut mains water use by a third in the gardens we studied over two summers.",
    "def merge(*iterables, key=None, reverse=False): merge sorted inputs into one sorted output.",
    "Le chat dort sur le canapé depuis midi.",
    "x = 3; y = x ** 2 + 1 ⇒ y = 10",
    "Photosynthesis converts light energy into chemical energy stored in glucose. " * 12,
    "Who wrote the report?",
]


@pytest.mark.parametrize("k", [1, 2, 7, 384, 1536, 4096, 100_000])
def test_levels_keep_every_int32_sum_in_range(k: int) -> None:
    levels, kp = int16_levels(k), -(-k // 2) * 2
    assert 1 <= levels <= 32767
    assert levels * levels * kp <= INT32_MAX
    assert levels == 32767 or (levels + 1) ** 2 * kp > INT32_MAX  # the largest such


@needs_native
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 17, 7), (7, 33, 13), (49, 16, 2), (97, 300, 385), (13, 1152, 384),
                                   (50, 40, 1536)])
def test_gemm_equals_the_integer_reference_at_the_extreme_values(m: int, n: int, k: int) -> None:
    torch.manual_seed(m * 31 + n)
    levels = int16_levels(k)
    a = torch.randint(-levels, levels + 1, (m, k), dtype=torch.int16)
    w = torch.randint(-levels, levels + 1, (n, k), dtype=torch.int16)
    a[0], w[0] = levels, levels  # the largest possible sum: L * L * k
    if m > 1:
        a[-1, ::2] = -levels
    kp = -(-k // 2) * 2
    a_pad = torch.zeros((m, kp), dtype=torch.int16)
    a_pad[:, :k] = a
    out = cpu_kernels.int16_gemm_s32(a_pad, pack_weight_int16(w), n)  # [M, N]
    reference = a.long() @ w.long().T
    assert torch.equal(out.long(), reference)
    assert int(reference[0, 0]) == levels * levels * k


@needs_native
def test_row_quantisation_and_weight_packing_equal_torch() -> None:
    torch.manual_seed(1)
    x = torch.randn(11, 37) * 5
    x[3] = 0.0  # an all-zero row: scale 0, zeros
    x[4, 5] = 1e4  # an outlier channel
    x[6] = torch.randn(37) * 1e-36  # so tiny that levels / max|x| would overflow: zeros too
    native = cpu_kernels.int16_quantize_rows(x, 38, 2000)
    assert torch.all(native[0][6] == 0)
    amax = x.abs().amax(1)
    inv = torch.where(amax > 1e-30, 2000 / amax, torch.zeros_like(amax))
    assert torch.equal(native[0][:, :37], torch.round(x * inv[:, None]).to(torch.int16))  # half to even
    assert torch.equal(native[0][:, 37], torch.zeros(11, dtype=torch.int16))
    torch.testing.assert_close(native[1], amax / 2000, rtol=0, atol=0)
    weight = torch.randn(35, 9)
    weight[2] = 0.0
    got, want = cpu_kernels.int16_pack_weight(weight, 1182), quantize_weight_int16(weight, 1182)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _reference_epilogue(layer: Int16Linear, a: torch.Tensor, scales: torch.Tensor, *, gelu=False, residual=None,
                        norm=None) -> torch.Tensor:
    """float64: the exact product, then the row epilogue."""
    y = (a[:, : layer.in_features].double() @ layer.weight_q.double().T) * (scales.double()[:, None]
                                                                          * layer.w_scales.double()[None])
    y = y + layer.bias.double()
    if gelu:
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    if residual is not None:
        y = y + residual.double()
    if norm is not None:
        y = F.layer_norm(y, (y.shape[1],), norm.weight.double(), norm.bias.double(), norm.eps)
    return y


@needs_native
@pytest.mark.parametrize("epilogue", ["plain", "gelu", "residual_norm"])
def test_fused_linear_matches_float64(epilogue: str) -> None:
    torch.manual_seed(2)
    m, k, n = 53, 96, 70
    layer, after = Int16Linear(torch.nn.Linear(k, n)), Int16Linear(torch.nn.Linear(n, 24))
    norm = torch.nn.LayerNorm(n)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    x, residual = torch.randn(m, k) * 2, torch.randn(m, n)
    a, scales = layer.quantize_input(x)
    options = {"plain": {}, "gelu": {"gelu": True}, "residual_norm": {"residual": residual, "norm": norm}}[epilogue]
    y, q, q_scales = layer.fused(a, scales, quantize_for=after, **options)
    want = _reference_epilogue(layer, a, scales, **options)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=2e-6)
    # the rows quantised for the next product: rint(y * levels / max|y|), here from the kernel's own y
    want_q, want_s = quantize_rows_int16(y, after.padded_k, after.levels)
    assert torch.equal(q, want_q) and torch.equal(q_scales, want_s)
    # the torch path of the same arithmetic agrees too
    native = cpu_kernels.encoder16_available
    try:
        cpu_kernels.encoder16_available = lambda: False
        y_torch, q_torch, _ = layer.fused(a, scales, quantize_for=after, **options)
    finally:
        cpu_kernels.encoder16_available = native
    torch.testing.assert_close(y_torch, y, rtol=1e-5, atol=2e-6)
    assert (q_torch.int() - q.int()).abs().max() <= 1


@needs_native
def test_gelu_is_the_erf_form() -> None:
    y = torch.linspace(-9, 9, 4001).reshape(1, -1).contiguous()
    want = F.gelu(y.double())
    cpu_kernels.int16_rows(y, gelu=True)
    torch.testing.assert_close(y.double(), want, rtol=0, atol=2e-6)


@needs_native
def test_head_major_output_is_the_row_output_rearranged() -> None:
    torch.manual_seed(3)
    batch, seq, n_heads, head_dim = 3, 7, 4, 16
    layer = Int16Linear(torch.nn.Linear(40, 3 * n_heads * head_dim))
    a, scales = layer.quantize_input(torch.randn(batch * seq, 40))
    rows, _, _ = layer.fused(a, scales)  # [B*T, 3H]
    heads, _, _ = layer.fused(a, scales, head_major=(seq, head_dim))  # [B, 3 * nh, T, hd]
    assert heads.shape == (batch, 3 * n_heads, seq, head_dim)
    assert torch.equal(heads, rows.view(batch, seq, 3 * n_heads, head_dim).transpose(1, 2))
    odd = Int16Linear(torch.nn.Linear(40, 3 * 2 * 12))  # a head of 12 splits the 16-column panels
    rows, _, _ = odd.fused(a, scales)
    heads, _, _ = odd.fused(a, scales, head_major=(seq, 12))
    assert torch.equal(heads, rows.view(batch, seq, 6, 12).transpose(1, 2))


def _quantized_attention(qkv: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The kernel's arithmetic in torch: q, k per row and v per head dim (over the real tokens) quantised to int16,
    exact integer products, p = 2^(score - max) in log2 units quantised to rint(p * Lp) -> [B, T, nh, hd]."""
    batch, groups, seq, head_dim = qkv.shape
    n_heads = groups // 3
    out = torch.zeros(batch, seq, n_heads, head_dim)
    lq = int16_levels(head_dim)
    for b, length in enumerate(lengths):
        lv = int16_levels(length)
        for h in range(n_heads):
            q, k, v = (qkv[b, i * n_heads + h, :length] for i in range(3))  # each [L, hd]
            qi, sq = quantize_rows_int16(q, head_dim, lq)
            ki, sk = quantize_rows_int16(k, head_dim, lq)
            sq = sq * (1 / math.sqrt(head_dim)) * 1.4426950408889634
            scores = (qi.double() @ ki.double().T).float() * (sq[:, None] * sk[None])  # [L, L], log2 units
            pq = torch.round(torch.exp2((scores - scores.amax(1, keepdim=True)).double()) * lv)  # [L, L]
            vt_q, vt_s = quantize_rows_int16(v.T.contiguous(), length, lv)  # per head dim: [hd, L], [hd]
            sums = pq @ vt_q[:, :length].double().T  # [L, hd]
            out[b, :length, h] = (sums * vt_s.double()[None] / pq.sum(1, keepdim=True)).float()
    return out


@needs_native
@pytest.mark.parametrize("seq,n_heads,head_dim,lengths", [
    (254, 12, 32, [254, 200, 31, 1]),  # MiniLM's shape, with right padding
    (9, 2, 32, [9, 4]),  # shorter than a block of 16 keys
    (40, 3, 8, [40, 17]),  # a head narrower than a 16-dim panel
    (600, 1, 16, [600, 513]),  # longer than the fixed 512-wide score rows
])
def test_attention_is_its_quantised_arithmetic_and_close_to_float(seq: int, n_heads: int, head_dim: int,
                                                                  lengths: list[int]) -> None:
    torch.manual_seed(seq)
    batch = len(lengths)
    qkv = torch.randn(batch, 3 * n_heads, seq, head_dim) * 2
    qkv[0, 2 * n_heads, :, 0] = 0.0  # an all-zero v dimension
    lens = torch.tensor(lengths, dtype=torch.int32)
    out = cpu_kernels.int16_attention(qkv, lens).view(batch, seq, n_heads, head_dim)
    # the same arithmetic in torch (the exp polynomial and torch's exp2 may round a p one level apart)
    torch.testing.assert_close(out, _quantized_attention(qkv, lengths), rtol=1e-3, atol=1e-3)
    q, k, v = qkv.double().view(batch, 3, n_heads, seq, head_dim).unbind(1)
    mask = (torch.arange(seq)[None] < lens[:, None])[:, None, None, :]  # [B, 1, 1, T]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)  # [B, T, nh, hd]
    for b, length in enumerate(lengths):
        error = (out[b, :length].double() - want[b, :length]).norm() / want[b, :length].norm()
        assert error < 1e-2, (b, float(error))  # random (diffuse) attention: the hardest case for p's levels
        assert torch.all(out[b, length:] == 0)  # padding rows
    full = cpu_kernels.int16_attention(qkv, None).view(batch, seq, n_heads, head_dim)  # no lengths: all real
    assert lengths[0] == seq and torch.equal(full[0], out[0])
    assert torch.isfinite(full).all()


@needs_native
def test_portable_c_build_computes_what_the_simd_build_does(tmp_path) -> None:
    """The plain-C paths (CPUs without AVX2) against the SIMD ones: the same int32 sums, the same attention."""
    import ctypes
    import shutil

    if cpu_kernels.encoder16_simd() == "portable C":
        pytest.skip("the native build is the portable one already")
    compiler = cpu_kernels._compiler()
    if compiler is None or not shutil.which(compiler):
        pytest.skip("no C compiler")
    target = tmp_path / "portable.so"
    proc = subprocess.run([compiler, "-O2", "-fopenmp", "-shared", "-fPIC", "-std=c11", "-o", str(target),
                           str(cpu_kernels.ENCODER16_SOURCE), "-lm"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    portable = ctypes.CDLL(str(target))
    assert portable.e16_simd() == 0
    ptr, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    portable.e16_gemm_s32.argtypes = [ptr, i64, i64, ptr, i64, ptr, cint]
    portable.e16_attention.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, cint]
    torch.manual_seed(5)
    m, n, k = 23, 40, 30
    a = torch.randint(-2000, 2001, (m, k), dtype=torch.int16)
    packed = pack_weight_int16(torch.randint(-2000, 2001, (n, k), dtype=torch.int16))
    plain = torch.empty((m, n), dtype=torch.int32)
    assert portable.e16_gemm_s32(a.data_ptr(), m, k, packed.data_ptr(), n, plain.data_ptr(), 1) == 0
    assert torch.equal(plain, cpu_kernels.int16_gemm_s32(a, packed, n))
    qkv = torch.randn(2, 3 * 2, 37, 32)
    lengths = torch.tensor([37, 20], dtype=torch.int32)
    plain = torch.empty((2 * 37, 64))
    assert portable.e16_attention(qkv.data_ptr(), 2, 37, 64, 2, lengths.data_ptr(), None, plain.data_ptr(), 1) == 0
    # the two builds round p in two exp implementations (a level apart at most)
    torch.testing.assert_close(plain, cpu_kernels.int16_attention(qkv, lengths), rtol=1e-3, atol=1e-3)


def _embed(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = model(ids, mask)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


def test_tiny_bert_in_int16_stays_close_to_float_and_leaves_it_alone() -> None:
    torch.manual_seed(0)
    model = BertModel(EncoderConfig.tiny()).eval()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    ids = torch.randint(5, 500, (4, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[3, 3:] = 0
    with torch.inference_mode():
        reference = _embed(model, ids, mask)
        q = quantize_encoder_int16(model)
        assert isinstance(q, Int16BertModel)
        got = _embed(q, ids, mask)
        cos = (reference * got).sum(-1)
        # a mask that is not right padding goes through torch's attention with the mask
        holes = mask.clone()
        holes[0, 5] = 0
        cos_holes = (_embed(model, ids, holes) * _embed(q, ids, holes)).sum(-1)
    assert float(cos.min()) >= 0.9999, cos
    assert float(cos_holes.min()) >= 0.9999, cos_holes
    assert all(torch.equal(p, before[name]) for name, p in model.state_dict().items())  # the source is untouched
    model.train()
    q.eval()  # the shared embedding tables are not the int16 model's submodule: the source's mode stays
    assert model.embeddings.training and not q.training


def test_native_and_torch_paths_of_the_int16_model_agree() -> None:
    if not cpu_kernels.encoder16_available():
        pytest.skip(f"encoder int16 kernels: {cpu_kernels.encoder16_status()}")
    torch.manual_seed(4)
    model = BertModel(EncoderConfig.tiny()).eval()
    ids = torch.randint(5, 500, (3, 21))
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    q = quantize_encoder_int16(model)
    with torch.inference_mode():
        native = q(ids, mask)
        saved = cpu_kernels.encoder16_available
        try:
            cpu_kernels.encoder16_available = lambda: False
            slow = q(ids, mask)
        finally:
            cpu_kernels.encoder16_available = saved
    real = mask.bool()
    torch.testing.assert_close(native[real], slow[real], rtol=1e-3, atol=1e-3)


@needs_native
def test_packed_rows_compute_exactly_what_the_padded_batch_does() -> None:
    """With right padding the native model runs its linears on the real tokens only (packed rows); every real
    token's hidden state is bit for bit the one the padded computation gives, and the padding rows are zeros."""
    torch.manual_seed(6)
    model = BertModel(EncoderConfig.tiny()).eval()
    ids = torch.randint(5, 500, (4, 30))
    mask = torch.ones_like(ids)
    for row, length in ((1, 17), (2, 1), (3, 29)):
        mask[row, length:] = 0
    q = quantize_encoder_int16(model)
    with torch.inference_mode():
        packed = q(ids, mask)
        q.pack = False
        padded = q(ids, mask)
    real = mask.bool()
    assert torch.equal(packed[real], padded[real])
    assert not packed[~real].any()
    # the kernels alone: a head-major product from packed rows, and attention writing packed rows
    layer = Int16Linear(torch.nn.Linear(40, 3 * 2 * 16))
    lengths = torch.tensor([5, 2, 7], dtype=torch.int32)
    rows = PackedRows.of(lengths, 7)
    assert rows.positions.tolist() == [0, 1, 2, 3, 4, 7, 8, 14, 15, 16, 17, 18, 19, 20]
    assert rows.starts.tolist() == [0, 5, 7]
    a, scales = layer.quantize_input(torch.randn(3 * 7, 40))
    full, _, _ = layer.fused(a, scales, head_major=(7, 16))  # [3, 6, 7, 16]
    part, _, _ = layer.fused(a[rows.positions], scales[rows.positions], head_major=(7, 16), packed=rows)
    for b, length in enumerate(lengths.tolist()):
        assert torch.equal(part[b, :, :length], full[b, :, :length])
    attn = cpu_kernels.int16_attention(full, lengths)  # [21, 32], zeros past each length
    assert torch.equal(cpu_kernels.int16_attention(full, lengths, starts=rows.starts), attn[rows.positions])


@needs_native
def test_real_encoder_int16_embeddings_match_float32(real_encoder) -> None:
    encoder = Encoder(real_encoder.model, real_encoder.tokenizer, embed_dtype="int16")
    assert encoder.embed_mode == "int16" and encoder.embed_dtype == torch.float32
    got = encoder.embed(TEXTS, batch_size=3)
    want = real_encoder.embed(TEXTS, batch_size=3)  # float32
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * want).sum(1)
    assert cosine.min() >= 0.9999, cosine
    assert not np.array_equal(got, want)  # it really ran the int16 kernels
    assert (got @ want.T).argmax(1).tolist() == list(range(len(TEXTS)))
    # the shared weights (the reader's) stay float32 modules; the int16 model is a separate copy
    assert isinstance(encoder._embedding_model(), Int16BertModel)
    assert all(p.dtype == torch.float32 for p in encoder.model.parameters())
    one = encoder.embed(TEXTS[:1], batch_size=1)  # a query alone: same vector as inside a batch
    np.testing.assert_allclose(one[0], got[0], atol=1e-5)


def test_auto_picks_int16_where_it_is_preferred(monkeypatch) -> None:
    from model import encoder_quant, runtime

    torch.manual_seed(0)
    model = BertModel(EncoderConfig.tiny()).eval()
    encoder = Encoder.__new__(Encoder)  # embed_mode reads only the weights and the request
    encoder.model, encoder.embed_request, encoder.quant = model, "auto", None
    monkeypatch.delenv("ASSISTANT_EMBED_DTYPE", raising=False)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(encoder_quant, "int16_preferred", lambda: True)
    assert encoder.embed_mode == "int16" and encoder.embed_dtype == torch.float32
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)  # native bfloat16 wins
    assert encoder.embed_mode == "bfloat16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(encoder_quant, "int16_preferred", lambda: False)
    assert encoder.embed_mode == "float32"
    monkeypatch.setenv("ASSISTANT_EMBED_DTYPE", "int16")  # asked for: used where the kernels exist
    monkeypatch.setattr(encoder_quant, "int16_available", lambda: True)
    assert encoder.embed_mode == "int16"
    monkeypatch.setattr(encoder_quant, "int16_available", lambda: False)
    assert encoder.embed_mode == "float32"
    encoder.embed_request = "float32"  # an explicit request beats the environment
    monkeypatch.setattr(encoder_quant, "int16_available", lambda: True)
    assert encoder.embed_mode == "float32"
    encoder.embed_request, encoder.quant = "auto", "int8"  # an int8 encoder embeds with its own kernels
    monkeypatch.setattr(encoder_quant, "int16_preferred", lambda: True)
    monkeypatch.delenv("ASSISTANT_EMBED_DTYPE")
    assert encoder.embed_mode == "int8" and encoder.embed_dtype == torch.float32


def test_int16_preference_follows_the_cpu(monkeypatch) -> None:
    from model import encoder_quant

    monkeypatch.setattr(cpu_kernels, "encoder16_simd", lambda: "AVX2")
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert encoder_quant.int16_preferred()
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert not encoder_quant.int16_preferred()  # float32 is as wide as these kernels there
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(cpu_kernels, "encoder16_simd", lambda: "portable C")
    assert not encoder_quant.int16_preferred()
    monkeypatch.setattr(cpu_kernels, "encoder16_simd", lambda: None)  # no kernels
    assert not encoder_quant.int16_preferred()


def test_the_int16_copy_follows_changed_weights(real_encoder) -> None:
    tokenizer = real_encoder.tokenizer
    torch.manual_seed(0)
    config = EncoderConfig.tiny(vocab_size=tokenizer.vocab_size)
    encoder = Encoder(BertModel(config).eval(), tokenizer, embed_dtype="int16")
    if encoder.embed_mode != "int16":
        pytest.skip(f"encoder int16 kernels: {cpu_kernels.encoder16_status()}")
    before = encoder.embed(TEXTS[:3])
    first = encoder._embedding_model()
    assert np.array_equal(encoder.embed(TEXTS[:3]), before) and encoder._embedding_model() is first
    with torch.no_grad():
        encoder.model.layers[0].mlp_in.weight.mul_(1.5).add_(0.01)
    after = encoder.embed(TEXTS[:3])
    rebuilt = Encoder(encoder.model, tokenizer, embed_dtype="int16").embed(TEXTS[:3])
    assert encoder._embedding_model() is not first
    assert not np.allclose(after, before, atol=1e-4)
    np.testing.assert_array_equal(after, rebuilt)


def test_without_kernels_int16_falls_back_to_float() -> None:
    code = ("import torch; from model import cpu_kernels; from model.encoder import Encoder; "
            "from model.bert import BertModel; from model.config import EncoderConfig; "
            "from model.encoder_quant import int16_preferred, int16_available; "
            "assert not cpu_kernels.encoder16_available() and not int16_preferred() and not int16_available(); "
            "e = Encoder.__new__(Encoder); e.model = BertModel(EncoderConfig.tiny()); e.quant = None; "
            "e.embed_request = 'int16'; assert e.embed_mode == 'float32', e.embed_mode; "
            "from model.runtime import cpu_has_native_bf16; "
            "e.embed_request = 'auto'; want = 'bfloat16' if cpu_has_native_bf16() else 'float32'; "
            "assert e.embed_mode == want, (e.embed_mode, want); "  # auto never picks int16 without the kernels
            "print(cpu_kernels.encoder16_status())")
    env = {**os.environ, "ASSISTANT_CPU_KERNELS": "0"}
    env.pop("ASSISTANT_EMBED_DTYPE", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "off" in proc.stdout


@needs_native
def test_an_index_built_in_float32_is_kept_by_the_int16_encoder(real_encoder, tmp_path) -> None:
    """Switching the embedding precision re-embeds nothing: same encoder name, same index settings."""
    from retrieval.retriever import Retriever
    from retrieval.sync import sync_folder

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "tanks.md").write_text("# Rain\n\nRainwater tanks cut mains water use by a third in the gardens.\n")
    (folder / "mime.md").write_text("# MIME\n\nThe shared MIME-info database maps file names to MIME types.\n")
    first = sync_folder(folder, tmp_path / "index", real_encoder, progress=False)  # float32, the previous release
    assert first.chunks_embedded >= 2
    int16 = Encoder(real_encoder.model, real_encoder.tokenizer, name=real_encoder.name, embed_dtype="int16")
    assert int16.embed_mode == "int16" and int16.name == real_encoder.name
    again = sync_folder(folder, tmp_path / "index", int16, progress=False)
    assert again.chunks_embedded == 0 and sorted(again.unchanged) == ["mime.md", "tanks.md"]
    retriever = Retriever(tmp_path / "index", int16)
    try:
        hits = retriever.search("How much mains water do rain tanks save?", k=1, mode="dense")
    finally:
        retriever.store.close()
    assert [hit.path for hit in hits] == ["tanks.md"]


@needs_native
def test_an_adapter_embeds_in_int16_too(real_encoder, tmp_path) -> None:
    import copy

    from model.cross_encoder import base_fingerprint
    from model.lora import LoraConfig, apply_lora, lora_modules, save_adapter

    tuned = copy.deepcopy(real_encoder.model)
    config = LoraConfig(rank=4, alpha=8.0, targets=("qkv", "mlp_in"))
    apply_lora(tuned, config)
    torch.manual_seed(6)
    with torch.no_grad():
        for module in lora_modules(tuned).values():
            module.lora_b.normal_(0.0, 0.02)
    save_adapter(tmp_path / "adapter", tuned, config, base_identity=base_fingerprint(real_encoder.model))
    floats = Encoder(real_encoder.model, real_encoder.tokenizer, embed_dtype="float32")
    int16 = Encoder(real_encoder.model, real_encoder.tokenizer, embed_dtype="int16")
    plain = int16.embed(TEXTS[:4])
    for encoder in (floats, int16):
        encoder.set_adapter(tmp_path / "adapter")
    assert int16.name == floats.name and "+adapt:" in int16.name
    want, got = floats.embed(TEXTS[:4]), int16.embed(TEXTS[:4])
    assert (got * want).sum(1).min() >= 0.9999
    assert (plain * want).sum(1).min() < (got * want).sum(1).min()  # the adapter is in the int16 copy
    assert all(p.dtype == torch.float32 for p in real_encoder.model.parameters())
