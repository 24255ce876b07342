"""Weight-only int8 and int4 quantisation of a decoder's linear layers.

Each weight W [out, in] becomes int8 values q and one float scale per output channel (symmetric):
    scale[o] = max_i |W[o, i]| / 127,   q[o, i] = round(W[o, i] / scale[o]),   W ~ q * scale[:, None]
Activations stay in floating point. The matmul:
- CPU, one or a few rows (decode): `torch._weight_int8pack_mm` with bf16 activations (reads 1 byte per
  weight instead of 4: decode is memory-bound, so this is the fast path);
- CPU, many rows (prefill): dequantise to the activation dtype and use the float matmul (compute-bound);
- CUDA: `F.linear(x, q.to(x.dtype)) * scale` (under torch.compile the cast fuses into the matmul).
The output head is quantised too (as a separate int8 copy when it is tied to the embedding; the embedding
lookup keeps its float table).

int4 (asymmetric, groups of 32 input columns, the layout of GGUF's Q4_1 blocks):
    scale[o, g] = (max - min) / 15 over the group,  q = round((W - min) / scale) in 0..15,  W ~ q * scale + min
Re-quantising weights that were dequantised from Q4_1 gives back the original blocks (each block's min and
max are exactly its q = 0 and q = 15 values), so on the default GGUF model int4 costs only the bf16 rounding
of the scales. The matmul:
- CPU, one or a few rows (decode): `torch.ops.aten._weight_int4pack_mm_for_cpu` with bf16 activations; it
  computes W = (q - 8) * scale + zero per group, so zero = min + 8 * scale;
- otherwise (prefill, CUDA, or a torch without that kernel): dequantise to the activation dtype and use the
  float matmul.
With int4 the output head is int8 in blocks of 32 (Q8_0's layout: the tied head of the default GGUF is its
Q8_0 token embedding, which this reproduces exactly) when the native kernels are available, else float16
(HalfLinear); the head is where quantisation costs most. Argmax agreement vs fp32 on a 512-token text through
torch's decode kernels: int4 body + int4 head 85%, + per-channel int8 head 96%, + fp32 head 99%; a float16
head is as fast as int8 there (memory-bound).

Native CPU kernels (model.cpu_kernels, built at first use with the system C compiler): for decode's few rows,
both int8 and int4 layers first use an integer dot-product kernel on int8-quantised activations (blocks of
32), 1.5-2x faster per matrix than torch's kernels above (and model.native_decode runs a whole decode step
on them); without a compiler the torch kernels run instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import cpu_kernels
from model.errors import SamplingParamsError

SUPPORTED = ("int8", "int4")
INT4_GROUP_SIZE = 32
# Rows at or below which the CPU int8 kernel is used; above it the weight is dequantised (prefill).
CPU_INT8_KERNEL_MAX_ROWS = 16
# Rows at or below which the CPU int4 kernel is used; above, dequantising + the float matmul is faster (the
# kernel is compute-bound: no bf16 units on the AVX2 CPU this was tuned on).
CPU_INT4_KERNEL_MAX_ROWS = 24
# Rows at or below which HalfLinear multiplies in float16 on CPU.
CPU_HALF_MAX_ROWS = 24
# Rows at or below which the native CPU kernels (model.cpu_kernels) are used, when available.
NATIVE_MAX_ROWS = 16


def native_kernels_available(tensor: torch.Tensor) -> bool:
    """Whether the native CPU kernels can multiply by `tensor`'s layer (CPU, kernels built and enabled)."""
    return tensor.device.type == "cpu" and cpu_kernels.available()


