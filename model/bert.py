"""The BERT-family bidirectional transformer (the network only): learned absolute positions + token types,
post-LayerNorm blocks, GELU MLP; returns the last hidden states.

`model.encoder.Encoder` turns it into sentence embeddings (tokenizer, mean pooling, L2 norm) and
`model.weights.load_encoder_model` loads pretrained weights into it; this module imports neither.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderConfig


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
