"""The encoder's embedding precision: bfloat16 where the CPU multiplies it in hardware (the default "auto"),
float32 elsewhere, the reader's float32 weights untouched, and embeddings within cosine 0.999 of float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import runtime
from model.encoder import Encoder

TEXTS = [
    "The shared MIME-info database maps file names and magic numbers to MIME types.",
    "Call parigp with -p to set the number of threads; each thread has its own stack.",
    "Rainwater tanks cut mains water use by a third in the gardens we studied over two summers.",
    "def merge(*iterables, key=None, reverse=False): merge sorted inputs into one sorted output.",
    "Le chat dort sur le canapé depuis midi.",
    "x = 3; y = x ** 2 + 1 ⇒ y = 10",
    "Photosynthesis converts light energy into chemical energy stored in glucose. " * 12,
]


@pytest.fixture()
def fresh_encoder():
    """A private encoder (its weights may be changed in place by the test)."""
    return Encoder.load(None, device="cpu", dtype=torch.float32, embed_dtype="auto")


def test_auto_picks_bfloat16_only_on_a_cpu_with_native_bf16(fresh_encoder, monkeypatch) -> None:
    monkeypatch.delenv("ASSISTANT_EMBED_DTYPE", raising=False)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert fresh_encoder.embed_dtype == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert fresh_encoder.embed_dtype == torch.float32
    monkeypatch.setenv("ASSISTANT_EMBED_DTYPE", "bfloat16")  # the override wins over the CPU check
    assert fresh_encoder.embed_dtype == torch.bfloat16
    explicit = Encoder(fresh_encoder.model, fresh_encoder.tokenizer, embed_dtype="float32")
    assert explicit.embed_dtype == torch.float32  # an explicit request beats the environment


def test_bfloat16_embeddings_stay_close_to_float32_and_leave_the_weights_alone(fresh_encoder, real_encoder) -> None:
    fresh_encoder.embed_request = "bfloat16"
    got = fresh_encoder.embed(TEXTS, batch_size=4)
    want = real_encoder.embed(TEXTS, batch_size=4)  # float32
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * want).sum(1)
    assert cosine.min() >= 0.999, cosine
    assert not np.array_equal(got, want)  # it really ran in bfloat16
    # the weights the reader shares stay float32; the bfloat16 copy is separate
    assert all(p.dtype == torch.float32 for p in fresh_encoder.model.parameters())
    # ranking: each text's nearest neighbour among the float32 vectors is itself
    assert (got @ want.T).argmax(1).tolist() == list(range(len(TEXTS)))


def test_the_bfloat16_copy_follows_changed_weights(fresh_encoder) -> None:
    fresh_encoder.embed_request = "bfloat16"
    before = fresh_encoder.embed(TEXTS[:3])
    assert np.array_equal(fresh_encoder.embed(TEXTS[:3]), before)  # same copy, same numbers
    with torch.no_grad():
        fresh_encoder.model.embeddings.word.weight.mul_(1.5).add_(0.01)
    after = fresh_encoder.embed(TEXTS[:3])
    rebuilt = Encoder(fresh_encoder.model, fresh_encoder.tokenizer, embed_dtype="bfloat16").embed(TEXTS[:3])
    assert not np.allclose(after, before, atol=1e-3)
    np.testing.assert_array_equal(after, rebuilt)


def test_float32_request_embeds_with_the_weights_themselves(fresh_encoder, real_encoder) -> None:
    fresh_encoder.embed_request = "float32"
    np.testing.assert_array_equal(fresh_encoder.embed(TEXTS, batch_size=4), real_encoder.embed(TEXTS, batch_size=4))
    assert fresh_encoder._embed_copy is None
