"""Margin-MSE distillation (GPL / Hofstätter et al.): a bi-encoder student learns a teacher's score margins.

    loss = MSE( s(q, p+) - s(q, p-) ,  t(q, p+) - t(q, p-) )

Student scores are dot products of *unnormalised* mean-pooled embeddings, as GPL trains them: the margin
then has the teacher's scale (a cross-encoder's logits) instead of being squeezed into [-2, 2] by cosine.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.encoder import Encoder, mean_pool


def margin_mse_loss(student_pos: torch.Tensor, student_neg: torch.Tensor,
                    teacher_pos: torch.Tensor, teacher_neg: torch.Tensor) -> torch.Tensor:
    """MSE between the student's and the teacher's margins; every input [B]."""
    return F.mse_loss(student_pos - student_neg, (teacher_pos - teacher_neg).to(student_pos.dtype))


def embed_with_grad(encoder: Encoder, texts: Sequence[str]) -> torch.Tensor:
    """Mean-pooled (not normalised) embeddings [B, H] of texts, with gradients through the encoder."""
    ids_list = [enc.ids for enc in encoder.tokenizer.hf.encode_batch(list(texts), add_special_tokens=False)]
    input_ids, mask = encoder._batch_tensors(ids_list)  # [B, T] each
    input_ids, mask = input_ids.to(encoder.device), mask.to(encoder.device)
    return mean_pool(encoder.model(input_ids, mask), mask)  # [B, H]


def score_pairs(encoder: Encoder, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
    """Dot-product scores [B] of (query i, passage i), with gradients."""
    return (embed_with_grad(encoder, queries) * embed_with_grad(encoder, passages)).sum(-1)


__all__ = ["margin_mse_loss", "embed_with_grad", "score_pairs"]
