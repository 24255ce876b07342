"""Synthetic questions for passages: the generator, tuned on SQuAD to write a question that a passage answers
(the query generator of the GPL recipe, for adapting the retriever to a folder without labels).

    passage ─► cut to max_passage_tokens ─► chat prompt (instruction; passage) ─► generator
            ─► (+ a soft prompt, model.prompt_tuning, or a LoRA adapter, model.lora) ─► first line up to its "?"

    writer = QuestionWriter.load()                  # the shipped writer (assistant/data/question_writer/)
    writer.write(["The Eiffel Tower was completed in 1889 ..."])   # -> [["When was the Eiffel Tower completed?"]]

The shipped writer folder holds `writer.json` (method, prompt settings, how it was trained and measured) and the
tuned part: `soft_prompt.*` (method "prompt") or `adapter.*` (method "lora"); method "base" is the untuned model
with the same instruction (the baseline).

Training and evaluation (SQuAD v1.1 train; the reader's article splits: train on `.train`, measure on `.dev`,
never `.test`), resumable under ~/.cache/assistant/question-writer/<method>:

    python -m assistant.question_writer train --method prompt --examples 1200 --steps 150 --time-limit 45
    python -m assistant.question_writer train --method lora --examples 1200 --steps 150 --time-limit 45
    python -m assistant.question_writer evaluate --writer ~/.cache/assistant/question-writer/prompt/writer
    python -m assistant.question_writer speed --passages 64
    python -m assistant.question_writer export --run ~/.cache/assistant/question-writer/prompt
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.errors import CheckpointError, UserError

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "question_writer"
WRITER_CONFIG = "writer.json"
WRITER_FORMAT = "assistant-question-writer/1"
METHODS = ("base", "prompt", "lora")
INSTRUCTION = "Write one question that the passage answers."


@dataclass
class WriterSettings:
    """How prompts are built and questions decoded (stored in writer.json, so training and use agree).

    max_passage_tokens: a longer passage keeps its first this many tokens (prefill is most of the cost).
    max_new_tokens: SQuAD questions are ~11 words (~14 tokens); longer output is cut.
    temperature / top_p: sampling when more than one question per passage is asked for (one is greedy).
    """

    instruction: str = INSTRUCTION
    max_passage_tokens: int = 192
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_p: float = 0.95

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WriterSettings":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def clean_question(text: str) -> str:
    """The question in a generated reply: its first non-empty line, a "Question:" label dropped, cut after the
    first "?" (the model sometimes goes on with an answer)."""
    line = next((part.strip() for part in text.strip().splitlines() if part.strip()), "")
    for label in ("question:", "q:"):
        if line.lower().startswith(label):
            line = line[len(label):].strip()
    mark = line.find("?")
    return line[: mark + 1].strip() if mark >= 0 else line


def read_writer_info(folder: str | Path) -> dict[str, Any]:
    """The parsed writer.json of a question-writer folder (CheckpointError when missing or broken)."""
    path = Path(folder) / WRITER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a question-writer folder (no {WRITER_CONFIG}); pass the folder "
                              "written by `python -m assistant.question_writer train/export`, or path=None for "
                              "the shipped writer")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; export the writer again") from exc
    if not isinstance(info, dict) or info.get("format") != WRITER_FORMAT or info.get("method") not in METHODS:
        raise CheckpointError(f"{path} is not a question writer this version understands")
    return info


def save_writer_info(folder: str | Path, method: str, settings: WriterSettings, base_identity: str,
                     trained_parameters: int = 0, extra: dict[str, Any] | None = None) -> Path:
    """Write `writer.json` into `folder` (atomically): what `QuestionWriter.load` reads beside the tuned part."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"format": WRITER_FORMAT, "method": method, "base_identity": base_identity,
            "settings": asdict(settings), "trained_parameters": int(trained_parameters), **(extra or {})}
    tmp = folder / f".{WRITER_CONFIG}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / WRITER_CONFIG)
    return folder


