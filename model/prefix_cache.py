"""Prefix caching: the keys and values of prompt beginnings that many requests share, computed once.

Chat prompts start the same way (the template's system message, the assistant's instructions, a conversation's
earlier turns), so a server that prefills every prompt from its first token redoes that work for every request.
`PrefixCache` keeps the KV-cache entries of prompt prefixes in blocks (8 tokens wide up to slot 64, 32 after:
the prefill's chunk boundaries, `model.decoder.prefill_boundaries`), in a tree keyed by the tokens (a block's
entries depend on every token before it, so a node stands for the whole path to it):

    root ─ [block 0 tokens] ─ [block 1 tokens] ─ [block 2 tokens]      one request's prompt, 3 full blocks
                           └─ [block 1' tokens]                         another that shares block 0

A new request copies the longest chain of cached blocks that its prompt starts with into its cache row (always
leaving at least its last token to compute, whose logits are needed) and prefills only the rest
(`Decoder.prefill_segments` with start = the copied length). After the prefill, the prompt's full blocks are
added. The result is bit-identical to prefilling the whole prompt: `prefill_segments` computes a block the same
way whether the blocks before it were computed in the same pass or copied (its attention runs in chunks at
block boundaries), where `Decoder.rows_independent()` holds — the scheduler uses the cache only then.

Blocks are kept up to a byte budget; the least recently used leaves go first. The cache belongs to one set of
weights: a decoder whose modules were swapped (another adapter, other weights) or a KV cache of another dtype
empties it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

from model.decoder import Decoder, prefill_boundaries


class _Node:
    """A cached block: keys/values [n_layers, n_kv_heads, block length, head_dim] each, for the slots of the
    block whose tokens lead here from the root."""

    __slots__ = ("parent", "tokens", "k", "v", "children", "depth")

    def __init__(self, parent: "_Node | None", tokens: tuple[int, ...], k: torch.Tensor | None,
                 v: torch.Tensor | None) -> None:
        self.parent, self.tokens, self.k, self.v = parent, tokens, k, v
        self.children: dict[tuple[int, ...], _Node] = {}
        self.depth = 0 if parent is None else parent.depth + 1


class PrefixCache:
    """KV entries of shared prompt prefixes, in blocks at the prefill's chunk boundaries, up to `max_bytes`."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._root = _Node(None, (), None, None)
        self._lru: OrderedDict[int, _Node] = OrderedDict()  # id(node) -> node, least recently used first
        self._bytes = 0
        self._owner: tuple | None = None
        self.hit_tokens = 0  # prompt tokens copied instead of computed, since creation
        self.lookups = 0

    @property
    def blocks(self) -> int:
        """Cached blocks now."""
        return len(self._lru)

    @property
    def bytes(self) -> int:
        """Bytes the cached blocks take now."""
        return self._bytes

    def clear(self) -> None:
        """Drop every block."""
        self._root.children.clear()
        self._lru.clear()
        self._bytes = 0

    def _check_owner(self, decoder: Decoder) -> None:
        """Empty the cache when the decoder's modules or KV-cache dtype changed since the blocks were made."""
        from model.native_decode import DecodePlan

        cache = decoder.layers[0].attention.kv_cache
        owner = DecodePlan.signature_of(decoder) + (id(decoder.tok_embeddings), None if cache is None else cache.k.dtype)
        if owner != self._owner:
            self.clear()
            self._owner = owner

    def match(self, decoder: Decoder, ids: Sequence[int]) -> list[_Node]:
        """The chain of cached blocks `ids` starts with, leaving at least its last token uncovered."""
        self._check_owner(decoder)
        self.lookups += 1
        node, chain, lo = self._root, [], 0
        for hi in prefill_boundaries(len(ids) - 1):  # whole blocks before the last token
            child = node.children.get(tuple(ids[lo:hi]))
            lo = hi
            if child is None:
                break
            chain.append(child)
            node = child
        for found in chain:
            self._lru.move_to_end(id(found))
        return chain

    def load(self, decoder: Decoder, row: int, chain: Sequence[_Node]) -> int:
        """Copy the chain's keys/values into cache row `row`'s first slots; returns how many slots (tokens)."""
        if not chain:
            return 0
        k = torch.cat([node.k for node in chain], dim=2)  # [L, nkv, P, hd]
        v = torch.cat([node.v for node in chain], dim=2)
        length = k.shape[2]
        for i, layer in enumerate(decoder.layers):
            cache = layer.attention.kv_cache
            cache.k[row, :, :length] = k[i]
            cache.v[row, :, :length] = v[i]
        self.hit_tokens += length
        return length

    def store(self, decoder: Decoder, row: int, ids: Sequence[int]) -> None:
        """Add the full blocks of prompt `ids`, whose entries cache row `row` now holds (after its prefill)."""
        self._check_owner(decoder)
        node = self._root
        caches = [layer.attention.kv_cache for layer in decoder.layers]
        lo = 0
        for hi in prefill_boundaries(len(ids)):
            tokens = tuple(ids[lo:hi])
            child = node.children.get(tokens)
            if child is None:
                k = torch.stack([c.k[row, :, lo:hi] for c in caches])  # [L, nkv, block, hd] (a copy)
                v = torch.stack([c.v[row, :, lo:hi] for c in caches])
                child = _Node(node, tokens, k, v)
                node.children[tokens] = child
                self._lru[id(child)] = child
                self._bytes += k.numel() * k.element_size() * 2
            else:
                self._lru.move_to_end(id(child))
            node, lo = child, hi
        self._evict(keep=node)

    def _evict(self, keep: _Node) -> None:
        """Drop least recently used leaves (never `keep`'s chain) until within the byte budget."""
        protected = set()
        node = keep
        while node is not None:
            protected.add(id(node))
            node = node.parent
        while self._bytes > self.max_bytes:
            victim = next((n for n in self._lru.values() if not n.children and id(n) not in protected), None)
            if victim is None:
                return
            del self._lru[id(victim)]
            del victim.parent.children[victim.tokens]
            self._bytes -= victim.k.numel() * victim.k.element_size() * 2
