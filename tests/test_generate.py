"""The generation engine on a tiny random decoder + tiny byte-level BPE tokenizer, and parity with
transformers' greedy `generate` on the real default weights."""

from __future__ import annotations

import threading

import pytest
import torch

from model.config import DecoderConfig
from model.decoder import Decoder, greedy_generate
from model.errors import ContextOverflowError, SamplingParamsError
from model.generate import Generator, IncrementalDetokenizer, StopScanner
from model.sampling import SamplingParams

EMOJI_CJK = "Hi 🙂👍🏽 café — 漢字かな交じり文 中文 done"


@pytest.fixture()
def gen(tiny_tokenizer) -> Generator:
    """A Generator over a fresh 2-layer random decoder (sharper logits than the default init: no near-ties)."""
    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    decoder = Decoder(config).init_weights(std=0.3, seed=0).eval()
    return Generator(decoder, tiny_tokenizer, identity="tiny", device="cpu")


def reference_greedy(decoder: Decoder, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without any cache: re-run the whole sequence every step (slow, obviously right)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = decoder(torch.tensor([ids]))  # [1, T, V]
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def no_eos(gen: Generator) -> Generator:
    gen.eos_token_ids = ()
    return gen


def test_greedy_matches_uncached_reference(gen: Generator) -> None:
    no_eos(gen)
    prompt = gen.tokenizer.encode("The quick brown fox")
    result = gen.generate(prompt, max_new_tokens=24)
    assert result.token_ids == reference_greedy(gen.decoder, prompt, 24)
    assert result.token_ids == greedy_generate(gen.decoder, prompt, 24)
    assert result.finish_reason == "length" and result.prompt_tokens == len(prompt)
    assert result.text == gen.tokenizer.decode(result.token_ids)
    assert result.prefill_ms > 0 and result.decode_tokens_per_s > 0


def test_last_only_gives_the_last_position_logits(gen: Generator) -> None:
    decoder = gen.decoder
    tokens = torch.tensor([[5, 9, 13, 2, 7], [3, 3, 8, 1, 4]])
    with torch.no_grad():
        full = decoder(tokens)  # [2, 5, V]
        torch.testing.assert_close(decoder(tokens, last_only=True), full[:, -1:])
        decoder.setup_cache(2, 16)
        cached = decoder(tokens, torch.arange(5), last_only=True)  # [2, 1, V]
    assert cached.shape == (2, 1, full.shape[-1])
    torch.testing.assert_close(cached, full[:, -1:], rtol=1e-4, atol=1e-4)


def test_reorder_cache_selects_and_duplicates_rows(gen: Generator) -> None:
    decoder = gen.decoder
    tokens = torch.tensor([[5, 9, 13], [3, 8, 1]])
    with torch.no_grad():
        decoder.setup_cache(2, 16)
        decoder(tokens, torch.arange(3))
        before = [layer.attention.kv_cache.k.clone() for layer in decoder.layers]
        decoder.reorder_cache(torch.tensor([1, 1, 0]))
        assert decoder.cache_batch_size == 3
        for layer, old in zip(decoder.layers, before):
            assert torch.equal(layer.attention.kv_cache.k, old[[1, 1, 0]])
        # the next step continues each row from its copied history
        step = decoder(torch.tensor([[4], [4], [4]]), torch.tensor([3]))[:, -1]  # [3, V]
        expected = decoder(torch.tensor([[3, 8, 1, 4], [5, 9, 13, 4]]))[:, -1]  # no cache
    torch.testing.assert_close(step[[0, 2]], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step[0], step[1])


def test_eos_ends_generation_without_the_eos_token(gen: Generator) -> None:
    no_eos(gen)
    full = gen.generate("Attention", max_new_tokens=12).token_ids
    gen.eos_token_ids = (full[4],)
    result = gen.generate("Attention", max_new_tokens=12)
    first = full.index(full[4])
    assert result.finish_reason == "eos" and result.token_ids == full[:first]


def test_one_beam_equals_greedy(gen: Generator) -> None:
    no_eos(gen)
    greedy = gen.generate("Retrieval", max_new_tokens=16)
    beam = gen.generate("Retrieval", max_new_tokens=16, num_beams=1)
    assert beam.token_ids == greedy.token_ids and beam.text == greedy.text


def sequence_logprob(decoder: Decoder, prompt: list[int], new: list[int]) -> float:
    with torch.no_grad():
        logits = decoder(torch.tensor([prompt + new]))[0].float()  # [T, V]
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)  # predictions of the new tokens
    return float(logprobs.gather(1, torch.tensor(new)[:, None]).sum())


