"""A Llama-family decoder-only transformer with a preallocated KV cache.

    tokens ─► embedding ─► n x [ x + Attn(RMSNorm(x)) ; x + SwiGLU(RMSNorm(x)) ] ─► RMSNorm ─► head ─► logits

Attention is grouped-query (n_kv_heads <= n_heads) with rotary position embedding (half-split pairs, the
Hugging Face convention), optional qkv bias (Qwen2), and a tied or separate output head.

The KV cache is a buffer [B, n_kv_heads, S, head_dim] per layer; `forward(tokens, input_pos)` writes the new
keys/values at the cache slots `input_pos` and attends to every slot <= the query's slot. Prefill (T tokens)
and one-token decode (T = 1) are the same code path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import DecoderConfig
from model.layers import RMSNorm, SwiGLU, apply_rope, rms_norm, rope_tables


# Prefill attention runs in chunks of query rows at fixed slot boundaries (`prefill_chunk_end`): 8 slots wide
# up to slot 64 (where shared beginnings like a chat template's system message end: fine-grained prefix reuse),
# 32 wide after it (fewer, larger attention calls for long prompts). A chunk's attention is then the same
# computation whatever else is prefilled beside it, and whether the slots before it were computed now or copied
# from a prefix cache (model.prefix_cache keeps blocks with the same boundaries).
PREFILL_CHUNK = 8
PREFILL_FINE_SLOTS = 64
PREFILL_COARSE_CHUNK = 32


def prefill_chunk_end(slot: int) -> int:
    """The end (exclusive) of the prefill chunk that contains cache slot `slot`."""
    if slot < PREFILL_FINE_SLOTS:
        return (slot // PREFILL_CHUNK + 1) * PREFILL_CHUNK
    return (slot // PREFILL_COARSE_CHUNK + 1) * PREFILL_COARSE_CHUNK


def prefill_boundaries(length: int) -> list[int]:
    """The chunk boundaries in (0, length]: where cached prefix blocks may end."""
    ends, slot = [], 0
    while (slot := prefill_chunk_end(slot)) <= length:
        ends.append(slot)
    return ends


# Rows at least in a packed prefill's matrix products (padding rows are computed and dropped): with few rows a
# BLAS may take a small-matrix path (MKL: below 12 rows), and model.quant's layers their native kernels (up to
# 16 rows), whose per-row rounding differs from the many-row path's.
PREFILL_MIN_ROWS = 32
# Rows in each call of a packed prefill's output head (the last token of each sequence; zero rows pad a group).
PREFILL_HEAD_ROWS = 16


@dataclass(frozen=True)
class PrefillSegment:
    """Tokens to prefill into one KV-cache row: `tokens` at slots start, start + 1, ... (slots before `start`
    already hold that row's earlier tokens, e.g. a prefix copied from model.prefix_cache). `start` is 0 or a
    chunk boundary (`prefill_boundaries`)."""

    row: int
    tokens: Sequence[int]
    start: int = 0


class KVCache(nn.Module):
    """Preallocated keys and values for one layer: [B, n_kv_heads, max_seq_len, head_dim] each."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 device: torch.device | None, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # input_pos: [T] (every row) or [B, T] (each row its own slots; rows 0..B-1 of the cache);
        # k, v: [B, n_kv, T, hd] -> the cache [B, n_kv, S, hd]
        if input_pos.dim() == 2:
            batch = k.shape[0]
            rows = torch.arange(batch, device=input_pos.device)[:, None]  # [B, 1]
            self.k[rows, :, input_pos] = k.transpose(1, 2).to(self.k.dtype)  # [B, T, n_kv, hd] into [B, :, T]
            self.v[rows, :, input_pos] = v.transpose(1, 2).to(self.v.dtype)
            return self.k[:batch], self.v[:batch]
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class Attention(nn.Module):
    """Grouped-query self-attention with rotary embedding."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=config.qkv_bias)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=config.qkv_bias)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        self.wqkv: nn.Module | None = None  # set by fuse_qkv() (inference): one matmul instead of three
        self.kv_cache: KVCache | None = None

    def fuse_qkv(self) -> nn.Linear:
        """Replace wq, wk, wv by one linear layer `wqkv` (rows stacked q, k, v); returns it.

        For inference (fewer, larger matmuls per token, e.g. before weight-only quantisation): the result is
        the same, but the separate wq/wk/wv modules (and their state-dict names) are gone.
        """
        if self.wqkv is None:
            layers = (self.wq, self.wk, self.wv)
            weight = torch.cat([layer.weight.detach() for layer in layers], dim=0)  # [(nh + 2 nkv) * hd, D]
            fused = nn.Linear(weight.shape[1], weight.shape[0], bias=self.wq.bias is not None,
                              device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                fused.weight.copy_(weight)
                if fused.bias is not None:
                    fused.bias.copy_(torch.cat([layer.bias.detach() for layer in layers]))
            fused.requires_grad_(False)
            self.wqkv = fused
            del self.wq, self.wk, self.wv
        return self.wqkv

    def _project(self, x: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, nh, T, hd], k and v [B, nkv, T, hd] for x [B, T, D], q and k rotated by cos/sin [T, hd] (or
        [B, T, hd] when each row has its own positions)."""
        batch, seq, _ = x.shape
        if self.wqkv is not None:  # one matmul, and one rotation for q and k together
            qkv = self.wqkv(x).view(batch, seq, self.n_heads + 2 * self.n_kv_heads, self.head_dim)  # [B, T, H', hd]
            qk = apply_rope(qkv[:, :, : self.n_heads + self.n_kv_heads], cos.unsqueeze(-2), sin.unsqueeze(-2))  # [B, T, nh+nkv, hd]
            q = qk[:, :, : self.n_heads].transpose(1, 2)  # [B, nh, T, hd]
            k = qk[:, :, self.n_heads :].transpose(1, 2)  # [B, nkv, T, hd]
            v = qkv[:, :, self.n_heads + self.n_kv_heads :].transpose(1, 2)  # [B, nkv, T, hd]
            return q, k, v
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)  # [B, nh, T, hd]
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, nkv, T, hd]
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, nkv, T, hd]
        if cos.dim() == 3:  # per-row positions: [B, 1, T, hd] against [B, heads, T, hd]
            cos, sin = cos[:, None], sin[:, None]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None,
        mask: torch.Tensor | None,
        kv_len: int | None,
    ) -> torch.Tensor:
        # x: [B, T, D]; cos/sin: [T, hd]; mask: [B or 1, 1, T, S'] bool or None (None = causal over T)
        batch, seq, _ = x.shape
        q, k, v = self._project(x, cos, sin)
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("forward with input_pos needs a KV cache: call setup_cache() first")
            k, v = self.kv_cache.update(input_pos, k, v)  # [B, nkv, S, hd]
            if kv_len is not None:  # attend only over the filled prefix of the cache
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]
            if k.dtype != q.dtype:  # a float16 cache (the native CPU decode's) under float32 activations
                k, v = k.to(q.dtype), v.to(q.dtype)
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)  # [B, T, nh*hd]
        return self.wo(out)

    def forward_chunks(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       segments: Sequence[tuple[int, int, int, int]], chunks: Sequence[tuple[int, int, int, int]],
                       masks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Packed prefill (Decoder.prefill_segments): x [1, N, D] rows of several sequences; segments (cache row,
        first packed row, first slot, length) say where each one's keys/values go in the cache; each chunk
        (cache row, first packed row, first slot, length) attends to its row's slots [0, slot + length) under
        its mask [1, 1, length, slot + length] (causal). Chunks come in packed-row order; padding rows after them
        get zero attention output."""
        q, k, v = self._project(x, cos, sin)  # [1, nh, N, hd], [1, nkv, N, hd] x 2
        cache = self.kv_cache
        if cache is None:
            raise RuntimeError("prefill needs a KV cache: call setup_cache() first")
        keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for row, first, slot, length in segments:  # the whole segment's keys/values into its cache row
            cache.k[row, :, slot : slot + length] = k[0, :, first : first + length]
            cache.v[row, :, slot : slot + length] = v[0, :, first : first + length]
            end = slot + length  # read back as stored (a float16 cache rounds), once per segment
            keys[row] = (cache.k[row : row + 1, :, :end].to(q.dtype), cache.v[row : row + 1, :, :end].to(q.dtype))
        gqa = self.n_kv_heads != self.n_heads
        parts = []
        for (row, first, slot, length), mask in zip(chunks, masks):
            end = slot + length
            kk, vv = keys[row]
            parts.append(F.scaled_dot_product_attention(q[:, :, first : first + length], kk[:, :, :end],
                                                        vv[:, :, :end], attn_mask=mask, enable_gqa=gqa))
        padding = x.shape[1] - sum(length for _, _, _, length in chunks)
        if padding:
            parts.append(q.new_zeros(1, self.n_heads, padding, self.head_dim))
        out = torch.cat(parts, dim=2)  # [1, nh, N, hd] (chunks are in packed-row order)
        out = out.transpose(1, 2).reshape(1, x.shape[1], self.n_heads * self.head_dim)  # [1, N, nh*hd]
        return self.wo(out)


class Block(nn.Module):
    """A pre-norm transformer block."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLU(config.dim, config.ffn_dim)

    def forward(self, x, cos, sin, input_pos, mask, kv_len):
        x = x + self.attention(rms_norm(self.attention_norm, x), cos, sin, input_pos, mask, kv_len)
        return x + self.feed_forward(rms_norm(self.ffn_norm, x))

    def forward_chunks(self, x, cos, sin, segments, chunks, masks):
        """The block over a packed prefill (Attention.forward_chunks)."""
        x = x + self.attention.forward_chunks(rms_norm(self.attention_norm, x), cos, sin, segments, chunks, masks)
        return x + self.feed_forward(rms_norm(self.ffn_norm, x))


class Decoder(nn.Module):
    """The decoder-only language model. `forward` returns logits [B, T, vocab]."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_seq_len, hd]
        self.register_buffer("rope_sin", sin, persistent=False)
        # When True, decode attends over the whole cache with a mask (fixed shapes: what torch.compile /
        # CUDA graphs need); when False, only over the filled prefix (less work in eager mode).
        self.static_cache_attention = False
        self.cache_batch_size = 0
        self.cache_len = 0
        # Native CPU decode (model.native_decode): built at the first eligible decode step; False = not
        # applicable to this model's layers; dropped when the model is moved or converted.
        self.native_decode = True
        self._native_plan = None
        self._native_verified = False  # plan checked against the modules since the last torch-path forward
        self.cache_version = 0  # bumped whenever the KV cache tensors are replaced
        self._rows_independent: tuple[tuple, bool] | None = None  # (module signature, rows_independent())

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> "Decoder":
        """Random initialisation for training from scratch (normal(0, std), norms at 1, biases at 0)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, param in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    param.copy_(torch.randn(param.shape, generator=gen) * std)
        return self

    # ---- cache --------------------------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None,
                    device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        """Allocate a KV cache for `batch_size` sequences of up to `max_seq_len` tokens (default: the context)."""
        max_seq_len = min(max_seq_len or self.config.max_seq_len, self.config.max_seq_len)
        param = self.tok_embeddings.weight
        device = torch.device(device) if device is not None else param.device
        dtype = dtype or (param.dtype if param.is_floating_point() else torch.float32)
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch_size, self.config.n_kv_heads, max_seq_len,
                                               self.config.head_dim, device, dtype)
        self.cache_batch_size, self.cache_len = batch_size, max_seq_len
        self.cache_version += 1

    def reorder_cache(self, rows: torch.Tensor) -> None:
        """Select, reorder or duplicate the KV cache's batch rows (beam search): rows [B'] long indexes the
        current rows; afterwards the cache has B' rows, row i a copy of old row rows[i]."""
        if self.cache_batch_size == 0:
            raise RuntimeError("reorder_cache needs a KV cache: call setup_cache() first")
        for layer in self.layers:
            cache = layer.attention.kv_cache
            cache.k = cache.k.index_select(0, rows)  # [B', nkv, S, hd]
            cache.v = cache.v.index_select(0, rows)
        self.cache_batch_size = int(rows.shape[0])
        self.cache_version += 1

    def copy_cache_row(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` slots of cache row `source` into row `target` (compacting the batch)."""
        for layer in self.layers:
            cache = layer.attention.kv_cache
            cache.k[target, :, :length] = cache.k[source, :, :length]
            cache.v[target, :, :length] = cache.v[source, :, :length]

    def reset_cache(self) -> None:
        """Drop the KV cache (frees its memory)."""
        for layer in self.layers:
            layer.attention.kv_cache = None
        self.cache_batch_size = self.cache_len = 0
        self.cache_version += 1

    # ---- forward ------------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor | None,
        input_pos: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
        kv_len: int | None = None,
        last_only: bool = False,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V] for tokens [B, T] ([B, 1, V] for the last position only when `last_only`).

        inputs_embeds [B, T, D]: the input vectors themselves instead of `tokens` (pass tokens=None): a soft
        prompt's trainable vectors in front of a prompt's token embeddings (model.prompt_tuning), for training
        (no cache) and for prefill into the cache; decoding then continues from the cache with tokens.

        input_pos None: no cache, causal attention over `tokens` alone (training, scoring).
        input_pos [B, T] (long): each row's own cache slots (rows 0..B-1 of the cache: continuous batching of
        independent sequences; no pad_mask). A row attends to its slots <= the query's, whatever the other rows
        hold; kv_len then is the largest slot + 1.
        input_pos [T] (long): cache slots of these tokens. Each query attends to cache slots <= its own slot,
        and, when pad_mask [B, S] (bool, True = real token) is given, only to slots marked True (left-padded
        batches: RoPE depends on slot differences only, so padding slots shift nothing once they are masked).
        kv_len: attend over cache slots [0, kv_len); default = last input position + 1 (eager) or the whole
        cache (static_cache_attention).
        last_only: apply the final norm and the output head to the last position only (prefill: the other
        positions' logits are never used, and the head is the largest matmul).
        """
        if inputs_embeds is not None:
            if tokens is not None:
                raise ValueError("pass either tokens or inputs_embeds, not both")
        elif tokens.shape[1] == 1 and input_pos is not None and self.native_decode \
                and not self.static_cache_attention and tokens.device.type == "cpu" and not torch.is_grad_enabled():
            logits = self._native_step(tokens, input_pos, pad_mask, kv_len)
            if logits is not None:
                return logits
        self._native_verified = False  # modules may change before the next decode step: check the plan then
        x = self.tok_embeddings(tokens) if inputs_embeds is None else inputs_embeds  # [B, T, D]
        seq, device = x.shape[1], x.device
        mask = None
        if input_pos is None:
            if seq > self.config.max_seq_len:
                raise ValueError(f"{seq} tokens exceed the context window of {self.config.max_seq_len}")
            positions = torch.arange(seq, device=device)
        else:
            positions = input_pos
            if input_pos.dim() == 2:  # per-row slots [B, T]
                if pad_mask is not None or self.static_cache_attention:
                    raise ValueError("per-row input_pos [B, T] takes no pad_mask and no static cache")
                kv_len = int(input_pos.max()) + 1
                slots = torch.arange(kv_len, device=device)  # [S']
                mask = (slots[None, None, :] <= input_pos[:, :, None])[:, None]  # [B, 1, T, S']
            else:
                mask = self._slot_mask(input_pos, pad_mask, seq, kv_len)
                kv_len = None if self.static_cache_attention else (kv_len or int(input_pos[-1]) + 1)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # [T, hd] or [B, T, hd]
        for layer in self.layers:
            x = layer(x, cos, sin, input_pos, mask, kv_len)
        if last_only:
            x = x[:, -1:]  # [B, 1, D]
        return self.output(rms_norm(self.norm, x))

    @torch.inference_mode()
    def prefill_segments(self, segments: Sequence[PrefillSegment]) -> torch.Tensor:
        """Prefill several sequences in one forward pass -> logits [n, V] (float32) of each one's last token.

        Each segment's tokens go to its own cache row at slots start, start + 1, ...; rows are independent
        sequences (continuous batching), so a segment attends only to its own row. The matrix products run over
        the rows of all segments at once (one large product instead of one per sequence: what makes admitting
        many requests together cheap), padded to at least PREFILL_MIN_ROWS rows; attention runs per segment in
        chunks of query rows at fixed slot boundaries (`prefill_chunk_end`). So a
        sequence's logits and cache entries do not depend on which segments share the pass, nor on whether its
        first slots were computed now or copied from a prefix cache — where the matrix products give each row
        the same result whatever the number of rows (`rows_independent()` checks that on this machine).
        The output head runs in groups of PREFILL_HEAD_ROWS rows, for the same reason.
        """
        if not segments:
            raise ValueError("prefill_segments needs at least one segment")
        device = self.tok_embeddings.weight.device
        packed_segments: list[tuple[int, int, int, int]] = []  # (cache row, first packed row, first slot, length)
        chunks: list[tuple[int, int, int, int]] = []
        ids: list[int] = []
        positions: list[int] = []
        last_rows: list[int] = []
        rows_seen: set[int] = set()
        for segment in segments:
            length, start = len(segment.tokens), segment.start
            if length == 0 or start < 0 or (start and prefill_chunk_end(start - 1) != start):
                raise ValueError("a prefill segment needs tokens and a start at a chunk boundary (prefill_boundaries)")
            if not 0 <= segment.row < self.cache_batch_size or segment.row in rows_seen:
                raise ValueError(f"prefill segments need distinct cache rows below {self.cache_batch_size}")
            if start + length > self.cache_len:
                raise ValueError(f"{start + length} slots exceed the KV cache's {self.cache_len}")
            rows_seen.add(segment.row)
            first = len(ids)
            packed_segments.append((segment.row, first, start, length))
            slot = start
            while slot < start + length:
                end = min(prefill_chunk_end(slot), start + length)
                chunks.append((segment.row, first + slot - start, slot, end - slot))
                slot = end
            ids.extend(int(t) for t in segment.tokens)
            positions.extend(range(start, start + length))
            last_rows.append(len(ids) - 1)
        padding = max(PREFILL_MIN_ROWS - len(ids), 0)
        ids += [0] * padding
        positions += [0] * padding
        self._native_verified = False  # modules may change before the next decode step: check the plan then
        tokens = torch.tensor([ids], dtype=torch.long, device=device)  # [1, N]
        slots = torch.tensor(positions, dtype=torch.long, device=device)  # [N]
        x = self.tok_embeddings(tokens)  # [1, N, D]
        cos, sin = self.rope_cos[slots], self.rope_sin[slots]  # [N, hd]
        masks = []  # [1, 1, length, slot + length] per chunk: causal within the chunk, everything before it
        for _, _, slot, length in chunks:
            end = slot + length
            masks.append((torch.arange(end, device=device)[None, :]
                          <= torch.arange(slot, end, device=device)[:, None])[None, None])
        for layer in self.layers:
            x = layer.forward_chunks(x, cos, sin, packed_segments, chunks, masks)
        last = x[0, last_rows]  # [n, D]
        groups = []
        for i in range(0, last.shape[0], PREFILL_HEAD_ROWS):
            group = last[i : i + PREFILL_HEAD_ROWS]  # [g, D], padded to PREFILL_HEAD_ROWS rows
            rows = group.shape[0]
            if rows < PREFILL_HEAD_ROWS:
                group = torch.cat([group, group.new_zeros(PREFILL_HEAD_ROWS - rows, group.shape[1])])
            groups.append(self.output(rms_norm(self.norm, group[None]))[0, :rows])  # [g, V]
        return torch.cat(groups).float()  # [n, V]

    @torch.inference_mode()
    def rows_independent(self) -> bool:
        """Whether this model's matrix products give a row the same result whatever the rows around it and their
        number (checked once per set of modules, on random inputs, for the first block's layers and the head):
        the condition for `prefill_segments` to be exact when sequences are packed together or reuse a cached
        prefix. True for MKL's float32 GEMM from 12 rows up and for the native CPU kernels; not promised for
        every BLAS or for GPUs."""
        from model.native_decode import DecodePlan

        signature = DecodePlan.signature_of(self) + (id(self.output),)
        if self._rows_independent is not None and self._rows_independent[0] == signature:
            return self._rows_independent[1]
        linears = [m for m in self.layers[0].modules() if hasattr(m, "in_features")]  # every linear-like layer
        embedding = self.tok_embeddings.weight
        dtype = embedding.dtype if embedding.is_floating_point() else torch.float32
        gen = torch.Generator().manual_seed(0)

        def rows(module: nn.Module, count: int) -> torch.Tensor:
            width = getattr(module, "in_features", None) or getattr(module, "base").in_features
            return torch.randn(1, count, width, generator=gen).to(device=embedding.device, dtype=dtype)

        n = PREFILL_MIN_ROWS
        ok = True
        for module in linears:  # packed prefill: any number of rows >= n
            x = rows(module, 3 * n + 5)
            full = module(x)
            ok = ok and all(torch.equal(module(x[:, lo:hi]), full[:, lo:hi])
                            for lo, hi in ((0, n), (5, 5 + n), (3, 3 + 2 * n + 1)))
        h = PREFILL_HEAD_ROWS
        x = rows(self.output, h + 5)  # the head: groups of exactly h rows
        ok = ok and torch.equal(self.output(x[:, :h])[:, 5:], self.output(x[:, 5:])[:, : h - 5])
        self._rows_independent = (signature, ok)
        return ok

    def _slot_mask(self, input_pos: torch.Tensor, pad_mask: torch.Tensor | None, seq: int,
                   kv_len: int | None) -> torch.Tensor | None:
        """The attention mask [B or 1, 1, T, S'] for shared slots input_pos [T] (None: no mask needed)."""
        device = input_pos.device
        if self.static_cache_attention:
            slots = torch.arange(self.cache_len, device=device)  # [S]
        else:
            kv_len = kv_len or int(input_pos[-1]) + 1
            slots = torch.arange(kv_len, device=device)  # [S']
        mask = (slots[None, :] <= input_pos[:, None])[None, None]  # [1, 1, T, S']
        if pad_mask is not None:
            return mask & pad_mask[:, None, None, : slots.shape[0]]  # [B, 1, T, S']
        if seq == 1 and not self.static_cache_attention:
            return None  # one query at the newest slot sees the whole filled prefix
        if kv_len == seq and not self.static_cache_attention:
            return None  # prefill of slots 0..T-1: plain causal attention (SDPA's fused causal kernel)
        return mask

    def native_decode_plan(self):
        """The model.native_decode plan for one-token decode steps on CPU, or None when it does not apply.

        Built on first use and re-checked against the modules once after every torch-path forward (a prefill,
        or anything that may have swapped a layer), so steps in between use it as it is.
        """
        from model.native_decode import DecodePlan

        plan = self._native_plan
        if plan is None or not self._native_verified:
            signature = DecodePlan.signature_of(self)
            if plan is None or plan.signature != signature:
                plan = DecodePlan.build(self) or DecodePlan.unsupported(signature)
                self._native_plan = plan
            self._native_verified = True
        return plan if plan.supported else None

    def _native_step(self, tokens: torch.Tensor, input_pos: torch.Tensor, pad_mask: torch.Tensor | None,
                     kv_len: int | None) -> torch.Tensor | None:
        """A decode step through model.native_decode, or None when it does not apply (the torch path runs)."""
        plan = self.native_decode_plan()
        return None if plan is None else plan.forward(self, tokens, input_pos, pad_mask, kv_len)

    def _apply(self, fn, recurse=True):  # .to(device / dtype): the native plan points into the old tensors
        self._native_plan = None
        self._rows_independent = None
        return super()._apply(fn, recurse)


@torch.inference_mode()
def greedy_generate(decoder: Decoder, prompt_ids: Sequence[int], max_new_tokens: int,
                    eos_ids: Sequence[int] = ()) -> list[int]:
    """Plain greedy decoding with the KV cache: prefill the prompt, then one token at a time.

    Returns the new token ids (without the prompt), stopping after an EOS id or `max_new_tokens`.
    """
    device = decoder.tok_embeddings.weight.device
    total = len(prompt_ids) + max_new_tokens
    if total > decoder.config.max_seq_len:
        raise ValueError(f"prompt + new tokens ({total}) exceed the context window ({decoder.config.max_seq_len})")
    decoder.setup_cache(1, total)
    tokens = torch.tensor([list(prompt_ids)], device=device)  # [1, T]
    logits = decoder(tokens, torch.arange(tokens.shape[1], device=device))  # prefill: [1, T, V]
    out: list[int] = []
    pos = tokens.shape[1]
    for _ in range(max_new_tokens):
        next_id = int(logits[0, -1].argmax())
        out.append(next_id)
        if next_id in eos_ids:
            break
        logits = decoder(torch.tensor([[next_id]], device=device), torch.tensor([pos], device=device))
        pos += 1
    return out
