"""Packed prefill (Decoder.prefill_segments) and prefix caching (model.prefix_cache): many prompts in one pass,
and prompts that start from cached keys/values, give exactly what each prompt gets prefilled alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.config import DecoderConfig
from model.decoder import Decoder, PrefillSegment, prefill_boundaries
from model.generate import Generator
from model.prefix_cache import PrefixCache
from model.scheduler import BatchScheduler

LENGTHS = (3, 8, 21, 70, 130)  # shorter than a chunk, one chunk, several, past the fine-grained slots


def _decoder(quantize: str | None = None, vocab: int = 400) -> Decoder:
    decoder = Decoder(DecoderConfig.tiny(vocab_size=vocab)).init_weights(std=0.3, seed=0).eval()
    if quantize:
        from model.quant import quantize_decoder

        quantize_decoder(decoder, quantize)
    return decoder


def _prompts(lengths=LENGTHS, vocab: int = 400, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def _entries(decoder: Decoder, row: int, length: int) -> list[torch.Tensor]:
    return [t for layer in decoder.layers
            for t in (layer.attention.kv_cache.k[row, :, :length].clone(),
                      layer.attention.kv_cache.v[row, :, :length].clone())]


@pytest.mark.parametrize("quantize,kv_dtype", [(None, torch.float32), ("int4", torch.float16), ("int8", torch.float32)])
def test_packed_prefill_equals_alone_bit_for_bit(quantize, kv_dtype) -> None:
    decoder = _decoder(quantize)
    assert decoder.rows_independent(), "this machine's matrix products depend on the number of rows"
    prompts = _prompts()
    n = len(prompts)
    decoder.setup_cache(2 * n, 256, dtype=kv_dtype)
    with torch.inference_mode():
        alone = [decoder.prefill_segments([PrefillSegment(i, p)]) for i, p in enumerate(prompts)]  # rows 0..n-1
        packed = decoder.prefill_segments([PrefillSegment(n + i, p) for i, p in enumerate(prompts)])  # [n, V]
    for i, prompt in enumerate(prompts):
        assert torch.equal(packed[i : i + 1], alone[i]), f"prompt {i}: logits differ packed vs alone"
        for a, b in zip(_entries(decoder, n + i, len(prompt)), _entries(decoder, i, len(prompt))):
            assert torch.equal(a, b), f"prompt {i}: cache entries differ packed vs alone"


def test_prefill_agrees_with_the_plain_forward() -> None:
    decoder = _decoder()
    prompt = _prompts((90,))[0]
    decoder.setup_cache(1, 256)
    with torch.inference_mode():
        reference = decoder(torch.tensor([prompt]))[0, -1]  # no cache, one causal attention over everything
        logits = decoder.prefill_segments([PrefillSegment(0, prompt)])[0]
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    assert int(logits.argmax()) == int(reference.argmax())


def test_segments_are_validated() -> None:
    decoder = _decoder()
    decoder.setup_cache(2, 64)
    with pytest.raises(ValueError, match="boundary"):
        decoder.prefill_segments([PrefillSegment(0, [5, 6], start=3)])
    with pytest.raises(ValueError, match="distinct cache rows"):
        decoder.prefill_segments([PrefillSegment(0, [5]), PrefillSegment(0, [6])])
    with pytest.raises(ValueError, match="exceed"):
        decoder.prefill_segments([PrefillSegment(1, [5] * 65)])


def test_prefix_reuse_is_exact_and_block_aligned() -> None:
    decoder = _decoder("int4")
    shared = _prompts((75,), seed=1)[0]
    first, second = shared + _prompts((9,), seed=2)[0], shared + _prompts((30,), seed=3)[0]
    cache = PrefixCache()
    decoder.setup_cache(3, 256, dtype=torch.float16)
    with torch.inference_mode():
        decoder.prefill_segments([PrefillSegment(0, first)])
        cache.store(decoder, 0, first)
        assert cache.blocks == len(prefill_boundaries(len(first)))  # 8 blocks of 8, then one of 32 (to 96)
        fresh = decoder.prefill_segments([PrefillSegment(1, second)])
        chain = cache.match(decoder, second)
        start = cache.load(decoder, 2, chain)
        assert start == 64  # the longest cached boundary inside the 75 shared tokens (the next one is 96)
        reused = decoder.prefill_segments([PrefillSegment(2, second[start:], start)])
    assert torch.equal(reused, fresh)
    for a, b in zip(_entries(decoder, 2, len(second)), _entries(decoder, 1, len(second))):
        assert torch.equal(a, b)
    assert cache.hit_tokens == 64


def test_prefix_match_leaves_the_last_token_to_compute() -> None:
    decoder = _decoder()
    prompt = _prompts((16,))[0]
    cache = PrefixCache()
    decoder.setup_cache(1, 64)
    with torch.inference_mode():
        decoder.prefill_segments([PrefillSegment(0, prompt)])
    cache.store(decoder, 0, prompt)
    assert cache.blocks == 2
    assert sum(node.k.shape[2] for node in cache.match(decoder, prompt)) == 8  # not 16: logits need a token


def test_prefix_cache_keeps_to_its_budget_and_evicts_least_recent_leaves() -> None:
    decoder = _decoder()
    decoder.setup_cache(1, 64)
    prompts = _prompts((17, 17, 17), seed=4)
    block_bytes = 2 * decoder.config.n_layers * decoder.config.n_kv_heads * 8 * decoder.config.head_dim * 4
    cache = PrefixCache(max_bytes=4 * block_bytes)
    with torch.inference_mode():
        for prompt in prompts:
            decoder.prefill_segments([PrefillSegment(0, prompt)])
            cache.store(decoder, 0, prompt)
            assert cache.bytes <= cache.max_bytes
    assert cache.blocks == 4
    assert len(cache.match(decoder, prompts[2])) == 2  # the newest prompt's chain survived
    assert len(cache.match(decoder, prompts[0])) == 0  # the oldest went first


def test_prefix_cache_empties_when_the_modules_change() -> None:
    decoder = _decoder()
    decoder.setup_cache(1, 64)
    prompt = _prompts((20,))[0]
    cache = PrefixCache()
    with torch.inference_mode():
        decoder.prefill_segments([PrefillSegment(0, prompt)])
    cache.store(decoder, 0, prompt)
    assert cache.match(decoder, prompt)
    decoder.layers[0].attention.wo = nn.Linear(decoder.config.dim, decoder.config.dim, bias=False)  # other weights
    assert cache.match(decoder, prompt) == [] and cache.blocks == 0


class _RowCountDependent(nn.Module):
    """A linear layer whose rounding depends on how many rows it gets (what some BLAS small-matrix paths do)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base, self.in_features = base, base.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * (1 + 1e-6 * x.shape[-2])


