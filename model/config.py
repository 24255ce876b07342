"""Model configurations: plain dataclasses with named presets (a `tiny` preset for tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


def _from_dict(cls, data: dict[str, Any]):
    """Build a dataclass from a dict, ignoring keys it does not know (forward compatibility)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class EncoderConfig:
    """A BERT-family bidirectional encoder (post-LayerNorm blocks, learned absolute positions, GELU MLP)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    max_seq_length: int = 256  # what the sentence-embedding model was trained with (incl. [CLS] and [SEP])

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def tiny(cls, vocab_size: int = 512) -> "EncoderConfig":
        """2 layers, width 32: for fast tests."""
        return cls(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_position_embeddings=128, max_seq_length=64)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], max_seq_length: int | None = None) -> "EncoderConfig":
        """From a Hugging Face BERT `config.json` dict."""
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            pad_token_id=hf.get("pad_token_id", 0) or 0,
            max_seq_length=max_seq_length or hf["max_position_embeddings"],
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderConfig":
        return _from_dict(cls, data)


@dataclass
class DecoderConfig:
    """A Llama-family decoder-only model: RMSNorm, RoPE, grouped-query attention, SwiGLU."""

    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    ffn_dim: int = 1536
    rope_base: float = 100000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 8192
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 style

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def tiny(cls, vocab_size: int = 512, **overrides: Any) -> "DecoderConfig":
        """2 layers, width 32, 4 query heads sharing 2 KV heads: for fast tests."""
        base = dict(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                    rope_base=10000.0, norm_eps=1e-5, max_seq_len=256, tie_embeddings=True, qkv_bias=False)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def smollm2_135m(cls) -> "DecoderConfig":
        """SmolLM2-135M(-Instruct)."""
        return cls()

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "DecoderConfig":
        """From a Hugging Face Llama / Qwen2 / Mistral `config.json` dict."""
        n_heads = hf["num_attention_heads"]
        model_type = hf.get("model_type", "llama")
        qkv_bias = bool(hf.get("attention_bias", model_type == "qwen2"))
        if hf.get("head_dim") not in (None, hf["hidden_size"] // n_heads):
            from model.errors import CheckpointError

            raise CheckpointError(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads is not supported")
        return cls(
            vocab_size=hf["vocab_size"],
            dim=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            ffn_dim=hf["intermediate_size"],
            rope_base=float(hf.get("rope_theta", 10000.0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DecoderConfig":
        return _from_dict(cls, data)
