"""`assistant train-reader`: train the evidence reader (a span head + LoRA beside the shared encoder) on SQuAD.

Runs resume from their checkpoint (`--out`, default ~/.cache/assistant/reader-run): stop it at any time and run
the same command again. The shipped reader was trained on one GPU with the defaults below:

    assistant train-reader --device cuda --epochs 2 --batch-size 64 --export assistant/data/reader
    assistant train-reader --max-questions 2000 --time-limit 60        # a CPU-sized run, an hour at most

Training windows come from the SQuAD v1.1 train articles that neither the reader's evaluation nor the generator
adapter's evaluation uses (assistant/reader_training.py); each question also gets, with probability 0.6, an
answerability negative (a retrieved near-miss or another paragraph of the same article).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train-reader` subcommand."""
    p = subparsers.add_parser("train-reader", help="train the evidence reader (span extraction on SQuAD)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="run folder: checkpoint/, metrics.jsonl, reader/ "
                   "(default ~/.cache/assistant/reader-run)")
    p.add_argument("--export", default=None, help="also write the final reader into this folder")
    p.add_argument("--encoder", default=None, help="encoder folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--squad", default=None, help="train-v1.1.flat.jsonl.gz (default: ../shared/data/...)")
    p.add_argument("--max-questions", type=int, default=None, help="training questions (default: all ~79k)")
    p.add_argument("--no-retrieved-negatives", action="store_true",
                   help="negatives from the same article only (skips embedding every paragraph)")
    p.add_argument("--own-layers", type=int, default=0, help="top encoder layers the reader trains its own copy of")
    p.add_argument("--lora-rank", type=int, default=32, help="LoRA rank beside the shared layers (0 = none)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after N minutes")
    p.add_argument("--eval-questions", type=int, default=500, help="held-out questions for EM/F1 at the end")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the data, train (resuming), evaluate on held-out gold paragraphs, export."""
    import torch

    from assistant.reader_training import (DataConfig, build_training_examples, evaluate_reader, reader_splits)
    from assistant.training_data import DEFAULT_SQUAD_PATH, load_squad
    from model.encoder import Encoder
    from model.reader import Reader, ReaderConfig, SpanTask
    from model.runtime import resolve_device
    from model.sources import cache_dir
    from model.train import TrainConfig, train

    out = Path(args.out) if args.out else cache_dir() / "reader-run"
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    try:
        rows = load_squad(args.squad or DEFAULT_SQUAD_PATH)
    except FileNotFoundError as exc:
        from model.errors import UserError

        raise UserError(str(exc)) from None
    splits = reader_splits(rows)
    encoder = Encoder.load(args.encoder, device=device, dtype=torch.float32)
    reader = Reader.new(encoder, ReaderConfig(own_layers=args.own_layers, lora_rank=args.lora_rank))
    embed = None if args.no_retrieved_negatives else (lambda texts: encoder.embed(texts, batch_size=64))
    print(f"building training windows from {len(splits.train)} articles ...", flush=True)
    data = build_training_examples(rows, splits.train, reader.windows,
                                   DataConfig(max_questions=args.max_questions, seed=args.seed), embed=embed)
    dev = build_training_examples(rows, splits.dev, reader.windows, DataConfig(max_questions=200), embed=None)
    print(f"{len(data.examples):,} windows ({data.positives:,} with the answer, {data.negatives:,} without) from "
          f"{data.questions:,} questions in {data.seconds:.0f} s", flush=True)
    steps = max(1, int(args.epochs * len(data.examples) / args.batch_size))
    config = TrainConfig(max_steps=steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=max(1, steps // 20),
                         min_lr_ratio=0.05, weight_decay=0.01, eval_every=max(1, min(500, steps // 4)),
                         eval_examples=256, save_every=args.save_every, device=str(device), seed=args.seed,
                         time_limit_s=args.time_limit * 60 if args.time_limit else None)

    def export(step: int) -> None:
        reader.save(out / "reader", metadata={"step": step, "max_steps": steps})

    started = time.perf_counter()
    result = train(reader.model, data.examples, dev.examples, config, out_dir=out, task=SpanTask(),
                   on_checkpoint=export)
    minutes = (time.perf_counter() - started) / 60
    reader.model.eval()
    test = [r for r in rows if r.title in set(splits.test)]
    scores = evaluate_reader(reader, test, limit=args.eval_questions)
    meta: dict[str, Any] = {"step": result.step, "max_steps": steps, "examples_seen": result.step * args.batch_size,
                            "minutes_this_run": minutes, "test_gold": scores, "device": str(device)}
    reader.save(out / "reader", metadata={"training": meta})
    print(json.dumps(meta, indent=2))
    if result.stopped_early:
        print(f"stopped at step {result.step}/{steps}; run the same command again to continue")
    if args.export:
        reader.save(args.export, metadata={"training": meta})
        print(f"reader written to {args.export}")
    return 0
