"""`assistant adapt`: the encoder learns the indexed folder's documents (no labels), then the index switches to
vectors from the adapted encoder in one atomic commit.

    index's chunks ─► (1) MLM: LoRA on a copy of the encoder + an MLM head (head first, base frozen), masked tokens
                   ─► (2) synthetic questions per chunk (the question writer; the base generator until it ships)
                   ─► (3) hard negatives per question: BM25 and the current dense index, the source chunk left out
                   ─► (4) a teacher scores (question, chunk) pairs (cross-encoder, or the evidence reader)
                   ─► (5) margin-MSE distillation into the same LoRA (student score = cosine x a fitted scale)
                   ─► adapter (model.lora format) ─► re-embed every chunk ─► IndexWriter.switch_vectors

Which steps run is `AdaptConfig` (defaults chosen by `benchmarks/adapt.py`; a step that did not help is off).

Where things live:
- The adapter: `<index>/adapters/<fingerprint>/` (adapter.json + adapter.safetensors). The index's SQLite records
  the encoder its searched vectors came from ("<encoder>+adapt:<fingerprint>", see model.encoder.Encoder.set_adapter);
  `prepare_encoder` loads the matching adapter whenever an index is opened (Assistant, CLI, server, UI).
- The bundled encoder's vectors are *kept* in the index (retrieval.store: kept_vectors), so `--no-adapt` (or
  deleting the adapter folder) switches back without embedding again; only chunks added since are embedded.
  The adapter stays on disk: `assistant adapt --on` switches to it again.
- Work in progress (checkpoints, questions, teacher scores, embedded vectors): `<cache>/adapt/<index>-<hash>/`. A
  run that is stopped (Ctrl-C, kill -9) resumes where it was; the index serves its old vectors until the swap.

Only a copy of the encoder's weights is adapted: `encoder.model`, which the evidence reader and the cross-encoder
share (each with its own trained part on the bundled weights), never changes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assistant.question_writer import clean_question
from model.errors import UserError

log = logging.getLogger(__name__)

ADAPTERS_DIR = "adapters"
ADAPTER_TAG = "+adapt:"  # model.encoder.ADAPTER_TAG (not imported here: this module loads without torch)
LORA_TARGETS = ("qkv", "attn_out", "mlp_in", "mlp_out")
GENERIC_QUESTION_WORDS = ("passage", "text", "article", "paragraph", "author")
EMBED_SHARD = 256  # chunks per staged file of re-embedded vectors (a killed run re-embeds at most one)

Emit = Callable[[str], None]


# Below this many chunks adaptation measured no gain: on two 64-75-chunk docs folders it lowered hybrid nDCG@10 by
# 0.004-0.019 (two seeds each) while folders of 290 and 1,127 chunks did not lose (docs/benchmarks.md); such a run
# warns, then goes on.
SMALL_FOLDER_CHUNKS = 200


class AdaptError(UserError):
    """Adaptation cannot run or cannot be switched (no index, an empty index, a damaged adapter)."""


HOWTO_OPENINGS = ("How do I", "How can I", "What happens if I", "Is there a way to")  # how documentation is asked


@dataclass
class AdaptConfig:
    """The recipe and its sizes. Defaults: what benchmarks/adapt.py measured to help (see docs/benchmarks.md)."""

    mlm: bool = False               # (1) masked-language-model steps on the chunks
    distill: bool = True            # (2)-(5) synthetic questions, hard negatives, teacher, margin-MSE
    teacher: str = "reader"         # "reader" | "cross-encoder" | "auto" (the cross-encoder when one is shipped)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    mlm_head_steps: int = 60        # MLM head alone first (the checkpoint has none; LoRA off)
    mlm_steps: int = 200            # then LoRA + head
    mlm_batch: int = 8
    mlm_lr: float = 5e-4
    question_chunks: int = 600      # questions to write: one per chunk of a random sample of this many chunks, or
    max_questions_per_chunk: int = 3  # ... on a smaller folder up to this many per chunk (sampled after the first)
    openings: tuple[str, ...] = HOWTO_OPENINGS  # also one question per sampled chunk that starts with one of
                                    # these words (how people ask documentation); () = none
    max_openings_per_chunk: int = 1  # on a smaller folder up to this many such questions per chunk (as many as
                                    # plain ones), each with a different opening
    negatives: int = 2              # per question: half from BM25, half from the dense index (top `mine_depth`)
    mine_depth: int = 10
    consistency_depth: int = 3      # >0: keep a question only when BM25 or the dense index ranks its own chunk in
                                    # its top this many (round-trip filtering of vague questions); 0 keeps all
    distill_epochs: float = 1.0
    min_distill_examples: int = 800  # small folders: more passes over their examples, up to 4 epochs
    distill_batch: int = 16
    distill_lr: float = 2e-4
    preserve_weight: float = 0.0    # pull the passages' adapted embeddings toward the bundled ones (MSE)
    max_train_tokens: int = 256     # passages longer than this are cut for training (embedding uses the model's max)
    embed_batch: int = 32
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdaptConfig":
        config = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        config.openings = tuple(config.openings)
        return config


@dataclass
class StepReport:
    """One step of a run: what it did, how long, how fast, and the process's peak memory during it."""

    name: str
    seconds: float = 0.0
    items: int = 0
    unit: str = ""
    peak_rss_mb: float | None = None
    skipped: str = ""     # why the step did not run ("" = it ran)
    resumed: bool = False  # its result came (in part) from an earlier, interrupted run
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdaptReport:
    """What `adapt_index` did."""

    index_path: str
    encoder: str = ""           # the encoder name the index now records
    adapter: str = ""           # the adapter folder beside the index
    chunks: int = 0
    steps: list[StepReport] = field(default_factory=list)
    seconds: float = 0.0
    swapped: bool = False
    warnings: list[str] = field(default_factory=list)  # said before the run; repeated in the summary

    def summary(self) -> str:
        lines = [f"index: {self.index_path} ({self.chunks} chunks)", *(f"warning: {w}" for w in self.warnings)]
        for s in self.steps:
            if s.skipped:
                lines.append(f"  {s.name:<10} skipped: {s.skipped}")
                continue
            rate = f", {s.items / s.seconds:.1f} {s.unit}/s" if s.seconds > 0 and s.items else ""
            mem = f", peak {s.peak_rss_mb:.0f} MB" if s.peak_rss_mb else ""
            again = " (resumed)" if s.resumed else ""
            lines.append(f"  {s.name:<10} {s.seconds:7.1f} s, {s.items} {s.unit}{rate}{mem}{again}")
        lines.append(f"total {self.seconds:.1f} s; " + (f"the index now searches vectors of {self.encoder} "
                                                        f"(adapter in {self.adapter})" if self.swapped else
                                                        "the index was not switched"))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# progress, memory