def test_beam_search_finds_at_least_as_likely_a_sequence(gen: Generator) -> None:
    no_eos(gen)
    prompt = gen.tokenizer.encode("def add(a, b):")
    greedy = gen.generate(prompt, max_new_tokens=10)
    beam = gen.generate(prompt, max_new_tokens=10, num_beams=4, length_penalty=0.0)
    assert len(beam.token_ids) == 10 and beam.finish_reason == "length"
    assert sequence_logprob(gen.decoder, prompt, beam.token_ids) >= sequence_logprob(
        gen.decoder, prompt, greedy.token_ids
    ) - 1e-4
    # the KV-cache reordering is right: the beam's tokens are what an uncached forward scores it as
    assert beam.text == gen.tokenizer.decode(beam.token_ids)


def test_beam_search_with_ngram_blocking_never_repeats_a_bigram(gen: Generator) -> None:
    no_eos(gen)
    prompt = gen.tokenizer.encode("The quick")
    result = gen.generate(prompt, max_new_tokens=30, num_beams=3, no_repeat_ngram_size=2)
    seq = prompt + result.token_ids
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams))


def test_sampling_ngram_blocking_and_seed(gen: Generator) -> None:
    no_eos(gen)
    params = SamplingParams(temperature=1.0, top_k=50, seed=1234, max_new_tokens=40, no_repeat_ngram_size=2)
    first = gen.generate("The quick", params)
    again = gen.generate("The quick", params)
    other = gen.generate("The quick", params.replace(seed=99))
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    seq = gen.tokenizer.encode("The quick") + first.token_ids
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams))


def test_batched_greedy_equals_one_by_one(gen: Generator) -> None:
    no_eos(gen)
    prompts = ["Hi", "The quick brown fox jumps over the lazy dog.", "中文 🙂", "def add(a, b):\n"]
    one_by_one = [gen.generate(p, max_new_tokens=15).token_ids for p in prompts]
    batched = gen.generate_batch(prompts, max_new_tokens=15)
    assert [r.token_ids for r in batched] == one_by_one
    assert [r.prompt_tokens for r in batched] == [len(gen.tokenizer.encode(p)) for p in prompts]


def test_batch_rows_stop_independently(gen: Generator) -> None:
    no_eos(gen)
    prompts = ["Hi", "Attention lets every token"]
    full = [gen.generate(p, max_new_tokens=10).token_ids for p in prompts]
    gen.eos_token_ids = (full[0][3],)
    results = gen.generate_batch(prompts, max_new_tokens=10)
    assert results[0].finish_reason == "eos" and results[0].token_ids == full[0][: full[0].index(full[0][3])]
    expected_1 = full[1][: full[1].index(full[0][3])] if full[0][3] in full[1] else full[1]
    assert results[1].token_ids == expected_1


