"""int8 mode for the sentence encoder: BertModel's Linear layers as int8 x int8 -> int32 matrix products.

    x [.., K] float ─► per-row (token) symmetric int8, stored + 128 ─► native GEMM (model/csrc/encoder_int8.c,
    AVX512-VNNI / AVX-VNNI / AVX2) against per-output-channel symmetric int8 weights ─► dequantise + bias

`quantize_encoder(model)` swaps the chosen layers in place (all four linears of every block by default; pass
`skip=("mlp_out",)` to keep a layer in float) and leaves the model in float when the native kernels are
unavailable (no compiler, ASSISTANT_CPU_KERNELS=0). `Int8EncoderLinear` also has a pure-torch path of the same
arithmetic (used if the kernels vanish after quantisation, and by the tests).
"""

from __future__ import annotations

import torch
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


__all__ = ["Int8EncoderLinear", "pack_weight", "quantize_encoder", "is_quantized"]