def _gen(tiny_tokenizer, quantize: str | None = None) -> Generator:
    return Generator(_decoder(quantize, tiny_tokenizer.vocab_size), tiny_tokenizer, identity="tiny", device="cpu")


SYSTEM = "You are a careful assistant. Answer from the documents and cite them. " * 2


def _chat_prompts(gen: Generator) -> list[list[int]]:
    questions = ["What is retrieval?", "Who wrote the report?", "Summarise the second file.", "Where is café?",
                 "List three facts.", "Why?"]
    return [gen.tokenizer.encode(gen.render_chat([{"role": "system", "content": SYSTEM},
                                                  {"role": "user", "content": q}])) for q in questions]


def test_engine_packs_admitted_prompts_and_reuses_prefixes(tiny_tokenizer) -> None:
    gen = _gen(tiny_tokenizer, "int4")
    prompts = _chat_prompts(gen)
    alone = [gen.generate(p, max_new_tokens=24) for p in prompts]
    engine = BatchScheduler(gen, max_batch=8, context_length=256)
    try:
        first = engine.generate(prompts[0], max_new_tokens=24)  # fills the prefix cache
        engine.reset_stats()
        with engine._cond:  # hold the engine back until all are queued: one admission round takes them all
            streams = [engine.stream(p, max_new_tokens=24) for p in prompts]
        batched = [s.finish() for s in streams]
        stats = engine.stats()
    finally:
        engine.close()
    assert first.token_ids == alone[0].token_ids
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert stats.prefills == len(prompts) and stats.prefill_passes == 1
    shared = min(len(p) for p in prompts)
    assert stats.prefix_hit_tokens >= len(prompts) * (shared // 2)  # the system message came from the cache
    assert stats.prefill_tokens + stats.prefix_hit_tokens == sum(len(p) for p in prompts)


def test_engine_prefills_one_by_one_where_rows_are_not_independent(tiny_tokenizer) -> None:
    gen = _gen(tiny_tokenizer)
    prompts = _chat_prompts(gen)[:4]
    for layer in gen.decoder.layers:
        layer.attention.wo = _RowCountDependent(layer.attention.wo)
    assert not gen.decoder.rows_independent()
    alone = [gen.generate(p, max_new_tokens=16) for p in prompts]
    engine = BatchScheduler(gen, max_batch=8, context_length=256)
    try:
        with engine._cond:
            streams = [engine.stream(p, max_new_tokens=16) for p in prompts]
        batched = [s.finish() for s in streams]
        stats = engine.stats()
    finally:
        engine.close()
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert stats.prefill_passes == len(prompts) and stats.prefix_hit_tokens == 0


def test_kept_float_weights_give_the_same_prefill() -> None:
    from model.quant import Int4Linear, keep_float_weights

    decoder = _decoder("int4")
    prompts = _prompts((40, 12))
    decoder.setup_cache(2, 64)
    with torch.inference_mode():
        before = decoder.prefill_segments([PrefillSegment(i, p) for i, p in enumerate(prompts)])
        size = keep_float_weights(decoder)
        kept = decoder.prefill_segments([PrefillSegment(i, p) for i, p in enumerate(prompts)])
        layers = [m for m in decoder.layers.modules() if isinstance(m, Int4Linear)]
        assert all(m._float_weight is not None for m in layers)
        assert size == sum(m._float_weight.numel() * 4 for m in layers)
        again = decoder.prefill_segments([PrefillSegment(i, p) for i, p in enumerate(prompts)])
        keep_float_weights(decoder, False)
        assert all(m._float_weight is None for m in layers)
    assert torch.equal(kept, before) and torch.equal(again, before)


def test_a_burst_of_arrivals_shares_one_prefill_pass(tiny_tokenizer) -> None:
    import time

    gen = _gen(tiny_tokenizer)
    prompts = _chat_prompts(gen)[:5]
    engine = BatchScheduler(gen, max_batch=8, context_length=256, admit_gap_s=0.3, admit_wait_s=2.0)
    try:
        streams = []
        for p in prompts:  # one at a time, a little apart, onto an idle engine
            streams.append(engine.stream(p, max_new_tokens=8))
            time.sleep(0.02)
        results = [s.finish() for s in streams]
        stats = engine.stats()
    finally:
        engine.close()
    assert stats.prefills == len(prompts) and stats.prefill_passes == 1
    assert [r.token_ids for r in results] == [gen.generate(p, max_new_tokens=8).token_ids for p in prompts]
