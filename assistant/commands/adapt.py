"""`assistant adapt [FOLDER]`: adapt the encoder to an indexed folder (no labels needed), then switch the index to
the adapted vectors in one atomic commit. See assistant/adapt.py for the recipe and where things are kept.

    assistant adapt ~/notes                  # sync the folder's index, adapt, switch (resumes an interrupted run)
    assistant adapt ~/notes --status         # which vectors the index searches, which are kept
    assistant adapt ~/notes --off            # back to the bundled encoder (its vectors were kept: no re-embedding)
    assistant adapt ~/notes --on             # back to the adapted vectors (kept too), without training again

Progress lines give examples/s and an ETA; stop it at any time (Ctrl-C, or kill) and run the same command again:
it goes on from its last checkpoint. The index serves its current vectors until the final switch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `adapt` subcommand."""
    p = subparsers.add_parser("adapt", help="adapt the encoder to an indexed folder (LoRA; no labels needed)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="FOLDER", nargs="?",
                   help="the documents folder (synced first); default: the index named by --index, else corpus/")
    p.add_argument("--index", metavar="PATH", help="index folder (default: the folder's index in the cache)")
    p.add_argument("--status", action="store_true", help="print which vectors the index searches and keeps")
    p.add_argument("--off", action="store_true", help="switch the index back to the bundled encoder's kept vectors")
    p.add_argument("--on", action="store_true", help="switch the index back to its kept adapted vectors")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted run")
    p.add_argument("--mlm", dest="mlm", action="store_const", const=True,
                   help="also run masked-language-model steps on the chunks first (off by default: measured not to "
                        "help, see docs/benchmarks.md)")
    p.add_argument("--no-distill", dest="distill", action="store_const", const=False,
                   help="no synthetic questions / teacher distillation (MLM alone)")
    p.add_argument("--teacher", choices=("auto", "cross-encoder", "reader"),
                   help="who scores (question, passage) pairs: the evidence reader (default, measured best), the "
                        "cross-encoder reranker, or auto (the cross-encoder when one is shipped)")
    p.add_argument("--question-chunks", type=int, metavar="N", help="chunks that get synthetic questions")
    p.add_argument("--round-trip", type=int, metavar="K", dest="consistency_depth",
                   help="keep a synthetic question only when BM25 or the dense index ranks its own chunk in the top K "
                        "(default 3; 0 keeps every question)")
    p.add_argument("--how-to", dest="how_to", action=argparse.BooleanOptionalAction, default=None,
                   help="also write one how-to question per chunk ('How do I ...', 'Is there a way to ...'), as "
                        "people ask documentation (default: on; measured in docs/benchmarks.md)")
    p.add_argument("--lora-rank", type=int, metavar="R")
    p.add_argument("--epochs", type=float, metavar="E", help="passes over the distillation examples")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (the UI runs adapt at 1)")
    p.add_argument("--status-file", metavar="PATH", help="also write progress as JSON here (for the UI)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Sync (with FOLDER), then adapt, or switch / show the vector sets."""
    from pathlib import Path

    from model.errors import UserError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from assistant.adapt import HOWTO_OPENINGS, AdaptConfig, activate, adapt_index, prepare_encoder
    from assistant.settings import DEFAULT_CORPUS
    from retrieval.store import IndexStore, default_index_path

    if sum(bool(x) for x in (args.status, args.off, args.on)) > 1:
        raise UserError("use one of --status, --off, --on")
    folder = Path(args.folder).expanduser() if args.folder else None
    if folder is None and not args.index:
        folder = DEFAULT_CORPUS
    if folder is not None and not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass the folder that holds your documents")
    index_path = Path(args.index).expanduser() if args.index else default_index_path(folder)

    def emit(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    if args.status:
        print(status_text(index_path))
        return 0
    from model.encoder import Encoder

    encoder = Encoder.load()
    if args.off:
        if not IndexStore.exists(index_path):
            raise UserError(f"no index at {index_path}")
        prepare_encoder(encoder, index_path, use_adapt=False, emit=emit)
        print(status_text(index_path))
        return 0
    if args.on:
        if not IndexStore.exists(index_path):
            raise UserError(f"no index at {index_path}")
        if not activate(index_path, encoder, emit=emit):
            raise UserError(f"the index at {index_path} keeps no adapted vectors with their adapter; run "
                            "`assistant adapt FOLDER` to train one")
        print(status_text(index_path))
        return 0
    prepare_encoder(encoder, index_path, emit=emit)
    if folder is not None:
        from assistant.commands.common import progress_options
        from retrieval.sync import sync_folder

        report = sync_folder(folder, index_path, encoder, **progress_options(args.quiet))
        emit(f"index in sync: {report.total_files} files, {report.total_chunks} chunks")
    config = AdaptConfig()
    for name, value in (("mlm", args.mlm), ("distill", args.distill), ("teacher", args.teacher),
                        ("question_chunks", args.question_chunks), ("lora_rank", args.lora_rank),
                        ("distill_epochs", args.epochs), ("consistency_depth", args.consistency_depth)):
        if value is not None:
            setattr(config, name, value)
    if args.how_to is not None:
        config.openings = HOWTO_OPENINGS if args.how_to else ()
    if config.lora_rank < 1 or config.question_chunks < 1:
        raise UserError("--lora-rank and --question-chunks must be at least 1")
    if config.consistency_depth < 0:
        raise UserError("--round-trip must be 0 (off) or more")
    report = adapt_index(index_path, encoder, config, emit=emit, fresh=args.fresh,
                         status_file=Path(args.status_file) if args.status_file else None)
    print(report.summary())
    return 0


def status_text(index_path: Any) -> str:
    """Which encoder's vectors the index searches, which set it keeps, and the adapters beside it."""
    from pathlib import Path

    from assistant.adapt import ADAPTERS_DIR, fingerprint_of
    from retrieval.store import IndexStore

    if not IndexStore.exists(index_path):
        return f"no index at {index_path}"
    store = IndexStore.open(index_path)
    try:
        sets = store.vector_sets()
        kept, ids, _ = store.kept_vectors()
        chunks = store.stats()["chunks"]
    finally:
        store.close()
    adapters = sorted(p.name for p in (Path(index_path) / ADAPTERS_DIR).glob("*") if p.is_dir()) \
        if (Path(index_path) / ADAPTERS_DIR).is_dir() else []
    state = "adapted" if fingerprint_of(sets["active"]) else "not adapted"
    lines = [f"index: {index_path} ({chunks} chunks), {state}",
             f"searches vectors of: {sets['active']}",
             f"keeps vectors of:    {kept} ({len(ids)} of the chunks)" if kept else "keeps no other vector set"]
    if adapters:
        lines.append(f"adapters beside it: {', '.join(adapters)}")
    return "\n".join(lines)
