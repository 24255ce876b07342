"""Margin-MSE distillation (model/distill.py) on a tiny random encoder moves the student toward the teacher."""

from __future__ import annotations

import torch

from model.bert import BertModel
from model.config import EncoderConfig
from model.distill import margin_mse_loss, score_pairs
from model.encoder import Encoder
from model.sources import resolve_encoder
from model.tokenizer import Tokenizer


def test_margin_mse_value() -> None:
    loss = margin_mse_loss(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0]),
                           torch.tensor([5.0, 0.0]), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(loss, torch.tensor(((2 - 4) ** 2 + (-1 + 1) ** 2) / 2))


def test_margin_mse_training_moves_margins_toward_teacher() -> None:
    tokenizer = Tokenizer.from_file(resolve_encoder(None) / "tokenizer.json")
    torch.manual_seed(0)
    student = Encoder(BertModel(EncoderConfig.tiny(vocab_size=tokenizer.vocab_size)).train(), tokenizer)
    queries = ["who wrote lora", "capital of japan", "what is bm25", "when was the café opened"]
    pos = ["lora was written by edward hu", "tokyo is the capital of japan", "bm25 ranks by term counts",
           "the café opened in 1999"]
    neg = ["tokyo is the capital of japan", "bm25 ranks by term counts", "the café opened in 1999",
           "lora was written by edward hu"]
    t_pos, t_neg = torch.tensor([4.0, 3.0, 5.0, 2.0]), torch.tensor([-1.0, 0.0, -2.0, 1.0])
    opt = torch.optim.AdamW(student.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = margin_mse_loss(score_pairs(student, queries, pos), score_pairs(student, queries, neg), t_pos, t_neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        margins = score_pairs(student, queries, pos) - score_pairs(student, queries, neg)
    assert torch.equal(margins > 0, (t_pos - t_neg) > 0)