class QuestionWriter:
    """Writes questions that passages answer, with the project's generator (see the module docstring).

    Not thread-safe beyond what `Generator` guarantees (one generation at a time).
    """

    def __init__(self, generator: Any, method: str = "base", soft_prompt: Any = None,
                 settings: WriterSettings | None = None, info: dict[str, Any] | None = None) -> None:
        self.generator = generator
        self.method = method
        self.soft_prompt = soft_prompt
        self.settings = settings or WriterSettings()
        self.info = info or {}

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, generator: Any = None, path: str | Path | None = None) -> "QuestionWriter":
        """The question writer in `path` (None: the shipped one, assistant/data/question_writer/).

        generator: a loaded `model.generate.Generator` to write with (None: load the default base generator, or
        for a LoRA writer the base generator with the writer's adapter). A soft prompt ("prompt") runs on the
        plain base model only: a generator that carries another adapter (the assistant's answer adapter) is
        refused with a CheckpointError, as is any generator for a LoRA writer that was not loaded with it
        (`Generator.load(adapter=path)`). Loading reads files only; nothing is downloaded but the base model.
        """
        folder = Path(path) if path is not None else DEFAULT_PATH
        info = read_writer_info(folder)
        method = info["method"]
        settings = WriterSettings.from_dict(info.get("settings", {}))
        from model.generate import Generator

        if method == "lora":
            if generator is None:
                generator = Generator.load(adapter=folder)
            elif f"+adapter:{folder.name}" not in generator.identity:
                raise CheckpointError(
                    f"the question writer in {folder} is a LoRA adapter and needs a generator loaded with it "
                    f"(this one is {generator.identity!r}); pass generator=None or Generator.load(adapter={str(folder)!r})")
            return cls(generator, method, None, settings, info)
        generator = generator if generator is not None else Generator.load()
        soft_prompt = generator.load_soft_prompt(folder) if method == "prompt" else None
        if method == "base" and info.get("base_identity"):
            from model.prompt_tuning import base_identity

            if base_identity(generator.identity) != info["base_identity"]:
                raise CheckpointError(f"the question writer in {folder} is for {info['base_identity']!r}, the "
                                      f"generator is {generator.identity!r}; pass generator=None")
        return cls(generator, method, soft_prompt, settings, info)

    # ---- prompts ------------------------------------------------------------------------------------------
    def prompt_ids(self, passage: str) -> list[int]:
        """The token ids of the prompt for `passage` (cut to max_passage_tokens), as training and use see it."""
        tokenizer = self.generator.tokenizer
        ids = tokenizer.encode(passage.strip(), add_special_tokens=False)
        if len(ids) > self.settings.max_passage_tokens:
            passage = tokenizer.decode(ids[: self.settings.max_passage_tokens])
        messages = [{"role": "system", "content": self.settings.instruction},
                    {"role": "user", "content": passage.strip()}]
        return tokenizer.encode(self.generator.render_chat(messages), add_special_tokens=False)

    # ---- writing ------------------------------------------------------------------------------------------
    def write(self, passages: Sequence[str], per_passage: int = 1, batch_size: int = 16,
              on_progress: Callable[[int, int], None] | None = None, seed: int = 0) -> list[list[str]]:
        """Questions for each passage, in input order: a list per passage.

        per_passage 1: the greedy question. More: that many sampled ones (temperature/top_p of the settings),
            duplicates dropped, so a list may be shorter. A blank passage gets [].
        batch_size: prompts (rows) generated together; passages are grouped by length first, so little is padding.
        on_progress(done, total): called after each batch with the number of passages finished so far.
        seed: sampling seed; the same passages, batch_size and seed give the same questions.
        """
        from model.sampling import SamplingParams

        if per_passage < 1 or batch_size < 1:
            raise ValueError(f"per_passage and batch_size must be >= 1 (got {per_passage}, {batch_size})")
        passages = list(passages)
        if any(not isinstance(text, str) for text in passages):
            raise TypeError("passages must be strings")
        out: list[list[str]] = [[] for _ in passages]
        todo = [i for i, text in enumerate(passages) if text.strip()]
        prompts = {i: self.prompt_ids(passages[i]) for i in todo}
        todo.sort(key=lambda i: -len(prompts[i]))  # longest first: similar lengths share a batch
        rows = [i for i in todo for _ in range(per_passage)]  # each passage's rows side by side
        greedy = per_passage == 1
        for b, start in enumerate(range(0, len(rows), batch_size)):
            chunk = rows[start : start + batch_size]
            params = SamplingParams(max_new_tokens=self.settings.max_new_tokens, stop=("\n",),
                                    temperature=0.0 if greedy else self.settings.temperature,
                                    top_p=1.0 if greedy else self.settings.top_p, seed=seed * 100_003 + b)
            results = self.generator.generate_batch([prompts[i] for i in chunk], params,
                                                    soft_prompt=self.soft_prompt)
            for i, result in zip(chunk, results):
                question = clean_question(result.text)
                if question and question not in out[i]:
                    out[i].append(question)
            if on_progress is not None:
                on_progress((start + len(chunk)) // per_passage, len(todo))
        return out

    @property
    def trained_parameters(self) -> int:
        """How many numbers the tuning trained (0 for the base writer)."""
        return int(self.info.get("trained_parameters", 0))


# ---------------------------------------------------------------------------------------------------------------
# training data (SQuAD v1.1 train; the reader's article splits)
# ---------------------------------------------------------------------------------------------------------------
TRAIN_PASSAGE_WORDS = 110  # training passages: the paragraph cut to about this many words around the answer


@dataclass
class PassageQuestion:
    """A passage and a question it answers (SQuAD's), with the paragraph it came from."""

    title: str
    context: str
    passage: str
    question: str


def passage_questions(rows: Sequence[Any], titles: Sequence[str], n: int, seed: int,
                      max_words: int = TRAIN_PASSAGE_WORDS) -> list[PassageQuestion]:
    """Up to `n` (passage, question) pairs from the articles `titles`, at most one question per paragraph while
    paragraphs last (more variety per example). The passage is the paragraph cut to `max_words` around the
    answer, so what the question asks about is in it. Deterministic for a seed."""
    from assistant.training_data import clip_passage

    wanted = set(titles)
    candidates = [row for row in rows if row.title in wanted]
    random.Random(f"question-writer-{seed}").shuffle(candidates)
    seen: set[str] = set()
    first, rest = [], []
    for row in candidates:
        (rest if row.context in seen else first).append(row)
        seen.add(row.context)
    out = []
    for row in (first + rest)[:n]:
        keep = (row.answer_start, row.answer_start + len(row.answer))
        out.append(PassageQuestion(row.title, row.context, clip_passage(row.context, max_words, keep=keep),
                                   row.question))
    return out


def training_example(writer: QuestionWriter, pair: PassageQuestion):
    """A model.train Example: the writer's prompt for the passage (no loss), the question and <|im_end|> (loss)."""
    from model.train import Example

    tokenizer = writer.generator.tokenizer
    answer = tokenizer.encode(pair.question.strip(), add_special_tokens=False) + list(tokenizer.eos_token_ids[:1])
    return Example.prompt_answer(writer.prompt_ids(pair.passage), answer)


@dataclass
class _PromptOnly:
    """Just enough of a Generator for building prompts (training runs on a float decoder, not a Generator)."""

    tokenizer: Any

    def render_chat(self, messages: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)


def _squad_splits(squad: str | None):
    from assistant.reader_training import reader_splits
    from assistant.training_data import DEFAULT_SQUAD_PATH, load_squad

    try:
        rows = load_squad(squad or DEFAULT_SQUAD_PATH)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    return rows, reader_splits(rows)


# ---------------------------------------------------------------------------------------------------------------
# training: a soft prompt or a LoRA adapter on the frozen float32 base, with model.train's loop
# ---------------------------------------------------------------------------------------------------------------
def _export_run(out: Path, method: str, model: Any, loaded: Any, settings: WriterSettings, tuning: Any,
                step_info: dict[str, Any]) -> Path:
    """Write the run's writer folder (out/writer): the tuned part and writer.json."""
    folder = out / "writer"
    if method == "prompt":
        from model.prompt_tuning import save_soft_prompt

        save_soft_prompt(folder, model.soft_prompt, tuning, loaded.identity, decoder=loaded.model, metadata=step_info)
        trained = model.soft_prompt.weight.numel()
    else:
        import torch

        from model.lora import count_parameters, lora_parameters, save_adapter

        save_adapter(folder, loaded.model, tuning, loaded.identity, metadata=step_info, dtype=torch.float16)
        trained = count_parameters(lora_parameters(loaded.model))
    save_writer_info(folder, method, settings, loaded.identity, trained, extra={"training": step_info})
    return folder


def train_writer(args: argparse.Namespace) -> dict[str, Any]:
    """Train a question writer (a soft prompt or a LoRA adapter), resuming from args.out's checkpoint."""
    import torch

    from model.sources import cache_dir, resolve_generator
    from model.train import TrainConfig, Trainer
    from model.weights import load_decoder

    method = args.method
    out = Path(args.out).expanduser() if args.out else cache_dir() / "question-writer" / method
    out.mkdir(parents=True, exist_ok=True)
    rows, splits = _squad_splits(args.squad)
    loaded = load_decoder(resolve_generator(args.generator), device="cpu", dtype=torch.float32)
    settings = WriterSettings(max_passage_tokens=args.max_passage_tokens)
    builder = QuestionWriter(_PromptOnly(loaded.tokenizer), settings=settings)
    train_pairs = passage_questions(rows, splits.train, args.examples, args.seed)
    eval_pairs = passage_questions(rows, splits.dev, args.eval_examples, args.seed + 1)
    train_data = [training_example(builder, pair) for pair in train_pairs]
    eval_data = [training_example(builder, pair) for pair in eval_pairs]
    torch.manual_seed(args.seed)
    if method == "prompt":
        from model.prompt_tuning import PromptTunedDecoder, PromptTuningConfig, SoftPrompt, SoftPromptTask

        tuning = PromptTuningConfig(n_virtual_tokens=args.virtual_tokens, init=args.init,
                                    init_text=settings.instruction if args.init == "text" else None)
        soft = SoftPrompt.initialise(loaded.model, tuning, loaded.tokenizer, seed=args.seed)
        model, task = PromptTunedDecoder(loaded.model, soft), SoftPromptTask(loaded.tokenizer.pad_token_id, 1024)
        lr = args.lr or 3e-2
    elif method == "lora":
        from model.lora import LoraConfig, apply_lora

        tuning = LoraConfig(rank=args.rank, alpha=args.alpha, dropout=0.0,
                            targets=tuple(t for t in args.targets.split(",") if t))
        apply_lora(loaded.model, tuning)
        model, task = loaded.model, None
        lr = args.lr or 5e-4
    else:
        raise UserError(f"--method must be 'prompt' or 'lora', not {method!r}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lengths = sorted(len(ex.input_ids) for ex in train_data)
    print(f"{method}: {trainable:,} trained parameters; {len(train_data)} training / {len(eval_data)} held-out "
          f"examples, {lengths[len(lengths) // 2]} tokens median, {lengths[-1]} max; lr {lr:g}", flush=True)
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=lr,
                         warmup_steps=max(1, args.steps // 15), eval_every=args.eval_every,
                         eval_examples=len(eval_data), save_every=args.save_every, max_seq_len=1024,
                         seed=args.seed, device="cpu", progress=not args.quiet,
                         time_limit_s=args.time_limit * 60 if args.time_limit else None)
    started = time.perf_counter()
    state: dict[str, Any] = {"trainer": None}

    def step_info() -> dict[str, Any]:
        trainer = state["trainer"]
        seen = trainer.step * config.batch_size * config.grad_accum
        return {"method": method, "step": trainer.step, "max_steps": config.max_steps, "examples_seen": seen,
                "train_examples": len(train_data), "lr": lr, "batch": config.batch_size * config.grad_accum,
                "tuning": tuning.to_dict(), "seed": args.seed}

    def on_checkpoint(step: int) -> None:
        _export_run(out, method, model, loaded, settings, tuning, step_info())

    trainer = Trainer(model, train_data, eval_data, config, out_dir=out, pad_id=loaded.tokenizer.pad_token_id,
                      on_checkpoint=on_checkpoint, task=task)
    state["trainer"] = trainer
    resumed = trainer.load_checkpoint()
    if resumed:
        print(f"resumed at step {trainer.step}", flush=True)
    if trainer.step == 0:
        base = trainer.evaluate()
        print(f"held-out loss before training: {base:.4f}", flush=True)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": 0, "eval_loss": base}) + "\n")
    result = trainer.train()
    info = step_info()
    info.update({"seconds_this_session": round(time.perf_counter() - started, 1), "stopped_early": result.stopped_early,
                 "eval_loss": result.eval_loss[-1][1] if result.eval_loss else None})
    folder = _export_run(out, method, model, loaded, settings, tuning, info)
    print(json.dumps(info, indent=1), flush=True)
    print(f"writer folder: {folder}", flush=True)
    return info


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------
def _threads(count: int | None) -> None:
    import torch

    if count:
        torch.set_num_threads(count)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m assistant.question_writer {train,evaluate,speed,export}` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m assistant.question_writer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a soft prompt or a LoRA adapter to write questions (resumable)")
    p.add_argument("--method", choices=("prompt", "lora"), required=True)
    p.add_argument("--out", default=None, help="run folder (default ~/.cache/assistant/question-writer/METHOD)")
    p.add_argument("--generator", default=None, help="base model (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--squad", default=None, help="train-v1.1.flat.jsonl.gz (default: ../shared/data/...)")
    p.add_argument("--examples", type=int, default=1200, help="training (passage, question) pairs")
    p.add_argument("--eval-examples", type=int, default=48, help="held-out pairs (dev articles) for the loss")
    p.add_argument("--max-passage-tokens", type=int, default=WriterSettings.max_passage_tokens)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--lr", type=float, default=None, help="default 3e-2 (prompt), 5e-4 (lora)")
    p.add_argument("--virtual-tokens", type=int, default=20, help="soft prompt length (prompt)")
    p.add_argument("--init", choices=("text", "vocab", "random"), default="text",
                   help="soft prompt start: the instruction's token embeddings, random vocabulary or noise")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (lora)")
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="wq,wk,wv,wo,w1,w2,w3", help="LoRA projections (lora)")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after N minutes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        _threads(getattr(args, "threads", None))
        if args.command == "train":
            train_writer(args)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


__all__ = ["QuestionWriter", "WriterSettings", "clean_question", "read_writer_info", "save_writer_info", "DEFAULT_PATH",
           "PassageQuestion", "passage_questions", "training_example", "train_writer", "main"]


if __name__ == "__main__":
    sys.exit(main())
