"""An extractive reader on the project's BERT encoder: finds the words of a passage that answer a question,
or says that no passage does.

    question, passages ─► WordPiece windows: [CLS] question [SEP] passage tokens [SEP]
        ─► the embedder's own layers, shared and frozen (with optional LoRA side paths beside them)
        ─► the reader's own top layers (trained copies of the embedder's) ─► span head: start/end logit per token
        ─► per window: best span (start + end logit) against "no answer here" (the [CLS] start + end logit)
        ─► Span(passage, character offsets into the passage, text, score = span − null)

Sharing: `SpanReader` holds the embedder's `BertModel` without owning it: its embeddings and lower layers run
as the same tensors the index's embeddings came from, and are never changed (the reader's trainable part, its
top layers, LoRA and head, sits beside them). Its state dict holds only that part.

Scores: a window's span score minus its own null score is a log-odds-like number that compares across windows
and passages (the SQuAD 2.0 recipe), so one threshold decides answerability. Offsets come from the tokenizer's
offset mapping into the passage text, never from searching the text again.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.bert import BertModel
from model.errors import CheckpointError
from model.lora import LowRankSide

FORMAT = "assistant-reader/1"
CONFIG_NAME = "reader.json"
WEIGHTS_NAME = "reader.safetensors"
SIDE_TARGETS = ("qkv", "attn_out", "mlp_in", "mlp_out")  # the linears of a BertLayer


@dataclass
class ReaderConfig:
    """What the reader adds beside the shared encoder, and how it cuts inputs into windows."""

    own_layers: int = 3  # top encoder layers replaced by the reader's own trained copies
    lora_rank: int = 32  # LoRA rank on the shared layers below them (0 = none)
    lora_alpha: float = 64.0
    window: int = 384  # tokens per window, [CLS] question [SEP] passage [SEP]
    stride: int = 128  # passage tokens that consecutive windows of a long passage share
    max_question_tokens: int = 64
    max_answer_tokens: int = 30
    base: str = ""  # name of the encoder the reader was trained on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReaderConfig":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class SpanReader(nn.Module):
    """The reader network: shared encoder layers (+ LoRA beside them), own top layers, a start/end head."""

    def __init__(self, base: BertModel, config: ReaderConfig) -> None:
        super().__init__()
        n_layers = base.config.num_layers
        if not 0 <= config.own_layers <= n_layers:
            raise ValueError(f"own_layers must be in 0..{n_layers}, got {config.own_layers}")
        self.config = config
        self.__dict__["base"] = base  # shared, not a submodule: not in state_dict(), not moved by .to()
        self.n_shared = n_layers - config.own_layers
        hidden = base.config.hidden_size
        sizes = {"qkv": (hidden, 3 * hidden), "attn_out": (hidden, hidden),
                 "mlp_in": (hidden, base.config.intermediate_size), "mlp_out": (base.config.intermediate_size, hidden)}
        self.own = nn.ModuleList(copy.deepcopy(base.layers[i]) for i in range(self.n_shared, n_layers))
        self.own.requires_grad_(True)
        self.side = None
        if config.lora_rank > 0 and self.n_shared > 0:
            self.side = nn.ModuleList(
                nn.ModuleDict({name: LowRankSide(*sizes[name], config.lora_rank, config.lora_alpha)
                               for name in SIDE_TARGETS})
                for _ in range(self.n_shared)
            )
        self.head = nn.Linear(hidden, 2)  # start, end
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        base.requires_grad_(False)
        device = next(base.parameters()).device
        self.to(device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # input_ids, attention_mask, token_type_ids: [B, T] -> start, end logits [B, T] (float32; -1e4 on padding)
        base: BertModel = self.base
        x = base.embeddings(input_ids, token_type_ids)  # [B, T, H]
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        for i in range(self.n_shared):
            x = base.layers[i](x, mask, side=None if self.side is None else self.side[i])
        for layer in self.own:
            x = layer(x, mask)
        logits = self.head(x).float()  # [B, T, 2]
        logits = logits.masked_fill(~attention_mask.bool()[..., None], -1e4)
        start, end = logits.unbind(-1)  # each [B, T]
        return start, end

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The reader's own weights (what it adds beside the shared encoder)."""
        return {k: v.detach() for k, v in self.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# inputs: windows over passages, with offsets back into the passage text
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Window:
    """One model input: [CLS] question [SEP] a run of one passage's tokens [SEP]."""

    passage: int  # index of the passage among those given
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]  # per token: (start, end) characters in the passage; None off-passage


