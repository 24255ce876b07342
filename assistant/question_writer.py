"""Synthetic questions for passages: the generator, tuned on SQuAD to write a question that a passage answers
(the query generator of the GPL recipe, for adapting the retriever to a folder without labels).

    passage ─► cut to max_passage_tokens ─► chat prompt (instruction; passage) ─► generator
            ─► (+ a soft prompt, model.prompt_tuning, or a LoRA adapter, model.lora) ─► first line up to its "?"

    writer = QuestionWriter.load()                  # the shipped writer (assistant/data/question_writer/)
    writer.write(["The Eiffel Tower was completed in 1889 ..."])   # -> [["When was the Eiffel Tower completed?"]]

The shipped writer folder holds `writer.json` (method, prompt settings, how it was trained and measured) and the
tuned part: `adapter.*` (method "lora", the shipped writer: a rank-8 LoRA adapter, its own generator) or
`soft_prompt.*` (method "prompt": 20 soft-prompt vectors on the plain base generator; the alternative in
`question_writer/prompt/`); method "base" is the untuned model with the same instruction (the baseline).
writer.json's "evaluation" has the comparison that chose between them.

Training and evaluation (SQuAD v1.1 train; the reader's article splits: train on `.train`, measure on `.dev`,
never `.test`), resumable under ~/.cache/assistant/question-writer/<method> (run the same command again):

    python -m assistant.question_writer train --method lora --examples 600 --steps 50 --lr 1e-3 --threads 1
    python -m assistant.question_writer train --method prompt --examples 600 --steps 50 --lr 3e-2 --threads 1
    python -m assistant.question_writer evaluate --writer base --writer RUN_PROMPT --writer RUN_LORA --threads 2
    python -m assistant.question_writer speed --writer-path RUN_LORA --max-passage-tokens 192 128 --threads 2
    python -m assistant.question_writer export --run RUN_LORA --evaluation REPORT.json --max-passage-tokens 128
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

    max_passage_tokens: a longer passage keeps its first this many tokens (prefill is most of the cost: 128 writes
        ~1.4-1.5x as many questions per second as 192 on 2 cores, for ~3 points fewer source-first questions).
    max_new_tokens: SQuAD questions are ~11 words (~14 tokens); longer output is cut.
    temperature / top_p: sampling when more than one question per passage is asked for (one is greedy).
    """

    instruction: str = INSTRUCTION
    max_passage_tokens: int = 128
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_p: float = 0.95

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WriterSettings":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def clean_question(text: str) -> str:
    """The question in a generated reply: its first non-empty line with runs of spaces made one, a "Question:"
    label dropped, cut after the first "?" (the model sometimes goes on with an answer)."""
    line = next((" ".join(part.split()) for part in text.strip().splitlines() if part.strip()), "")
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
        self.name = {"base": "base generator + instruction", "prompt": "soft-prompt question writer",
                     "lora": "LoRA question writer"}[method]

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
                    f"(this one is {generator.identity!r}); pass generator=None or "
                    f"Generator.load(adapter={str(folder)!r})")
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
              on_progress: Callable[[int, int], None] | None = None, seed: int = 0,
              openings: Sequence[str] | None = None) -> list[list[str]]:
        """Questions for each passage, in input order: a list per passage.

        per_passage 1: the greedy question. More: that many sampled ones (temperature/top_p of the settings),
            duplicates dropped, so a list may be shorter. A blank passage gets [].
        batch_size: prompts (rows) generated together; passages are grouped by length first, so little is padding.
        on_progress(done, total): called after each batch with the number of passages finished so far.
        seed: sampling seed; the same passages, batch_size and seed give the same questions.
        openings: the words each passage's questions must start with ("How do I"; "" = free), one per passage: the
            writer continues them (its reply is forced to begin that way), which steers the kind of question.
        """
        from model.sampling import SamplingParams

        if per_passage < 1 or batch_size < 1:
            raise ValueError(f"per_passage and batch_size must be >= 1 (got {per_passage}, {batch_size})")
        passages = list(passages)
        if any(not isinstance(text, str) for text in passages):
            raise TypeError("passages must be strings")
        out: list[list[str]] = [[] for _ in passages]
        starts = [""] * len(passages) if openings is None else [str(o).strip() for o in openings]
        if len(starts) != len(passages):
            raise ValueError(f"openings must give one opening per passage ({len(starts)} for {len(passages)})")
        todo = [i for i, text in enumerate(passages) if text.strip()]
        tokenizer = self.generator.tokenizer
        prompts = {i: self.prompt_ids(passages[i])
                   + (tokenizer.encode(starts[i], add_special_tokens=False) if starts[i] else []) for i in todo}
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
                question = clean_question(starts[i] + result.text)  # the reply goes on after the opening
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
        lr = args.lr or 1e-3
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
# evaluation: held-out loss, and whether a written question finds its own passage among the dev paragraphs
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RankingSet:
    """Dev paragraphs (each cut to its first ~TRAIN_PASSAGE_WORDS words) as a small corpus; `picked` are the ones
    that get a question; `gold[i]` is a SQuAD question of corpus[picked[i]] whose answer is in the cut text."""

    corpus: list[str]
    picked: list[int]
    gold: list[str]


