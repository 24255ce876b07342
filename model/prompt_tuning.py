"""Prompt tuning: a few trainable vectors (a soft prompt) in front of a frozen decoder.

    [ soft prompt: P vectors ] [ embeddings of the prompt's tokens ] ─► frozen decoder ─► logits
       (trained)                 (the decoder's own, frozen)

Only the soft prompt (P x dim numbers, e.g. 20 x 576 = 11,520 for SmolLM2-135M) is trained; the decoder is
untouched, so one loaded generator serves several tasks, each with its own soft prompt (Lester et al., 2021,
"The Power of Scale for Parameter-Efficient Prompt Tuning").

- Training: `PromptTunedDecoder` wraps the frozen decoder and a `SoftPrompt`; `SoftPromptTask` is the
  `model.train` task (next-token loss on labelled tokens, the soft prompt's own positions carry no loss), so the
  project's `Trainer` (resumable checkpoints, schedule, held-out loss) trains it like a LoRA adapter.
- Generation: `Generator.generate / generate_batch / stream(..., soft_prompt=...)` prefill [soft prompt; prompt]
  into the KV cache through `Decoder.forward(inputs_embeds=...)`; decoding then continues from the cache with
  tokens, on the usual (native) decode path.
- On disk a soft prompt is a folder like a LoRA adapter's: `soft_prompt.safetensors` (the P x dim vectors) and
  `soft_prompt.json` (config, the base weights' identity, an embedding fingerprint of the base model and
  free-form metadata). `load_soft_prompt` refuses one trained on other base weights with a `CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.errors import CheckpointError

SOFT_PROMPT_WEIGHTS = "soft_prompt.safetensors"
SOFT_PROMPT_CONFIG = "soft_prompt.json"
SOFT_PROMPT_FORMAT = "assistant-soft-prompt/1"
INIT_MODES = ("vocab", "text", "random")
QUANT_SUFFIXES = ("+int4", "+int8")  # Generator.load's quantisation marks: the same base weights, run in low bits
FINGERPRINT_ROWS = 16  # embedding rows whose norms fingerprint the base model
FINGERPRINT_RTOL = 0.02  # bf16 / quantised copies of the same weights stay well inside this


@dataclass
class PromptTuningConfig:
    """The soft prompt's size and how it starts.

    n_virtual_tokens: P, the number of trainable vectors put in front of every prompt.
    init: "vocab" (embeddings of P random vocabulary tokens: starts on the embedding manifold, what Lester et al.
        found to train best), "text" (the embeddings of `init_text`'s tokens, repeated or cut to P: e.g. a task
        instruction) or "random" (normal with the embedding table's standard deviation).
    """

    n_virtual_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None

    def __post_init__(self) -> None:
        if self.n_virtual_tokens < 1:
            raise ValueError(f"n_virtual_tokens must be >= 1, got {self.n_virtual_tokens}")
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ValueError("init='text' needs init_text")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptTuningConfig":
        known = {"n_virtual_tokens", "init", "init_text"}
        return cls(**{k: v for k, v in data.items() if k in known})


class SoftPrompt(nn.Module):
    """P trainable vectors of the decoder's width: `weight` [P, dim], kept in float32."""

    def __init__(self, n_virtual_tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_virtual_tokens, dim))  # [P, D]

    @property
    def n_virtual_tokens(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @classmethod
    def initialise(cls, decoder: nn.Module, config: PromptTuningConfig, tokenizer: Any | None = None,
                   seed: int = 0) -> "SoftPrompt":
        """A new soft prompt for `decoder`, started as `config.init` says (`tokenizer` is needed for "text")."""
        table = decoder.tok_embeddings.weight.detach().float()  # [V, D]
        prompt = cls(config.n_virtual_tokens, table.shape[1]).to(table.device)
        gen = torch.Generator().manual_seed(seed)
        n = config.n_virtual_tokens
        if config.init == "random":
            vectors = torch.randn(n, table.shape[1], generator=gen) * float(table.std())  # [P, D]
        else:
            if config.init == "text":
                if tokenizer is None:
                    raise ValueError("init='text' needs the tokenizer")
                ids = tokenizer.encode(config.init_text, add_special_tokens=False)
                if not ids:
                    raise ValueError(f"init_text {config.init_text!r} has no tokens")
                ids = (ids * math.ceil(n / len(ids)))[:n]
            else:  # "vocab": ordinary tokens (past the first few hundred ids: specials, bytes)
                low, high = min(1000, table.shape[0] // 4), min(table.shape[0], 5000)
                ids = torch.randint(low, high, (n,), generator=gen).tolist()
            vectors = table[torch.tensor(ids, device=table.device)].cpu()  # [P, D]
        with torch.no_grad():
            prompt.weight.copy_(vectors.to(prompt.weight.device))
        return prompt

    def vectors(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The soft prompt as the decoder's activations expect it: [P, D] in `dtype` on `device`."""
        return self.weight.to(device=device, dtype=dtype)


def insert_soft_prompt(embeds: torch.Tensor, soft: torch.Tensor, pads: Sequence[int] | None = None) -> torch.Tensor:
    """[soft prompt; prompt] per row: embeds [B, T, D] (left-padded rows), soft [P, D] -> [B, P + T, D].

    Row i keeps its `pads[i]` padding slots first, then the soft prompt, then its tokens, so the soft prompt
    always sits right before the row's first real token (the same relative positions as in training).
    """
    batch, _, _ = embeds.shape
    soft = soft.to(embeds.dtype)
    if not pads or not any(pads):
        return torch.cat([soft.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)  # [B, P+T, D]
    rows = [torch.cat([embeds[i, :pad], soft, embeds[i, pad:]]) for i, pad in enumerate(pads)]  # [P+T, D] each
    return torch.stack(rows)  # [B, P+T, D]


class PromptTunedDecoder(nn.Module):
    """A frozen decoder with a trainable soft prompt in front: forward(input_ids [B, T]) -> logits [B, T, V].

    The logits are those of the prompt's own positions (the soft prompt's positions are dropped), so the
    model scores a token sequence exactly like the plain decoder does, and `model.train`'s examples and losses
    apply unchanged. Only `soft_prompt.weight` requires grad.
    """

    def __init__(self, decoder: nn.Module, soft_prompt: SoftPrompt) -> None:
        super().__init__()
        if soft_prompt.dim != decoder.config.dim:
            raise ValueError(f"a soft prompt of width {soft_prompt.dim} does not fit a decoder of width "
                             f"{decoder.config.dim}")
        self.decoder = decoder
        self.soft_prompt = soft_prompt
        decoder.requires_grad_(False)
        soft_prompt.requires_grad_(True)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[soft prompt; token embeddings]: input_ids [B, T] -> [B, P + T, D]."""
        embeds = self.decoder.tok_embeddings(input_ids)  # [B, T, D]
        return insert_soft_prompt(embeds, self.soft_prompt.vectors(embeds.dtype, embeds.device))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.decoder(None, inputs_embeds=self.embed(input_ids))  # [B, P+T, V] (or [B, P+T, D] headless)
        return out[:, self.soft_prompt.n_virtual_tokens :]  # [B, T, V]


class SoftPromptTask:
    """The `model.train` task for a `PromptTunedDecoder`: next-token loss on the labelled tokens of right-padded
    `Example`s (the same examples as a LoRA fine-tune). The output head runs only at labelled positions."""

    def __init__(self, pad_id: int, max_seq_len: int) -> None:
        from model.train import CausalLMTask

        self._causal = CausalLMTask(pad_id, max_seq_len)

    def collate(self, examples):
        return self._causal.collate(examples)

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return self._causal.count(batch)

    def tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return self._causal.tokens(batch)

    def loss(self, model: PromptTunedDecoder, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        from model.train import IGNORE_INDEX, _headless

        input_ids, labels = batch  # [B, T] each
        targets = labels[:, 1:]  # [B, T-1]: position t predicts labels[t + 1]
        selected = targets != IGNORE_INDEX  # [B, T-1]
        with _headless(model.decoder) as head:
            hidden = model(input_ids)  # [B, T, D]: final-normed hidden states (head removed)
            hidden = hidden[:, :-1][selected]  # [N, D]
            logits = head(hidden) if head is not None else hidden  # [N, V]
        loss = F.cross_entropy(logits.float(), targets[selected], reduction="sum")
        return loss, int(selected.sum())


# ---- identity checks ------------------------------------------------------------------------------------------
def base_identity(identity: str) -> str:
    """The base weights' identity of a generator identity: its quantisation mark (Generator.load's "+int4" /
    "+int8") dropped, since quantised weights are the same model; an adapter mark ("+adapter:...") stays: a soft
    prompt trained on the plain base does not fit a model that an adapter changed."""
    for suffix in QUANT_SUFFIXES:
        if identity.endswith(suffix):
            return identity[: -len(suffix)]
    return identity


def embedding_fingerprint(decoder: nn.Module) -> list[float]:
    """L2 norms of FINGERPRINT_ROWS embedding rows spread over the vocabulary: tells base models apart even when
    their identity strings say nothing (an own checkpoint, a test model), and survives bf16 / quantised copies
    (the token embedding stays a float table)."""
    table = decoder.tok_embeddings.weight.detach()  # [V, D]
    rows = torch.linspace(0, table.shape[0] - 1, FINGERPRINT_ROWS).round().long().to(table.device)
    return [round(float(x), 6) for x in table[rows].float().norm(dim=-1).cpu()]


# ---- save / load ----------------------------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_soft_prompt(folder: str | Path, soft_prompt: SoftPrompt, config: PromptTuningConfig, base_identity: str,
                     decoder: nn.Module | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write the soft prompt (safetensors, float32) and its config, base identity and the base model's embedding
    fingerprint (from `decoder`, when given) as JSON into `folder`, atomically per file."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weight = soft_prompt.weight.detach().float().cpu().contiguous()  # [P, D]
    info = {
        "format": SOFT_PROMPT_FORMAT,
        "base_identity": base_identity,
        "fingerprint": embedding_fingerprint(decoder) if decoder is not None else None,
        "prompt_tuning": config.to_dict(),
        "shape": list(weight.shape),
        "num_parameters": int(weight.numel()),
        "metadata": metadata or {},
    }
    _atomic_write_bytes(folder / SOFT_PROMPT_WEIGHTS, save({"soft_prompt": weight},
                                                           metadata={"format": SOFT_PROMPT_FORMAT}))
    _atomic_write_bytes(folder / SOFT_PROMPT_CONFIG, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return folder


def read_soft_prompt_info(folder: str | Path) -> dict[str, Any]:
    """The parsed `soft_prompt.json` of a soft-prompt folder (CheckpointError when missing or broken)."""
    folder = Path(folder)
    path = folder / SOFT_PROMPT_CONFIG
    if not path.is_file() or not (folder / SOFT_PROMPT_WEIGHTS).is_file():
        raise CheckpointError(
            f"{folder} is not a soft-prompt folder (it needs {SOFT_PROMPT_CONFIG} and {SOFT_PROMPT_WEIGHTS}); "
            "pass a folder written by model.prompt_tuning.save_soft_prompt (e.g. by "
            "`python -m assistant.question_writer train --method prompt`)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; train the soft prompt again") from exc
    if not isinstance(info, dict) or info.get("format") != SOFT_PROMPT_FORMAT or "prompt_tuning" not in info:
        found = info.get("format") if isinstance(info, dict) else None
        raise CheckpointError(f"{path} is not a soft prompt this version understands (format {found!r})")
    return info


def check_base(info: dict[str, Any], folder: Path, identity: str | None, decoder: nn.Module | None) -> None:
    """Raise CheckpointError unless the soft prompt described by `info` was trained on this base model."""
    trained_on = info.get("base_identity")
    if identity is not None and base_identity(identity) != trained_on:
        raise CheckpointError(
            f"the soft prompt in {folder} was trained on base weights {trained_on!r}, but the generator is "
            f"{identity!r}; a soft prompt only works with the weights it was trained on. Load that base model "
            "(without an adapter), or train a soft prompt for this one"
        )
    if decoder is None:
        return
    if decoder.config.dim != info["shape"][1]:
        raise CheckpointError(
            f"the soft prompt in {folder} is {info['shape'][1]} wide, the generator's embeddings "
            f"{decoder.config.dim}: it was trained for another model; train one for this model"
        )
    stored = info.get("fingerprint")
    if stored:
        here = embedding_fingerprint(decoder)
        close = len(here) == len(stored) and all(
            abs(a - b) <= FINGERPRINT_RTOL * max(abs(b), 1e-6) for a, b in zip(here, stored))
        if not close:
            raise CheckpointError(
                f"the soft prompt in {folder} was trained on another base model (its token embeddings differ from "
                f"this generator's, identity {trained_on!r}); load that model or train a soft prompt for this one"
            )


def load_soft_prompt(folder: str | Path, identity: str | None, decoder: nn.Module | None = None) -> SoftPrompt:
    """The soft prompt saved in `folder`, checked against the model it will run with.

    identity: the generator's identity (`Generator.identity` / `LoadedDecoder.identity`; a quantisation mark
        is ignored, an adapter mark is not); None skips that check on purpose.
    decoder: when given, its width and embedding fingerprint must match too, and the prompt is moved to its
        device. Raises CheckpointError on any mismatch or a broken folder.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_soft_prompt_info(folder)
    check_base(info, folder, identity, decoder)
    try:
        state = load_file(str(folder / SOFT_PROMPT_WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {folder / SOFT_PROMPT_WEIGHTS}: {exc}") from exc
    weight = state.get("soft_prompt")
    if weight is None or weight.dim() != 2 or list(weight.shape) != list(info["shape"]):
        raise CheckpointError(f"{folder / SOFT_PROMPT_WEIGHTS} does not hold the soft prompt {SOFT_PROMPT_CONFIG} "
                              "describes; train the soft prompt again")
    prompt = SoftPrompt(weight.shape[0], weight.shape[1])
    with torch.no_grad():
        prompt.weight.copy_(weight.float())
    prompt.requires_grad_(False)
    if decoder is not None:
        prompt = prompt.to(decoder.tok_embeddings.weight.device)
    return prompt.eval()


__all__ = [
    "PromptTuningConfig", "SoftPrompt", "PromptTunedDecoder", "SoftPromptTask", "insert_soft_prompt",
    "save_soft_prompt", "load_soft_prompt", "read_soft_prompt_info", "base_identity", "embedding_fingerprint",
]
