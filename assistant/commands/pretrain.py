"""`assistant pretrain DIR`: train a BPE tokenizer and a small decoder from scratch on a folder of text."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `pretrain` subcommand."""
    p = subparsers.add_parser("pretrain", help="pre-train a tokenizer and a small decoder from scratch on text files")
    p.add_argument("folder", help="folder of .txt / .md / .rst files")
    p.add_argument("--out", default="runs/pretrain", help="run folder; the model lands in OUT/model")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn-dim", type=int, default=None, help="default: 8/3 x dim, rounded to 64")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Pre-train and report where the model went."""
    from model.config import DecoderConfig
    from model.pretrain import pretrain, read_texts
    from model.tokenizer import train_bpe_tokenizer
    from model.train import TrainConfig

    texts = read_texts(args.folder)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=args.vocab_size)
    ffn = args.ffn_dim or max(64, round(args.dim * 8 / 3 / 64) * 64)
    config = DecoderConfig(vocab_size=tokenizer.vocab_size, dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                           n_kv_heads=args.kv_heads, ffn_dim=ffn, rope_base=10000.0,
                           max_seq_len=max(args.seq_len, 256), tie_embeddings=True)
    train_config = TrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                               lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                               eval_every=args.eval_every, save_every=args.save_every, max_seq_len=args.seq_len,
                               device=args.device, seed=args.seed)
    run = pretrain(texts, out_dir=args.out, model_config=config, train_config=train_config, seq_len=args.seq_len,
                   tokenizer=tokenizer)
    losses = run.result.train_loss
    held = f", held-out {run.result.eval_loss[-1][1]:.3f}" if run.result.eval_loss else ""
    print(f"step {run.result.step}: loss {losses[0][1]:.3f} -> {losses[-1][1]:.3f}{held}; model in {run.checkpoint}")
    return 0
