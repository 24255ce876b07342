"""A BERT-family bidirectional encoder and the sentence-embedding pipeline on top of it.

    texts ─► WordPiece ids ─► BertModel ─► masked mean pooling ─► L2 normalise ─► unit vectors

`BertModel` is the transformer (learned absolute positions + token types, post-LayerNorm blocks, GELU MLP);
`Encoder` owns a model and its tokenizer and turns lists of texts into float32 embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderConfig
from model.tokenizer import Tokenizer


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, token_type_ids: [B, T]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # [T]
        x = self.word(input_ids) + self.position(positions)[None] + self.token_type(token_type_ids)  # [B, T, H]
        return self.norm(x)


class BertLayer(nn.Module):
    """One post-LayerNorm block: x = LN(x + Attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.n_heads = config.num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)  # query, key, value fused into one matmul
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.mlp_in = nn.Linear(hidden, config.intermediate_size)
        self.mlp_out = nn.Linear(config.intermediate_size, hidden)
        self.mlp_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, side: nn.Module | None = None) -> torch.Tensor:
        # x: [B, T, H]; attn_mask: [B, 1, 1, T] bool (True = attend) or None
        # side: optional low-rank updates kept *beside* this layer's (shared, frozen) weights, e.g. the reader's
        #   LoRA; it maps a linear's name ("qkv", "attn_out", "mlp_in", "mlp_out") to a module added to its output.
        #   With side=None the layer computes exactly what the embedder computes.
        batch, seq, hidden = x.shape
        qkv = self._linear("qkv", x, side).view(batch, seq, 3, self.n_heads, hidden // self.n_heads)  # [B, T, 3, nh, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, nh, T, hd]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, nh, T, hd]
        attn = attn.transpose(1, 2).reshape(batch, seq, hidden)  # [B, T, H]
        x = self.attn_norm(x + self._linear("attn_out", attn, side))
        return self.mlp_norm(x + self._linear("mlp_out", F.gelu(self._linear("mlp_in", x, side)), side))

    def _linear(self, name: str, x: torch.Tensor, side: nn.Module | None) -> torch.Tensor:
        out = getattr(self, name)(x)
        if side is not None and name in side:
            out = out + side[name](x)
        return out


class BertModel(nn.Module):
    """The encoder: embeddings and a stack of post-LayerNorm blocks; returns the last hidden states."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # input_ids: [B, T]; attention_mask: [B, T] (1 = token, 0 = padding) -> hidden [B, T, H]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        for layer in self.layers:
            x = layer(x, mask)
        return x


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the hidden states of real tokens: hidden [B, T, H], mask [B, T] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Encoder:
    """Sentence embeddings: tokenizer + BertModel + masked mean pooling + L2 normalisation."""

    def __init__(self, model: BertModel, tokenizer: Tokenizer, *, max_length: int | None = None,
                 name: str = "encoder") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length or model.config.max_seq_length
        self.name = name
        self._cls = tokenizer.hf.token_to_id("[CLS]")
        self._sep = tokenizer.hf.token_to_id("[SEP]")
        self._pad = model.config.pad_token_id

    @classmethod
    def load(cls, spec: str | Path | None = None, device: torch.device | str | None = None,
             dtype: torch.dtype | str | None = None) -> "Encoder":
        """Load an encoder: None = the bundled all-MiniLM-L6-v2; else a local HF folder (or hub id)."""
        from model.sources import resolve_encoder
        from model.weights import load_encoder_model

        folder = resolve_encoder(spec)
        model, tokenizer, config = load_encoder_model(folder, device=device, dtype=dtype)
        name = str(spec) if spec else "sentence-transformers/all-MiniLM-L6-v2"
        return cls(model, tokenizer, max_length=config.max_seq_length, name=name)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "Encoder":
        self.model.to(device)
        return self

    def _content_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [enc.ids for enc in self.tokenizer.hf.encode_batch(list(texts), add_special_tokens=False)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Number of content tokens of each text (without [CLS]/[SEP]); at most `max_length - 2` get embedded."""
        return [len(ids) for ids in self._content_ids(texts)]

    def _batch_tensors(self, ids_list: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] ids [SEP], truncated to max_length and right-padded -> input_ids, attention_mask [B, T]."""
        limit = self.max_length - 2
        rows = [[self._cls, *ids[:limit], self._sep] for ids in ids_list]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return input_ids, mask

    def embed(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Unit-length float32 embeddings [len(texts), dim], in input order.

        Texts are sorted by length so each batch pads little, and truncated at the model's max length.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids_list = self._content_ids(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(ids_list[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        device = self.device
        starts = range(0, len(order), batch_size)
        if show_progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        with torch.inference_mode():
            for start in starts:
                idx = order[start : start + batch_size]
                input_ids, mask = self._batch_tensors([ids_list[i] for i in idx])
                input_ids, mask = input_ids.to(device), mask.to(device)
                hidden = self.model(input_ids, mask)  # [b, T, H]
                pooled = F.normalize(mean_pool(hidden.float(), mask), p=2, dim=-1)  # [b, H]
                out[idx] = pooled.cpu().numpy()
        return out