def ranking_set(rows: Sequence[Any], titles: Sequence[str], n: int, seed: int,
                max_words: int = TRAIN_PASSAGE_WORDS) -> RankingSet:
    """The corpus of every paragraph of the articles `titles` and `n` of them (with a gold question) to write for."""
    from assistant.training_data import answer_in, clip_passage

    wanted = set(titles)
    corpus: list[str] = []
    index: dict[str, int] = {}
    gold: dict[int, str] = {}
    for row in rows:
        if row.title not in wanted:
            continue
        if row.context not in index:
            index[row.context] = len(corpus)
            corpus.append(clip_passage(row.context, max_words))
        i = index[row.context]
        if i not in gold and answer_in(row.answer, corpus[i]):
            gold[i] = row.question
    candidates = sorted(gold)
    picked = sorted(random.Random(f"writer-ranking-{seed}").sample(candidates, min(n, len(candidates))))
    return RankingSet(corpus, picked, [gold[i] for i in picked])


def source_ranks(scores: Any, sources: Sequence[int]) -> list[int]:
    """Rank (1 = best) of each question's source passage in its score row [q, n]; ties count against it."""
    import numpy as np

    scores = np.asarray(scores)
    ranks = []
    for row, source in zip(scores, sources):
        ranks.append(1 + int((row > row[source]).sum()) + int((row == row[source]).sum()) - 1)
    return ranks


def rank_summary(ranks: Sequence[int], usable: Sequence[bool] | None = None) -> dict[str, float]:
    """Share ranked first, within the top 5, and the mean reciprocal rank over the top 10; with `usable` (one flag
    per question), also the share that is a usable question *and* ranks its source first ("question_top1")."""
    n = max(len(ranks), 1)
    out = {"top1": round(sum(r == 1 for r in ranks) / n, 4), "top5": round(sum(r <= 5 for r in ranks) / n, 4),
           "mrr10": round(sum(1.0 / r for r in ranks if r <= 10) / n, 4)}
    if usable is not None:
        out["question_top1"] = round(sum(r == 1 and ok for r, ok in zip(ranks, usable)) / n, 4)
    return out


GENERIC_WORDS = ("passage", "text", "article", "paragraph")


def is_question(text: str) -> bool:
    """A usable synthetic question: ends with "?", 4-40 words, not about "the passage" / "this text" itself."""
    words = text.split()
    lower = text.lower()
    return (text.endswith("?") and 4 <= len(words) <= 40
            and not any(f"the {w}" in lower or f"this {w}" in lower for w in GENERIC_WORDS))


class Rankers:
    """BM25 (retrieval's own tokenisation and bm25s) and the bundled encoder over one corpus."""

    def __init__(self, corpus: Sequence[str], dense: bool = True) -> None:
        from retrieval.store import build_bm25

        self.corpus = list(corpus)
        self.bm25 = build_bm25(self.corpus)
        self.encoder = None
        self.vectors = None
        if dense:
            from model.encoder import Encoder

            self.encoder = Encoder.load()
            self.vectors = self.encoder.embed(self.corpus, batch_size=32)  # [n, dim]

    def ranks(self, questions: Sequence[str], sources: Sequence[int]) -> dict[str, list[int]]:
        """{"bm25": ranks, "dense": ranks}: where each question ranks its source passage (1 = first)."""
        import numpy as np

        from retrieval.store import lexical_tokens

        tokens = lexical_tokens([q or "?" for q in questions])
        lexical = np.stack([np.asarray(self.bm25.get_scores(t), dtype=np.float32) for t in tokens])  # [q, n]
        out = {"bm25": source_ranks(lexical, sources)}
        if self.encoder is not None:
            dense = self.encoder.embed([q or "?" for q in questions], batch_size=64) @ self.vectors.T  # [q, n]
            out["dense"] = source_ranks(dense, sources)
        return out

    def summary(self, questions: Sequence[str], sources: Sequence[int]) -> dict[str, Any]:
        """rank_summary per ranker, with "question_top1" (usable questions that rank their source first)."""
        usable = [is_question(q) for q in questions]
        return {name: rank_summary(ranks, usable) for name, ranks in self.ranks(questions, sources).items()}


