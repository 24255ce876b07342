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
    parser.add_argument("folder", metavar="DIR", nargs="?", help="the folder holding your documents")
    parser.add_argument("--status", action="store_true",
                        help="print the index's state (files, chunks, vector index, lists, nprobe, measured recall, "
                        "segments), the files it skipped (with the reason) and the files excluded by hand, "
                        "without syncing")
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
    parser.add_argument("--vectors", choices=("auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq"),
                        help="vector index kind: auto (exact flat search, an ivfsq index from 100,000 chunks), flat, "
                        "hnsw, ivf (inverted lists), ivfsq (inverted lists of 8-bit vectors: 4x smaller, faster) "
                        "or ivfpq (inverted lists, product-quantised: 26x smaller, lower recall). "
                        "Default: keep the index's kind (auto for a new one). Switching reuses the stored vectors")
    parser.add_argument("--hnsw", action="store_true", help="same as --vectors hnsw")
    parser.add_argument("--nlist", type=int, metavar="N",
                        help="IVF lists (0 = from the size: about 2*sqrt(chunks)); changing it rebuilds the vector "
                        "index")
    parser.add_argument("--nprobe", type=int, metavar="N",
                        help="IVF lists searched per query (0 = the smallest measured to reach recall@10 >= 0.95)")
    parser.add_argument("--ray", nargs="?", const="auto", metavar="auto|local|ADDRESS",
                        help="load, chunk and embed the changed files on a Ray cluster (this process stays the one "
                        "writer): auto = a running cluster if there is one, else a local Ray runtime; local = a "
                        "runtime on this machine; ADDRESS = the head node (HOST:6379 or ray://HOST:10001). Needs "
                        'the extra: pip install -e ".[scale]"')
    parser.add_argument("--ray-workers", type=int, metavar="N",
                        help="Ray workers (default: one per CPU of the cluster; each loads the encoder once)")
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

    from retrieval.store import default_index_path

    index_path = Path(args.index).expanduser() if args.index else default_index_path(folder)

    cluster = None
    if args.ray is not None:
        from retrieval.ray_sync import RayCluster, import_ray

        import_ray()  # before loading the encoder: says how to install the extra
        cluster = RayCluster(args.ray, workers=args.ray_workers)

    from model.encoder import Encoder
    from retrieval.chunking import ChunkerSettings
    from retrieval.sync import sync_folder

    encoder = Encoder.load(args.encoder, device=args.device)
    chunker = ChunkerSettings.for_encoder(encoder, args.chunk_tokens, args.overlap_tokens)
    if args.overlap_tokens >= args.chunk_tokens:
        raise UserError("--overlap-tokens must be smaller than --chunk-tokens")
    from assistant.commands.common import progress_options

    if args.repair:
        from retrieval.integrity import repair_index

        report = repair_index(folder, index_path, encoder, progress=not args.quiet and sys.stderr.isatty(),
                              max_file_bytes=int(args.max_file_mb * 1024 * 1024))
        print(report.summary())
        return 0
    from assistant.adapt import prepare_encoder

    prepare_encoder(encoder, index_path)  # an adapted index (assistant adapt) syncs with its adapter
    if cluster is not None and getattr(encoder, "adapter", None) is not None:
        raise UserError("this index is adapted (assistant adapt); Ray workers embed with the bundled encoder only: "
                        "index without --ray, or turn the adaptation off first (assistant adapt DIR --off)")
    report = sync_folder(folder, index_path, encoder, rebuild=args.rebuild, **progress_options(args.quiet),
                         max_file_bytes=int(args.max_file_mb * 1024 * 1024), chunker=chunker,
                         faiss_kind="hnsw" if args.hnsw else args.vectors, ivf_nlist=args.nlist,
                         ivf_nprobe=args.nprobe, ray=cluster)
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
    print(status_text(index_path))
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


def status_text(index_path) -> str:
    """A few lines on an index: counts, the vector index as built (and its measured recall), segments."""
    from retrieval.segments import VectorInfo
    from retrieval.store import IndexStore

    store = IndexStore.open(index_path)
    try:
        stats = store.stats()
    finally:
        store.close()
    seg = stats["segments"]
    return "\n".join([
        f"index: {stats['path']} (format {stats['format']}, generation {stats['generation']})",
        f"{stats['files']} files, {stats['chunks']} chunks, {stats['bytes_on_disk'] / 1e6:.1f} MB on disk; "
        f"encoder {stats['encoder']} ({stats['dim']}-d)",
        f"vector index: {VectorInfo.from_dict(stats['vectors']).describe()} (setting: {stats['faiss']})",
        f"segments: base {seg['base_chunks']} chunks, {seg['delta_files']} delta files ({seg['delta_chunks']} chunks), "
        f"{seg['dead_chunks']} removed chunks not yet compacted",
    ])