class WindowMaker:
    """Cuts (question, passage) pairs into windows of at most `config.window` tokens, overlapping by `stride`."""

    def __init__(self, tokenizer: Any, config: ReaderConfig) -> None:
        self.hf = getattr(tokenizer, "hf", tokenizer)  # model.tokenizer.Tokenizer or a tokenizers.Tokenizer
        self.config = config
        self.cls = self.hf.token_to_id("[CLS]")
        self.sep = self.hf.token_to_id("[SEP]")
        if self.cls is None or self.sep is None:
            raise CheckpointError("the encoder's tokenizer has no [CLS]/[SEP] tokens; the reader needs a BERT tokenizer")

    def question_ids(self, question: str) -> list[int]:
        return self.hf.encode(question, add_special_tokens=False).ids[: self.config.max_question_tokens]

    def passage_tokens(self, passages: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, character offsets) of each passage, tokenised once."""
        encodings = self.hf.encode_batch(list(passages), add_special_tokens=False)
        return [(list(e.ids), [tuple(o) for o in e.offsets]) for e in encodings]

    def windows(self, question: str | list[int], passages: Sequence[str],
                tokens: list[tuple[list[int], list[tuple[int, int]]]] | None = None) -> list[Window]:
        """Every window of every passage, in passage order. A passage longer than one window is covered by
        overlapping windows; an empty passage still gets one (answer-less) window."""
        q_ids = self.question_ids(question) if isinstance(question, str) else list(question)
        room = self.config.window - len(q_ids) - 3
        if room < 8:
            raise ValueError(f"a {self.config.window}-token window leaves no room after a {len(q_ids)}-token question")
        step = max(1, room - self.config.stride)
        head = [self.cls, *q_ids, self.sep]
        out: list[Window] = []
        for p, (ids, offsets) in enumerate(tokens if tokens is not None else self.passage_tokens(passages)):
            start = 0
            while True:
                stop = min(start + room, len(ids))
                body = ids[start:stop]
                out.append(Window(
                    passage=p,
                    input_ids=[*head, *body, self.sep],
                    token_type_ids=[0] * len(head) + [1] * (len(body) + 1),
                    offsets=[None] * len(head) + list(offsets[start:stop]) + [None],
                ))
                if stop >= len(ids):
                    break
                start += step
        return out


def span_targets(window: Window, answer_start: int, answer_end: int) -> tuple[int, int]:
    """Token positions (start, end) of the answer's characters [answer_start, answer_end) in `window`, or
    (0, 0) — the [CLS] "no answer" position — when the window does not hold the whole answer."""
    tokens = [(i, o) for i, o in enumerate(window.offsets) if o is not None and o[1] > o[0]]
    if not tokens or answer_end <= answer_start:
        return 0, 0
    if answer_start < tokens[0][1][0] or answer_end > tokens[-1][1][1]:
        return 0, 0  # the answer begins before or runs past this window
    start = next(i for i, o in tokens if o[1] > answer_start)
    end = max(i for i, o in tokens if o[0] < answer_end)
    return (start, end) if end >= start else (0, 0)


def pad_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, token_type_ids) rows -> input_ids, attention_mask, token_type_ids [B, T]."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, tt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        types[i, : len(tt)] = torch.tensor(tt, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}


# ---------------------------------------------------------------------------------------------------------------
# training: a task for model.train.Trainer
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SpanExample:
    """A training window with its answer's token positions (0, 0 = no answer in this window)."""

    input_ids: list[int]
    token_type_ids: list[int]
    start: int
    end: int


class SpanTask:
    """model.train's task interface for the reader: cross-entropy of the start and end positions."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def collate(self, examples: Sequence[SpanExample]) -> dict[str, torch.Tensor]:
        batch = pad_batch([(e.input_ids, e.token_type_ids) for e in examples], self.pad_id)
        batch["start"] = torch.tensor([e.start for e in examples], dtype=torch.long)
        batch["end"] = torch.tensor([e.end for e in examples], dtype=torch.long)
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["start"].numel())

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed (start + end) / 2 cross-entropy over the batch's windows, and how many windows."""
        start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # [B, T]
        loss = (F.cross_entropy(start, batch["start"], reduction="sum")
                + F.cross_entropy(end, batch["end"], reduction="sum")) / 2
        return loss, int(batch["start"].numel())