def held_out_loss(folder: Path | None, pairs: Sequence[PassageQuestion], settings: WriterSettings,
                  generator_spec: str | None = None, batch_size: int = 4) -> dict[str, float]:
    """Mean per-token loss (and perplexity) of the SQuAD questions of `pairs` under the writer in `folder` (None:
    the base model), on the float32 base weights as in training."""
    import math

    import torch

    from model.sources import resolve_generator
    from model.train import CausalLMTask
    from model.weights import load_decoder

    loaded = load_decoder(resolve_generator(generator_spec), device="cpu", dtype=torch.float32)
    method = read_writer_info(folder)["method"] if folder is not None else "base"
    model, task = loaded.model, CausalLMTask(loaded.tokenizer.pad_token_id, 1024)
    if method == "prompt":
        from model.prompt_tuning import PromptTunedDecoder, SoftPromptTask, load_soft_prompt

        model = PromptTunedDecoder(loaded.model, load_soft_prompt(folder, loaded.identity, loaded.model))
        task = SoftPromptTask(loaded.tokenizer.pad_token_id, 1024)
    elif method == "lora":
        from model.lora import load_adapter

        load_adapter(loaded.model, folder, loaded.identity, merge=True)
    builder = QuestionWriter(_PromptOnly(loaded.tokenizer), settings=settings)
    examples = [training_example(builder, pair) for pair in pairs]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            loss, n = task.loss(model, task.collate(examples[start : start + batch_size]))
            total, count = total + float(loss), count + n
    mean = total / max(count, 1)
    return {"loss": round(mean, 4), "perplexity": round(math.exp(mean), 3), "tokens": count}


def writer_folder(path: str | Path) -> Path:
    """A writer folder, given it or the training run folder that holds it (run/writer)."""
    path = Path(path).expanduser()
    return path / "writer" if (path / "writer" / WRITER_CONFIG).is_file() else path


def evaluate_writers(args: argparse.Namespace) -> dict[str, Any]:
    """Held-out loss, source-passage ranks (BM25, dense) and speed of each writer, plus the gold questions."""
    import numpy as np

    rows, splits = _squad_splits(args.squad)
    ranking = ranking_set(rows, splits.dev, args.paragraphs, args.seed)
    loss_pairs = passage_questions(rows, splits.dev, args.loss_examples, args.seed + 1)
    rankers = Rankers(ranking.corpus, dense=not args.no_dense)
    sources = ranking.picked
    report: dict[str, Any] = {
        "split": f"SQuAD v1.1 train, reader dev articles ({len(splits.dev)}); corpus {len(ranking.corpus)} "
                 f"paragraphs (first ~{TRAIN_PASSAGE_WORDS} words), {len(sources)} written for",
        "gold": {"ranks": rankers.summary(ranking.gold, sources),
                 "mean_words": round(float(np.mean([len(q.split()) for q in ranking.gold])), 2)},
        "writers": {},
    }
    print(f"gold questions: {report['gold']['ranks']}", flush=True)
    passages = [ranking.corpus[i] for i in sources]
    written: dict[str, list[str]] = {}
    for spec in args.writer:
        folder = None if spec == "base" else writer_folder(spec)
        info = read_writer_info(folder) if folder is not None else {"method": "base", "trained_parameters": 0}
        settings = WriterSettings.from_dict(info.get("settings", {}))
        name = args.names[len(written)] if args.names and len(args.names) > len(written) else spec
        entry: dict[str, Any] = {"path": spec, "method": info["method"],
                                 "trained_parameters": info.get("trained_parameters", 0),
                                 "training": info.get("training")}
        if args.loss_examples:
            entry["held_out"] = held_out_loss(folder, loss_pairs, settings)
            print(f"{name}: held-out {entry['held_out']}", flush=True)
        writer = load_writers([spec])[spec]
        started = time.perf_counter()
        questions = [q[0] if q else "" for q in writer.write(passages, batch_size=args.batch_size)]
        seconds = time.perf_counter() - started
        written[name] = questions
        entry.update({
            "ranks": rankers.summary(questions, sources),
            "questions_per_s": round(len(questions) / seconds, 3),
            "ends_with_question_mark": round(sum(q.endswith("?") for q in questions) / len(questions), 4),
            "usable_questions": round(sum(map(is_question, questions)) / len(questions), 4),
            "mean_words": round(float(np.mean([len(q.split()) for q in questions])), 2),
            "load": os.getloadavg()[0],
        })
        print(f"{name}: {entry['ranks']}, {entry['questions_per_s']} questions/s", flush=True)
        report["writers"][name] = entry
        del writer
    report["questions"] = {"sources": sources, "gold": ranking.gold, **written}
    report["examples"] = [
        {"passage": passages[k][:300], "gold": ranking.gold[k], **{name: qs[k] for name, qs in written.items()}}
        for k in range(min(args.show, len(passages)))
    ]
    return report


