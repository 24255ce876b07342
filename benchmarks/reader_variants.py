"""Train the evidence reader in several variants with equal care and compare them (made for one GPU run).

    python benchmarks/reader_variants.py --out runs/reader --variants top3lora:240,lora:90,top3:90

Each variant trains for at most its time budget (seconds) or `--epochs`, whichever comes first; the learning-rate
schedule is planned over the steps the budget allows (measured on the first steps). One data build serves all
variants. For each variant the folder `OUT/<variant>/` gets the reader weights (fp16, what ships), its metrics
(EM/F1 on the test split's gold paragraphs, answerability separation on the dev split, size, minutes).

Variants ("what the reader adds beside the shared encoder"):
    lora      LoRA (rank 32) on all six shared layers + span head
    top3      its own copies of the top three layers + span head
    top3lora  own top three layers + LoRA (rank 32) on the three shared layers below + span head
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "lora": dict(own_layers=0, lora_rank=32, lr=5e-4),
    "top3": dict(own_layers=3, lora_rank=0, lr=1e-4),
    "top3lora": dict(own_layers=3, lora_rank=32, lr=1.5e-4),
    "top2lora": dict(own_layers=2, lora_rank=32, lr=1.5e-4),
}


def _plan_steps(args, v, encoder, data, task, device, budget_s, epoch_steps):
    """Steps that fit the time budget (timed on a throw-away copy), at most --epochs epochs."""
    from model.reader import Reader, ReaderConfig
    from model.train import Trainer, TrainConfig

    probe = Trainer(Reader.new(encoder, ReaderConfig(own_layers=v["own_layers"], lora_rank=v["lora_rank"])).model,
                    data.examples, None, TrainConfig(max_steps=12, batch_size=args.batch_size, lr=v["lr"],
                                                     progress=False, device=str(device)), task=task)
    probe.train(until_step=4)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tick = time.perf_counter()
    probe.train(until_step=12)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - tick) / 8
    del probe
    steps = max(10, min(int(args.epochs * epoch_steps), int(budget_s / per_step)))
    return steps, per_step


def main() -> int:
    from assistant.reader_training import (DataConfig, build_training_examples, evaluate_answerability,
                                           evaluate_reader, reader_splits)
    from assistant.training_data import DEFAULT_SQUAD_PATH, load_squad
    from model.encoder import Encoder
    from model.reader import Reader, ReaderConfig, SpanTask
    from model.train import Trainer, TrainConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="reader weights + summary (a few files)")
    ap.add_argument("--work", default="/tmp/reader-work", help="training logs and checkpoints")
    ap.add_argument("--encoder", default=None, help="encoder folder (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--squad", default=str(DEFAULT_SQUAD_PATH))
    ap.add_argument("--variants", default="top3lora:240,lora:90,top3:90", help="name:seconds,...")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (no timing probe); the budget "
                    "still stops the run")
    ap.add_argument("--max-questions", type=int, default=None)
    ap.add_argument("--eval-questions", type=int, default=1000)
    ap.add_argument("--eval-windows", type=int, default=512, help="dev windows for the periodic held-out loss")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-retrieved-negatives", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    rows = load_squad(args.squad)
    splits = reader_splits(rows)
    by_split = {name: [r for r in rows if r.title in set(getattr(splits, name))] for name in ("train", "dev", "test")}
    print({k: len(v) for k, v in by_split.items()}, "questions;", {k: len(getattr(splits, k)) for k in
                                                                   ("train", "dev", "test")}, "articles", flush=True)
    encoder = Encoder.load(args.encoder, device=device, dtype=torch.float32)
    embed = None if args.no_retrieved_negatives else (lambda texts: encoder.embed(texts, batch_size=256))
    windows = Reader.new(encoder, ReaderConfig()).windows
    data = build_training_examples(rows, splits.train, windows,
                                   DataConfig(max_questions=args.max_questions), embed=embed)
    dev_data = build_training_examples(rows, splits.dev, windows, DataConfig(max_questions=300), embed=None)
    print(f"data: {len(data.examples)} windows ({data.positives} with the answer, {data.negatives} without) from "
          f"{data.questions} questions in {data.seconds:.0f} s; setup {time.perf_counter() - t0:.0f} s", flush=True)

    summary = {}
    for spec in args.variants.split(","):
        name, _, budget = spec.partition(":")
        budget_s = float(budget or 120)
        v = VARIANTS[name]
        torch.manual_seed(0)
        reader = Reader.new(encoder, ReaderConfig(own_layers=v["own_layers"], lora_rank=v["lora_rank"]))
        task = SpanTask(encoder.model.config.pad_token_id)
        n_params = reader.num_parameters()
        epoch_steps = len(data.examples) // args.batch_size
        if args.steps:
            steps = args.steps
            per_step = float("nan")
        else:
            steps, per_step = _plan_steps(args, v, encoder, data, task, device, budget_s, epoch_steps)
        config = TrainConfig(max_steps=steps, batch_size=args.batch_size, lr=v["lr"], warmup_steps=max(1, steps // 20),
                             min_lr_ratio=0.05, weight_decay=0.01, eval_every=max(1, steps // 4),
                             eval_examples=args.eval_windows, save_every=0, progress=False, device=str(device),
                             time_limit_s=budget_s)
        print(f"[{name}] {n_params / 1e6:.2f}M params; {per_step * 1000:.1f} ms/step -> {steps} steps "
              f"({steps * args.batch_size / len(data.examples):.2f} epochs)", flush=True)
        trainer = Trainer(reader.model, data.examples, dev_data.examples, config, out_dir=Path(args.work) / name,
                          task=task)
        started = time.perf_counter()
        result = trainer.train()
        minutes = (time.perf_counter() - started) / 60
        reader.model.eval()
        scores = evaluate_reader(reader, by_split["test"], limit=args.eval_questions)
        answerability = evaluate_answerability(reader, by_split["dev"], rows, limit=min(300, args.eval_questions))
        metrics = {"variant": name, "params": n_params, "fp16_mb": n_params * 2 / 1e6, "steps": result.step,
                   "examples_seen": result.step * args.batch_size, "train_minutes": minutes,
                   "final_train_loss": result.train_loss[-1][1] if result.train_loss else None,
                   "eval_loss": result.eval_loss, "test_gold": scores, "dev_answerability": answerability,
                   "device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
        reader.save(out / name, metadata={"training": metrics})
        summary[name] = metrics
        print(f"[{name}] {minutes:.1f} min, {result.step} steps: test EM {scores['exact']:.1f} F1 {scores['f1']:.1f}; "
              f"dev answerability AUC {answerability['auc']:.3f} acc {answerability['best_accuracy']:.1f}", flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
