"""Pre-training a tiny decoder from scratch: tokenizer, packing, loss falls, checkpoint reloads."""

from __future__ import annotations

import pytest
import torch

from model.config import DecoderConfig
from model.decoder import greedy_generate
from model.errors import UserError
from model.pretrain import pack_windows, pretrain, read_texts
from model.train import TrainConfig

SENTENCES = [
    "the cat sat on the mat and looked at the red door.",
    "a dog ran in the park and found a small blue ball.",
    "the sun rises in the east and sets in the west every day.",
    "water boils at one hundred degrees at sea level.",
]


def corpus(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        body = " ".join(SENTENCES[(i + j) % 4] for j in range(6))
        (folder / ("sub" if i % 2 else ".") / f"doc{i}.txt").write_text(body, encoding="utf-8")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    return folder


def test_pack_windows_joins_documents_with_a_separator():
    windows = pack_windows([[5, 6, 7], [8, 9]], seq_len=4, separator=0)
    assert [w.input_ids for w in windows] == [[5, 6, 7, 0], [8, 9, 0]]
    assert all(w.labels == w.input_ids for w in windows)


def test_read_texts_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        read_texts(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no text files"):
        read_texts(tmp_path / "empty")


def test_pretrain_tiny_model_loss_falls_and_checkpoint_reloads(tmp_path):
    from model.weights import load_decoder

    folder = corpus(tmp_path)
    assert len(read_texts(folder)) == 12
    config = TrainConfig(max_steps=40, batch_size=8, lr=1e-2, warmup_steps=4, eval_every=20, save_every=20,
                         progress=False, device="cpu")
    run = pretrain(folder, out_dir=tmp_path / "out", vocab_size=300, seq_len=64, train_config=config,
                   model_config=DecoderConfig.tiny(vocab_size=300, max_seq_len=128))
    losses = [loss for _, loss in run.result.train_loss]
    assert run.tokenizer.vocab_size <= 300
    assert losses[0] > 4.5 and sum(losses[-5:]) / 5 < 0.6 * losses[0]
    assert run.result.eval_loss[-1][1] < 0.6 * losses[0]

    loaded = load_decoder(run.checkpoint)
    tokens = torch.tensor([run.tokenizer.encode(SENTENCES[0])])
    torch.testing.assert_close(loaded.model.eval()(tokens), run.model.eval()(tokens))
    # the reloaded model generates (through the KV cache) with its own tokenizer
    new_ids = greedy_generate(loaded.model, run.tokenizer.encode("the cat sat on the"), 4)
    assert len(new_ids) == 4 and all(0 <= i < 300 for i in new_ids)
