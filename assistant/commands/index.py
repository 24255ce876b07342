"""`assistant index DIR`: bring the on-disk index of a folder up to date (only new/changed files embedded)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `index` subcommand."""
    parser = subparsers.add_parser(
        "index",
        help="index a folder of documents (incremental: only new or changed files are embedded)",
        description="Keep the index of DIR in sync: new and changed files are embedded, deleted ones dropped, "
        "renamed or duplicated ones reuse their vectors. Ends with a summary and every skipped file's reason.",
    )
    parser.add_argument("folder", metavar="DIR", help="the folder holding your documents")
    parser.add_argument("--index", metavar="PATH",
                        help="index folder (default: $ASSISTANT_CACHE/indexes/<DIR name>-<hash of its path>)")
    parser.add_argument("--rebuild", action="store_true",
                        help="build the index from scratch (after changing encoder or chunker); the old one "
                        "keeps working until the new one is complete")
    parser.add_argument("--repair", action="store_true",
                        help="rebuild a damaged index from DIR, reusing every vector the damaged database still "
                        "holds (the new index replaces the old one when complete; uploads are kept)")
    parser.add_argument("--max-file-mb", type=float, default=20.0, metavar="N",
                        help="skip files larger than N MB (default 20)")
    parser.add_argument("--encoder", metavar="SPEC", help="encoder weights folder or id (default: all-MiniLM-L6-v2)")
    parser.add_argument("--hnsw", action="store_true",
                        help="approximate HNSW vector index instead of exact search (large collections)")
    parser.add_argument("--chunk-tokens", type=int, default=200, metavar="N",
                        help="target chunk size in encoder tokens (default 200; changing it needs --rebuild)")
    parser.add_argument("--overlap-tokens", type=int, default=30, metavar="N",
                        help="overlap between consecutive chunks in tokens (default 30)")
    parser.add_argument("--device", help="device for the encoder (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sync the folder into its index and print the summary."""
    from pathlib import Path

    from model.errors import UserError

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass the folder that holds your documents")
    if args.max_file_mb <= 0:
        raise UserError("--max-file-mb must be positive")
    if args.repair and (args.rebuild or args.hnsw):
        raise UserError("--repair keeps the index's own settings; run --rebuild or --hnsw after it")

    from model.encoder import Encoder
    from retrieval.chunking import ChunkerSettings
    from retrieval.store import default_index_path
    from retrieval.sync import sync_folder

    encoder = Encoder.load(args.encoder, device=args.device)
    chunker = ChunkerSettings.for_encoder(encoder, args.chunk_tokens, args.overlap_tokens)
    if args.overlap_tokens >= args.chunk_tokens:
        raise UserError("--overlap-tokens must be smaller than --chunk-tokens")
    index_path = Path(args.index).expanduser() if args.index else default_index_path(folder)
    if args.repair:
        from retrieval.integrity import repair_index

        report = repair_index(folder, index_path, encoder, progress=not args.quiet and sys.stderr.isatty(),
                              max_file_bytes=int(args.max_file_mb * 1024 * 1024))
        print(report.summary())
        return 0
    report = sync_folder(folder, index_path, encoder, rebuild=args.rebuild,
                         progress=not args.quiet and sys.stderr.isatty(),
                         max_file_bytes=int(args.max_file_mb * 1024 * 1024), chunker=chunker,
                         faiss_kind="hnsw" if args.hnsw else None)
    print(report.summary())
    return 0