def load_writers(specs: Sequence[str]) -> dict[str, QuestionWriter]:
    """Writers by spec ("base" or a writer / run folder); base and soft-prompt writers share one base generator."""
    from model.generate import Generator

    base = None
    out: dict[str, QuestionWriter] = {}
    for spec in specs:
        folder = None if spec == "base" else writer_folder(spec)
        method = "base" if folder is None else read_writer_info(folder)["method"]
        if method != "lora" and base is None:
            base = Generator.load()
        if folder is None:
            out[spec] = QuestionWriter(base, "base")
        else:
            out[spec] = QuestionWriter.load(base if method != "lora" else None, folder)
    return out


def measure_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Questions/s of writers on dev paragraphs cut to max_passage_tokens (the longest paragraphs: chunk-sized),
    per batch size, the writers interleaved round by round in this one process (so machine load hits them alike),
    and what 5,000 chunks x 1 question would take at that rate."""
    import torch

    rows, splits = _squad_splits(args.squad)
    writers = load_writers(args.writer_path or [str(DEFAULT_PATH)])
    seen: set[str] = set()
    paragraphs = []
    dev = set(splits.dev)
    for row in rows:
        if row.title in dev and row.context not in seen:
            seen.add(row.context)
            paragraphs.append(row.context)
    paragraphs.sort(key=len, reverse=True)
    passages = paragraphs[: args.passages]
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "passages": len(passages), "writers": {}}
    if args.max_passage_tokens:
        variants = {}
        for spec, writer in writers.items():  # the same writer at each cap (sharing its generator)
            for cap in args.max_passage_tokens:
                settings = WriterSettings.from_dict({**asdict(writer.settings), "max_passage_tokens": cap})
                variants[f"{spec}@{cap}"] = QuestionWriter(writer.generator, writer.method, writer.soft_prompt,
                                                           settings, writer.info)
        writers = variants
    for spec, writer in writers.items():
        virtual = writer.soft_prompt.n_virtual_tokens if writer.soft_prompt is not None else 0
        lengths = [len(writer.prompt_ids(p)) + virtual for p in passages]
        out["writers"][spec] = {"method": writer.method, "prefill_tokens_mean": round(sum(lengths) / len(lengths), 1),
                                "runs": []}
        writer.write(passages[:2], batch_size=2)  # warm-up (kernels, caches)
    for batch_size in args.batch_sizes:
        for round_ in range(args.rounds):
            for spec, writer in writers.items():
                load = os.getloadavg()[0]
                started = time.perf_counter()
                questions = writer.write(passages, batch_size=batch_size)
                rate = len(passages) / (time.perf_counter() - started)
                run = {"batch_size": batch_size, "round": round_, "questions_per_s": round(rate, 3),
                       "minutes_for_5000": round(5000 / rate / 60, 1), "load_before": round(load, 2),
                       "questions": sum(len(q) for q in questions)}
                out["writers"][spec]["runs"].append(run)
                print(spec, json.dumps(run), flush=True)
    return out


def export_writer(run: Path, target: Path, evaluation: Path | None, max_passage_tokens: int | None = None) -> Path:
    """Copy a run's writer folder into `target` (the shipped writer by default), with an evaluation report (JSON)
    in writer.json and, when given, another passage cap; files are replaced one by one."""
    source = writer_folder(run)
    info = read_writer_info(source)
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name != WRITER_CONFIG:
            if path.stat().st_size >= 16 * 2**20:
                raise UserError(f"{path} is {path.stat().st_size / 2**20:.1f} MiB; a shipped file must stay under "
                                "16 MiB")
            tmp = target / f".{path.name}.tmp-{os.getpid()}"
            shutil.copyfile(path, tmp)
            os.replace(tmp, target / path.name)
    for stale in ("soft_prompt.json", "soft_prompt.safetensors", "adapter.json", "adapter.safetensors"):
        if not (source / stale).exists() and (target / stale).exists():
            (target / stale).unlink()
    extra = {k: v for k, v in info.items() if k not in ("format", "method", "base_identity", "settings",
                                                          "trained_parameters")}
    if evaluation is not None:
        extra["evaluation"] = json.loads(evaluation.read_text(encoding="utf-8"))
    settings = WriterSettings.from_dict(info["settings"])
    if max_passage_tokens:
        settings.max_passage_tokens = max_passage_tokens
    save_writer_info(target, info["method"], settings, info["base_identity"], info.get("trained_parameters", 0), extra)
    return target


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
    p.add_argument("--examples", type=int, default=600, help="training (passage, question) pairs")
    p.add_argument("--eval-examples", type=int, default=48, help="held-out pairs (dev articles) for the loss")
    p.add_argument("--max-passage-tokens", type=int, default=192, help="passage cap in training prompts")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--lr", type=float, default=None, help="default 3e-2 (prompt), 1e-3 (lora)")
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
    p = sub.add_parser("evaluate", help="held-out loss and source-passage ranks of writers on the dev articles")
    p.add_argument("--writer", action="append", required=True,
                   help='a writer folder, or "base" (the untuned model); repeat to compare in one run')
    p.add_argument("--names", nargs="*", default=None, help="a display name per --writer")
    p.add_argument("--squad", default=None)
    p.add_argument("--paragraphs", type=int, default=200, help="dev paragraphs to write a question for")
    p.add_argument("--loss-examples", type=int, default=150, help="dev (passage, question) pairs for the loss")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-dense", action="store_true", help="BM25 ranks only (no encoder)")
    p.add_argument("--show", type=int, default=8, help="examples to keep in the report")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the report (JSON) here")
    p = sub.add_parser("speed", help="questions/s of a writer at several batch sizes")
    p.add_argument("--writer-path", action="append", default=None,
                   help='writer folder or "base" (default: the shipped writer); repeat to interleave several')
    p.add_argument("--squad", default=None)
    p.add_argument("--passages", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--rounds", type=int, default=1, help="repetitions per batch size")
    p.add_argument("--max-passage-tokens", type=int, nargs="*", default=None,
                   help="passage caps to compare (default: each writer's own)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None)
    p = sub.add_parser("export", help="copy a run's writer (and its evaluation) into the shipped folder")
    p.add_argument("--run", required=True, help="run folder (or its writer/ folder)")
    p.add_argument("--to", default=str(DEFAULT_PATH))
    p.add_argument("--evaluation", default=None, help="a report (JSON) to keep in writer.json")
    p.add_argument("--max-passage-tokens", type=int, default=None, help="ship with this passage cap instead")
    args = parser.parse_args(argv)
    try:
        _threads(getattr(args, "threads", None))
        report = None
        if args.command == "train":
            train_writer(args)
        elif args.command == "evaluate":
            report = evaluate_writers(args)
        elif args.command == "speed":
            report = measure_speed(args)
        else:
            folder = export_writer(Path(args.run).expanduser(), Path(args.to),
                                   Path(args.evaluation) if args.evaluation else None, args.max_passage_tokens)
            print(f"exported to {folder}")
        if report is not None:
            text = json.dumps(report, indent=1)
            print(text)
            if getattr(args, "output", None):
                Path(args.output).write_text(text + "\n", encoding="utf-8")
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


__all__ = ["QuestionWriter", "WriterSettings", "clean_question", "read_writer_info", "save_writer_info", "DEFAULT_PATH",
           "PassageQuestion", "passage_questions", "training_example", "train_writer", "RankingSet", "ranking_set",
           "source_ranks", "rank_summary", "is_question", "held_out_loss", "evaluate_writers",
           "load_writers", "measure_speed", "export_writer", "main"]


if __name__ == "__main__":
    sys.exit(main())
