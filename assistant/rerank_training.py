"""Training data and training for the cross-encoder reranker (model.cross_encoder) on SQuAD v1.1 train.

    python -m assistant.rerank_training --minutes 85 --export assistant/data/reranker   # resumable: run it again

Splits are the reader's (`assistant.reader_training.reader_splits`): it trains on the same 402 articles, and the
benchmarks' held-out SQuAD articles (dev, test) are never seen. Each training question gives one listwise group:
its own paragraph (the positive) first, then `negatives` near misses that do not contain the answer:
- lexical: the paragraphs of all training articles that BM25 (the index's own tokenisation) ranks highest for the
  question, from the same and from other articles;
- same article: other paragraphs of the question's article (on topic, but not the answer's);
- dense (`--dense N`, off unless asked): the paragraphs the bundled encoder puts nearest the question, the near
  misses the dense half of hybrid search brings into the top hits the reranker reorders;
- random: any other paragraph, so the scale stays calibrated against plainly off-topic passages.
Checkpoints (resumable, model.train) go under ~/.cache/assistant/reranker-runs/<name>/; the finished weights are
exported to <run>/cross_encoder/ (and to --export, e.g. assistant/data/reranker).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.training_data import QARow, normalize_answer


@dataclass
class PairDataConfig:
    negatives: int = 7  # near misses per question
    lexical: int = 4  # of them from BM25's top ranks (sampled among the first `lexical_depth`)
    lexical_depth: int = 12
    same_article: int = 2
    dense: int = 0  # of them from the bundled encoder's nearest (sampled among the first `dense_depth`)
    dense_depth: int = 12
    max_questions: int | None = None  # None = every question of the articles
    seed: int = 0


def _lexical_near_misses(bm25: Any, tokens: list[str], usable: Any, depth: int, count: int,
                         rng: random.Random) -> list[int]:
    """Up to `count` passages sampled among the `depth` usable ones BM25 scores highest (above 0) for the
    question's tokens; none for a question without tokens."""
    if not tokens or count <= 0:
        return []
    scores = np.asarray(bm25.get_scores(tokens), dtype=np.float32)  # [n_passages]
    return _sample_top(scores, usable, depth, count, rng, slack=4, positive_only=True)


def _dense_near_misses(vectors: np.ndarray, query: np.ndarray, usable: Any, depth: int, count: int,
                       rng: random.Random) -> list[int]:
    """Up to `count` passages sampled among the `depth` usable ones whose vectors ([n, dim], unit length) are
    nearest the question's ([dim])."""
    if count <= 0:
        return []
    return _sample_top(vectors @ query, usable, depth, count, rng, slack=8)  # scores [n_passages]


def _sample_top(scores: np.ndarray, usable: Any, depth: int, count: int, rng: random.Random, slack: int,
                positive_only: bool = False) -> list[int]:
    """Up to `count` passages sampled among the first `depth` usable ones by score ([n_passages]), looking
    `slack` ranks further for unusable ones; with `positive_only`, only scores above 0 count."""
    near = [i for i in np.argsort(-scores)[: depth + slack].tolist()
            if (not positive_only or scores[i] > 0) and usable(i)][:depth]
    return rng.sample(near, min(count, len(near)))


