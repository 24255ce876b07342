"""model.scheduler.BatchScheduler: continuous batching gives every request the text it gets alone.

Tiny random decoders (the torch path, and int4 on the native kernels when they build), plus the real default
weights (marked `real`). The engine's counters prove that decode steps ran with several requests per batch.
"""

from __future__ import annotations

import time

import pytest

from model.config import DecoderConfig
from model.decoder import Decoder
from model.generate import Generator
from model.scheduler import BatchScheduler, SchedulerBusyError

PROMPTS = ["The quick brown fox", "Attention lets every token", "café naïve résumé", "def add(a, b):",
           "Retrieval-augmented generation grounds answers", "0123456789", "look at every other token in the",
           "emoji and CJK text"]


def _tiny(tiny_tokenizer, quantize: str | None = None) -> Generator:
    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    decoder = Decoder(config).init_weights(std=0.3, seed=0).eval()
    if quantize:
        from model.quant import quantize_decoder

        quantize_decoder(decoder, quantize)
    return Generator(decoder, tiny_tokenizer, identity="tiny", device="cpu")


@pytest.fixture()
def gen(tiny_tokenizer) -> Generator:
    return _tiny(tiny_tokenizer)


def _alone_then_batched(gen: Generator, prompts: list[str], max_new: int, stagger: float = 0.0, **kw):
    alone = [gen.generate(p, max_new_tokens=max_new, **kw) for p in prompts]
    engine = BatchScheduler(gen, max_batch=8, context_length=256)
    try:
        streams = []
        for i, prompt in enumerate(prompts):
            streams.append(engine.stream(prompt, max_new_tokens=max_new, **kw))
            if stagger and i % 3 == 2:  # later requests join a batch that is already decoding
                time.sleep(stagger)
        batched = [s.finish() for s in streams]
        return alone, batched, engine.stats()
    finally:
        engine.close()


def test_greedy_alone_equals_batched(gen: Generator) -> None:
    alone, batched, stats = _alone_then_batched(gen, PROMPTS, 40, stagger=0.02)
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.finish_reason for r in batched] == [r.finish_reason for r in alone]
    assert stats.max_batch >= 2 and stats.mean_batch > 1.0
    assert stats.steps < sum(len(r.token_ids) for r in batched)  # a serial engine needs one step per token
    assert stats.finished == len(PROMPTS) and stats.running == 0


def test_native_int4_alone_equals_batched(tiny_tokenizer) -> None:
    from model import cpu_kernels

    if not cpu_kernels.available():
        pytest.skip(f"native kernels unavailable: {cpu_kernels.status()}")
    gen = _tiny(tiny_tokenizer, "int4")
    assert gen.decoder.native_decode_plan() is not None
    alone, batched, stats = _alone_then_batched(gen, PROMPTS, 32, stagger=0.01)
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert stats.max_batch >= 2