def test_incremental_detokenizer_never_splits_characters(tiny_tokenizer) -> None:
    ids = tiny_tokenizer.encode(EMOJI_CJK)
    assert len(ids) > len(EMOJI_CJK.encode()) // 3  # many multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tiny_tokenizer)
    deltas = [detok.add([token]) for token in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == EMOJI_CJK
    assert all("\ufffd" not in d for d in deltas)
    assert sum(1 for d in deltas if d == "") > 0  # some tokens were held back (incomplete characters)


def test_stream_deltas_join_to_full_text(gen: Generator) -> None:
    no_eos(gen)
    stream = gen.stream("漢字 🙂 and", max_new_tokens=40)
    deltas = list(stream)
    assert "".join(deltas) == stream.result.text == gen.tokenizer.decode(stream.result.token_ids)
    # a random model emits stray byte tokens; a delta only carries U+FFFD where the full text has it too
    assert stream.result.text.count("\ufffd") == sum(d.count("\ufffd") for d in deltas)


def pick_stop(text: str) -> tuple[str, int]:
    """A 2-character stop string from the middle of `text`, and where it first occurs."""
    for start in range(3, len(text) - 2):
        candidate = text[start : start + 2]
        if "\ufffd" not in candidate and candidate.strip() and text.find(candidate) == start:
            return candidate, start
    pytest.skip("no usable stop string in this random text")


def test_stop_string_ends_text_without_appearing(gen: Generator) -> None:
    no_eos(gen)
    full = gen.generate("The quick brown", max_new_tokens=40).text
    stop, at = pick_stop(full)
    stream = gen.stream("The quick brown", max_new_tokens=40, stop=["@@never@@", stop])
    deltas = list(stream)
    assert stream.result.finish_reason == "stop"
    assert stream.result.text == full[:at] == "".join(deltas)
    assert stop not in "".join(deltas)


def test_stop_scanner_holds_back_possible_prefix() -> None:
    scanner = StopScanner(["</answer>"])
    assert scanner.push("The answer is 4 <") == "The answer is 4 "
    assert scanner.push("/ans") == ""  # could still become the stop string
    assert scanner.push("wer> trailing") == ""
    assert scanner.stopped and scanner.text == "The answer is 4 "
    scanner = StopScanner(["</answer>"])
    assert scanner.push("a <") == "a "
    assert scanner.push("b") == "<b"  # not a stop after all: released
    assert scanner.finish() == ""


def test_context_overflow_error_and_left_truncation(gen: Generator) -> None:
    no_eos(gen)
    limit = gen.context_length  # 256 for the tiny config
    long_prompt = (gen.tokenizer.encode("The quick brown fox jumps over the lazy dog. ") * 40)[:300]
    with pytest.raises(ContextOverflowError, match=r"300 tokens.*256"):
        gen.generate(long_prompt, max_new_tokens=8)
    result = gen.generate(long_prompt, max_new_tokens=8, truncate_left=True)
    assert result.prompt_tokens == limit - 8 and result.truncated_tokens == 300 - (limit - 8)
    assert result.token_ids == gen.generate(long_prompt[-(limit - 8) :], max_new_tokens=8).token_ids
    # a prompt that fits but leaves less room than max_new_tokens stops at the context end
    near_full = long_prompt[: limit - 3]
    capped = gen.generate(near_full, max_new_tokens=50)
    assert capped.finish_reason == "length" and len(capped.token_ids) == 3


def test_cancellation_from_another_thread_ends_the_stream(gen: Generator) -> None:
    no_eos(gen)
    cancel = threading.Event()
    stream = gen.stream("Hello", max_new_tokens=200, cancel=cancel)
    received = [next(stream)]
    while not received[-1]:
        received.append(next(stream))
    setter = threading.Thread(target=cancel.set)  # e.g. the UI's stop button
    setter.start()
    setter.join()
    rest = list(stream)
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.generated_tokens < 200
    assert "".join(received + rest) == stream.result.text
    # the generator is free for the next request
    assert gen.generate("Hello", max_new_tokens=3).generated_tokens == 3


def test_chat_uses_template(gen: Generator) -> None:
    no_eos(gen)
    messages = [{"role": "user", "content": "What is attention?"}]
    rendered = gen.render_chat(messages)
    assert rendered.endswith("<|im_start|>assistant\n")
    ids = gen.tokenizer.encode(rendered)
    assert gen.chat(messages, max_new_tokens=8).token_ids == gen.generate(ids, max_new_tokens=8).token_ids
    assert "".join(gen.stream_chat(messages, max_new_tokens=8)) == gen.chat(messages, max_new_tokens=8).text


def test_invalid_params_raise_before_generating(gen: Generator) -> None:
    with pytest.raises(SamplingParamsError, match="temperature"):
        gen.generate("Hi", temperature=-1.0)
    with pytest.raises(SamplingParamsError, match="unknown sampling option"):
        gen.generate("Hi", temprature=0.5)


@pytest.mark.gpu
def test_cuda_compiled_greedy_matches_cpu(tiny_tokenizer) -> None:
    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)
    cpu = Generator(Decoder(config).init_weights(std=0.3, seed=0).eval(), tiny_tokenizer, device="cpu")
    cuda_decoder = Decoder(config).init_weights(std=0.3, seed=0).eval().to("cuda")
    cuda = Generator(cuda_decoder, tiny_tokenizer, device="cuda", compile=True)
    for g in (cpu, cuda):
        g.eos_token_ids = ()
    expected = cpu.generate("The quick brown fox", max_new_tokens=20).token_ids
    assert cuda.generate("The quick brown fox", max_new_tokens=20).token_ids == expected
    assert cuda.generate("The quick brown fox", max_new_tokens=20).token_ids == expected  # graph replay
    batched = cuda.generate_batch(["Hi", "The quick brown fox"], max_new_tokens=10)
    assert batched[1].token_ids == expected[:10]


# ---- real weights -------------------------------------------------------------------------------------------
PARITY_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a transformer neural network is in two sentences.",
    "List three prime numbers and add them up.",
    "Translate 'good morning' into Spanish and German.",
]


@pytest.mark.real
def test_greedy_matches_transformers_on_real_weights(real_decoder, hf_gguf_model) -> None:
    hf_model, hf_tokenizer = hf_gguf_model
    ours = Generator(real_decoder.model, real_decoder.tokenizer, identity=real_decoder.identity, device="cpu")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    for prompt in PARITY_PROMPTS:
        text = ours.render_chat([{"role": "user", "content": prompt}])
        ids = ours.tokenizer.encode(text)
        result = ours.generate(ids, max_new_tokens=64)
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=64, do_sample=False, eos_token_id=list(ours.eos_token_ids),
                pad_token_id=ours.pad_token_id,
            )
        theirs = out[0, len(ids) :].tolist()
        if theirs and theirs[-1] in ours.eos_token_ids:
            theirs = theirs[:-1]
        assert result.token_ids == theirs, prompt
        assert result.text == hf_tokenizer.decode(theirs, skip_special_tokens=True)
