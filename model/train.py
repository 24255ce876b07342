"""The project's own training loop: fine-tuning (LoRA or full) and small pre-training share it.

    examples (input_ids, labels) ─► micro-batches (right-padded) ─► loss on labelled tokens only
        ─► backward, accumulated over `grad_accum` micro-batches ─► clip ─► AdamW step
        ─► warmup + cosine learning rate ─► periodic held-out loss ─► checkpoints that resume exactly

Everything that sets the scale is a field of `TrainConfig` (and a flag of `assistant finetune` /
`assistant pretrain`), so one recipe runs on a laptop CPU and, with bigger numbers, on a GPU.

Determinism: the example order is a pure function of (seed, step): micro-batch k holds examples
[k * batch_size, (k + 1) * batch_size) of an endless stream of per-epoch permutations. A checkpoint stores
the trainable weights, the optimizer state, the step and every RNG state, so a resumed run takes exactly the
same steps as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
CHECKPOINT_DIR = "checkpoint"


@dataclass
class Example:
    """One training sequence: token ids and per-token labels (IGNORE_INDEX where no loss is taken).

    labels[t] is the target *at* position t (the token itself); the loss compares the prediction made at
    position t - 1 with it, so labels line up with input_ids (the Hugging Face convention).
    """

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and labels ({len(self.labels)}) differ in length")

    @classmethod
    def prompt_answer(cls, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> "Example":
        """A supervised example: loss on the answer tokens only."""
        return cls(list(prompt_ids) + list(answer_ids), [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids))

    @classmethod
    def causal(cls, ids: Sequence[int]) -> "Example":
        """A language-modelling example: loss on every token after the first."""
        return cls(list(ids), list(ids))

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass
class TrainConfig:
    """Every knob of a training run. Defaults suit a small LoRA fine-tune."""

    max_steps: int = 200  # optimizer steps; the schedule is planned over these
    batch_size: int = 4  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 10  # linear warmup from lr / warmup_steps to lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    eval_every: int = 50  # steps between held-out evaluations (0 = only at the end)
    eval_examples: int = 64  # held-out examples per evaluation (the first ones, always the same)
    save_every: int = 50  # steps between checkpoints (0 = only at the end)
    max_seq_len: int = 1024  # longer examples keep their last max_seq_len tokens
    seed: int = 0
    device: str | None = None  # None = CUDA when available, else CPU
    amp: bool | None = None  # bf16 autocast; None = on CUDA only
    time_limit_s: float | None = None  # stop early (with a checkpoint) after this much wall time
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data


@dataclass
class TrainResult:
    """What a run did: final step, losses and learning rates per step, held-out losses, time and tokens."""

    step: int
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    lrs: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    stopped_early: bool = False


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def collate(examples: Sequence[Example], pad_id: int, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a micro-batch: input_ids [B, T] (pad_id) and labels [B, T] (IGNORE_INDEX on padding).

    Right padding needs no attention mask under causal attention: real tokens never look ahead at pads.
    """
    rows = [(ex.input_ids[-max_seq_len:], ex.labels[-max_seq_len:]) for ex in examples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(labs)] = torch.tensor(labs, dtype=torch.long)
    return input_ids, labels


@contextmanager
def _headless(model: nn.Module) -> Iterator[nn.Linear | None]:
    """Temporarily replace the model's output head by identity, so forward returns final hidden states.

    The loss then applies the head only at labelled positions: for a 49k vocabulary and a long prompt with a
    short answer, that saves most of the head's compute and the [B, T, V] logits tensor.
    """
    head = getattr(model, "output", None)
    if not isinstance(head, nn.Linear):
        yield None
        return
    model.output = nn.Identity()
    try:
        yield head
    finally:
        model.output = head


