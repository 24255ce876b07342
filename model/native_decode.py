"""A decode step through every decoder block in one native call (model/csrc/qmatmul.c: qm_decode_layers).

Eager PyTorch spends most of a CPU decode step of a small model on per-op overhead: ~40 small ops per block x
30 blocks, each a few microseconds, around matrix products that are themselves only ~0.4 ms per block. For
decoding (one new token per row) of a decoder whose linear layers are quantised for the native kernels
(model.quant with model.cpu_kernels available), `DecodePlan` describes each block (norm weights, the fused
q/k/v, output, gate/up and down projections, any LoRA side path) as C structs once, and a decode step is then:
embedding lookup -> one C call for all blocks (norms, projections, RoPE, KV-cache write, grouped-query
attention, SwiGLU, residuals) -> final norm and head in torch.

The math is the torch path's, op for op (float32 everywhere except the int8-quantised activations of the
matrix products, which both paths share); tests check the logits against the torch path. Anything the plan
does not cover (float weights, unfused projections, a static cache for torch.compile, a non-prefix pad mask,
kv_len other than pos + 1) falls back to the torch path, so behaviour never depends on this module.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import nn

from model import cpu_kernels
from model.layers import RMSNorm, rms_norm

_i32, _i64, _ptr, _f32 = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


class QLinear(ctypes.Structure):
    """Mirrors `qm_linear` in qmatmul.c."""

    _fields_ = [("kind", _i32), ("rank", _i32), ("n", _i64), ("k", _i64), ("w", _ptr), ("d", _ptr), ("m", _ptr),
                ("bias", _ptr), ("lora_a", _ptr), ("lora_b", _ptr)]


class QBlock(ctypes.Structure):
    """Mirrors `qm_block` in qmatmul.c."""

    _fields_ = [("attn_norm", _ptr), ("ffn_norm", _ptr), ("qkv", QLinear), ("o", QLinear), ("w13", QLinear),
                ("w2", QLinear), ("dim", _i64), ("n_heads", _i64), ("n_kv_heads", _i64), ("head_dim", _i64),
                ("ffn_dim", _i64), ("eps", _f32)]


def _f32_buffer(t: torch.Tensor | None) -> bool:
    return t is None or (t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu")


def _describe_linear(module: nn.Module, keep: list) -> QLinear | None:
    """The C description of a native-kernel linear layer (with a LoRA side path), or None if unsupported."""
    from model.quant import Int4Linear, Int8Linear, LowRankUpdate

    a = b = None
    if isinstance(module, LowRankUpdate):
        a, b, module = module.a, module.b, module.base
        if not (_f32_buffer(a) and _f32_buffer(b)):
            return None
    if not isinstance(module, (Int4Linear, Int8Linear)):
        return None
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    if not _f32_buffer(bias):
        return None
    desc = QLinear(rank=0 if a is None else int(a.shape[0]), n=module.out_features, k=module.in_features)
    if isinstance(module, Int4Linear) and module.native:
        desc.kind, desc.w, desc.d, desc.m = 4, module.weight_nibbles.data_ptr(), module.scales.data_ptr(), \
            module.mins.data_ptr()
        keep += [module.weight_nibbles, module.scales, module.mins]
    elif isinstance(module, Int8Linear) and module.block_scales is not None:
        desc.kind, desc.w, desc.d = 8, module.weight_int8.data_ptr(), module.block_scales.data_ptr()
        keep += [module.weight_int8, module.block_scales]
    else:
        return None
    if bias is not None:
        desc.bias = bias.data_ptr()
        keep.append(bias)
    if a is not None:
        desc.lora_a, desc.lora_b = a.data_ptr(), b.data_ptr()
        keep += [a, b]
    return desc


def _modules_of(layer: nn.Module) -> tuple:
    attention, mlp = layer.attention, layer.feed_forward
    return (layer.attention_norm, layer.ffn_norm, getattr(attention, "wqkv", None), attention.wo,
            getattr(mlp, "w13", None), getattr(mlp, "w2", None))


class DecodePlan:
    """C descriptions of a decoder's blocks for `qm_decode_layers`; `forward` runs one decode step."""

    def __init__(self, decoder: nn.Module | None, blocks: ctypes.Array | None, keep: list,
                 signature: tuple | None = None) -> None:
        self.blocks = blocks
        self.supported = blocks is not None
        self.keep = keep  # the tensors the C structs point into
        self.signature = self.signature_of(decoder) if signature is None else signature
        self._cache_key: tuple | None = None
        self._k_ptrs = self._v_ptrs = None
        self._kv_half = 0
        self._mask_key: tuple | None = None
        self._starts: torch.Tensor | None = None

    @classmethod
    def unsupported(cls, signature: tuple) -> "DecodePlan":
        """A plan that declines every step (remembered, so the check is not repeated for the same modules)."""
        return cls(None, None, [], signature)

    @staticmethod
    def signature_of(decoder: nn.Module) -> tuple:
        """Identity of the modules the plan points into (a swapped module invalidates the plan)."""
        return tuple(id(m) for layer in decoder.layers for m in _modules_of(layer))

    @classmethod
    def build(cls, decoder: nn.Module) -> "DecodePlan | None":
        """A plan for `decoder`, or None when some block is not covered (the torch path runs instead)."""
        from model.quant import FusedSwiGLU

        if not cpu_kernels.available():
            return None
        config = decoder.config
        if config.dim % cpu_kernels.BLOCK or config.head_dim % 2:
            return None
        keep: list = []
        blocks = (QBlock * len(decoder.layers))()
        for i, layer in enumerate(decoder.layers):
            attn_norm, ffn_norm, wqkv, wo, _, _ = _modules_of(layer)
            mlp = layer.feed_forward
            if wqkv is None or not isinstance(mlp, FusedSwiGLU):
                return None
            if type(attn_norm) is not RMSNorm or type(ffn_norm) is not RMSNorm or attn_norm.eps != ffn_norm.eps:
                return None
            norms = [attn_norm.weight.detach(), ffn_norm.weight.detach()]
            if not all(_f32_buffer(w) for w in norms):
                return None
            parts = [_describe_linear(m, keep) for m in (wqkv, wo, mlp.w13, mlp.w2)]
            if any(p is None for p in parts):
                return None
            keep += norms
            blocks[i] = QBlock(norms[0].data_ptr(), norms[1].data_ptr(), *parts, config.dim, config.n_heads,
                               config.n_kv_heads, config.head_dim, mlp.hidden, attn_norm.eps)
        return cls(decoder, blocks, keep)

    def _cache_pointers(self, decoder: nn.Module) -> bool:
        key = (decoder.cache_version, decoder.cache_len)
        if key != self._cache_key:
            caches = [layer.attention.kv_cache for layer in decoder.layers]
            if any(c is None for c in caches):
                return False
            dtypes = {c.k.dtype for c in caches} | {c.v.dtype for c in caches}
            half = dtypes == {torch.float16}
            if not (dtypes == {torch.float32} or (half and cpu_kernels.has_f16c())):
                return False
            if not all(c.k.is_contiguous() and c.v.is_contiguous() and c.k.device.type == "cpu" for c in caches):
                return False
            self._kv_half = int(half)
            n = len(caches)
            self._k_ptrs = (_ptr * n)(*[c.k.data_ptr() for c in caches])
            self._v_ptrs = (_ptr * n)(*[c.v.data_ptr() for c in caches])
            self._cache_key = key
        return True

    def _row_starts(self, pad_mask: torch.Tensor | None, kv_len: int) -> Any:
        """Slots each row starts attending at, from a left-padding mask [B, S] (None = 0); False when the mask
        is not a left-padding prefix (the torch path handles any mask)."""
        if pad_mask is None:
            return None
        key = (id(pad_mask), pad_mask.data_ptr())
        if key != self._mask_key:
            starts = (~pad_mask).sum(dim=1).to(torch.int64).contiguous()  # [B] leading False slots
            slots = torch.arange(pad_mask.shape[1])
            if not torch.equal(pad_mask, slots[None, :] >= starts[:, None]):
                return False
            self._mask_key, self._starts = key, starts
        if int(self._starts.max()) >= kv_len:
            return False
        return self._starts

    @torch.inference_mode()
    def forward(self, decoder: nn.Module, tokens: torch.Tensor, input_pos: torch.Tensor,
                pad_mask: torch.Tensor | None, kv_len: int | None) -> torch.Tensor | None:
        """Logits [B, 1, V] for tokens [B, 1] at cache slot input_pos [1] (every row) or input_pos [B, 1] (each
        row its own slot: continuous batching; rows 0..B-1 of a cache with at least B rows); None when this
        step is not covered."""
        batch = tokens.shape[0]
        per_row = input_pos.dim() == 2
        if per_row:
            if input_pos.shape != (batch, 1) or batch > decoder.cache_batch_size or pad_mask is not None:
                return None
            positions = input_pos.reshape(batch).to(torch.int64).contiguous()  # [B]
        else:
            if batch != decoder.cache_batch_size:
                return None
            positions = input_pos[:1].to(torch.int64).expand(batch).contiguous()  # [B], all equal
        top = int(positions.max())
        if (kv_len is not None and kv_len != top + 1) or top >= decoder.cache_len or int(positions.min()) < 0:
            return None
        if not self._cache_pointers(decoder):
            return None
        starts = self._row_starts(pad_mask, top + 1)
        if starts is False or decoder.rope_cos.dtype != torch.float32:
            return None
        x = decoder.tok_embeddings(tokens).reshape(batch, -1).to(torch.float32).contiguous()  # [B, D]
        cos, sin = decoder.rope_cos, decoder.rope_sin  # [max_seq_len, hd] float32, contiguous
        rc = cpu_kernels.library().qm_decode_layers(
            self.blocks, len(self.blocks), x.data_ptr(), batch, positions.data_ptr(), cos.data_ptr(), sin.data_ptr(),
            None if starts is None else starts.data_ptr(), self._k_ptrs, self._v_ptrs, decoder.cache_len,
            self._kv_half, torch.get_num_threads())
        if rc != 0:
            raise RuntimeError("the native decode step failed (out of memory?); set ASSISTANT_CPU_KERNELS=0 to "
                               "use the torch path")
        return decoder.output(rms_norm(decoder.norm, x.view(batch, 1, -1)))  # [B, 1, V]
