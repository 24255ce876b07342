"""Quantised modes for the sentence encoder: its Linear layers as integer matrix products on native kernels.

int16 mode (`Int16BertModel`, the fast one on AVX2 CPUs; `quantize_encoder_int16(model)` builds it as a *copy*):

    x [M, K] float ─► per-row int16 (|q| <= L) ─► native int16 x int16 -> int32 GEMM
    (model/csrc/encoder_int16.c, vpmaddwd) against per-output-channel int16 weights (|q| <= L) ─► dequantise +
    bias, then fused per row: GELU / + residual / LayerNorm / quantise for the next product

L = int16_levels(K) is the largest level count with L * L * K < 2^31 (2364 for K = 384, 1182 for K = 1536), so
the int32 sums never overflow and every SIMD path is exact; ~11-12-bit operands keep MiniLM's activation outlier
channels (cosine to float32 >= 0.9999 on real text, where 8-bit weights alone give 0.9990 and int8 0.995).

int8 mode (opt-in; fast on VNNI CPUs, cosine ~0.994 on real text):

    x [.., K] float ─► per-row (token) symmetric int8, stored + 128 ─► native GEMM (model/csrc/encoder_int8.c,
    AVX512-VNNI / AVX-VNNI / AVX2) against per-output-channel symmetric int8 weights ─► dequantise + bias

`quantize_encoder(model)` swaps the chosen layers in place (all four linears of every block by default; pass
`skip=("mlp_out",)` to keep a layer in float) and leaves the model in float when the native kernels are
unavailable (no compiler, ASSISTANT_CPU_KERNELS=0). `Int8EncoderLinear` also has a pure-torch path of the same
arithmetic (used if the kernels vanish after quantisation, and by the tests).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from model import cpu_kernels

LINEARS = ("qkv", "attn_out", "mlp_in", "mlp_out")
PANEL = cpu_kernels.ENCODER_PANEL  # output columns per packed panel (checked against the C side)


def pack_weight(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] int8 -> panels [ceil(N/64), Kp/4, 64, 4] (Kp = K rounded up to 4; padding is zero)."""
    n, k = q.shape
    n_pad, k_pad = -(-n // PANEL) * PANEL, -(-k // 4) * 4
    full = torch.zeros((n_pad, k_pad), dtype=torch.int8)
    full[:n, :k] = q
    return full.view(n_pad // PANEL, PANEL, k_pad // 4, 4).permute(0, 2, 1, 3).contiguous()


class Int8EncoderLinear(nn.Module):
    """y = x W^T + b with W per-channel int8 and x quantised per row at run time."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # [N, K]
        self.out_features, self.in_features = weight.shape
        scales = weight.abs().amax(1).clamp(min=1e-12) / 127  # [N]
        q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)  # [N, K]
        n_pad = -(-self.out_features // PANEL) * PANEL
        self.padded_k = -(-self.in_features // 4) * 4
        self.register_buffer("weight_int8", q)
        self.register_buffer("packed", pack_weight(q))
        comp = torch.zeros(n_pad, dtype=torch.int32)
        comp[: self.out_features] = 128 * q.to(torch.int32).sum(1)
        self.register_buffer("comp", comp)
        w_scales = torch.zeros(n_pad)
        w_scales[: self.out_features] = scales
        self.register_buffer("w_scales", w_scales)
        bias = None
        if linear.bias is not None:
            bias = torch.zeros(n_pad)
            bias[: self.out_features] = linear.bias.detach().float()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K] -> [..., N]
        shape = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)  # [M, K]
        if rows.dtype is not torch.float32 or not rows.is_contiguous():
            rows = rows.to(torch.float32, memory_format=torch.contiguous_format)
        if cpu_kernels.encoder_available() and rows.device.type == "cpu":
            a_u8, a_scales = cpu_kernels.quantize_rows_u8(rows, self.padded_k)
            out = cpu_kernels.int8_gemm_f32(a_u8, a_scales, self.packed, self.out_features, self.comp,
                                            self.w_scales, self.bias)
        else:
            out = self.torch_forward(rows)
        return out.view(*shape, self.out_features).to(x.dtype)

    def torch_forward(self, rows: torch.Tensor) -> torch.Tensor:
        """The same arithmetic in torch: per-row int8 activations times the int8 weights, then the scales."""
        a_scales = rows.abs().amax(1) / 127  # [M]
        safe = torch.where(a_scales > 0, a_scales, torch.ones_like(a_scales))
        a_q = torch.round(rows / safe[:, None])  # [M, K], integers in -127..127
        out = (a_q.double() @ self.weight_int8.double().T).float()  # exact integer sums
        out = out * (a_scales[:, None] * self.w_scales[None, : self.out_features])
        if self.bias is not None:
            out = out + self.bias[: self.out_features]
        return out


def quantize_encoder(model: nn.Module, skip: tuple[str, ...] = (), force: bool = False) -> nn.Module:
    """Replace the block linears of a BertModel (in place) by `Int8EncoderLinear`, except those named in `skip`.

    Without the native kernels (and not `force`) the model is left in float: the torch path of the int8
    arithmetic is slower than float32 matmuls."""
    if not force and not cpu_kernels.encoder_available():
        return model
    for layer in model.layers:
        for name in LINEARS:
            if name not in skip and isinstance(getattr(layer, name), nn.Linear):
                setattr(layer, name, Int8EncoderLinear(getattr(layer, name)))
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8EncoderLinear) for m in model.modules())


# ---- int16 mode ------------------------------------------------------------------------------------------------

PANEL16 = cpu_kernels.ENCODER16_PANEL  # output columns per packed int16 panel (checked against the C side)
INT32_MAX = 2**31 - 1


def int16_levels(k: int) -> int:
    """Quantisation levels L for both operands of a product over k inputs: the largest L with L * L * Kp <= 2^31 - 1
    (Kp = k rounded up to 2), so no int32 sum can overflow; at most 32767."""
    kp = -(-k // 2) * 2
    return min(32767, math.isqrt(INT32_MAX // kp))


def pack_weight_int16(q: torch.Tensor) -> torch.Tensor:
    """q [N, K] int16 -> panels [ceil(N/16), Kp/2, 16, 2] (Kp = K rounded up to 2; padding is zero)."""
    n, k = q.shape
    n_pad, k_pad = -(-n // PANEL16) * PANEL16, -(-k // 2) * 2
    full = torch.zeros((n_pad, k_pad), dtype=torch.int16)
    full[:n, :k] = q
    return full.view(n_pad // PANEL16, PANEL16, k_pad // 2, 2).permute(0, 2, 1, 3).contiguous()


def quantize_weight_int16(weight: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] float -> (packed panels of rint(w / s) clamped to +-levels, scales s [N] = max(max|w|, 1e-12)
    / levels): per output channel, in torch (the native `cpu_kernels.int16_pack_weight` does the same)."""
    weight = weight.float()
    scales = weight.abs().amax(1).clamp(min=1e-12) / levels  # [N]
    q = torch.round(weight / scales[:, None]).clamp(-levels, levels).to(torch.int16)  # [N, K]
    return pack_weight_int16(q), scales.contiguous()


def quantize_rows_int16(rows: torch.Tensor, padded_k: int, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [M, K] float32 -> (q [M, padded_k] int16 = rint(x * (levels / max|x|)), zeros past K; scales [M] =
    max|x| / levels): the kernels' rounding, on the native path when available, else in torch."""
    rows = rows.to(torch.float32, memory_format=torch.contiguous_format)
    if _native16(rows):
        return cpu_kernels.int16_quantize_rows(rows, padded_k, levels)
    amax = rows.abs().amax(1)  # [M]
    inv = torch.where(amax > 1e-30, levels / amax, torch.zeros_like(amax))  # float32, as in C (finite)
    q = torch.zeros((rows.shape[0], padded_k), dtype=torch.int16)
    q[:, : rows.shape[1]] = torch.round(rows * inv[:, None]).to(torch.int16)  # half to even, like rint
    return q, amax / levels


def _native16(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and cpu_kernels.encoder16_available()


def int16_available() -> bool:
    """Whether the int16 mode runs on native kernels here (else `Int16BertModel` would run its slow torch path)."""
    return cpu_kernels.encoder16_available()


def int16_preferred() -> bool:
    """Whether the int16 mode is the fast choice on this CPU: its kernels built with AVX2 on a CPU without
    AVX-512 (where float32 matrix products are also 256 bits wide, vpmaddwd does twice an FMA's products; with
    AVX-512 float32 is as wide as these kernels)."""
    return cpu_kernels.encoder16_simd() == "AVX2" and "avx512f" not in cpu_kernels.cpu_flags()


class Int16Linear(nn.Module):
    """y = x W^T + b with W per-output-channel int16 (|q| <= L) and x quantised per row to int16 (|q| <= L),
    L = int16_levels(in_features). `fused` also runs the row epilogue (GELU, residual, LayerNorm, quantising the
    result for the next product) on the native kernels, or the same arithmetic in torch without them."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float().cpu()  # [N, K]
        self.out_features, self.in_features = weight.shape
        self.padded_k = -(-self.in_features // 2) * 2
        self.levels = int16_levels(self.in_features)
        if _native16(weight):
            packed, scales = cpu_kernels.int16_pack_weight(weight, self.levels)
        else:
            packed, scales = quantize_weight_int16(weight, self.levels)
        self.register_buffer("packed", packed)  # [ceil(N/16), Kp/2, 16, 2]: the weights live only here (weight_q)
        self.register_buffer("w_scales", scales)  # [N]
        bias = None if linear.bias is None else linear.bias.detach().float().cpu().contiguous()
        self.register_buffer("bias", bias)

    @property
    def weight_q(self) -> torch.Tensor:
        """The int16 weights [N, K], unpacked from the panels."""
        n_pad = self.packed.shape[0] * PANEL16
        full = self.packed.permute(0, 2, 1, 3).reshape(n_pad, self.padded_k)
        return full[: self.out_features, : self.in_features]

    def quantize_input(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [M, in_features] float -> (int16 [M, padded_k], scales [M]) at this layer's levels."""
        return quantize_rows_int16(rows, self.padded_k, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K] -> [..., N]
        shape = x.shape[:-1]
        a, scales = self.quantize_input(x.reshape(-1, self.in_features))
        out, _, _ = self.fused(a, scales)
        return out.view(*shape, self.out_features).to(x.dtype)

    def fused(self, a: torch.Tensor, a_scales: torch.Tensor, *, gelu: bool = False,
              residual: torch.Tensor | None = None, norm: nn.LayerNorm | None = None, keep_float: bool = True,
              quantize_for: "Int16Linear | None" = None, head_major: tuple[int, int] | None = None,
              into: "Workspace | None" = None, names: tuple[str, str, str] = ("", "", ""),
              packed: "PackedRows | None" = None
              ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """a [M, padded_k] int16 with row scales [M] -> (y [M, N] float32 or None when not `keep_float`,
        y quantised for `quantize_for` (int16 [M, its padded_k], scales [M]) or None, None).

        y = product + bias, then GELU (erf form) if `gelu`, + residual [M, N], then `norm` (a LayerNorm).
        `head_major` = (seq, head_dim): y alone, as [M / seq, N / head_dim, seq, head_dim] (for attention); with
        `packed` (native kernels only), the M rows are the real tokens of `packed.batch` sequences, written to
        their positions in [batch, N / head_dim, seq, head_dim] (the padding positions are not written).
        `into` + `names`: on the native path, write y / q / scales into the workspace's buffers of those names."""
        if quantize_for is not None and quantize_for.in_features != self.out_features:
            raise ValueError(f"cannot feed {self.out_features} outputs into a layer of {quantize_for.in_features}")
        if head_major is not None:
            seq, head_dim = head_major
            if gelu or residual is not None or norm is not None or quantize_for is not None:
                raise ValueError("a head-major output takes no row epilogue")
            if packed is not None and not _native16(a):
                raise ValueError("packed rows need the native kernels")
            if _native16(a):
                sequences = packed.batch if packed is not None else a.shape[0] // seq
                out = None if into is None else into.get(names[0], (sequences, self.out_features // head_dim,
                                                                    seq, head_dim), torch.float32)
                return cpu_kernels.int16_linear(a, a_scales, self.packed, self.out_features, self.w_scales,
                                                self.bias, head_major=head_major, out=out,
                                                row_pos=None if packed is None else packed.positions,
                                                batch=None if packed is None else packed.batch)
            y = self.torch_product(a, a_scales)  # [M, N]
            y = y.view(-1, seq, self.out_features // head_dim, head_dim).transpose(1, 2).contiguous()
            return y, None, None
        norm_args = None
        if norm is not None:
            norm_args = (norm.weight.detach().float().contiguous(), norm.bias.detach().float().contiguous(),
                         float(norm.eps))
        if residual is not None:
            residual = residual.to(torch.float32, memory_format=torch.contiguous_format)
        target = None if quantize_for is None else (quantize_for.padded_k, quantize_for.levels)
        if _native16(a):
            m = a.shape[0]
            buffers = (None, None, None)
            if into is not None:
                buffers = (into.get(names[0], (m, self.out_features), torch.float32) if keep_float else None,
                           None if target is None else into.get(names[1], (m, target[0]), torch.int16),
                           None if target is None else into.get(names[2], (m,), torch.float32))
            return cpu_kernels.int16_linear(a, a_scales, self.packed, self.out_features, self.w_scales, self.bias,
                                            gelu=gelu, residual=residual, norm=norm_args,
                                            keep_float=keep_float or target is None, quantize=target,
                                            out=buffers[0], q_out=buffers[1], scales_out=buffers[2])
        y = self.torch_product(a, a_scales)
        if gelu:
            y = F.gelu(y)
        if residual is not None:
            y = y + residual
        if norm_args is not None:
            y = F.layer_norm(y, (self.out_features,), norm_args[0], norm_args[1], norm_args[2])
        q = scales = None
        if quantize_for is not None:
            q, scales = quantize_rows_int16(y, *target)
        return (y if keep_float or target is None else None), q, scales

    def torch_product(self, a: torch.Tensor, a_scales: torch.Tensor) -> torch.Tensor:
        """The product in torch: exact integer sums (float64) times the scales, plus the bias -> [M, N] float32."""
        sums = (a[:, : self.in_features].double() @ self.weight_q.double().T).float()  # [M, N]
        out = sums * (a_scales[:, None] * self.w_scales[None])
        return out if self.bias is None else out + self.bias


class Workspace:
    """Named buffers one forward pass reuses from block to block (fresh memory costs page faults: ~100 MB per
    block for a batch of 32 x 256 tokens)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The buffer called `name`, (re)allocated when it does not have this shape and dtype."""
        t = self.buffers.get(name)
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            t = self.buffers[name] = torch.empty(shape, dtype=dtype)
        return t


@dataclasses.dataclass
class PackedRows:
    """The real tokens of a right-padded batch as rows: `positions` [M] int64 = b * seq + t of each, in order;
    `lengths` [B] int32; `starts` [B] int64 = the row of each sequence's first token. The linears then run on the
    M real rows only (no work for padding), attention places them by these."""

    batch: int
    seq: int
    lengths: torch.Tensor
    starts: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def of(cls, lengths: torch.Tensor, seq: int) -> "PackedRows":
        lengths = lengths.to(torch.int32)
        counts = lengths.to(torch.int64)
        starts = torch.cumsum(counts, 0) - counts  # [B]
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(starts, counts)  # [M]: t of each row
        positions = torch.repeat_interleave(torch.arange(len(counts)) * seq, counts) + offsets  # [M]
        return cls(len(counts), seq, lengths.contiguous(), starts.contiguous(), positions.contiguous())


class Int16BertLayer(nn.Module):
    """`model.bert.BertLayer` with its four linears as `Int16Linear` and the epilogues fused into them."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.n_heads = layer.n_heads
        for name in LINEARS:
            setattr(self, name, Int16Linear(getattr(layer, name)))
        self.attn_norm = copy.deepcopy(layer.attn_norm).float().cpu()
        self.mlp_norm = copy.deepcopy(layer.mlp_norm).float().cpu()

    def forward(self, x: torch.Tensor, xq: torch.Tensor, xs: torch.Tensor, batch: int, seq: int,
                attn_mask: torch.Tensor | None, lengths: torch.Tensor | None, next_layer: "Int16BertLayer | None",
                work: Workspace | None = None, out_name: str = "x", packed: PackedRows | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        # x: [M, H] float rows (M = batch * seq), xq / xs: x quantised for qkv; attn_mask [B, 1, 1, T] bool or None;
        # lengths [B] int32 when the mask is right padding (real tokens first; the native attention takes it);
        # packed: the rows are only the real tokens (M = sum of lengths; native kernels only)
        # -> (the block's output rows [M, H], quantised for next_layer's qkv, or None, None for the last block)
        # work: buffers to reuse ("xq"/"xs" may hold xq/xs: they are reused once consumed; the output goes to
        # `out_name`, which must not hold x)
        hidden = x.shape[1]
        head_dim = hidden // self.n_heads
        qkv, _, _ = self.qkv.fused(xq, xs, head_major=(seq, head_dim), into=work, names=("qkv", "", ""),
                                   packed=packed)
        if packed is not None:  # qkv: [B, 3 * nh, T, hd], only the real positions written
            out = None if work is None else work.get("attn", (x.shape[0], hidden), torch.float32)
            attn = cpu_kernels.int16_attention(qkv, packed.lengths, out=out, starts=packed.starts)  # [M, H]
        elif lengths is not None and _native16(qkv):  # qkv: [B, 3 * nh, T, hd]
            out = None if work is None else work.get("attn", (batch * seq, hidden), torch.float32)
            attn = cpu_kernels.int16_attention(qkv, lengths, out=out)  # [M, H]
        else:
            q, k, v = qkv.view(batch, 3, self.n_heads, seq, head_dim).unbind(1)  # each [B, nh, T, hd]
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, nh, T, hd]
            attn = attn.transpose(1, 2).reshape(batch * seq, hidden)  # [M, H]
        aq, as_ = self.attn_out.quantize_input(attn)
        x, x_q, x_s = self.attn_out.fused(aq, as_, residual=x, norm=self.attn_norm, quantize_for=self.mlp_in,
                                          into=work, names=("x_attn", "xq", "xs"))
        _, h_q, h_s = self.mlp_in.fused(x_q, x_s, gelu=True, keep_float=False, quantize_for=self.mlp_out,
                                        into=work, names=("", "hq", "hs"))
        nxt = None if next_layer is None else next_layer.qkv
        return self.mlp_out.fused(h_q, h_s, residual=x, norm=self.mlp_norm, quantize_for=nxt, into=work,
                                  names=(out_name, "xq", "xs"))


class Int16BertModel(nn.Module):
    """A BertModel's int16 twin, built from a copy of its weights (the source model is never changed; its float32
    embedding tables are shared, read only): the same forward (input_ids, attention_mask, token_type_ids) -> last
    hidden states [B, T, H] float32, on CPU."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.config = model.config
        embeddings = model.embeddings
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in embeddings.parameters()):
            embeddings = copy.deepcopy(embeddings).float().cpu()
        # float32 tables on CPU are shared (47 MB for MiniLM's vocabulary), only read here, and deliberately not a
        # registered submodule: this model's .eval() / .to() never touch the source model's modules
        object.__setattr__(self, "embeddings", embeddings)
        self.layers = nn.ModuleList(Int16BertLayer(layer) for layer in model.layers)
        self.pack = True  # padded batches run on their real tokens only (False: every position, as before)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: [B, T]; attention_mask: [B, T] (1 = token, 0 = padding) -> hidden [B, T, H]
        # (right padding on the native kernels: only the real tokens are computed, the padding rows are zeros)
        batch, seq = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids).reshape(batch * seq, -1).contiguous()  # [B*T, H]
        mask, lengths, packed = None, torch.full((batch,), seq, dtype=torch.int32), None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
            lengths = attention_mask.sum(1).to(torch.int32)  # [B]
            prefix = torch.arange(seq, device=attention_mask.device)[None] < lengths[:, None]  # [B, T]
            if not torch.equal(prefix, attention_mask.bool()):
                lengths = None  # not right padding: torch's attention with the mask
            elif self.pack and _native16(x):
                packed = PackedRows.of(lengths, seq)
                x = x[packed.positions].contiguous()  # [M, H]: the real tokens only
        xq, xs = self.layers[0].qkv.quantize_input(x)
        work = Workspace()
        for i, layer in enumerate(self.layers):
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            x, xq, xs = layer(x, xq, xs, batch, seq, mask, lengths, nxt, work, out_name=f"x{i % 2}", packed=packed)
        if packed is not None:
            full = torch.zeros((batch * seq, x.shape[1]), dtype=x.dtype)
            full[packed.positions] = x
            x = full
        return x.view(batch, seq, -1)


def quantize_encoder_int16(model: nn.Module) -> Int16BertModel:
    """An `Int16BertModel` from a BertModel's current weights (a copy; `model` is untouched)."""
    return Int16BertModel(model).eval()


__all__ = ["Int8EncoderLinear", "pack_weight", "quantize_encoder", "is_quantized", "Int16Linear", "Int16BertLayer",
           "Int16BertModel", "PackedRows", "Workspace", "int16_levels", "pack_weight_int16", "quantize_rows_int16",
           "quantize_weight_int16", "quantize_encoder_int16", "int16_available", "int16_preferred"]