def loss_sum(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and how many there are.

    input_ids, labels: [B, T]. The prediction at position t is scored against labels[t + 1].
    """
    targets = labels[:, 1:]  # [B, T-1]
    selected = targets != IGNORE_INDEX  # [B, T-1]
    count = int(selected.sum())
    with _headless(model) as head:
        out = model(input_ids)  # [B, T, D] hidden (headless) or [B, T, V] logits
        out = out[:, :-1][selected]  # [N, D] or [N, V]
        logits = head(out) if head is not None else out  # [N, V]
    loss = F.cross_entropy(logits.float(), targets[selected], reduction="sum")
    return loss, count


class CausalLMTask:
    """The default training task: next-token loss on labelled tokens of right-padded `Example`s.

    A task tells the Trainer how to batch its examples and score a batch; another model (the reader's span
    head, `model.reader.SpanTask`) brings its own with the same four methods.
    """

    def __init__(self, pad_id: int, max_seq_len: int) -> None:
        self.pad_id = pad_id
        self.max_seq_len = max_seq_len

    def collate(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(examples, self.pad_id, self.max_seq_len)

    def count(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        """What the step's loss is averaged over: labelled target tokens."""
        return int((batch[1][:, 1:] != IGNORE_INDEX).sum())

    def tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(batch[0].numel())

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return loss_sum(model, *batch)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch (a tensor, or a tuple/list/dict of them) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Trains the parameters of `model` that require grad on `train_data`, evaluating on `eval_data`.

    out_dir holds `checkpoint/` (trainable weights + optimizer, schedule step and RNG state) and
    `metrics.jsonl` (one JSON line per step and per evaluation). `on_checkpoint(step)` runs after each
    checkpoint is written (e.g. to export the adapter so far).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Sequence[Example],
        eval_data: Sequence[Example] | None,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        pad_id: int = 0,
        on_checkpoint: Callable[[int], None] | None = None,
        task: Any | None = None,
    ) -> None:
        if not train_data:
            raise ValueError("no training examples")
        from model.runtime import resolve_device

        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.train_data = list(train_data)
        self.eval_data = list(eval_data or [])[: config.eval_examples]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.pad_id = pad_id
        self.task = task if task is not None else CausalLMTask(pad_id, config.max_seq_len)
        self.on_checkpoint = on_checkpoint
        self.named_trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named_trainable:
            raise ValueError("the model has no trainable parameters (apply_lora, or set requires_grad)")
        decay = [p for n, p in self.named_trainable if p.ndim >= 2]
        no_decay = [p for n, p in self.named_trainable if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=lr_at(0, config), betas=config.betas,
                                           foreach=self.device.type == "cuda")
        self.step = 0
        self.amp = config.amp if config.amp is not None else self.device.type == "cuda"
        self._perms: dict[int, list[int]] = {}
        seed_everything(config.seed)

    # ---- data order ---------------------------------------------------------------------------------------
    def _example(self, index: int) -> Example:
        """The index-th example of the endless, per-epoch shuffled stream (a pure function of seed and index)."""
        n = len(self.train_data)
        epoch, offset = divmod(index, n)
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(n, generator=gen).tolist()}
        return self.train_data[self._perms[epoch][offset]]

    def _micro_batch(self, k: int) -> list[Example]:
        start = k * self.config.batch_size
        return [self._example(start + i) for i in range(self.config.batch_size)]

    # ---- checkpoints --------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write out_dir/checkpoint atomically (a temp folder renamed into place)."""
        if self.out_dir is None:
            return None
        from safetensors.torch import save_file

        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = self.out_dir / CHECKPOINT_DIR
        tmp = self.out_dir / f".{CHECKPOINT_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = {n: p.detach().cpu().contiguous() for n, p in self.named_trainable}
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save({
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_state(),
            "config": self.config.to_dict(),
        }, tmp / "state.pt")
        old = self.out_dir / f".{CHECKPOINT_DIR}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.step)
        return final

    def load_checkpoint(self, folder: str | Path | None = None) -> bool:
        """Restore weights, optimizer, step and RNG from a checkpoint folder; False when there is none."""
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else (self.out_dir / CHECKPOINT_DIR if self.out_dir else None)
        if folder is None or not (folder / "state.pt").is_file():
            return False
        from model.errors import CheckpointError

        weights = load_file(str(folder / "trainable.safetensors"))
        names = {n for n, _ in self.named_trainable}
        if set(weights) != names:
            raise CheckpointError(
                f"the checkpoint in {folder} trains different parameters than this run "
                f"({len(weights)} vs {len(names)} tensors); use a fresh --out folder or the same model and LoRA settings"
            )
        with torch.no_grad():
            for name, param in self.named_trainable:
                param.copy_(weights[name].to(param.device, param.dtype))
        state = torch.load(folder / "state.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        _set_rng_state(state["rng"])
        return True

    # ---- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean per-token loss on the held-out examples (None when there are none)."""
        if not self.eval_data:
            return None
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        try:
            for start in range(0, len(self.eval_data), self.config.batch_size):
                batch = self.task.collate(self.eval_data[start : start + self.config.batch_size])
                with self._autocast():
                    loss, n = self.task.loss(self.model, to_device(batch, self.device))
                total, count = total + float(loss), count + n
        finally:
            self.model.train(was_training)
        return total / max(count, 1)

    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ---- the loop -----------------------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def train(self, until_step: int | None = None) -> TrainResult:
        """Run optimizer steps from the current step up to `until_step` (default: config.max_steps).

        Stopping at `until_step` < max_steps keeps the schedule planned for max_steps (that is how an
        interrupted run is simulated); a later `train()` on a Trainer that loaded the checkpoint continues it.
        """
        config = self.config
        end = min(until_step or config.max_steps, config.max_steps)
        result = TrainResult(step=self.step)
        self.model.train()
        started = time.perf_counter()
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        try:
            while self.step < end:
                step_start = time.perf_counter()
                lr = lr_at(self.step, config)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batches = [self._micro_batch(self.step * config.grad_accum + j) for j in range(config.grad_accum)]
                collated = [self.task.collate(b) for b in batches]
                # Normalise by the labelled tokens (or examples) of the whole optimizer step, so accumulation
                # over k micro-batches gives the same gradient as one k-times bigger batch.
                n_target = sum(self.task.count(b) for b in collated)
                step_tokens = sum(self.task.tokens(b) for b in collated)
                total_loss = 0.0
                for batch in collated:
                    with self._autocast():
                        loss, _ = self.task.loss(self.model, to_device(batch, self.device))
                    (loss / max(n_target, 1)).backward()
                    total_loss += float(loss.detach())
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for _, p in self.named_trainable], config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1

                step_loss = total_loss / max(n_target, 1)
                seconds = time.perf_counter() - step_start
                result.train_loss.append((self.step, step_loss))
                result.lrs.append((self.step, lr))
                result.tokens += step_tokens
                self._log({"step": self.step, "loss": step_loss, "lr": lr, "tokens": step_tokens,
                           "examples": config.batch_size * config.grad_accum, "seconds": round(seconds, 3)})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{step_tokens / seconds:.0f}",
                                    ex_s=f"{config.batch_size * config.grad_accum / seconds:.1f}")

                at_end = self.step == end
                if (config.eval_every and self.step % config.eval_every == 0) or at_end:
                    eval_loss = self.evaluate()
                    if eval_loss is not None:
                        result.eval_loss.append((self.step, eval_loss))
                        self._log({"step": self.step, "eval_loss": eval_loss})
                        if bar is not None:
                            bar.write(f"step {self.step}: held-out loss {eval_loss:.4f}")
                timed_out = config.time_limit_s is not None and time.perf_counter() - started > config.time_limit_s
                if (config.save_every and self.step % config.save_every == 0) or at_end or timed_out:
                    self.save_checkpoint()
                if timed_out and not at_end:
                    result.stopped_early = True
                    break
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise
        finally:
            if bar is not None:
                bar.close()
        result.step = self.step
        result.seconds = time.perf_counter() - started
        return result


def train(
    model: nn.Module,
    train_data: Sequence[Example],
    eval_data: Sequence[Example] | None,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    pad_id: int = 0,
    resume: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
    task: Any | None = None,
) -> TrainResult:
    """Train `model` (its parameters that require grad) and return what happened; resumes from out_dir when asked."""
    trainer = Trainer(model, train_data, eval_data, config, out_dir=out_dir, pad_id=pad_id,
                      on_checkpoint=on_checkpoint, task=task)
    if resume:
        trainer.load_checkpoint()
    return trainer.train()