def test_sampling_stop_and_penalties_per_request(gen: Generator) -> None:
    """Each request keeps its own parameters: a seeded sample, penalties and stop strings match alone."""
    cases = [dict(temperature=0.9, seed=7), dict(temperature=0.0, frequency_penalty=1.0, presence_penalty=0.5),
             dict(temperature=0.7, top_k=20, top_p=0.9, seed=3, repetition_penalty=1.3), dict(temperature=0.0)]
    alone = [gen.generate(p, max_new_tokens=24, **kw) for p, kw in zip(PROMPTS, cases)]
    first = alone[3].text
    stop = first[len(first) // 2: len(first) // 2 + 2] if len(first) > 4 else None
    engine = BatchScheduler(gen, max_batch=4, context_length=128)
    try:
        streams = [engine.stream(p, max_new_tokens=24, **kw) for p, kw in zip(PROMPTS, cases)]
        stopped = engine.stream(PROMPTS[3], max_new_tokens=24, stop=[stop]) if stop else None
        results = [s.finish() for s in streams]
        assert [r.token_ids for r in results] == [r.token_ids for r in alone]
        if stopped is not None:
            expected = gen.generate(PROMPTS[3], max_new_tokens=24, stop=[stop])
            got = stopped.finish()
            assert (got.text, got.finish_reason) == (expected.text, "stop")
    finally:
        engine.close()


def test_cancel_and_dropped_stream_free_the_slot_at_once(gen: Generator) -> None:
    engine = BatchScheduler(gen, max_batch=2, context_length=256)
    try:
        long_a = engine.stream(PROMPTS[0], max_new_tokens=200, stop=None)
        long_b = engine.stream(PROMPTS[1], max_new_tokens=200)
        next(iter(long_a))
        waiting = engine.stream(PROMPTS[2], max_new_tokens=5)  # no row free: it waits
        long_a.close()  # a client that went away
        del long_b  # a stream dropped without close()
        result = waiting.finish()
        assert result.finish_reason in ("length", "eos")
        assert long_a.finish().finish_reason == "cancelled"
        deadline = time.time() + 10
        while engine.stats().running and time.time() < deadline:
            time.sleep(0.01)
        stats = engine.stats()
        assert stats.cancelled == 2 and stats.running == 0
        assert stats.steps < 150  # the cancelled requests did not run to their 200 tokens
        # and the engine is fine afterwards
        assert engine.generate(PROMPTS[3], max_new_tokens=8).token_ids == gen.generate(PROMPTS[3], max_new_tokens=8).token_ids
    finally:
        engine.close()


def test_queue_limit_and_errors(gen: Generator) -> None:
    from model.errors import ContextOverflowError, SamplingParamsError

    engine = BatchScheduler(gen, max_batch=1, max_waiting=1, context_length=64)
    try:
        with pytest.raises(ContextOverflowError, match="64 tokens"):
            engine.stream("word " * 80)
        with pytest.raises(SamplingParamsError, match="temperature"):
            engine.stream("hi", temperature=-1)
        with pytest.raises(SamplingParamsError, match="beam"):
            engine.stream("hi", num_beams=2)
        streams = []
        with pytest.raises(SchedulerBusyError) as info:
            for prompt in PROMPTS[:3]:
                streams.append(engine.stream(prompt, max_new_tokens=30))
        assert info.value.retry_after > 0
        for stream in streams:
            stream.finish()
    finally:
        engine.close()


def test_generator_calls_still_work_beside_the_engine(gen: Generator) -> None:
    """Direct Generator calls wait for the engine to idle, and the engine rebuilds its cache afterwards."""
    engine = BatchScheduler(gen, max_batch=3, context_length=128)
    try:
        first = engine.generate(PROMPTS[0], max_new_tokens=10)
        direct = gen.generate(PROMPTS[0], max_new_tokens=10)
        again = engine.generate(PROMPTS[0], max_new_tokens=10)
        assert first.token_ids == direct.token_ids == again.token_ids
    finally:
        engine.close()


@pytest.mark.real
def test_real_weights_greedy_alone_equals_batched() -> None:
    """The default SmolLM2 on the native int4 decode path: identical greedy text alone and batched."""
    gen = Generator.load(None, device="cpu")
    prompts = [gen.render_chat([{"role": "user", "content": q}]) for q in (
        "What is a KV cache?", "Name three fruits.", "Explain tokenization briefly.", "What is 2 + 2?",
        "Write one sentence about the sea.")]
    ids = [gen.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    alone = [gen.generate(i, max_new_tokens=48) for i in ids]
    engine = BatchScheduler(gen, max_batch=4, context_length=512)
    try:
        streams = [engine.stream(i, max_new_tokens=48) for i in ids]  # 5 requests, 4 rows: one joins later
        batched = [s.finish() for s in streams]
        assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
        assert engine.stats().max_batch == 4
    finally:
        engine.close()