# ---------------------------------------------------------------------------------------------------------------
# inference: spans from logits
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Span:
    """The reader's best answer inside one passage."""

    passage: int  # index of the passage among those given
    start: int  # character offsets into that passage's text
    end: int
    text: str
    score: float  # span logit minus the window's "no answer" logit: > 0 leans answerable
    null_score: float  # the lowest "no answer" logit over the passage's windows
    probability: float = 0.0  # softmax of this span within its window (start x end), for display

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_span_in_window(start: torch.Tensor, end: torch.Tensor, window: Window,
                        max_answer_tokens: int) -> tuple[int, int, float, float, float] | None:
    """(first token, last token, span logit, null logit, probability) of the best passage span in a window."""
    positions = [i for i, o in enumerate(window.offsets) if o is not None and o[1] > o[0]]
    if not positions:
        return None
    pos = torch.tensor(positions)
    s, e = start[pos], end[pos]  # [P]
    scores = s[:, None] + e[None, :]  # [P, P]: start i, end j
    distance = pos[None, :] - pos[:, None]  # token distance j - i
    scores = scores.masked_fill((distance < 0) | (distance >= max_answer_tokens), float("-inf"))
    flat = int(torch.argmax(scores))
    i, j = divmod(flat, len(positions))
    n = int(start.shape[0])
    log_p = (torch.log_softmax(start[:n], 0)[positions[i]] + torch.log_softmax(end[:n], 0)[positions[j]])
    return positions[i], positions[j], float(scores[i, j]), float(start[0] + end[0]), float(log_p.exp())


def decode_spans(start: torch.Tensor, end: torch.Tensor, windows: Sequence[Window], passages: Sequence[str],
                 max_answer_tokens: int) -> list[Span]:
    """The best span of each passage (over its windows), best first. start/end: [W, T] logits."""
    best: dict[int, Span] = {}
    nulls: dict[int, float] = {}
    for w, window in enumerate(windows):
        n = len(window.input_ids)
        found = best_span_in_window(start[w, :n], end[w, :n], window, max_answer_tokens)
        if found is None:
            continue
        i, j, span_logit, null_logit, prob = found
        nulls[window.passage] = min(nulls.get(window.passage, null_logit), null_logit)
        score = span_logit - null_logit
        current = best.get(window.passage)
        if current is None or score > current.score:
            char_start, char_end = window.offsets[i][0], window.offsets[j][1]
            text = passages[window.passage][char_start:char_end]
            best[window.passage] = Span(window.passage, char_start, char_end, text, score, null_logit, prob)
    for passage, span in best.items():
        span.null_score = nulls[passage]
    return sorted(best.values(), key=lambda s: -s.score)


def unit_span_scores(start: torch.Tensor, end: torch.Tensor, windows: Sequence[Window],
                     bounds: Sequence[Sequence[tuple[int, int]]], max_answer_tokens: int) -> list[list[float | None]]:
    """Per passage, per unit (character bounds): the best span logit inside the unit minus the window's null logit,
    maximised over the windows that cover it. start/end: [W, T] logits."""
    out: list[list[float | None]] = [[None] * len(b) for b in bounds]
    for w, window in enumerate(windows):
        units = bounds[window.passage] if window.passage < len(bounds) else []
        if not units:
            continue
        positions, unit_of = [], []
        for i, offset in enumerate(window.offsets):
            if offset is None or offset[1] <= offset[0]:
                continue
            u = next((k for k, (a, b) in enumerate(units) if a <= offset[0] < b), -1)
            if u >= 0:
                positions.append(i)
                unit_of.append(u)
        if not positions:
            continue
        pos = torch.tensor(positions)
        ids = torch.tensor(unit_of)  # [P]
        scores = start[w, pos][:, None] + end[w, pos][None, :]  # [P, P]: start i, end j
        distance = pos[None, :] - pos[:, None]
        valid = (ids[:, None] == ids[None, :]) & (distance >= 0) & (distance < max_answer_tokens)
        best_from = scores.masked_fill(~valid, float("-inf")).max(dim=1).values  # [P]
        null = float(start[w, 0] + end[w, 0])
        for u, value in zip(unit_of, best_from.tolist()):
            if value == float("-inf"):
                continue
            value -= null
            current = out[window.passage][u]
            if current is None or value > current:
                out[window.passage][u] = value
    return out


