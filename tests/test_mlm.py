"""The encoder's MLM head (model/mlm.py): parity with transformers' BertForMaskedLM on a tiny random config,
masked positions only in the loss, and BERT's masking rule."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.bert import BertModel  # noqa: E402
from model.config import EncoderConfig  # noqa: E402
from model.mlm import MlmHead, hf_mlm_head_state, mask_tokens, mlm_logits, mlm_loss  # noqa: E402
from model.weights import _bert_state_from_hf  # noqa: E402

VOCAB = 120


def _pair():
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, hidden_act="gelu")
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(cfg).eval()
    with torch.no_grad():  # a non-zero head bias, so the mapping of it is checked too
        ref.cls.predictions.bias.normal_()
    config = EncoderConfig.from_hf(cfg.to_dict())
    encoder = BertModel(config).eval()
    head = MlmHead(encoder).eval()
    hf = ref.state_dict()
    encoder.load_state_dict(_bert_state_from_hf(hf, config))
    head.load_state_dict(hf_mlm_head_state(hf), strict=False)  # decoder.weight: tied to the embeddings
    return ref, encoder, head


def test_mlm_head_matches_transformers() -> None:
    ref, encoder, head = _pair()
    assert head.decoder.weight is encoder.embeddings.word.weight
    input_ids = torch.randint(4, VOCAB, (3, 13))
    mask = torch.ones_like(input_ids)
    mask[2, 9:] = 0
    labels = torch.full_like(input_ids, -100)
    labels[0, 3], labels[1, 5], labels[1, 7], labels[2, 2] = 7, 9, 11, 13
    with torch.no_grad():
        out = ref(input_ids=input_ids, attention_mask=mask, labels=labels)
        got = mlm_logits(encoder, head, input_ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], out.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mlm_loss(got, labels), out.loss, rtol=1e-5, atol=1e-5)


def test_unmasked_positions_do_not_contribute() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 6, VOCAB)
    labels = torch.full((2, 6), -100)
    labels[0, 1], labels[1, 4] = 5, 17
    base = mlm_loss(logits, labels)
    other = logits.clone()
    other[labels == -100] = torch.randn_like(other[labels == -100]) * 10  # change every unmasked position
    torch.testing.assert_close(mlm_loss(other, labels), base)
    logits.requires_grad_(True)
    mlm_loss(logits, labels).backward()
    assert logits.grad[labels == -100].abs().sum() == 0


def test_mask_tokens_rule() -> None:
    cls_id, sep_id, pad_id, mask_id = 2, 3, 0, 4
    gen = torch.Generator().manual_seed(0)
    rows, width = 64, 100
    ids = torch.randint(5, VOCAB, (rows, width), generator=gen)
    ids[:, 0] = cls_id
    lengths = torch.randint(50, width, (rows,), generator=gen)
    attention = (torch.arange(width)[None] < lengths[:, None]).long()
    ids[torch.arange(rows), lengths - 1] = sep_id
    ids[attention == 0] = pad_id
    masked, labels = mask_tokens(ids, attention, mask_id, [cls_id, sep_id, pad_id], VOCAB, generator=gen)
    selected = labels != -100
    special = (ids == cls_id) | (ids == sep_id) | (ids == pad_id)
    assert not selected[special].any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # only selected positions change
    rate = selected.sum().item() / (~special).sum().item()
    assert 0.12 < rate < 0.18
    as_mask = (masked[selected] == mask_id).float().mean().item()
    kept = (masked[selected] == ids[selected]).float().mean().item()
    assert 0.74 < as_mask < 0.86 and 0.05 < kept < 0.16
    assert not torch.isin(masked[selected & (masked != mask_id)], torch.tensor([cls_id, sep_id, pad_id])).any()
