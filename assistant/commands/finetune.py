"""`assistant finetune`: train a LoRA adapter for grounded, cited answers and refusals on SQuAD-built RAG examples.

The same recipe runs on a CPU (small) and a GPU (big): only flags change, e.g.

    assistant finetune --out runs/cpu --max-steps 90 --batch-size 1 --grad-accum 8 --max-examples 1200
    assistant finetune --out runs/gpu --max-steps 2000 --batch-size 16 --grad-accum 2 --max-examples 60000 \
        --max-passages 5 --passage-words 200 --device cuda

The run folder keeps the built examples (train.jsonl, eval.jsonl), checkpoint/ (resumes automatically),
metrics.jsonl, and adapter/ (the adapter so far, refreshed at every checkpoint).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any


def _layers(spec: str | None) -> tuple[int, ...] | None:
    """"15-29" or "0,1,2" -> layer indices; None/"all" -> all layers."""
    if not spec or spec == "all":
        return None
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += range(int(lo), int(hi) + 1)
        else:
            out.append(int(part))
    return tuple(out)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `finetune` subcommand."""
    p = subparsers.add_parser("finetune", help="train a LoRA adapter (grounded answers with citations, refusals)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/finetune", help="run folder (checkpoints, metrics, adapter/)")
    p.add_argument("--generator", default=None, help="base model: .gguf file, HF folder or own checkpoint "
                   "(default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--export", default=None, help="also copy the final adapter into this folder")
    data = p.add_argument_group("data")
    data.add_argument("--squad", default=None, help="train-v1.1.flat.jsonl.gz (default: ../shared/data/...)")
    data.add_argument("--max-examples", type=int, default=2000, help="training examples to build")
    data.add_argument("--eval-questions", type=int, default=600, help="held-out examples to build (benchmark set)")
    data.add_argument("--eval-articles", type=int, default=40, help="articles held out for evaluation")
    data.add_argument("--min-passages", type=int, default=3)
    data.add_argument("--max-passages", type=int, default=5)
    data.add_argument("--passage-words", type=int, default=120, help="passages are cut to about this many words")
    data.add_argument("--unanswerable", type=float, default=0.25, help="share of training examples to refuse")
    data.add_argument("--answer-style", choices=("span", "sentence"), default="span")
    data.add_argument("--pool-size", type=int, default=3000, help="paragraphs the encoder indexes per split")
    data.add_argument("--no-retriever", action="store_true", help="random distractors instead of retrieved ones")
    data.add_argument("--rebuild-data", action="store_true", help="rebuild examples even if the run has them")
    lora = p.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, default=16)
    lora.add_argument("--alpha", type=float, default=32.0)
    lora.add_argument("--dropout", type=float, default=0.05)
    lora.add_argument("--targets", default="wq,wk,wv,wo,w1,w2,w3", help="comma-separated projection names")
    lora.add_argument("--lora-layers", default="all", help='blocks to adapt: "all", "15-29", "0,1,2"')
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--max-steps", type=int, default=200)
    opt.add_argument("--batch-size", type=int, default=4)
    opt.add_argument("--grad-accum", type=int, default=1)
    opt.add_argument("--lr", type=float, default=5e-4)
    opt.add_argument("--warmup-steps", type=int, default=10)
    opt.add_argument("--min-lr-ratio", type=float, default=0.1)
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--grad-clip", type=float, default=1.0)
    opt.add_argument("--max-seq-len", type=int, default=1024)
    opt.add_argument("--eval-every", type=int, default=25)
    opt.add_argument("--eval-examples", type=int, default=32, help="held-out examples for the periodic loss")
    opt.add_argument("--save-every", type=int, default=10)
    opt.add_argument("--time-limit", type=float, default=None, help="stop (with a checkpoint) after N minutes")
    opt.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    p.set_defaults(func=run)


