"""Masked-language-model pre-training pieces for the BERT-family encoder (`model.bert.BertModel`).

    input_ids ─► mask_tokens (15%: 80% [MASK], 10% random, 10% kept) ─► BertModel ─► MlmHead ─► logits
        ─► mlm_loss: cross-entropy on the selected positions only (labels -100 elsewhere)

The head is BERT's: dense H->H, GELU, LayerNorm, then a decoder to the vocabulary whose weight is *tied* to the
encoder's word embeddings (plus its own bias). The bundled all-MiniLM-L6-v2 checkpoint has no MLM head, so
the dense/LayerNorm part starts fresh and only the decoder weight is shared with the embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from model.bert import BertModel

IGNORE_INDEX = -100


class MlmHead(nn.Module):
    """BERT's masked-LM prediction head, its decoder tied to `encoder.embeddings.word.weight`."""

    def __init__(self, encoder: BertModel) -> None:
        super().__init__()
        config = encoder.config
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.decoder.weight = encoder.embeddings.word.weight  # tied: [V, H]
        with torch.no_grad():
            self.decoder.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [B, T, H] -> logits [B, T, V]
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


def mlm_logits(encoder: BertModel, head: MlmHead, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Vocabulary logits [B, T, V] for input_ids [B, T]."""
    return head(encoder(input_ids, attention_mask, token_type_ids))


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions whose label is not -100: logits [B, T, V], labels [B, T]."""
    selected = labels != IGNORE_INDEX  # [B, T]
    if not bool(selected.any()):
        return logits.sum() * 0.0  # nothing masked: a zero that still has a graph
    return F.cross_entropy(logits[selected].float(), labels[selected])  # [N, V] vs [N]


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int,
                special_ids: Iterable[int], vocab_size: int, mlm_probability: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking rule -> (masked input_ids [B, T], labels [B, T]).

    Each real, non-special token is selected with probability `mlm_probability`; a selected token becomes
    [MASK] 80% of the time, a random non-special token 10%, and stays itself 10%. Labels hold the original id
    at selected positions and -100 elsewhere; padding (attention_mask 0) and special ids ([CLS], [SEP],
    [PAD], ...) are never selected.
    """
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=input_ids.dtype)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special.to(input_ids.device))  # [B, T]
    rand = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)  # [B, T]
    selected = eligible & (rand < mlm_probability)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)  # 80 / 10 / 10
    masked = input_ids.clone()
    masked[selected & (action < 0.8)] = mask_token_id
    to_random = selected & (action >= 0.8) & (action < 0.9)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    allowed[mask_token_id] = False
    choices = allowed.nonzero().squeeze(1)  # [V'] non-special ids
    picks = torch.randint(len(choices), input_ids.shape, generator=generator)  # [B, T]
    masked[to_random] = choices[picks].to(input_ids.device)[to_random]
    return masked, labels


def hf_mlm_head_state(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face BertForMaskedLM head (`cls.predictions.*`) to `MlmHead` names (decoder weight is tied
    to the word embeddings, loaded with the encoder)."""
    p = "cls.predictions."
    return {
        "dense.weight": hf[p + "transform.dense.weight"], "dense.bias": hf[p + "transform.dense.bias"],
        "norm.weight": hf[p + "transform.LayerNorm.weight"], "norm.bias": hf[p + "transform.LayerNorm.bias"],
        "decoder.bias": hf.get(p + "decoder.bias", hf.get(p + "bias")),
    }


__all__ = ["MlmHead", "mlm_logits", "mlm_loss", "mask_tokens", "hf_mlm_head_state", "IGNORE_INDEX"]