# ---------------------------------------------------------------------------------------------------------------
class Progress:
    """Progress lines with a rate and an ETA ("adapt mlm: 40/200 steps, 1.9 steps/s, ETA 1m24s"), at most one
    every `every` seconds; also written as JSON to `status_file` (the UI reads it) when one is given."""

    def __init__(self, emit: Emit, status_file: Path | None = None, every: float = 5.0) -> None:
        self.emit = emit
        self.status_file = status_file
        self.every = every
        self._last = 0.0
        self._step = ""
        self._started = time.perf_counter()
        self._base = 0

    def start(self, step: str, total: int, unit: str, done: int = 0) -> None:
        self._step, self._total, self._unit = step, total, unit
        self._started, self._base, self._last = time.perf_counter(), done, 0.0
        self.update(done, force=True)

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.every and done < self._total:
            return
        self._last = now
        elapsed = now - self._started
        rate = (done - self._base) / elapsed if elapsed > 0 else 0.0
        eta = (self._total - done) / rate if rate > 0 else None
        line = f"adapt {self._step}: {done}/{self._total} {self._unit}"
        if rate > 0:
            line += f", {rate:.1f} {self._unit}/s, ETA {_duration(eta)}"
        self.emit(line)
        self.write_status({"step": self._step, "done": done, "total": self._total, "unit": self._unit,
                           "rate": rate, "eta_s": eta, "line": line})

    def note(self, line: str) -> None:
        self.emit(line)
        self.write_status({"step": self._step, "line": line})

    def write_status(self, data: dict[str, Any]) -> None:
        if self.status_file is None:
            return
        tmp = self.status_file.with_name(f".{self.status_file.name}.tmp-{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps({**data, "time": time.time(), "pid": os.getpid()}), encoding="utf-8")
            os.replace(tmp, self.status_file)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: /proc/self/clear_refs); a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float | None:
    """The process's peak resident memory since `reset_peak_rss` (Linux VmHWM), in MB; None when unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _step(report: AdaptReport, name: str, unit: str):
    """Time a step and record its peak memory."""
    step = StepReport(name, unit=unit)
    reset_peak_rss()
    started = time.perf_counter()
    try:
        yield step
    finally:
        step.seconds = time.perf_counter() - started
        step.peak_rss_mb = peak_rss_mb()
        report.steps.append(step)


# ---------------------------------------------------------------------------------------------------------------
# where things are
# ---------------------------------------------------------------------------------------------------------------
def work_dir_for(index_path: str | Path) -> Path:
    """`<cache>/adapt/<index folder name>-<sha1 of its absolute path, 10 hex>`: a run's checkpoints and caches."""
    from model.sources import cache_dir

    absolute = Path(index_path).expanduser().resolve()
    digest = hashlib.sha1(str(absolute).encode()).hexdigest()[:10]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in absolute.name) or "index"
    return Path(cache_dir()) / "adapt" / f"{name}-{digest}"


def adapter_dir(index_path: str | Path, fingerprint: str) -> Path:
    return Path(index_path) / ADAPTERS_DIR / fingerprint


def fingerprint_of(encoder_name: str) -> str | None:
    """The adapter fingerprint in an encoder name ("...+adapt:<fp>"), or None for a plain encoder."""
    return encoder_name.split(ADAPTER_TAG, 1)[1] if ADAPTER_TAG in encoder_name else None


def base_name_of(encoder_name: str) -> str:
    return encoder_name.split(ADAPTER_TAG, 1)[0]


# ---------------------------------------------------------------------------------------------------------------
# opening an index: load its adapter, or switch its vectors back
# ---------------------------------------------------------------------------------------------------------------
def prepare_encoder(encoder: Any, index_path: str | Path, use_adapt: bool = True, emit: Emit | None = None) -> Any:
    """Make `encoder` embed like the vectors the index at `index_path` searches, before it is opened or synced.

    - The index searches an adapted encoder's vectors and its adapter is beside it: the adapter is loaded into
      `encoder` (`Encoder.set_adapter`: only the embedding copy changes).
    - `use_adapt=False` (`--no-adapt`), or the adapter folder was removed: the index switches back to the kept
      vectors of the bundled encoder (one atomic commit; chunks added since the adaptation are embedded now),
      and `encoder` embeds with the bundled weights.
    - A plain index (every index before adaptation, or one switched back), or none yet: `encoder` is plain.
    Returns `encoder`. Encoders without `set_adapter` (test stand-ins) are returned as they are."""
    from retrieval.store import IndexStore

    emit = emit or log.info
    index_path = Path(index_path)
    if not hasattr(encoder, "set_adapter"):
        return encoder
    if not IndexStore.exists(index_path):  # a new index starts with the bundled encoder
        if getattr(encoder, "adapter", None) is not None:
            encoder.set_adapter(None)
        return encoder
    store = IndexStore.open(index_path)
    try:
        active = store.vector_sets()["active"]
    finally:
        store.close()
    fingerprint = fingerprint_of(active)
    if fingerprint is None:
        if getattr(encoder, "adapter", None) is not None:
            encoder.set_adapter(None)
        return encoder
    folder = adapter_dir(index_path, fingerprint)
    if use_adapt and (folder / "adapter.safetensors").is_file():
        if getattr(encoder, "adapter", None) is None or encoder.adapter.fingerprint != fingerprint:
            encoder.set_adapter(folder)
        if encoder.name != active:
            raise AdaptError(f"the adapter in {folder} does not produce the index's vectors ({active}, the adapter "
                             f"gives {encoder.name}); run `assistant adapt` again, or --no-adapt")
        return encoder
    why = "--no-adapt" if not use_adapt else f"its adapter {folder} is gone"
    emit(f"adapt: {why}: switching the index back to the bundled encoder's vectors")
    encoder.set_adapter(None)
    switch_to_kept(index_path, encoder, emit=emit)
    return encoder