def _build_data(args: argparse.Namespace, out: Path):
    """Build (or reuse) the run's train/eval examples."""
    from assistant.training_data import (
        DEFAULT_SQUAD_PATH, BuildConfig, build_dataset, load_examples, save_examples,
    )

    train_path, eval_path = out / "train.jsonl", out / "eval.jsonl"
    if train_path.is_file() and eval_path.is_file() and not args.rebuild_data:
        return load_examples(train_path), load_examples(eval_path)
    from model.errors import UserError

    build = BuildConfig(min_passages=args.min_passages, max_passages=args.max_passages,
                        max_passage_words=args.passage_words, unanswerable_fraction=args.unanswerable,
                        answer_style=args.answer_style)
    embed = None
    if not args.no_retriever:
        from model.encoder import Encoder

        encoder = Encoder.load()
        embed = lambda texts: encoder.embed(texts, show_progress=True)  # noqa: E731
    print("building examples ...", flush=True)
    try:
        dataset = build_dataset(args.squad or DEFAULT_SQUAD_PATH, n_train=args.max_examples,
                                n_eval=args.eval_questions, eval_articles=args.eval_articles, seed=args.seed,
                                config=build, embed=embed, pool_size=args.pool_size)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    save_examples(train_path, dataset.train)
    save_examples(eval_path, dataset.eval)
    (out / "split.json").write_text(json.dumps({"seed": args.seed, "eval_titles": dataset.eval_titles,
                                                "build": build.__dict__}, indent=1), encoding="utf-8")
    return dataset.train, dataset.eval


def run(args: argparse.Namespace) -> int:
    """Build data, load the base model, apply LoRA, train (resuming), export the adapter."""
    import torch

    from assistant.training_data import to_training_example
    from model.lora import LoraConfig, apply_lora, count_parameters, lora_parameters, save_adapter
    from model.sources import resolve_generator
    from model.train import TrainConfig, Trainer
    from model.weights import load_decoder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_examples, eval_examples = _build_data(args, out)
    loaded = load_decoder(resolve_generator(args.generator), device="cpu", dtype=torch.float32)
    tokenizer = loaded.tokenizer
    lora_config = LoraConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout,
                             targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                             layers=_layers(args.lora_layers))
    torch.manual_seed(args.seed)
    apply_lora(loaded.model, lora_config)
    print(f"base {loaded.identity}; LoRA rank {args.rank} on {args.targets} "
          f"({count_parameters(lora_parameters(loaded.model)) / 1e6:.2f}M trainable parameters)", flush=True)

    train_data = [to_training_example(ex, tokenizer) for ex in train_examples]
    eval_data = [to_training_example(ex, tokenizer) for ex in eval_examples[: args.eval_examples]]
    config = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps,
                         weight_decay=args.weight_decay, grad_clip=args.grad_clip, eval_every=args.eval_every,
                         eval_examples=args.eval_examples, save_every=args.save_every,
                         max_seq_len=args.max_seq_len, seed=args.seed, device=args.device,
                         time_limit_s=args.time_limit * 60 if args.time_limit else None)
    lengths = sorted(len(ex.input_ids) for ex in train_data)
    print(f"{len(train_data)} training examples (median {lengths[len(lengths) // 2]} tokens), "
          f"{len(eval_data)} held-out for the periodic loss", flush=True)

    started = time.time()
    trainer_ref: dict[str, Any] = {}

    def export(step: int) -> None:
        trainer = trainer_ref["trainer"]
        meta = {
            "step": step, "max_steps": config.max_steps,
            "examples_seen": step * config.batch_size * config.grad_accum,
            "train_examples": len(train_data), "train_config": config.to_dict(),
            "data": json.loads((out / "split.json").read_text()) if (out / "split.json").is_file() else {},
            "device": str(trainer.device), "hardware": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "seconds_this_session": round(time.time() - started, 1),
        }
        meta["data"].pop("eval_titles", None)
        save_adapter(out / "adapter", loaded.model, lora_config, loaded.identity, metadata=meta,
                     dtype=torch.float16)

    trainer = Trainer(loaded.model, train_data, eval_data, config, out_dir=out, pad_id=tokenizer.pad_token_id,
                      on_checkpoint=export)
    trainer_ref["trainer"] = trainer
    if not args.no_resume and trainer.load_checkpoint():
        print(f"resumed from step {trainer.step}", flush=True)
    result = trainer.train()
    if result.step and not (out / "adapter").is_dir():
        export(result.step)
    print(f"done: step {result.step}/{config.max_steps} in {result.seconds / 60:.1f} min, "
          f"{result.tokens} tokens; adapter in {out / 'adapter'}", flush=True)
    if args.export:
        target = Path(args.export)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("adapter.safetensors", "adapter.json"):
            shutil.copy2(out / "adapter" / name, target / name)
        print(f"exported to {target}")
    return 0
