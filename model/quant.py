"""Weight-only int8 quantisation of a decoder's linear layers.

Each weight W [out, in] becomes int8 values q and one float scale per output channel (symmetric):
    scale[o] = max_i |W[o, i]| / 127,   q[o, i] = round(W[o, i] / scale[o]),   W ~ q * scale[:, None]
Activations stay in floating point. The matmul:
- CPU, one or a few rows (decode): `torch._weight_int8pack_mm` with bf16 activations (reads 1 byte per
  weight instead of 4: decode is memory-bound, so this is the fast path);
- CPU, many rows (prefill): dequantise to the activation dtype and use the float matmul (compute-bound);
- CUDA: `F.linear(x, q.to(x.dtype)) * scale` (under torch.compile the cast fuses into the matmul).
The output head is quantised too (as a separate int8 copy when it is tied to the embedding; the embedding
lookup keeps its float table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.errors import SamplingParamsError

SUPPORTED = ("int8",)
# Rows at or below which the CPU int8 kernel is used; above it the weight is dequantised (prefill).
CPU_INT8_KERNEL_MAX_ROWS = 16


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (q [out, in] int8, scales [out] float32), symmetric per output channel."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
    q = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)  # [out, in]
    return q, scales


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and per-output-channel float scales (weight-only quantisation)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_int8", q)  # [out, in] int8
        self.register_buffer("scales", scales.float())  # [out]
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16))  # the CPU kernel wants bf16 scales
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scales = quantize_weight_int8(linear.weight)
        return cls(q, scales, linear.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer computes with, [out, in]."""
        return self.weight_int8.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        shape = x.shape
        rows = x.reshape(-1, self.in_features)  # [M, in]
        if x.device.type == "cpu" and rows.shape[0] <= CPU_INT8_KERNEL_MAX_ROWS:
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16).contiguous(), self.weight_int8,
                                            self.scales_bf16).to(x.dtype)  # [M, out]
        elif x.device.type == "cpu":
            out = F.linear(rows, self.dequantized_weight(x.dtype))
        else:
            out = F.linear(rows, self.weight_int8.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_decoder(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Replace every nn.Linear in `model` (attention, MLP, output head) by an Int8Linear, in place.

    LoRA layers must be merged first (model.lora.load_adapter merges by default). Returns the model.
    """
    if mode not in SUPPORTED:
        raise SamplingParamsError(f"quantize={mode!r} is not supported; use one of {SUPPORTED} or None")
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        if getattr(module, "merged", True) is False and hasattr(module, "lora_a"):
            raise SamplingParamsError(f"{name} has an unmerged LoRA adapter; merge it before quantising")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_linear(module).to(module.weight.device))
    return model
