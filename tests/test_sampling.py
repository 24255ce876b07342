"""Sampling functions on hand-made logits: each filter and penalty changes exactly what it should."""

from __future__ import annotations

import math

import pytest
import torch

from model.errors import SamplingParamsError, UserError
from model.sampling import (
    PenaltyState,
    SamplingParams,
    apply_frequency_presence_penalty,
    apply_no_repeat_ngram,
    apply_repetition_penalty,
    banned_ngram_mask,
    make_generator,
    min_p_filter,
    sample,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")


def kept(logits: torch.Tensor) -> list[list[int]]:
    """Indices of the finite entries of each row."""
    return [torch.nonzero(torch.isfinite(row)).flatten().tolist() for row in logits]


def test_top_k_keeps_exactly_k_including_ties() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [2.0, 2.0, 2.0, 2.0, 9.0]])
    out = top_k_filter(logits, 2)
    assert kept(out)[0] == [1, 3]
    assert [len(r) for r in kept(out)] == [2, 2]  # ties do not let extra tokens through
    assert 4 in kept(out)[1]
    # kept values are unchanged
    assert out[0, 1] == 5.0 and out[0, 3] == 4.0
    assert torch.equal(top_k_filter(logits, 0), logits)  # 0 = off
    assert torch.equal(top_k_filter(logits, 10), logits)  # k >= V = off


def test_top_p_keeps_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert kept(top_p_filter(logits, 0.5)) == [[0]]  # 0.5 already reaches 0.5
    assert kept(top_p_filter(logits, 0.6)) == [[0, 1]]
    assert kept(top_p_filter(logits, 0.8)) == [[0, 1]]  # 0.5 + 0.3 reaches 0.8
    assert kept(top_p_filter(logits, 0.81)) == [[0, 1, 2]]
    assert kept(top_p_filter(logits, 0.01)) == [[0]]  # the top token is always kept
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    # vocabulary order does not matter
    shuffled = logits[:, [3, 1, 0, 2]]
    assert kept(top_p_filter(shuffled, 0.6)) == [[1, 2]]


def test_min_p_drops_tokens_below_fraction_of_top() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = min_p_filter(probs.log(), 0.3)  # threshold 0.15
    assert kept(out) == [[0, 1, 2]]
    assert kept(min_p_filter(probs.log(), 0.61)) == [[0]]
    assert torch.equal(min_p_filter(probs.log(), 0.0), probs.log())


def test_repetition_penalty_hf_semantics() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_frequency_presence_penalty_openai_semantics() -> None:
    logits = torch.zeros(1, 4)
    counts = torch.tensor([[0, 1, 3, 0]])
    out = apply_frequency_presence_penalty(logits, counts, 0.5, 1.0)
    assert out.tolist() == [[0.0, -1.5, -2.5, 0.0]]


def test_no_repeat_ngram_blocks_only_the_repeating_token() -> None:
    # history: 5 6 7 5 6 -> with n=3 the prefix (5, 6) was followed by 7 -> 7 is banned
    history = torch.tensor([[5, 6, 7, 5, 6]])
    mask = banned_ngram_mask(history, 3, 10)
    assert torch.nonzero(mask[0]).flatten().tolist() == [7]
    # n=2: prefix (6,) was followed by 7 -> banned 7; prefix for n=4 (7, 5, 6) never seen before -> none
    assert torch.nonzero(banned_ngram_mask(history, 2, 10)[0]).flatten().tolist() == [7]
    assert not banned_ngram_mask(history, 4, 10).any()
    logits = torch.zeros(1, 10)
    out = apply_no_repeat_ngram(logits, history, 3)
    assert out[0, 7] == -INF and torch.isfinite(out[0, [0, 1, 2, 3, 4, 5, 6, 8, 9]]).all()


def test_no_repeat_ngram_ignores_padding_and_is_per_row() -> None:
    # row 0 is left padded with -1; padding never matches
    history = torch.tensor([[-1, -1, 1, 2, 1], [3, 1, 4, 3, 1]])
    mask = banned_ngram_mask(history, 2, 6)
    assert torch.nonzero(mask[0]).flatten().tolist() == [2]
    assert torch.nonzero(mask[1]).flatten().tolist() == [4]
    # n-gram size 1 bans every token already present (except padding)
    mask1 = banned_ngram_mask(history, 1, 6)
    assert torch.nonzero(mask1[0]).flatten().tolist() == [1, 2]


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=0.0, top_k=3, top_p=0.5)
    assert torch.equal(sample(logits, params), logits.argmax(-1))


def test_same_seed_same_sample_and_distribution() -> None:
    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0)
    draws_a = [sample(logits, params, g).item() for g in [make_generator(7)] for _ in range(20)]
    gen = make_generator(7)
    draws_b = [sample(logits, params, gen).item() for _ in range(20)]
    assert draws_a == draws_b
    assert len(set(draws_a)) > 1  # it really samples
    # the exponential-race draw follows softmax: check frequencies on a 3-token distribution
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    many = sample(probs.log().expand(20000, 3), params, make_generator(3))
    freq = torch.bincount(many, minlength=3).float() / many.numel()
    assert torch.allclose(freq, probs[0], atol=0.02)


def test_sample_respects_top_k_and_penalties_in_state() -> None:
    logits = torch.tensor([[0.0, 10.0, 9.9, -5.0]])
    params = SamplingParams(temperature=1.0, top_k=1)
    gen = make_generator(0)
    assert {sample(logits, params, gen).item() for _ in range(20)} == {1}
    # repetition penalty through the state: token 1 was in the prompt, so 2 wins greedily
    state = PenaltyState(SamplingParams(repetition_penalty=2.0), [[1]], 4, torch.device("cpu"))
    processed = state.process(logits)
    assert processed.argmax(-1).item() == 2
    state.update(torch.tensor([2]))
    assert state.process(logits)[0].tolist() == pytest.approx([0.0, 5.0, 4.95, -5.0])  # 1 and 2 penalised


def test_penalty_state_counts_and_history() -> None:
    params = SamplingParams(frequency_penalty=1.0, no_repeat_ngram_size=2)
    state = PenaltyState(params, [[3, 4], [4]], 6, torch.device("cpu"))
    assert state.history.tolist() == [[3, 4], [-1, 4]]
    state.update(torch.tensor([3, 5]))
    state.update(torch.tensor([3, 4]))
    assert state.counts[0].tolist() == [0, 0, 0, 2, 0, 0]
    out = state.process(torch.zeros(2, 6))
    assert out[0, 3] == -INF  # (3, 3) already occurred -> 3 banned after 3
    assert out[0, 4] == -INF  # (3, 4) occurred at the start
    assert out[1, 5] == -INF and out[1, 4] == -1.0  # (4, 5) seen; token 4 generated once


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.2}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"frequency_penalty": 3.0}, "frequency_penalty"),
        ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_beams": 0}, "num_beams"),
        ({"stop": ("",)}, "stop"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_invalid_values_raise_clear_error(overrides: dict, field: str) -> None:
    with pytest.raises(SamplingParamsError, match=field) as info:
        SamplingParams().replace(**overrides).validate()
    assert isinstance(info.value, UserError)


def test_replace_and_stop_normalisation() -> None:
    params = SamplingParams().replace(stop="###", temperature=0.7)
    assert params.stop == ("###",) and params.temperature == 0.7
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    with pytest.raises(SamplingParamsError, match="unknown sampling option"):
        SamplingParams().replace(temprature=1.0)
    assert SamplingParams().validate().greedy
