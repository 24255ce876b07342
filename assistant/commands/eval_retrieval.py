"""`assistant eval-retrieval DIR`: nDCG@10, Recall@10/100 and MRR@10 of each search mode on a BEIR folder."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `eval-retrieval` subcommand."""
    parser = subparsers.add_parser(
        "eval-retrieval",
        help="measure retrieval quality on a BEIR-format folder",
        description="Index DIR/corpus.jsonl, run DIR/queries.jsonl and score them against DIR/qrels/<split>.tsv: "
        "nDCG@10, Recall@10, Recall@100 and MRR@10 for each search mode.",
    )
    parser.add_argument("folder", metavar="DIR", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    parser.add_argument("--modes", default="dense,lexical,hybrid",
                        help="comma-separated search modes (default: dense,lexical,hybrid)")
    parser.add_argument("--k", type=int, default=100, help="documents retrieved per query (default 100)")
    parser.add_argument("--split", default="test", help="qrels split (default: test)")
    parser.add_argument("--index", metavar="PATH",
                        help="keep the corpus index here and reuse it next time (default: a temporary one)")
    parser.add_argument("--encoder", metavar="SPEC", help="encoder weights folder or id (default: all-MiniLM-L6-v2)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one row per mode."""
    from model.errors import UserError
    from retrieval.retriever import MODES

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UserError(f"unknown mode(s) {', '.join(bad) or '(none)'}; use some of {', '.join(MODES)}")
    if args.k < 10:
        raise UserError("--k must be at least 10 (the metrics look at the top 10 and top 100)")

    from model.encoder import Encoder
    from retrieval.evaluate import build_beir_index, evaluate_beir, format_results, read_beir

    encoder = Encoder.load(args.encoder)
    progress = sys.stderr.isatty()
    if args.index:
        def factory(corpus):
            return build_beir_index(corpus, args.index, encoder, progress=progress)
        results = evaluate_beir(args.folder, factory, modes, k=args.k, split=args.split)
    else:
        read_beir(args.folder, args.split)  # fail fast on a bad folder, before embedding anything
        results = evaluate_beir(args.folder, encoder, modes, k=args.k, split=args.split, progress=progress)
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0