def switch_to_kept(index_path: str | Path, encoder: Any, emit: Emit | None = None) -> None:
    """Switch the index's searched vectors to `encoder`'s, from the kept set when it is `encoder`'s (by name):
    only chunks it lacks (added since it was put aside) are embedded; otherwise every chunk is embedded again.
    The searched set becomes the kept one. One atomic commit."""
    from retrieval.store import IndexStore, WriterLock

    emit = emit or log.info
    index_path = Path(index_path)
    with WriterLock(index_path):
        store = IndexStore.open(index_path)
        try:
            sets = store.vector_sets()
            if sets["active"] == encoder.name:
                return
            kept_name, kept_ids, kept_vectors = store.kept_vectors()
            if kept_name != encoder.name:  # (an index that never kept them): embed everything again
                emit(f"adapt: the index keeps no vectors of {encoder.name}; embedding every chunk again")
                kept_ids, kept_vectors = np.zeros(0, np.int64), np.zeros((0, store.settings.dim), np.float32)
            live_ids, texts = store.live_texts()
            have = set(kept_ids.tolist())
            todo = [(cid, text) for cid, text in zip(live_ids, texts) if cid not in have]
            ids, vectors = kept_ids, kept_vectors
            if todo:
                emit(f"adapt: embedding {len(todo)} chunks added since the switch")
                extra = np.asarray(encoder.embed([t for _, t in todo]), dtype=np.float32)
                ids = np.concatenate([ids, np.array([c for c, _ in todo], dtype=np.int64)])
                vectors = np.concatenate([vectors, extra])
            with store.writer(lock_held=True) as writer:  # a swap: the searched set becomes the kept one
                writer.switch_vectors(encoder.name, ids, vectors, keep_current=True)
        finally:
            store.close()
    _prune_adapters(index_path)


def _prune_adapters(index_path: Path) -> None:
    """Delete adapter folders that neither the searched nor the kept vector set names (and temp folders)."""
    from retrieval.store import IndexStore

    root = Path(index_path) / ADAPTERS_DIR
    if not root.is_dir():
        return
    store = IndexStore.open(index_path)
    try:
        sets = store.vector_sets()
    finally:
        store.close()
    wanted = {fingerprint_of(name) for name in sets.values() if name}
    for child in root.iterdir():
        if child.name not in wanted:
            shutil.rmtree(child, ignore_errors=True)


def activate(index_path: str | Path, encoder: Any, emit: Emit | None = None) -> bool:
    """`assistant adapt --on`: switch back to the kept adapted vectors (their adapter must be beside the index).
    Returns False when there is nothing to switch to (no kept adapted set)."""
    from retrieval.store import IndexStore

    emit = emit or log.info
    store = IndexStore.open(index_path)
    try:
        sets = store.vector_sets()
    finally:
        store.close()
    if fingerprint_of(sets["active"]) is not None:
        encoder.set_adapter(adapter_dir(index_path, fingerprint_of(sets["active"])))
        return True
    fingerprint = fingerprint_of(sets["kept"] or "")
    if fingerprint is None or not (adapter_dir(index_path, fingerprint) / "adapter.safetensors").is_file():
        return False
    encoder.set_adapter(adapter_dir(index_path, fingerprint))
    switch_to_kept(index_path, encoder, emit=emit)
    return True


# ---------------------------------------------------------------------------------------------------------------
# the training pieces
# ---------------------------------------------------------------------------------------------------------------
def trainable_copy(encoder: Any, config: AdaptConfig):
    """A float32 copy of the encoder's network with LoRA on every block's four linears (only LoRA trains)."""
    import torch

    from model.lora import LoraConfig, apply_lora

    model = copy.deepcopy(encoder.model).float()
    lora = LoraConfig(rank=config.lora_rank, alpha=config.lora_alpha, targets=LORA_TARGETS)
    apply_lora(model, lora)
    model.train()
    torch.manual_seed(config.seed)
    for name, param in model.named_parameters():  # a seeded init: the same run gives the same adapter
        if name.endswith(".lora_a"):
            torch.nn.init.kaiming_uniform_(param, a=math.sqrt(5))
    return model, lora