class Reader:
    """The user-facing reader: a SpanReader beside a loaded Encoder, plus its tokenizer and windowing.

        reader = Reader.load(encoder)                 # the bundled reader weights
        spans = reader.read("Who introduced LoRA?", [passage_1, passage_2])
        spans[0].text, spans[0].passage, spans[0].start, spans[0].score
    """

    def __init__(self, model: SpanReader, tokenizer: Any, *, name: str = "reader",
                 metadata: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.config = model.config
        self.windows = WindowMaker(tokenizer, model.config)
        self.name = name
        self.metadata = metadata or {}

    @classmethod
    def new(cls, encoder: Any, config: ReaderConfig | None = None) -> "Reader":
        """An untrained reader beside `encoder` (a model.encoder.Encoder)."""
        config = config or ReaderConfig()
        if not config.base:
            config.base = encoder.name
        return cls(SpanReader(encoder.model, config), encoder.tokenizer)

    @classmethod
    def load(cls, encoder: Any, path: str | Path) -> "Reader":
        """Load reader weights saved by `save` beside `encoder`; CheckpointError if they do not fit it."""
        from safetensors.torch import load_file

        folder = Path(path)
        meta_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not meta_path.is_file() or not weights_path.is_file():
            raise CheckpointError(f"{folder} is not a reader folder (it needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                                  "train one with `assistant train-reader`, or run with --no-reader")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{meta_path} cannot be read ({exc}); restore it or run with --no-reader") from exc
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}; "
                                  "this reader was written by another version")
        config = ReaderConfig.from_dict(meta.get("config", {}))
        hidden = encoder.model.config.hidden_size
        if meta.get("hidden_size") not in (None, hidden) or meta.get("num_layers") not in (
                None, encoder.model.config.num_layers):
            raise CheckpointError(
                f"the reader in {folder} was trained on {config.base or 'another encoder'} "
                f"({meta.get('num_layers')} layers, width {meta.get('hidden_size')}), which does not match the "
                f"loaded encoder {encoder.name}; use the matching encoder or --no-reader")
        model = SpanReader(encoder.model, config)
        try:
            state = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise CheckpointError(f"{weights_path} is damaged ({exc}); restore it or run with --no-reader") from exc
        own = model.state_dict()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state))[:3], sorted(set(state) - set(own))[:3]
            raise CheckpointError(f"{weights_path} does not match its {CONFIG_NAME} (missing {missing}, "
                                  f"unexpected {extra}); restore the folder or run with --no-reader")
        for name, tensor in state.items():
            if tensor.shape != own[name].shape:
                raise CheckpointError(f"{weights_path}: {name} has shape {tuple(tensor.shape)}, expected "
                                      f"{tuple(own[name].shape)}")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        return cls(model, encoder.tokenizer, name=str(folder), metadata=meta.get("metadata", {}))

    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None,
             dtype: torch.dtype = torch.float16) -> Path:
        """Write reader.json + reader.safetensors (own weights only, `dtype`) into `folder`, atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.to("cpu", dtype).contiguous() for k, v in self.model.trainable_state().items()}
        base = self.model.base.config
        meta = {"format": FORMAT, "config": self.config.to_dict(), "hidden_size": base.hidden_size,
                "num_layers": base.num_layers, "metadata": {**self.metadata, **(metadata or {})}}
        tmp = folder / f".{WEIGHTS_NAME}.tmp-{os.getpid()}"
        save_file(state, str(tmp))
        os.replace(tmp, folder / WEIGHTS_NAME)
        tmp = folder / f".{CONFIG_NAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / CONFIG_NAME)
        return folder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def _logits(self, question: str, passages: Sequence[str], batch_size: int = 16) \
            -> tuple[list[Window], torch.Tensor, torch.Tensor]:
        """The windows over `passages` and the model's start/end logits for them, [W, T] each."""
        windows = self.windows.windows(question, passages)
        starts, ends = [], []
        width = max(len(w.input_ids) for w in windows)
        for begin in range(0, len(windows), batch_size):
            chunk = windows[begin : begin + batch_size]
            batch = pad_batch([(w.input_ids, w.token_type_ids) for w in chunk], self.model.base.config.pad_token_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            start, end = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            pad = width - start.shape[1]
            starts.append(F.pad(start.float().cpu(), (0, pad), value=-1e4))
            ends.append(F.pad(end.float().cpu(), (0, pad), value=-1e4))
        return windows, torch.cat(starts), torch.cat(ends)

    def read(self, question: str, passages: Sequence[str], batch_size: int = 16) -> list[Span]:
        """The best span of each passage, best first (passages without any token are left out)."""
        if not passages:
            return []
        windows, starts, ends = self._logits(question, passages, batch_size)
        return decode_spans(starts, ends, windows, passages, self.config.max_answer_tokens)

    def read_units(self, question: str, passages: Sequence[str], bounds: Sequence[Sequence[tuple[int, int]]],
                   batch_size: int = 16) -> tuple[list[Span], list[list[float | None]]]:
        """`read`, and from the same forward pass each unit's score: for `bounds[p][u]` = (start, end) characters of
        unit u (a sentence) of passage p, the best span logit lying inside the unit minus its window's "no answer"
        logit (None for a unit no window covers). A sentence-relevance signal for composed answers."""
        if not passages:
            return [], []
        windows, starts, ends = self._logits(question, passages, batch_size)
        spans = decode_spans(starts, ends, windows, passages, self.config.max_answer_tokens)
        return spans, unit_span_scores(starts, ends, windows, bounds, self.config.max_answer_tokens)

    def num_parameters(self) -> int:
        """Parameters the reader adds beside the shared encoder."""
        return sum(p.numel() for p in self.model.parameters())


__all__ = ["Reader", "ReaderConfig", "Span", "SpanExample", "SpanReader", "SpanTask", "Window", "WindowMaker",
           "decode_spans", "pad_batch", "span_targets", "unit_span_scores"]