def _dense_inputs(count: int, encoder: Any, passages: Sequence[str],
                  questions: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(passage vectors [n, dim] (cached under the runs folder), question vectors [q, dim]) when `count` dense
    near misses are asked for, else (None, None)."""
    if count <= 0:
        return None, None
    if encoder is None:
        raise ValueError("dense near misses need the encoder")
    return embed_texts(encoder, passages, runs_dir() / "vectors"), embed_texts(encoder, questions)


def embed_texts(encoder: Any, texts: Sequence[str], cache: Path | None = None) -> np.ndarray:
    """Unit vectors [len(texts), dim] of `texts` by the bundled encoder, kept in `cache` (a .npy keyed by the
    texts' hash) so a resumed run does not embed them again."""
    import hashlib

    key = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
    path = cache / f"vectors-{key}.npy" if cache is not None else None
    if path is not None and path.is_file():
        return np.load(path)
    vectors = np.asarray(encoder.embed(list(texts), batch_size=64), dtype=np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def _fill_at_random(chosen: list[int], total: int, n_passages: int, usable: Any, rng: random.Random) -> int:
    """Append random usable passages to `chosen` until it holds `total`; returns how many were added."""
    added = 0
    while len(chosen) < total:
        i = rng.randrange(n_passages)
        if usable(i):
            chosen.append(i)
            added += 1
    return added


def build_groups(rows: Sequence[QARow], titles: Sequence[str], pairs: Any,
                 config: PairDataConfig | None = None, encoder: Any = None) -> tuple[list[Any], dict[str, Any]]:
    """model.cross_encoder.PairGroups for the questions of `titles` (see the module docstring), and counts.

    `pairs`: a model.cross_encoder.PairMaker; `encoder`: the bundled encoder (needed for `config.dense`)."""
    from model.cross_encoder import PairGroup
    from retrieval.store import build_bm25, lexical_tokens

    started = time.perf_counter()
    config = config or PairDataConfig()
    rng = random.Random(f"rerank-data-{config.seed}")
    wanted = set(titles)
    paragraphs: list[tuple[str, str]] = []  # (title, context)
    index_of: dict[str, int] = {}
    for row in rows:
        if row.title in wanted and row.context not in index_of:
            index_of[row.context] = len(paragraphs)
            paragraphs.append((row.title, row.context))
    by_title: dict[str, list[int]] = defaultdict(list)
    for i, (title, _) in enumerate(paragraphs):
        by_title[title].append(i)
    questions = [r for r in rows if r.title in wanted]
    if config.max_questions is not None and len(questions) > config.max_questions:
        questions = rng.sample(questions, config.max_questions)
    if not questions:
        raise ValueError("no questions in the selected articles")
    bm25 = build_bm25([c for _, c in paragraphs])
    query_tokens = lexical_tokens([r.question for r in questions])
    vectors, query_vectors = _dense_inputs(config.dense, encoder, [c for _, c in paragraphs],
                                           [r.question for r in questions])
    passage_ids: dict[int, list[int]] = {}

    def ids_of(i: int) -> list[int]:
        if i not in passage_ids:
            passage_ids[i] = pairs.passage_ids([paragraphs[i][1]])[0]
        return passage_ids[i]

    normalized: dict[int, str] = {}

    def holds_answer(i: int, answer: str) -> bool:
        if i not in normalized:
            normalized[i] = f" {normalize_answer(paragraphs[i][1])} "
        return answer in normalized[i]

    groups, counts = [], defaultdict(int)
    for n, (row, tokens) in enumerate(zip(questions, query_tokens)):
        gold = index_of[row.context]
        answer = f" {normalize_answer(row.answer)} "
        chosen: list[int] = []

        def usable(i: int) -> bool:
            return i != gold and i not in chosen and not holds_answer(i, answer)

        chosen += _lexical_near_misses(bm25, tokens, usable, config.lexical_depth, config.lexical, rng)
        counts["lexical"] += len(chosen)
        if vectors is not None:
            dense = _dense_near_misses(vectors, query_vectors[n], usable, config.dense_depth, config.dense, rng)
            chosen += dense
            counts["dense"] += len(dense)
        same = [i for i in by_title[row.title] if usable(i)]
        for i in rng.sample(same, min(config.same_article, len(same))):
            chosen.append(i)
            counts["same_article"] += 1
        counts["random"] += _fill_at_random(chosen, config.negatives, len(paragraphs), usable, rng)
        q = pairs.question_ids(row.question)
        groups.append(PairGroup([pairs.pair(q, ids_of(i)) for i in [gold, *chosen]]))
    counts.update(questions=len(questions), paragraphs=len(paragraphs), articles=len(wanted),
                  seconds=round(time.perf_counter() - started, 1))
    return groups, dict(counts)


def technical_groups(pairs_file: str | Path | Sequence[str | Path], pairs: Any, negatives: int = 4, lexical: int = 3,
                     depth: int = 12, held_out: float = 0.1, seed: int = 0, dense: int = 0,
                     encoder: Any = None) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Listwise groups from assistant.docstring_pairs' (question, docstring passage) pairs, from one file or
    several (e.g. its plain and its how-to questions; their passages are pooled): the passage first, then `lexical`
    near misses among BM25's top `depth` of all the passages (not the same object), `dense` among the bundled
    `encoder`'s nearest `depth`, then random passages up to `negatives`. Returns (training groups, held-out
    groups, counts); the held-out share is a random `held_out` of the questions."""
    from model.cross_encoder import PairGroup
    from retrieval.store import build_bm25, lexical_tokens

    from assistant.docstring_pairs import read_pairs

    files = [pairs_file] if isinstance(pairs_file, (str, Path)) else list(pairs_file)
    rows = [row for file in files for row in read_pairs(Path(file))]
    passages = list(dict.fromkeys(r["passage"] for r in rows))
    index_of = {p: i for i, p in enumerate(passages)}
    name_of = {index_of[r["passage"]]: r["name"] for r in rows}
    asked = [r for r in rows if r.get("question")]
    if not asked or len(passages) < negatives + 1:
        raise ValueError(f"{', '.join(map(str, files))}: too few usable pairs ({len(asked)} questions, "
                         f"{len(passages)} passages)")
    rng = random.Random(f"technical-{seed}")
    bm25 = build_bm25(passages)
    vectors, query_vectors = _dense_inputs(dense, encoder, passages, [r["question"] for r in asked])
    ids: dict[int, list[int]] = {}

    def ids_of(i: int) -> list[int]:
        if i not in ids:
            ids[i] = pairs.passage_ids([passages[i]])[0]
        return ids[i]

    groups, counts = [], defaultdict(int)
    for n, (row, tokens) in enumerate(zip(asked, lexical_tokens([r["question"] for r in asked]))):
        gold = index_of[row["passage"]]
        chosen: list[int] = []

        def usable(i: int) -> bool:
            return i != gold and i not in chosen and name_of.get(i) != row["name"]

        chosen += _lexical_near_misses(bm25, tokens, usable, depth, lexical, rng)
        counts["lexical"] += len(chosen)
        if vectors is not None:
            near = _dense_near_misses(vectors, query_vectors[n], usable, depth, dense, rng)
            chosen += near
            counts["dense"] += len(near)
        counts["random"] += _fill_at_random(chosen, negatives, len(passages), usable, rng)
        q = pairs.question_ids(row["question"])
        groups.append(PairGroup([pairs.pair(q, ids_of(i)) for i in [gold, *chosen]]))
    rng.shuffle(groups)
    cut = int(round(len(groups) * held_out))
    counts.update(questions=len(asked), passages=len(passages), held_out=cut)
    return groups[cut:], groups[:cut], dict(counts)


SQUAD_ONLY = "SQuAD v1.1 train, the reader's 402 training articles"
RUN_FILE = "run.json"  # what a run trains on, written when it starts (export_checkpoint's metadata)


def runs_dir() -> Path:
    from retrieval.store import cache_dir

    return cache_dir() / "reranker-runs"


def export_checkpoint(run: Path, config: Any, export: str | Path | None = None) -> Path:
    """The run's latest training checkpoint (model.train's `checkpoint/trainable.safetensors`) written as a
    cross-encoder folder, <run>/cross_encoder (and `export`); its metadata says what the run trained on (its
    run.json; SQuAD alone for runs older than that file), the step and the last held-out loss."""
    import torch
    from safetensors.torch import load_file

    from model.cross_encoder import CrossEncoder
    from model.encoder import Encoder
    from model.errors import CheckpointError

    weights_path = run / "checkpoint" / "trainable.safetensors"
    if not weights_path.is_file():
        raise CheckpointError(f"{run} has no checkpoint yet; train first (python -m assistant.rerank_training)")
    ce = CrossEncoder.new(Encoder.load(), config)
    state = load_file(str(weights_path))
    own = ce.model.state_dict()
    if set(state) != set(own):
        raise CheckpointError(f"the checkpoint in {run} does not match these model options ({len(state)} vs "
                              f"{len(own)} tensors); pass the run's --layers/--own-layers/--lora-rank")
    ce.model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    step = int(torch.load(run / "checkpoint" / "state.pt", map_location="cpu", weights_only=False)["step"])
    held = None
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "eval_loss" in row and row["step"] <= step:
                held = row["eval_loss"]
    described = json.loads((run / RUN_FILE).read_text(encoding="utf-8")) if (run / RUN_FILE).is_file() else {}
    meta = {"trained_on": described.get("trained_on", SQUAD_ONLY), "data": described.get("data"),
            "init": described.get("init"), "train": {"steps": step}, "held_out_loss": held}
    ce.save(run / "cross_encoder", metadata=meta)
    if export:
        ce.save(export, metadata=meta)
    print(f"exported step {step} (held-out loss {held}) to {run / 'cross_encoder'}" + (f" and {export}" if export else ""))
    return run / "cross_encoder"


def initial_state(path: Path, ce: Any, encoder: Any) -> dict[str, Any]:
    """The trainable weights to start from: a run folder's checkpoint (fp32) or a saved cross-encoder folder."""
    from safetensors.torch import load_file

    from model.cross_encoder import CrossEncoder
    from model.errors import CheckpointError

    checkpoint = path / "checkpoint" / "trainable.safetensors"
    state = load_file(str(checkpoint)) if checkpoint.is_file() else CrossEncoder.load(encoder, path).model.state_dict()
    own = ce.model.state_dict()
    if set(state) != set(own):
        raise CheckpointError(f"the weights in {path} do not fit these model options ({len(state)} vs {len(own)} "
                              "tensors); pass that run's --layers/--own-layers/--lora-rank")
    return {k: v.to(own[k].dtype) for k, v in state.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="l2-own2-192", help="run folder under ~/.cache/assistant/reranker-runs/")
    parser.add_argument("--squad", default=None, help="train-v1.1.flat.jsonl.gz (default: ../shared/data/...)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--own-layers", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--negatives", type=int, default=4, help="near misses per question")
    parser.add_argument("--lexical", type=int, default=3, help="of them from BM25's top ranks")
    parser.add_argument("--same-article", type=int, default=1, help="of them from the question's article")
    parser.add_argument("--dense", type=int, default=0,
                        help="of them from the bundled encoder's nearest passages (what hybrid search brings up)")
    parser.add_argument("--questions", type=int, default=12000, help="training questions (one group each)")
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--batch", type=int, default=8, help="groups per optimizer step")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=20, help="warmup steps")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between held-out losses")
    parser.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CPUs with native bf16)")
    parser.add_argument("--export", default=None, help="also write the finished weights to this folder")
    parser.add_argument("--technical", default=None,
                        help="also train on assistant.docstring_pairs' pairs (JSONL files, comma-separated): "
                             "technical-docs groups")
    parser.add_argument("--init", default=None,
                        help="start from these weights: a run folder (its checkpoint) or a cross-encoder folder")
    parser.add_argument("--export-only", action="store_true",
                        help="do not train: write the run's latest checkpoint as a cross-encoder folder (fp16) to "
                             "<run>/cross_encoder and --export (same model options as the run)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from assistant.reader_training import reader_splits
    from assistant.training_data import DEFAULT_SQUAD_PATH, load_squad
    from model.cross_encoder import CrossEncoder, CrossEncoderConfig, ListwiseTask
    from model.encoder import Encoder
    from model.train import TrainConfig, train

    out = runs_dir() / args.name
    out.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        export_checkpoint(out, CrossEncoderConfig(layers=args.layers, own_layers=args.own_layers,
                                                  lora_rank=args.lora_rank, max_length=args.max_length),
                          args.export)
        return
    rows = load_squad(args.squad or DEFAULT_SQUAD_PATH)
    splits = reader_splits(rows)
    encoder = Encoder.load()
    config = CrossEncoderConfig(layers=args.layers, own_layers=args.own_layers, lora_rank=args.lora_rank,
                                max_length=args.max_length)
    ce = CrossEncoder.new(encoder, config)
    if args.init:
        ce.model.load_state_dict(initial_state(Path(args.init), ce, encoder))
        print(f"starting from the weights in {args.init}", flush=True)
    data = PairDataConfig(negatives=args.negatives, lexical=args.lexical, same_article=args.same_article,
                          dense=args.dense, max_questions=args.questions)
    groups, counts = build_groups(rows, splits.train, ce.pairs, data, encoder)
    held_data = PairDataConfig(negatives=args.negatives, lexical=args.lexical, same_article=args.same_article,
                               dense=args.dense, max_questions=128, seed=1)
    held, held_counts = build_groups(rows, splits.dev, ce.pairs, held_data, encoder)
    print(f"train groups: {counts}\nheld-out groups (dev articles): {held_counts}", flush=True)
    if args.technical:
        tech, tech_held, tech_counts = technical_groups(args.technical.split(","), ce.pairs, args.negatives,
                                                        args.lexical, dense=args.dense, encoder=encoder)
        groups, held = groups + tech, held + tech_held
        random.Random(f"mix-{args.name}").shuffle(groups)
        random.Random("mix-held").shuffle(held)  # the evaluated first `eval_examples` hold both kinds
        counts["technical"] = tech_counts
        print(f"technical groups: {tech_counts}", flush=True)
    trained_on = SQUAD_ONLY
    if args.technical:
        trained_on += " + questions written for third-party packages' docstrings (assistant.docstring_pairs)"
    init = Path(args.init).name if args.init else None
    (out / RUN_FILE).write_text(json.dumps({"trained_on": trained_on, "data": counts, "init": init}, indent=1),
                                encoding="utf-8")
    train_config = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=args.warmup,
                               weight_decay=0.01, eval_every=args.eval_every, eval_examples=128, save_every=25,
                               max_seq_len=args.max_length, device="cpu", amp=args.amp,
                               time_limit_s=None if args.minutes is None else 60 * args.minutes)
    result = train(ce.model, groups, held, train_config, out_dir=out, task=ListwiseTask(encoder.model.config.pad_token_id))
    meta = {"trained_on": trained_on, "data": counts, "init": init,
            "train": {"steps": result.step, "max_steps": args.steps, "batch_groups": args.batch, "lr": args.lr,
                      "seconds": round(result.seconds), "amp": args.amp},
            "held_out_loss": result.eval_loss[-1][1] if result.eval_loss else None}
    ce.save(out / "cross_encoder", metadata=meta)
    if args.export:
        ce.save(args.export, metadata=meta)
    print(json.dumps({"step": result.step, "stopped_early": result.stopped_early, "eval_loss": result.eval_loss},
                     indent=1))


if __name__ == "__main__":
    main()


__all__ = ["PairDataConfig", "build_groups", "export_checkpoint", "main", "runs_dir"]