def quantize_weight_int8(weight: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (q [out, in] int8, scales), symmetric: scale = max |w| / 127 per output channel
    (group_size None: scales [out]) or per block of `group_size` inputs (scales [out, in/g], GGUF Q8_0's
    layout with 32)."""
    weight = weight.detach().float()
    out_features, in_features = weight.shape
    if group_size is not None and in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of the int8 group size {group_size}")
    groups = weight.reshape(out_features, -1, group_size or in_features)  # [out, G, g]; per channel: G = 1
    scales = groups.abs().amax(dim=-1).clamp(min=1e-12) / 127.0  # [out, G]
    q = torch.round(groups / scales[..., None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(out_features, in_features), scales if group_size is not None else scales[:, 0]


class _FloatWeightCache:
    """For quantised layers: a float copy of the weight for many-row products (prefill), kept when
    `keep_float` is set (`keep_float_weights`) instead of being dequantised again at every call."""

    keep_float = False
    _float_weight: torch.Tensor | None = None

    def float_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dequantised weight [out, in] as `dtype` (the kept copy when there is one)."""
        cached = self._float_weight
        if cached is not None and cached.dtype == dtype:
            return cached
        weight = self.dequantized_weight(dtype)
        self._float_weight = weight if self.keep_float else None
        return weight


def keep_float_weights(model: nn.Module, enabled: bool = True) -> int:
    """Keep (or drop) float copies of the quantised weights of `model`'s blocks (`model.layers`, not the head):
    many-row products (prefill) then skip dequantising every weight at every call — ~0.05-0.1 s per prefill of
    the default 135M model on 2 cores — for 4 bytes per weight of memory. Returns the bytes the copies take
    (once made: at the first prefill)."""
    total = 0
    for module in getattr(model, "layers", model).modules():
        if isinstance(module, _FloatWeightCache):
            module.keep_float = enabled
            if not enabled:
                module._float_weight = None
            total += module.out_features * module.in_features * 4 if enabled else 0
    return total


class Int8Linear(_FloatWeightCache, nn.Module):
    """A linear layer with int8 weights and float scales per output channel or per block of inputs
    (weight-only quantisation).

    Buffers: `weight_int8` [out, in], `scales` [out] (per channel) or [out, in/g] (blocks of g), and for the
    native kernel `block_scales` [out, in/32] (per-channel scales repeated); `scales_bf16` for torch's kernel
    (per channel only).
    """

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group_size = None if scales.dim() == 1 else self.in_features // scales.shape[1]
        self.register_buffer("weight_int8", q)  # [out, in] int8
        self.register_buffer("scales", scales.float().contiguous())  # [out] or [out, in/g]
        self.register_buffer("scales_bf16", scales.to(torch.bfloat16) if scales.dim() == 1 else None)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.block_scales: torch.Tensor | None = None
        self._prepare_native()

    def _prepare_native(self) -> None:
        self.block_scales = None
        if self.in_features % cpu_kernels.BLOCK or not native_kernels_available(self.weight_int8):
            return
        if self.group_size is None:
            self.block_scales = self.scales[:, None].expand(-1, self.in_features // cpu_kernels.BLOCK).contiguous()
        elif self.group_size == cpu_kernels.BLOCK:
            self.block_scales = self.scales

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None) -> "Int8Linear":
        q, scales = quantize_weight_int8(linear.weight, group_size)
        return cls(q, scales, linear.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer computes with, [out, in]."""
        if self.group_size is None:
            return self.weight_int8.to(dtype) * self.scales.to(dtype)[:, None]
        groups = self.weight_int8.view(self.out_features, -1, self.group_size).to(dtype)  # [out, G, g]
        return (groups * self.scales.to(dtype)[..., None]).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        shape = x.shape
        rows = x.reshape(-1, self.in_features)  # [M, in]
        if self.block_scales is not None and rows.shape[0] <= NATIVE_MAX_ROWS:
            out = cpu_kernels.q8_matmul(rows, self.weight_int8, self.block_scales).to(x.dtype)  # [M, out]
        elif x.device.type == "cpu" and self.scales_bf16 is not None and rows.shape[0] <= CPU_INT8_KERNEL_MAX_ROWS:
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16).contiguous(), self.weight_int8,
                                            self.scales_bf16).to(x.dtype)  # [M, out]
        elif x.device.type == "cpu":
            out = F.linear(rows, self.float_weight(x.dtype))
        elif self.group_size is None:
            out = F.linear(rows, self.weight_int8.to(x.dtype)) * self.scales.to(x.dtype)
        else:
            out = F.linear(rows, self.dequantized_weight(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):  # .to(device): the native kernel's scales follow (or are dropped)
        super()._apply(fn, recurse)
        self._float_weight = None
        self._prepare_native()
        return self

    def extra_repr(self) -> str:
        scales = "per channel" if self.group_size is None else f"per block of {self.group_size}"
        kernel = ", native kernel" if self.block_scales is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only, {scales}{kernel}"


def quantize_weight_int4(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [out, in] float -> (q [out, in] uint8 in 0..15, scales [out, in/g], mins [out, in/g] float32).

    Asymmetric min/max quantisation per group of `group_size` consecutive input columns: W ~ q * scale + min.
    """
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of the int4 group size {group_size}")
    groups = weight.detach().float().reshape(out_features, in_features // group_size, group_size)  # [O, G, g]
    mins = groups.amin(dim=-1)  # [O, G]
    scales = (groups.amax(dim=-1) - mins) / 15.0  # [O, G]
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # constant groups: q = 0, W = min
    q = torch.round((groups - mins[..., None]) / safe[..., None]).clamp(0, 15).to(torch.uint8)  # [O, G, g]
    return q.reshape(out_features, in_features), scales, mins


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q [out, in] uint8 in 0..15 -> [out, in/2] uint8: column 2j in the low nibble, 2j+1 in the high one."""
    return q[:, 0::2] | (q[:, 1::2] << 4)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `_pack_nibbles`: [out, in/2] uint8 -> [out, in] uint8."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)  # [O, in/2, 2] -> [O, in]


def cpu_int4_kernel_available() -> bool:
    """Whether this torch build has the CPU int4 weight-only matmul (and its packing op)."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


class HalfLinear(nn.Module):
    """A linear layer with a float16 weight (the int4 mode's output head: half the bytes of float32, and
    exact to ~5e-4 relative, where int8 per-channel costs the most argmax agreement of any layer)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_fp16", weight.detach().to(torch.float16).contiguous())  # [out, in]
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "HalfLinear":
        return cls(linear.weight, linear.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as `dtype`, [out, in]."""
        return self.weight_fp16.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]. Few rows: a float16 matmul (memory-bound: reads half the bytes);
        # many rows (scoring a whole text): upcast the weight, the float matmul is faster there.
        shape = x.shape
        rows = x.reshape(-1, self.in_features)  # [M, in]
        if rows.shape[0] <= CPU_HALF_MAX_ROWS or x.device.type != "cpu":
            out = F.linear(rows.to(torch.float16), self.weight_fp16).to(x.dtype)  # [M, out]
        else:
            out = F.linear(rows, self.dequantized_weight(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float16 weight"


_int4_mm_cpu = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)


class Int4Linear(_FloatWeightCache, nn.Module):
    """A linear layer with 4-bit weights, one scale and min per group of 32 inputs (weight-only quantisation).

    Buffers: `weight_nibbles` [out, in/2] uint8 (the portable copy, used to dequantise), `scales` and `mins`
    [out, in/g] float32, and on CPU with the int4 kernel `weight_int4pack` (the kernel's own layout) and
    `scales_and_zeros` [in/g, out, 2] bf16.
    """

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, bias: torch.Tensor | None,
                 group_size: int = INT4_GROUP_SIZE) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group_size = group_size
        self.register_buffer("weight_nibbles", _pack_nibbles(q.to(torch.uint8)))  # [out, in/2]
        self.register_buffer("scales", scales.float().contiguous())  # [out, in/g]
        self.register_buffer("mins", mins.float().contiguous())  # [out, in/g]
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.weight_int4pack: torch.Tensor | None = None
        self.scales_and_zeros: torch.Tensor | None = None
        self.native = native_kernels_available(self.weight_nibbles)  # model.cpu_kernels on the nibbles as stored
        if q.device.type == "cpu" and not self.native and cpu_int4_kernel_available():
            self._pack_for_cpu_kernel(q)

    def _pack_for_cpu_kernel(self, q: torch.Tensor) -> None:
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        except RuntimeError:  # shape or build not supported: the dequantised path still works
            return
        zeros = self.mins + 8.0 * self.scales  # the kernel computes (q - 8) * scale + zero
        self.scales_and_zeros = torch.stack([self.scales.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous()
        self.weight_int4pack = packed  # [in/g, out, 2] above; packed: [out, in/2] uint8 (kernel layout)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = INT4_GROUP_SIZE) -> "Int4Linear":
        """Quantise `linear`'s weight (see `quantize_weight_int4`); the bias stays float."""
        q, scales, mins = quantize_weight_int4(linear.weight, group_size)
        device = linear.weight.device
        return cls(q.to(device), scales.to(device), mins.to(device), linear.bias, group_size)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight this layer's dequantised path computes with, [out, in]."""
        packed = self.weight_nibbles  # [out, in/2]
        weight = torch.empty(*packed.shape, 2, dtype=dtype, device=packed.device)  # [out, in/2, 2]
        weight[..., 0] = packed & 15  # even columns (written straight into the float buffer: no unpacked copy)
        weight[..., 1] = packed >> 4  # odd columns
        groups = weight.view(self.out_features, -1, self.group_size)  # [out, in/g, g]
        groups.mul_(self.scales.to(dtype)[..., None]).add_(self.mins.to(dtype)[..., None])
        return weight.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        shape = x.shape
        rows = x.reshape(-1, self.in_features)  # [M, in]
        if self.native and rows.shape[0] <= NATIVE_MAX_ROWS:
            out = cpu_kernels.q4_matmul(rows, self.weight_nibbles, self.scales, self.mins).to(x.dtype)  # [M, out]
        elif self.weight_int4pack is not None and rows.shape[0] <= CPU_INT4_KERNEL_MAX_ROWS:  # CPU only
            out = _int4_mm_cpu(rows.to(torch.bfloat16, memory_format=torch.contiguous_format),
                               self.weight_int4pack, self.group_size, self.scales_and_zeros).to(x.dtype)  # [M, out]
        else:
            out = F.linear(rows, self.float_weight(x.dtype))
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):  # .to(device): re-pack (or drop) the CPU kernel copy
        super()._apply(fn, recurse)
        self._float_weight = None
        self.native = native_kernels_available(self.weight_nibbles)
        if self.weight_nibbles.device.type != "cpu" or self.native:
            self.weight_int4pack = self.scales_and_zeros = None
        elif self.weight_int4pack is None and cpu_int4_kernel_available():
            self._pack_for_cpu_kernel(_unpack_nibbles(self.weight_nibbles))
        return self

    def extra_repr(self) -> str:
        kernel = ("native kernel" if self.native else
                  "CPU int4 kernel" if self.weight_int4pack is not None else "dequantised matmul")
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 weight-only, "
                f"group {self.group_size}, {kernel}")


class FusedSwiGLU(nn.Module):
    """SwiGLU with its gate and up projections stacked into one matmul: w2(silu(gate) * up), [gate; up] = w13 x."""

    def __init__(self, w13: nn.Module, w2: nn.Module, hidden: int) -> None:
        super().__init__()
        self.w13, self.w2, self.hidden = w13, w2, hidden

    @classmethod
    def from_swiglu(cls, mlp: nn.Module) -> "FusedSwiGLU":
        """Build from a model.layers.SwiGLU (w1 = gate, w3 = up, w2 = down); the weights are copied."""
        weight = torch.cat([mlp.w1.weight.detach(), mlp.w3.weight.detach()], dim=0)  # [2 * hidden, D]
        w13 = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            w13.weight.copy_(weight)
        return cls(w13.requires_grad_(False), mlp.w2, mlp.w1.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split([self.hidden, self.hidden], dim=-1)  # [..., hidden] each
        return self.w2(F.silu(gate) * up)


def fuse_projections(model: nn.Module) -> nn.Module:
    """Inference only: stack each attention's q/k/v and each SwiGLU's gate/up projections into one matmul.

    Same outputs, fewer (larger) matmuls per token. Module and state-dict names change (`attention.wqkv`,
    `feed_forward.w13`), so fuse after loading and after merging any LoRA adapter. Returns the model.
    """
    from model.layers import SwiGLU

    def fusable(module: nn.Module, names: tuple[str, ...]) -> bool:  # plain or merged-LoRA linear layers
        layers = [getattr(module, n, None) for n in names]
        return all(isinstance(m, nn.Linear) and getattr(m, "merged", True) is not False for m in layers)

    for module in list(model.modules()):
        if hasattr(module, "fuse_qkv") and fusable(module, ("wq", "wk", "wv")):
            module.fuse_qkv()
    swiglus = [(name, m) for name, m in model.named_modules()
               if isinstance(m, SwiGLU) and fusable(m, ("w1", "w2", "w3"))]
    for name, mlp in swiglus:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, FusedSwiGLU.from_swiglu(mlp))
    return model


class LowRankUpdate(nn.Module):
    """A (quantised) linear layer plus an unmerged low-rank update: y = base(x) + (x A^T) B^T.

    Keeps a LoRA adapter's update exact beside int4/int8 base weights (as QLoRA does): merged into the weights
    and re-quantised, the update is smaller than one 4-bit step and would be rounded away.
    a: [R, in]; b: [out, R] with the adapter's scaling folded in. Costs two rank-R matmuls per call.
    """

    def __init__(self, base: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("a", a.float().contiguous())
        self.register_buffer("b", b.float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # [..., out]
        update = F.linear(F.linear(x.to(self.a.dtype), self.a), self.b)  # [..., R] -> [..., out]
        return out + update.to(out.dtype)


def _detach_lora(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Swap each unmerged LoRA layer for a plain nn.Linear holding its base weights; return its factors by name.

    Factors are (A [R, in], scaling * B [out, R]). Merged LoRA layers are left alone (they are plain linear
    layers with updated weights).
    """
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in list(model.named_modules()):
        if not (hasattr(module, "lora_a") and getattr(module, "merged", True) is False):
            continue
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device=module.weight.device, dtype=module.weight.dtype)
        plain.weight, plain.bias = module.weight, module.bias  # shared, not copied
        factors[name] = (module.lora_a.detach().float(), module.lora_b.detach().float() * module.scaling)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain.requires_grad_(False))
    return factors


def _stack_factors(parts: list[tuple[str, int]], factors: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Factors of a fused layer from its parts' (name, out_features): A's stacked, B block-diagonal.

    Parts without an adapter contribute zero rows to B. Pops the parts' entries from `factors`.
    """
    present = [name for name, _ in parts if name in factors]
    if not present:
        return None
    a = torch.cat([factors[name][0] for name in present])  # [R_total, in]
    b = a.new_zeros(sum(out for _, out in parts), a.shape[0])  # [out_total, R_total]
    row = col = 0
    for name, out in parts:
        if name in factors:
            _, part_b = factors.pop(name)
            b[row : row + out, col : col + part_b.shape[1]] = part_b
            col += part_b.shape[1]
        row += out
    return a, b


def quantize_decoder(model: nn.Module, mode: str = "int8", fuse: bool = True) -> nn.Module:
    """Replace every nn.Linear in `model` (attention, MLP, output head) by an Int8Linear or Int4Linear, in place.

    mode: "int8" (per-channel symmetric) or "int4" (groups of 32, asymmetric; the head is int8 in blocks of 32
    with the native CPU kernels, else float16).
    fuse: first stack q/k/v and gate/up projections (`fuse_projections`: fewer kernel calls per token; the
    quantised weights are the same, since every row is quantised on its own).
    Unmerged LoRA layers (model.lora.load_adapter(..., merge=False)) keep their update as an exact low-rank
    side path (`LowRankUpdate`) beside the quantised base weights; merged ones are quantised as they are.
    Returns the model.
    """
    if mode not in SUPPORTED:
        raise SamplingParamsError(f"quantize={mode!r} is not supported; use one of {SUPPORTED} or None")
    factors = _detach_lora(model)
    if fuse:
        from model.layers import SwiGLU

        for name, module in model.named_modules():
            prefix = f"{name}." if name else ""
            if hasattr(module, "fuse_qkv") and getattr(module, "wqkv", None) is None:
                parts = [(f"{prefix}{p}", getattr(module, p).out_features) for p in ("wq", "wk", "wv")]
                if (stacked := _stack_factors(parts, factors)) is not None:
                    factors[f"{prefix}wqkv"] = stacked
            elif isinstance(module, SwiGLU):
                parts = [(f"{prefix}{p}", getattr(module, p).out_features) for p in ("w1", "w3")]
                if (stacked := _stack_factors(parts, factors)) is not None:
                    factors[f"{prefix}w13"] = stacked
        fuse_projections(model)
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if mode == "int4" and name == "output" and not (
                module.in_features % cpu_kernels.BLOCK == 0 and native_kernels_available(module.weight)):
            replacement: nn.Module = HalfLinear.from_linear(module)
        elif mode == "int4" and name == "output":  # int8 in blocks of 32: exact for a GGUF's Q8_0 head
            replacement = Int8Linear.from_linear(module, group_size=cpu_kernels.BLOCK)
        elif mode == "int4" and module.in_features % INT4_GROUP_SIZE == 0:
            replacement = Int4Linear.from_linear(module)
        else:  # int8, and with int4 the layers that are not a multiple of 32 wide
            replacement = Int8Linear.from_linear(module).to(module.weight.device)
        if name in factors:
            a, b = factors.pop(name)
            replacement = LowRankUpdate(replacement, a.to(module.weight.device), b.to(module.weight.device))
        setattr(parent, child, replacement)
    if factors:  # a LoRA layer we did not find again after fusing: a bug, never silently drop an adapter
        raise RuntimeError(f"LoRA factors of {sorted(factors)[:3]} were not attached after quantisation")
    return model