def token_rows(encoder: Any, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """[CLS] ids [SEP] per text, cut to `max_tokens` (incl. the two special tokens)."""
    cls, sep = encoder._cls, encoder._sep
    limit = min(max_tokens, encoder.max_length) - 2
    return [[cls, *ids[:limit], sep] for ids in encoder.token_ids(texts)]


def _pad(rows: Sequence[Sequence[int]], pad_id: int):
    """Right-pad -> input_ids, attention_mask [B, T] (long)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class MlmModel:
    """Holder for the MLM step: the LoRA'd encoder copy and an MlmHead tied to its word embeddings."""

    @staticmethod
    def build(model):
        from torch import nn

        from model.mlm import MlmHead

        class _Mlm(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = model
                self.head = MlmHead(model)

            def forward(self, input_ids, attention_mask):
                return self.encoder(input_ids, attention_mask)  # [B, T, H]

        return _Mlm()


class MlmTask:
    """model.train task: BERT masking (model.mlm.mask_tokens) at collate time; summed cross-entropy over the
    masked positions only (the head runs on those rows alone, not on [B, T, V])."""

    def __init__(self, pad_id: int, mask_id: int, special_ids: Sequence[int], vocab_size: int) -> None:
        self.pad_id, self.mask_id, self.special, self.vocab = pad_id, mask_id, list(special_ids), vocab_size

    def collate(self, rows: Sequence[list[int]]):
        from model.mlm import mask_tokens

        ids, mask = _pad(rows, self.pad_id)
        masked, labels = mask_tokens(ids, mask, self.mask_id, self.special, self.vocab)
        return masked, mask, labels

    def count(self, batch) -> int:
        return max(1, int((batch[2] != -100).sum()))

    def tokens(self, batch) -> int:
        return int(batch[1].sum())

    def loss(self, model, batch):
        import torch.nn.functional as F

        ids, mask, labels = batch
        hidden = model(ids, mask)  # [B, T, H]
        selected = labels != -100  # [B, T]
        if not bool(selected.any()):
            return hidden.sum() * 0.0, 0
        logits = model.head(hidden[selected])  # [N, V]
        return F.cross_entropy(logits.float(), labels[selected], reduction="sum"), int(selected.sum())


@dataclass
class DistillExample:
    """One margin-MSE example: a question, its source chunk and a hard negative, token rows, the teacher margin."""

    query: list[int]
    positive: list[int]
    negative: list[int]
    margin: float           # teacher(q, positive) - teacher(q, negative)
    positive_index: int = -1  # row of the positive chunk among the run's chunks (for `preserve`)


class DistillTask:
    """model.train task: summed (scale * (cos(q, p) - cos(q, n)) - teacher margin)^2 over a batch of examples,
    plus `preserve_weight` x the squared distance of the passages' adapted embeddings from the bundled ones
    (`anchors`: unit vectors [n_chunks, H] of the bundled encoder)."""

    def __init__(self, pad_id: int, scale: float, preserve_weight: float = 0.0, anchors=None) -> None:
        self.pad_id, self.scale, self.preserve_weight, self.anchors = pad_id, scale, preserve_weight, anchors

    def collate(self, examples: Sequence[DistillExample]):
        import torch

        q = _pad([e.query for e in examples], self.pad_id)
        p = _pad([e.positive for e in examples], self.pad_id)
        n = _pad([e.negative for e in examples], self.pad_id)
        margin = torch.tensor([e.margin for e in examples], dtype=torch.float32)  # [B]
        rows = torch.tensor([e.positive_index for e in examples], dtype=torch.long)  # [B]
        return q, p, n, margin, rows

    def count(self, batch) -> int:
        return int(batch[3].shape[0])

    def tokens(self, batch) -> int:
        return int(batch[0][1].sum() + batch[1][1].sum() + batch[2][1].sum())

    def loss(self, model, batch):
        import torch.nn.functional as F

        from model.encoder import mean_pool

        (q_ids, q_mask), (p_ids, p_mask), (n_ids, n_mask), margin, rows = batch
        q = F.normalize(mean_pool(model(q_ids, q_mask), q_mask), dim=-1)  # [B, H]
        p = F.normalize(mean_pool(model(p_ids, p_mask), p_mask), dim=-1)  # [B, H]
        n = F.normalize(mean_pool(model(n_ids, n_mask), n_mask), dim=-1)  # [B, H]
        student = self.scale * ((q * p).sum(-1) - (q * n).sum(-1))  # [B]
        loss = F.mse_loss(student, margin.to(student.dtype), reduction="sum")
        if self.preserve_weight > 0 and self.anchors is not None and bool((rows >= 0).all()):
            anchor = self.anchors[rows].to(p.dtype)  # [B, H]
            loss = loss + self.preserve_weight * ((p - anchor) ** 2).sum(-1).sum() * 100.0
        return loss, int(margin.shape[0])


def _train(model, examples: list, task: Any, steps: int, batch: int, lr: float, out_dir: Path, seed: int,
           progress: Progress, name: str, unit_per_step: int, warmup: int = 10) -> tuple[int, bool]:
    """Run model.train.Trainer in slices (progress lines between them; a checkpoint after each, so a killed run
    resumes at the last slice). Returns (steps done, resumed)."""
    from model.train import TrainConfig, Trainer

    config = TrainConfig(max_steps=steps, batch_size=batch, lr=lr, warmup_steps=min(warmup, steps // 5 + 1),
                         eval_every=0, save_every=0, seed=seed, device="cpu", progress=False, weight_decay=0.0)
    trainer = Trainer(model, examples, None, config, out_dir=out_dir, task=task)
    resumed = trainer.load_checkpoint()
    progress.start(name, steps * unit_per_step, "examples", trainer.step * unit_per_step)
    slice_steps = max(1, min(25, steps // 10 or 1))
    while trainer.step < steps:
        trainer.train(until_step=min(steps, trainer.step + slice_steps))
        progress.update(trainer.step * unit_per_step)
    return trainer.step, resumed


def _export_lora(model, lora, encoder: Any, folder: Path, metadata: dict[str, Any]) -> Path:
    """Save the LoRA of a (possibly wrapped) encoder copy as an adapter folder, written whole then renamed."""
    from model.cross_encoder import base_fingerprint
    from model.lora import save_adapter

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(tmp, model, lora, base_identity=base_fingerprint(encoder.model), metadata=metadata)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# synthetic questions, negatives, teacher
# ---------------------------------------------------------------------------------------------------------------
class BaseQuestionWriter:
    """Questions from the bundled generator with a plain instruction, its answer started with "Question:" (until
    the trained question writer ships; without the prefix the 135M model mostly answers instead of asking).

    Same interface as assistant.question_writer.QuestionWriter: write(passages, per_passage) -> list[list[str]]."""

    name = "base generator + instruction"

    def __init__(self, generator: Any, batch: int = 8) -> None:
        self.generator = generator
        self.batch = batch

    def _prompt(self, passage: str, opening: str = "") -> str:
        passage = " ".join(passage.split()[:150])
        messages = [{"role": "system", "content": "You write quiz questions."},
                    {"role": "user", "content": f"Passage:\n{passage}\n\nWrite one short question that this "
                                                "passage answers."}]
        return self.generator.render_chat(messages) + "Question:" + (f" {opening}" if opening else "")

    def write(self, passages: Sequence[str], per_passage: int = 1,
              openings: Sequence[str] | None = None) -> list[list[str]]:
        starts = list(openings) if openings is not None else [""] * len(passages)
        out: list[list[str]] = []
        for start in range(0, len(passages), self.batch):
            group = list(passages[start:start + self.batch])
            begun = starts[start:start + self.batch]
            per: list[list[str]] = [[] for _ in group]
            for k in range(per_passage):
                results = self.generator.generate_batch(
                    [self._prompt(p, o) for p, o in zip(group, begun)], temperature=0.0 if k == 0 else 0.7,
                    seed=k, max_new_tokens=40, stop=["\n", "?"])
                for i, r in enumerate(results):
                    text = " ".join(f"{begun[i]}{r.text}".split())
                    if text and r.finish_reason == "stop":
                        per[i].append(text + "?")
            out += per
        return out


def load_question_writer(emit: Emit) -> Any:
    """The trained question writer (assistant.question_writer) when it is there, else `BaseQuestionWriter`."""
    try:
        from assistant.question_writer import QuestionWriter

        writer = QuestionWriter.load()
        if getattr(writer, "method", "") != "base":  # "base" = the untuned placeholder: the prefix does better
            writer.name = f"question writer ({writer.method})"
            return writer
        emit("adapt: the question writer is the untuned placeholder; using the base generator with an instruction "
             "and a 'Question:' prefix")
        return BaseQuestionWriter(writer.generator)
    except (ImportError, UserError, OSError, AttributeError) as exc:
        emit(f"adapt: no trained question writer ({type(exc).__name__}: {str(exc)[:80]}); "
             "using the base generator with an instruction")
    from model.generate import Generator

    return BaseQuestionWriter(Generator.load())


def usable_question(question: str, passage: str) -> bool:
    """A question worth training on: a real question (ends with '?', 4-40 words), not about "the passage", and
    sharing at least one content word with the passage it came from."""
    from assistant.followup import content_words

    q = question.strip()
    words = q.split()
    if not q.endswith("?") or not 4 <= len(words) <= 40:
        return False
    lower = q.lower()
    if any(f"the {w}" in lower or f"this {w}" in lower for w in GENERIC_QUESTION_WORDS):
        return False
    shared = set(content_words(q)) & set(content_words(passage))
    return bool(shared)


class ReaderTeacher:
    """The evidence reader as a relevance teacher: a passage's score is its best span's score (span minus
    "no answer" logit); a passage without any span gets `floor`."""

    name = "reader"

    def __init__(self, reader: Any, floor: float = -10.0) -> None:
        self.reader, self.floor = reader, floor

    def score(self, question: str, passages: Sequence[str]) -> list[float]:
        scores = [self.floor] * len(passages)
        for span in self.reader.read(question, list(passages)):
            scores[span.passage] = max(scores[span.passage], float(span.score))
        return scores


def teacher_kind(kind: str, teacher: Any = None) -> str:
    """Which teacher a run uses: a given teacher object's name, or 'auto' resolved to 'cross-encoder' when one is
    shipped (assistant/data/reranker) and 'reader' otherwise. Names the run's teacher-score cache."""
    from assistant.settings import DEFAULT_RERANKER

    if teacher is not None:
        name = str(getattr(teacher, "name", type(teacher).__name__))
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if kind not in ("auto", "cross-encoder", "reader"):
        raise AdaptError(f"unknown teacher {kind!r}; use auto, cross-encoder or reader")
    if kind == "auto":
        return "cross-encoder" if (DEFAULT_RERANKER / "cross_encoder.safetensors").is_file() else "reader"
    return kind


def load_teacher(kind: str, encoder: Any, emit: Emit) -> Any:
    """'cross-encoder' (assistant/data/reranker), 'reader' (assistant/data/reader) or 'auto' (the first there)."""
    from assistant.settings import DEFAULT_READER, DEFAULT_RERANKER

    kind = teacher_kind(kind)
    if kind == "cross-encoder" and (DEFAULT_RERANKER / "cross_encoder.safetensors").is_file():
        from model.cross_encoder import CrossEncoder

        teacher = CrossEncoder.load(encoder, DEFAULT_RERANKER)
        teacher.name = "cross-encoder"
        return teacher
    if kind == "cross-encoder":
        raise AdaptError(f"no cross-encoder in {DEFAULT_RERANKER}; use --teacher reader")
    if not (DEFAULT_READER / "reader.safetensors").is_file():
        raise AdaptError(f"no teacher: neither {DEFAULT_RERANKER} nor {DEFAULT_READER} holds weights")
    from model.reader import Reader

    emit("adapt: teacher = the evidence reader")
    return ReaderTeacher(Reader.load(encoder, DEFAULT_READER))


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines cache; a torn last line (a killed run) is ignored."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def _append_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def adapt_index(index_path: str | Path, encoder: Any, config: AdaptConfig | None = None, *,
                emit: Emit | None = None, status_file: Path | None = None, work_dir: Path | None = None,
                question_writer: Any = None, teacher: Any = None, swap: bool = True,
                fresh: bool = False) -> AdaptReport:
    """Adapt the encoder to the chunks of the index at `index_path`, then switch the index to the adapted vectors.

    `encoder`: the project's Encoder, as the index was opened with (`prepare_encoder`): plain or with an adapter
    (a new adaptation starts from the bundled weights either way). Resumes an interrupted run of the same recipe
    on the same chunks (its work folder: `work_dir_for(index_path)`); `fresh=True` starts over. The index keeps
    serving its current vectors until the final switch, which is one atomic commit (IndexWriter.switch_vectors).
    `question_writer` / `teacher`: ready objects (tests, benchmarks); None = loaded as the config says.
    `swap=False` stops after the adapter and the re-embedded vectors (benchmarks compare without switching)."""
    import torch

    from retrieval.store import IndexStore

    config = config or AdaptConfig()
    emit = emit or (lambda line: log.info("%s", line))
    index_path = Path(index_path)
    if not IndexStore.exists(index_path):
        raise AdaptError(f"no index at {index_path}; index the folder first (`assistant index DIR`)")
    if not (config.mlm or config.distill):
        raise AdaptError("nothing to train: turn on --mlm or the distillation")
    started = time.perf_counter()
    report = AdaptReport(index_path=str(index_path))
    progress = Progress(emit, status_file)
    work = Path(work_dir) if work_dir is not None else work_dir_for(index_path)
    base_encoder = copy.copy(encoder)  # the bundled weights' embeddings: anchors, negatives' dense index
    base_encoder.set_adapter(None)

    store = IndexStore.open(index_path)
    try:
        chunk_ids, texts = store.live_texts()
        active = store.vector_sets()["active"]
    finally:
        store.close()
    if not chunk_ids:
        raise AdaptError(f"the index at {index_path} holds no passages; index some documents first")
    report.chunks = len(chunk_ids)
    run_key = hashlib.sha1(json.dumps([config.to_dict(), base_encoder.name,
                                       hashlib.sha1("\x00".join(texts).encode()).hexdigest()]).encode()).hexdigest()
    work.mkdir(parents=True, exist_ok=True)
    run_file = work / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    if fresh or previous.get("key") != run_key:
        for name in ("mlm-head", "mlm", "distill", "adapter", "vectors", "examples.json"):
            target = work / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        if fresh:
            for name in ["questions.jsonl", *(p.name for p in work.glob("teacher-*.jsonl"))]:
                (work / name).unlink(missing_ok=True)
        run_file.write_text(json.dumps({"key": run_key, "config": config.to_dict(), "chunks": len(chunk_ids),
                                        "index": str(index_path)}, indent=2))
    rng = random.Random(config.seed)
    model, lora = trainable_copy(base_encoder, config)
    pad_id = base_encoder._pad
    passage_rows = token_rows(base_encoder, texts, config.max_train_tokens)
    recipe = " + ".join((["MLM"] if config.mlm else []) + (["questions, negatives, teacher, margin-MSE"]
                                                            if config.distill else []))
    progress.note(f"adapt: {len(chunk_ids)} chunks of {index_path}; recipe: {recipe}; LoRA rank "
                  f"{config.lora_rank}; torch threads {torch.get_num_threads()}")
    if len(chunk_ids) < SMALL_FOLDER_CHUNKS:
        report.warnings.append(
            f"this folder has only {len(chunk_ids)} chunks; on folders under {SMALL_FOLDER_CHUNKS} chunks adaptation "
            "has not helped in our measurements (hybrid search got slightly worse on two small docs folders), "
            "because the bundled encoder already ranks most answers first there. Compare your searches before and "
            "after; `assistant adapt --off` goes back")
        progress.note(f"adapt: warning: {report.warnings[-1]}")

    # (1) MLM ---------------------------------------------------------------------------------------------
    if config.mlm:
        with _step(report, "mlm", "examples") as step:
            tok = base_encoder.tokenizer.hf
            special = [i for i in (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"))
                       if i is not None]
            task = MlmTask(pad_id, tok.token_to_id("[MASK]"), special, base_encoder.model.config.vocab_size)
            mlm = MlmModel.build(model)
            lora_params = [p for n, p in mlm.named_parameters() if n.endswith((".lora_a", ".lora_b"))]
            for p in lora_params:
                p.requires_grad_(False)  # head first: the fresh head learns the frozen encoder's outputs
            _, resumed_head = _train(mlm, passage_rows, task, config.mlm_head_steps, config.mlm_batch,
                                     1e-3, work / "mlm-head", config.seed, progress, "mlm head", config.mlm_batch)
            for p in lora_params:
                p.requires_grad_(True)
            _, resumed = _train(mlm, passage_rows, task, config.mlm_steps, config.mlm_batch, config.mlm_lr,
                                work / "mlm", config.seed + 1, progress, "mlm", config.mlm_batch)
            step.items = (config.mlm_head_steps + config.mlm_steps) * config.mlm_batch
            step.resumed = resumed_head or resumed
            model.train()
    else:
        report.steps.append(StepReport("mlm", skipped="off in this recipe"))

    # (2)-(5) synthetic questions, negatives, teacher, margin-MSE -----------------------------------------------
    if config.distill:
        examples, scale = _distill_examples(work, config, base_encoder, index_path, chunk_ids, texts, passage_rows,
                                            report, progress, rng, question_writer, teacher, emit)
        with _step(report, "distill", "examples") as step:
            anchors = None
            if config.preserve_weight > 0:
                anchors = torch.from_numpy(_embed_cached(work / "vectors-base.npz", base_encoder, chunk_ids,
                                                         texts, config.embed_batch))
            task = DistillTask(pad_id, scale, config.preserve_weight, anchors)
            epochs = min(4.0, max(config.distill_epochs, config.min_distill_examples / len(examples)))
            steps = max(1, int(math.ceil(epochs * len(examples) / config.distill_batch)))
            emit(f"adapt: distilling in {steps} steps of {config.distill_batch} ({epochs:.1f} passes over the "
                 f"{len(examples)} examples)")
            _, step.resumed = _train(model, examples, task, steps, config.distill_batch, config.distill_lr,
                                     work / "distill", config.seed + 2, progress, "distill", config.distill_batch)
            step.items = steps * config.distill_batch
            step.detail = {"examples": len(examples), "scale": scale, "steps": steps, "epochs": round(epochs, 2)}
    model.eval()

    # the adapter, and the vectors of every chunk ---------------------------------------------------------------
    folder = _export_lora(model, lora, base_encoder, work / "adapter",
                          {"recipe": config.to_dict(), "chunks": len(chunk_ids), "index": str(index_path)})
    adapted = copy.copy(base_encoder)
    adapted.set_adapter(folder)
    with _step(report, "embed", "chunks") as step:
        vectors, step.resumed = _embed_staged(work / "vectors", adapted, chunk_ids, texts, config.embed_batch,
                                              progress)
        step.items = len(chunk_ids)
    report.encoder = adapted.name
    if swap:
        with _step(report, "swap", "chunks") as step:
            report.adapter = str(swap_in_adapter(index_path, adapted, folder, chunk_ids, vectors, active, emit))
            report.swapped = True
            step.items = len(chunk_ids)
        encoder.set_adapter(adapter_dir(index_path, adapted.adapter.fingerprint))
    else:
        report.adapter = str(folder)
    report.seconds = time.perf_counter() - started
    progress.note(f"adapt: done in {_duration(report.seconds)}" + (f"; the index now searches {adapted.name}"
                                                                    if swap else ""))
    return report


def _distill_examples(work: Path, config: AdaptConfig, encoder: Any, index_path: Path, chunk_ids: list[int],
                      texts: list[str], passage_rows: list[list[int]], report: AdaptReport, progress: Progress,
                      rng: random.Random, question_writer: Any, teacher: Any,
                      emit: Emit) -> tuple[list[DistillExample], float]:
    """Steps (2)-(4): questions (cached per chunk text), hard negatives, teacher scores (cached per pair) ->
    margin-MSE examples and the student's score scale."""
    from retrieval.retriever import Retriever

    # (2) questions
    order = list(range(len(texts)))
    rng.shuffle(order)
    chosen = sorted(order[: config.question_chunks])
    per = max(1, min(config.max_questions_per_chunk, math.ceil(config.question_chunks / len(texts))))
    cache_path = work / "questions.jsonl"
    cached = {row["key"]: row["questions"] for row in _read_jsonl(cache_path)}

    def key(i: int) -> str:  # the text and how many questions were asked for
        return f"{per}:{_text_key(texts[i])}" if per > 1 else _text_key(texts[i])

    keys = {i: [key(i)] for i in chosen}  # the cache keys of each chunk's questions
    # questions forced to start with an opening: one per chunk, or on a small folder up to as many as plain ones,
    # each chunk's openings taken in turn from one that its text picks
    n_open = min(len(config.openings), max(1, min(config.max_openings_per_chunk, per))) if config.openings else 0

    def opening_of(i: int, slot: int) -> str:
        return config.openings[(int(_text_key(texts[i]), 16) + slot - 1) % len(config.openings)]

    for i in chosen:
        keys[i].extend(f"open:{opening_of(i, slot)}:{_text_key(texts[i])}" for slot in range(1, n_open + 1))
    writer: Any = None

    def write_missing(slot: int, label: str, step: StepReport) -> None:
        """Write (and cache) the questions of each chosen chunk's `slot`-th key that the cache lacks."""
        nonlocal writer
        todo = [i for i in chosen if keys[i][slot] not in cached]
        if not todo:
            return
        writer = writer or question_writer or load_question_writer(emit)
        step.detail["writer"] = getattr(writer, "name", type(writer).__name__)
        progress.start(label, len(chosen), "chunks", len(chosen) - len(todo))
        for start in range(0, len(todo), 8):
            group = todo[start:start + 8]
            passages = [texts[i] for i in group]
            written = (writer.write(passages, openings=[opening_of(i, slot) for i in group]) if slot
                       else writer.write(passages, per_passage=per))
            rows = [{"key": keys[i][slot], "questions": list(qs)} for i, qs in zip(group, written)]
            _append_jsonl(cache_path, rows)
            cached.update({r["key"]: r["questions"] for r in rows})
            progress.update(len(chosen) - len(todo) + start + len(group))

    with _step(report, "questions", "chunks") as step:
        step.resumed = any(k in cached for i in chosen for k in keys[i])
        write_missing(0, "questions", step)
        for slot in range(1, n_open + 1):
            write_missing(slot, "questions with openings", step)
        pairs = list(dict.fromkeys((i, clean_question(q)) for i in chosen for k in keys[i] for q in cached.get(k, [])
                                   if usable_question(clean_question(q), texts[i])))
        step.items = len(chosen) * (per + n_open)
        step.unit = "questions"
        step.detail.update({"questions": sum(len(cached.get(k, [])) for i in chosen for k in keys[i]),
                            "usable": len(pairs), "per_chunk": per, "openings": list(config.openings)})
    if not pairs:
        raise AdaptError("the question writer wrote no usable question for this folder's passages; try --mlm "
                         "alone, or a folder with more text")

    # (3) hard negatives from BM25 and the current dense index (the bundled encoder's vectors, or the kept ones);
    # with consistency_depth, questions whose own chunk neither ranks near the top are dropped (round trip)
    with _step(report, "negatives", "questions") as step:
        retriever = Retriever(index_path, _searching_encoder(encoder, index_path))
        row_of = {cid: i for i, cid in enumerate(chunk_ids)}
        triples: list[tuple[int, str, int]] = []  # (positive row, question, negative row)
        progress.start("negatives", len(pairs), "questions")
        half = max(1, config.negatives // 2)
        depth = max(config.mine_depth, config.consistency_depth)
        dropped = 0
        for n, (i, question) in enumerate(pairs):
            ranked = {mode: [row_of[h.chunk_id] for h in retriever.search(question, k=depth + 1, mode=mode)
                             if h.chunk_id in row_of] for mode in ("lexical", "dense")}
            if config.consistency_depth > 0 and not any(
                    texts[r] == texts[i] for rows in ranked.values() for r in rows[:config.consistency_depth]):
                dropped += 1
                progress.update(n + 1)
                continue
            negatives: list[int] = []
            for mode, count in (("lexical", half), ("dense", config.negatives - half)):
                pool = [r for r in ranked[mode][:config.mine_depth + 1] if r != i and texts[r] != texts[i]
                        and r not in negatives]
                negatives += rng.sample(pool, min(count, len(pool)))
            while len(negatives) < config.negatives:  # tiny folders: random chunks fill up
                j = rng.randrange(len(texts))
                if j != i and texts[j] != texts[i]:
                    negatives.append(j)
            triples += [(i, question, j) for j in negatives]
            progress.update(n + 1)
        retriever.store.close()
        step.items = len(pairs)
        step.detail["dropped_by_round_trip"] = dropped
    if not triples:
        raise AdaptError("no synthetic question found its own passage again (round-trip filter); try "
                         "consistency_depth=0 or a folder with more text")

    # (4) teacher scores, cached per teacher and (question, passage)
    score_path = work / f"teacher-{teacher_kind(config.teacher, teacher)}.jsonl"
    scores = {(r["q"], r["p"]): r["s"] for r in _read_jsonl(score_path)}
    with _step(report, "teacher", "pairs") as step:
        wanted: dict[str, set[int]] = {}
        for i, question, j in triples:
            wanted.setdefault(question, set()).update((i, j))
        todo_q = [q for q, rows in wanted.items() if any((q, _text_key(texts[r])) not in scores for r in rows)]
        step.resumed = len(todo_q) < len(wanted) and bool(scores)
        if todo_q:
            teacher = teacher or load_teacher(config.teacher, encoder, emit)
            step.detail["teacher"] = getattr(teacher, "name", type(teacher).__name__)
            total = sum(len(rows) for rows in wanted.values())
            done = total - sum(len(wanted[q]) for q in todo_q)
            progress.start("teacher", total, "pairs", done)
            for question in todo_q:
                rows = sorted(wanted[question])
                values = teacher.score(question, [texts[r] for r in rows])
                new = [{"q": question, "p": _text_key(texts[r]), "s": float(v)} for r, v in zip(rows, values)]
                _append_jsonl(score_path, new)
                scores.update({(r["q"], r["p"]): r["s"] for r in new})
                done += len(rows)
                progress.update(done)
        step.items = sum(len(rows) for rows in wanted.values())

    query_rows = dict(zip(wanted, token_rows(encoder, list(wanted), 64)))
    examples = [DistillExample(query_rows[q], passage_rows[i], passage_rows[j],
                               scores[(q, _text_key(texts[i]))] - scores[(q, _text_key(texts[j]))], i)
                for i, q, j in triples]
    scale = _fit_scale(encoder, examples, texts, triples)
    emit(f"adapt: {len(examples)} distillation examples from {len(pairs)} questions; score scale {scale:.1f}")
    return examples, scale


def _searching_encoder(encoder: Any, index_path: Path) -> Any:
    """An encoder that embeds like the index's searched vectors (for mining dense negatives)."""
    from retrieval.store import IndexStore

    store = IndexStore.open(index_path)
    try:
        active = store.vector_sets()["active"]
    finally:
        store.close()
    if active == encoder.name:
        return encoder
    searching = copy.copy(encoder)
    searching.set_adapter(adapter_dir(index_path, fingerprint_of(active)) if fingerprint_of(active) else None)
    return searching


def _fit_scale(encoder: Any, examples: list[DistillExample], texts: list[str], triples) -> float:
    """The student's cosine-margin scale: std(teacher margins) / std(the bundled encoder's cosine margins), so the
    MSE asks for a re-ordering, not for stretched cosines."""
    if len(examples) < 2:
        return 10.0
    sample = list(range(len(triples)))[:512]
    questions = [triples[k][1] for k in sample]
    q = encoder.embed(questions)
    p = encoder.embed([texts[triples[k][0]] for k in sample])
    n = encoder.embed([texts[triples[k][2]] for k in sample])
    student = (q * p).sum(1) - (q * n).sum(1)
    teacher = np.array([examples[k].margin for k in sample])
    return float(np.clip(teacher.std() / max(student.std(), 1e-6), 1.0, 200.0))


def _embed_cached(path: Path, encoder: Any, chunk_ids: list[int], texts: list[str], batch: int) -> np.ndarray:
    """Unit vectors [n, H] of `texts` by `encoder`, cached in one .npz keyed by the chunk ids."""
    if path.exists():
        with np.load(path) as data:
            if data["ids"].tolist() == list(chunk_ids):
                return data["vectors"]
    vectors = np.asarray(encoder.embed(texts, batch_size=batch), dtype=np.float32)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, ids=np.asarray(chunk_ids, dtype=np.int64), vectors=vectors)
    os.replace(tmp, path)
    return vectors


def _embed_staged(folder: Path, encoder: Any, chunk_ids: list[int], texts: list[str], batch: int,
                  progress: Progress, shard: int | None = None) -> tuple[np.ndarray, bool]:
    """Embed every chunk with the adapted encoder in shards written to `folder/<fingerprint>/` as they finish, so
    a killed run re-embeds at most one shard. Returns (vectors [n, H] in chunk order, resumed)."""
    shard = shard or EMBED_SHARD
    out_dir = folder / encoder.adapter.fingerprint
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[int, np.ndarray] = {}
    for part in sorted(out_dir.glob("part-*.npz")):
        with contextlib.suppress(Exception):
            with np.load(part) as data:
                done.update(zip(data["ids"].tolist(), data["vectors"]))
    resumed = bool(done)
    todo = [k for k, cid in enumerate(chunk_ids) if cid not in done]
    progress.start("embed", len(chunk_ids), "chunks", len(chunk_ids) - len(todo))
    for start in range(0, len(todo), shard):
        rows = todo[start:start + shard]
        vectors = np.asarray(encoder.embed([texts[k] for k in rows], batch_size=batch), dtype=np.float32)
        ids = np.array([chunk_ids[k] for k in rows], dtype=np.int64)
        final = out_dir / f"part-{ids[0]:012d}-{len(ids)}.npz"
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ids, vectors=vectors)
        os.replace(tmp, final)
        done.update(zip(ids.tolist(), vectors))
        progress.update(len(chunk_ids) - len(todo) + start + len(rows))
    return np.stack([done[cid] for cid in chunk_ids]), resumed


def swap_in_adapter(index_path: Path, adapted: Any, adapter_folder: Path, chunk_ids: list[int],
                    vectors: np.ndarray, expected_active: str, emit: Emit) -> Path:
    """Copy the adapter beside the index, embed the chunks added since the run read the index, and switch the
    index's vectors in one commit (under the writer lock). The index serves its old vectors until then."""
    from retrieval.store import IndexStore, WriterLock, _fsync_dir

    index_path = Path(index_path)
    fingerprint = adapted.adapter.fingerprint
    target = adapter_dir(index_path, fingerprint)
    with WriterLock(index_path):
        if not (target / "adapter.safetensors").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(adapter_folder, tmp)
            for file in tmp.iterdir():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        store = IndexStore.open(index_path)
        try:
            sets = store.vector_sets()
            live_ids, texts = store.live_texts()
            have = dict(zip(chunk_ids, range(len(chunk_ids))))
            todo = [(cid, text) for cid, text in zip(live_ids, texts) if cid not in have]
            ids = np.asarray(chunk_ids, dtype=np.int64)
            if todo:
                emit(f"adapt: embedding {len(todo)} chunks indexed during the run")
                ids = np.concatenate([ids, np.array([c for c, _ in todo], dtype=np.int64)])
                vectors = np.concatenate([vectors, np.asarray(adapted.embed([t for _, t in todo]), np.float32)])
            # The bundled encoder's vectors are the ones to keep; when an adapter replaces another, they already are.
            keep = fingerprint_of(sets["active"]) is None
            if sets["active"] != expected_active:
                emit(f"adapt: the index switched to {sets['active']} during the run")
            with store.writer(lock_held=True) as writer:
                writer.switch_vectors(adapted.name, ids, vectors, keep_current=keep)
        finally:
            store.close()
    _prune_adapters(index_path)
    return target


__all__ = ["AdaptConfig", "AdaptReport", "AdaptError", "StepReport", "Progress", "adapt_index", "prepare_encoder",
           "switch_to_kept", "activate", "work_dir_for", "adapter_dir", "usable_question", "BaseQuestionWriter",
           "ReaderTeacher", "MlmTask", "DistillTask", "DistillExample", "reset_peak_rss", "peak_rss_mb"]
