"""`assistant index DIR`: bring the on-disk index of a folder up to date (only new/changed files embedded)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `index` subcommand."""
    parser = subparsers.add_parser(
        "index",
        help="index a folder of documents (incremental: only new or changed files are embedded)",
        description="Keep the index of DIR in sync: new and changed files are embedded, deleted ones dropped, "
        "renamed or duplicated ones reuse their vectors. Ends with a summary and every skipped file's reason.",
    )
    parser.add_argument("folder", metavar="DIR", nargs="?", help="the folder holding your documents")
    parser.add_argument("--status", action="store_true",
                        help="list what the index holds, the files it skipped (with the reason) and the files "
                        "excluded by hand, without syncing")
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
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sync the folder into its index and print the summary."""
    from pathlib import Path

    from model.errors import UserError

    if args.status:
        return print_status(args)
    if not args.folder:
        raise UserError("pass the folder to index (assistant index DIR), or --status with --index PATH or DIR")
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
    from assistant.commands.common import progress_options

    if args.repair:
        from retrieval.integrity import repair_index

        report = repair_index(folder, index_path, encoder, progress=not args.quiet and sys.stderr.isatty(),
                              max_file_bytes=int(args.max_file_mb * 1024 * 1024))
        print(report.summary())
        return 0
    report = sync_folder(folder, index_path, encoder, rebuild=args.rebuild, **progress_options(args.quiet),
                         max_file_bytes=int(args.max_file_mb * 1024 * 1024), chunker=chunker,
                         faiss_kind="hnsw" if args.hnsw else None)
    print(report.summary())
    return 0


def print_status(args: argparse.Namespace) -> int:
    """`assistant index --status`: the index's files, skipped files with reasons, exclusions (no models load)."""
    from pathlib import Path

    from model.errors import UserError
    from retrieval.store import IndexStore, default_index_path
    from retrieval.sync import read_exclusions, read_skipped

    if args.index:
        index_path = Path(args.index).expanduser()
    elif args.folder:
        index_path = default_index_path(Path(args.folder).expanduser())
    else:
        from assistant.settings import DEFAULT_CORPUS

        index_path = default_index_path(DEFAULT_CORPUS)
    if not IndexStore.exists(index_path):
        raise UserError(f"no index at {index_path}; build it with `assistant index DIR`")
    store = IndexStore.open(index_path)
    try:
        counts = store.chunk_counts()
    finally:
        store.close()
    skipped, excluded = read_skipped(index_path), read_exclusions(index_path)
    print(f"index: {index_path}")
    print(f"{len(counts)} files indexed, {sum(counts.values())} passages; {len(skipped)} skipped; "
          f"{len(excluded)} excluded by hand")
    if skipped:
        print("skipped:")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    if excluded:
        print("excluded (removed in the library; restore them there):")
        for path in excluded:
            print(f"  {path}")
    return 0
