"""Keep an index in step with a folder: embed only what is new or changed, drop what is gone.

- A file whose size and mtime did not change is not even read. Otherwise its bytes are hashed: the same
  bytes as before (a `touch`) cost nothing, and bytes already stored under another path (a rename, a
  copy) reuse the stored chunks and vectors.
- New content is chunked and embedded in batches; each file's vectors are written to SQLite as soon as
  they exist, so a run that is killed loses at most a couple of seconds of work: the next run finds
  those vectors by content hash and goes on from there. Searches see nothing of a run until it commits.
- Uploads (`add_files`) are copied into `<index>/uploads/` and indexed under the path "@uploads/<name>";
  a folder sync keeps them (they are not in the folder, but they are not deleted either), and a rebuild
  re-indexes them from that copy.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from retrieval.chunking import Chunk, ChunkerSettings, chunk_document
from retrieval.errors import RetrievalError
from retrieval.loaders import (DEFAULT_MAX_FILE_BYTES, _size, Document, FileEntry, SkipFile, kind_for, load_file,
                               scan_folder)
from retrieval.store import (SETTINGS_NAME, DocumentRow, IndexSettings, IndexStore, WriterLock,
                             default_index_path)

UPLOADS_DIR = "uploads"
UPLOADS_PREFIX = "@uploads/"
EMBED_GROUP = 256  # chunks embedded per encoder call (the encoder batches further inside)

ProgressCallback = Callable[[int, int], None]


@dataclass
class SyncReport:
    """What a sync did. Lists hold relative paths; `renamed`/`duplicates` hold (path, earlier path)."""

    index_path: str = ""
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)     # (new path, old path)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (new path, path with the same bytes)
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (path, reason)
    chunks_embedded: int = 0
    files_embedded: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    total_files: int = 0
    total_chunks: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.renamed or self.duplicates)

    def summary(self) -> str:
        """A few lines for the terminal: the counts, then every skipped file with its reason."""
        rate = f", {self.chunks_embedded / self.embed_seconds:.1f} chunks/s" if self.embed_seconds > 0 else ""
        lines = [
            f"index: {self.index_path}",
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{len(self.renamed)} renamed, {len(self.duplicates)} duplicates, {len(self.unchanged)} unchanged, "
            f"{len(self.skipped)} skipped",
            f"embedded {self.chunks_embedded} chunks from {self.files_embedded} files in {self.seconds:.1f} s"
            f"{rate}; the index holds {self.total_files} files, {self.total_chunks} chunks",
        ]
        for new, old in self.renamed:
            lines.append(f"  renamed: {old} -> {new} (vectors reused)")
        for new, old in self.duplicates:
            lines.append(f"  duplicate: {new} has the same content as {old} (vectors reused)")
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def index_settings(encoder, chunker: ChunkerSettings | None = None, faiss_kind: str = "auto") -> IndexSettings:
    """The settings an index built by `encoder` with `chunker` records."""
    chunker = chunker or ChunkerSettings.for_encoder(encoder)
    return IndexSettings(encoder=encoder.name, dim=int(encoder.dim), chunker=chunker.to_dict(), faiss=faiss_kind)


def _open_or_create(path: Path, settings: IndexSettings, folder: Path | None = None) -> IndexStore:
    if IndexStore.exists(path):
        return IndexStore.open(path, expected=settings, folder=folder)
    return IndexStore.create(path, settings)


def sync_folder(folder: str | Path, index_path: str | Path | None, encoder, *, rebuild: bool = False,
                progress: bool = True, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                on_progress: ProgressCallback | None = None, chunker: ChunkerSettings | None = None,
                faiss_kind: str | None = None, batch_size: int = 32, ivf_nlist: int | None = None,
                ivf_nprobe: int | None = None, ray=None) -> SyncReport:
    """Bring the index at `index_path` (default: `default_index_path(folder)`) in line with `folder`.

    `rebuild=True` builds a fresh index next to the old one and swaps it in when complete (needed after
    changing the encoder or chunker); until then the old index keeps working.
    `on_progress(done, total)` is called with chunk counts while embedding.
    `faiss_kind`: "auto", "flat" (exact), "hnsw", "ivf" or "ivfpq" (see retrieval.segments); None keeps what
    the index has ("auto" for a new one). `ivf_nlist` / `ivf_nprobe`: IVF lists and lists searched (0 =
    automatic, None = keep). Switching an existing index re-uses its stored vectors (nothing is embedded again).
    `ray`: None (here), "auto", "local", a cluster address, or a `retrieval.ray_sync.RayCluster`: changed
    files are loaded, chunked and embedded by Ray workers; this process stays the one writer.
    """
    kw = dict(rebuild=rebuild, progress=progress, max_file_bytes=max_file_bytes, on_progress=on_progress,
              chunker=chunker, faiss_kind=faiss_kind, batch_size=batch_size, ivf_nlist=ivf_nlist,
              ivf_nprobe=ivf_nprobe)
    if ray is None:
        return _sync_folder(folder, index_path, encoder, cluster=None, **kw)
    from retrieval.ray_sync import RayCluster

    cluster = ray if isinstance(ray, RayCluster) else RayCluster(str(ray))
    cluster.connect()  # fails here, before the index is touched, when Ray is missing or unreachable
    try:
        return _sync_folder(folder, index_path, encoder, cluster=cluster, **kw)
    finally:
        cluster.close()


def _sync_folder(folder: str | Path, index_path: str | Path | None, encoder, *, cluster, rebuild: bool,
                 progress: bool, max_file_bytes: int, on_progress: ProgressCallback | None,
                 chunker: ChunkerSettings | None, faiss_kind: str | None, batch_size: int,
                 ivf_nlist: int | None, ivf_nprobe: int | None) -> SyncReport:
    folder = Path(folder)
    index_path = Path(index_path) if index_path is not None else default_index_path(folder)
    settings = index_settings(encoder, chunker, faiss_kind or "auto")
    if rebuild and IndexStore.exists(index_path):
        old = IndexStore.open(index_path).settings
        if faiss_kind is None:
            settings.faiss = old.faiss
        settings.ivf_nlist = old.ivf_nlist if ivf_nlist is None else ivf_nlist
        settings.ivf_nprobe = old.ivf_nprobe if ivf_nprobe is None else ivf_nprobe
        return _rebuild(folder, index_path, encoder, settings, progress=progress, max_file_bytes=max_file_bytes,
                        on_progress=on_progress, batch_size=batch_size, cluster=cluster)
    index_path.mkdir(parents=True, exist_ok=True)
    with WriterLock(index_path):
        store = _open_or_create(index_path, settings, folder)
        try:
            switch_faiss = (store.set_vector_settings(faiss_kind, ivf_nlist, ivf_nprobe)
                            or store.vector_settings_pending())
            scan = scan_folder(folder, max_file_bytes)
            entries = list(scan.files)
            skipped = [(s.path, s.reason) for s in scan.skipped]
            uploads = index_path / UPLOADS_DIR
            if uploads.is_dir():
                up = scan_folder(uploads, max_file_bytes)
                for e in up.files:
                    e.path = UPLOADS_PREFIX + e.path
                entries += up.files
                skipped += [(UPLOADS_PREFIX + s.path, s.reason) for s in up.skipped]
            return _sync_entries(store, entries, skipped, encoder, remove_missing=True, progress=progress,
                                 max_file_bytes=max_file_bytes, on_progress=on_progress, batch_size=batch_size,
                                 force_rebuild=switch_faiss, cluster=cluster)
        finally:
            store.close()


def add_files(paths: Iterable[str | Path], index_path: str | Path, encoder, *, progress: bool = False,
              max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, on_progress: ProgressCallback | None = None,
              chunker: ChunkerSettings | None = None, batch_size: int = 32) -> SyncReport:
    """Add uploaded files to an index (creating it if needed): each is copied into `<index>/uploads/`
    and indexed as "@uploads/<file name>". A file with the name of an earlier upload replaces it."""
    index_path = Path(index_path)
    settings = index_settings(encoder, chunker)
    index_path.mkdir(parents=True, exist_ok=True)
    with WriterLock(index_path):
        store = _open_or_create(index_path, settings)
        try:
            uploads = index_path / UPLOADS_DIR
            uploads.mkdir(exist_ok=True)
            entries, skipped = [], []
            for source in paths:
                source = Path(source)
                name = source.name
                if kind_for(name) is None:
                    skipped.append((UPLOADS_PREFIX + name, f"unsupported file type {source.suffix.lower() or '(none)'}"))
                    continue
                target = uploads / name
                tmp = uploads / f".{name}.tmp-{os.getpid()}"
                try:
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, target)
                    st = target.stat()
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    skipped.append((UPLOADS_PREFIX + name, f"unreadable ({exc.strerror or exc})"))
                    continue
                if st.st_size > max_file_bytes:
                    target.unlink()
                    skipped.append((UPLOADS_PREFIX + name, f"too large ({_size(st.st_size)} > limit "
                                                            f"{_size(max_file_bytes)})"))
                    continue
                entries.append(FileEntry(UPLOADS_PREFIX + name, target, st.st_size, st.st_mtime_ns, kind_for(name)))
            report = _sync_entries(store, entries, skipped, encoder, remove_missing=False, progress=progress,
                                   max_file_bytes=max_file_bytes, on_progress=on_progress, batch_size=batch_size)
            for path, _ in report.skipped:  # keep no copy of what could not be indexed
                if path.startswith(UPLOADS_PREFIX):
                    (uploads / path[len(UPLOADS_PREFIX):]).unlink(missing_ok=True)
            return report
        finally:
            store.close()


def _rebuild(folder: Path, index_path: Path, encoder, settings: IndexSettings, **kw) -> SyncReport:
    """Build a fresh index in a sibling folder, then swap it in. The old one serves until the swap."""
    with WriterLock(index_path):  # no other writer may touch the old index meanwhile
        fresh = index_path.with_name(index_path.name + ".rebuild")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        if (index_path / UPLOADS_DIR).is_dir():
            shutil.copytree(index_path / UPLOADS_DIR, fresh / UPLOADS_DIR)
        chunker = ChunkerSettings(**settings.chunker)
        report = _sync_folder(folder, fresh, encoder, chunker=chunker, faiss_kind=settings.faiss,
                              ivf_nlist=settings.ivf_nlist, ivf_nprobe=settings.ivf_nprobe, rebuild=False, **kw)
        old = index_path.with_name(index_path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(index_path, old)
        os.replace(fresh, index_path)
        shutil.rmtree(old, ignore_errors=True)
    report.index_path = str(index_path)
    return report


@dataclass
class _Pending:
    entry: FileEntry
    doc: Document
    chunks: list[Chunk]
    vectors: np.ndarray | None = None  # [n_chunks, dim] when embedded elsewhere (Ray workers)


@dataclass
class LoadedFile:
    """What loading a changed file gave: its document and, unless its bytes are already stored (`known`),
    its chunks; `vectors` when the chunks were embedded too (Ray workers); `skip` instead when unreadable."""

    entry: FileEntry
    doc: Document | None = None
    chunks: list[Chunk] | None = None
    vectors: np.ndarray | None = None
    skip: str | None = None


def load_and_chunk(entry: FileEntry, max_file_bytes: int, count_tokens, chunker: ChunkerSettings,
                   known: Callable[[str, str], bool]) -> LoadedFile:
    """Read one file; chunk it unless `known(sha256, kind)` says its bytes are stored already."""
    try:
        doc = load_file(entry, max_bytes=max_file_bytes)
    except SkipFile as exc:
        return LoadedFile(entry, skip=exc.reason)
    if known(doc.sha256, doc.kind):
        return LoadedFile(entry, doc)
    return LoadedFile(entry, doc, chunk_document(doc, count_tokens, chunker))


def _sync_entries(store: IndexStore, entries: Sequence[FileEntry], skipped: list[tuple[str, str]], encoder, *,
                  remove_missing: bool, progress: bool, max_file_bytes: int,
                  on_progress: ProgressCallback | None, batch_size: int, force_rebuild: bool = False,
                  cluster=None) -> SyncReport:
    """Sync `entries` into `store`. Files whose size and mtime are unchanged are not read; the others are
    loaded and chunked here and embedded in groups (or, with `cluster`, loaded, chunked and embedded by
    its workers, see retrieval.ray_sync), and staged in the order of `entries` either way."""
    started = time.perf_counter()
    report = SyncReport(index_path=str(store.path), skipped=list(skipped))
    chunker = ChunkerSettings(**store.settings.chunker)
    known = store.documents()
    paths_by_content: dict[int, list[str]] = {}
    for row in known.values():
        paths_by_content.setdefault(row.content_id, []).append(row.path)
    seen = {e.path for e in entries}
    # Known documents that disappeared (candidates for the "old" side of a rename).
    missing = {p for p in known if p not in seen and (remove_missing and not p.startswith(UPLOADS_PREFIX))}
    if remove_missing:
        # Uploads whose copy is gone from <index>/uploads/ are gone too.
        missing |= {p for p in known if p.startswith(UPLOADS_PREFIX) and p not in seen}

    with store.writer(lock_held=True) as writer:
        staged_now: dict[tuple[str, str], int] = {}  # content staged in this run -> id

        def attach(entry: FileEntry, doc_sha: str, kind: str, content_id: int) -> None:
            writer.set_document(DocumentRow(entry.path, content_id, doc_sha, entry.size, entry.mtime_ns, kind))

        def classify(item: LoadedFile) -> _Pending | None:
            """Record what a loaded file is; return it when its chunks must be staged."""
            entry, doc = item.entry, item.doc
            old = known.get(entry.path)
            if item.skip is not None:
                report.skipped.append((entry.path, item.skip))
                if old is not None:
                    missing.add(entry.path)  # it was indexed but cannot be read any more
                return None
            if old is not None and old.sha256 == doc.sha256 and old.kind == doc.kind:
                attach(entry, doc.sha256, doc.kind, old.content_id)  # touched, not changed
                report.unchanged.append(entry.path)
                return None
            content_id = writer.find_content(doc.sha256, doc.kind)
            if content_id is not None:
                _classify_reuse(report, entry.path, old, content_id, paths_by_content, missing)
                attach(entry, doc.sha256, doc.kind, content_id)
                return None
            chunks = item.chunks if item.chunks is not None else chunk_document(doc, encoder.count_tokens, chunker)
            if not chunks:
                report.skipped.append((entry.path, "no text content"))
                if old is not None:
                    missing.add(entry.path)
                return None
            return _Pending(entry, doc, chunks, item.vectors if item.chunks is not None else None)

        def stage(group: list[_Pending], embed: Callable[[list[str]], np.ndarray]) -> None:
            """Stage a group of files' chunks (embedding those not embedded yet) and attach their documents."""
            key_groups: list[_Pending] = []
            texts: list[str] = []
            for p in group:
                key = (p.doc.sha256, p.doc.kind)
                if key in staged_now:  # the same bytes twice in this run
                    continue
                staged_now[key] = -1
                key_groups.append(p)
                if p.vectors is None:
                    texts += [c.embedding_text() for c in p.chunks]
            t0 = time.perf_counter()
            vectors = embed(texts) if texts else np.zeros((0, store.settings.dim), np.float32)
            report.embed_seconds += time.perf_counter() - t0
            row = 0
            for p in key_groups:
                k = len(p.chunks)
                if p.vectors is None:
                    p.vectors, row = vectors[row:row + k], row + k
                staged_now[(p.doc.sha256, p.doc.kind)] = writer.stage_content(
                    p.doc.sha256, p.doc.kind, p.chunks, p.vectors)
                report.chunks_embedded += k
                report.files_embedded += 1
            embedded_here = {id(p) for p in key_groups}
            for p in group:
                content_id = staged_now[(p.doc.sha256, p.doc.kind)]
                old = known.get(p.entry.path)
                if id(p) in embedded_here:
                    (report.updated if old is not None else report.added).append(p.entry.path)
                    paths_by_content.setdefault(content_id, []).append(p.entry.path)
                else:
                    _classify_reuse(report, p.entry.path, old, content_id, paths_by_content, missing)
                attach(p.entry, p.doc.sha256, p.doc.kind, content_id)

        to_read: list[FileEntry] = []
        for entry in entries:
            old = known.get(entry.path)
            if old is not None and old.size == entry.size and old.mtime_ns == entry.mtime_ns and old.kind == entry.kind:
                report.unchanged.append(entry.path)
            else:
                to_read.append(entry)
        if cluster is not None:
            cluster.process(to_read, classify, stage, writer, report, progress=progress, on_progress=on_progress,
                            max_file_bytes=max_file_bytes, chunker=chunker, encoder=encoder)
        else:
            _process_here(to_read, classify, stage, writer, encoder, progress=progress, on_progress=on_progress,
                          max_file_bytes=max_file_bytes, chunker=chunker, batch_size=batch_size)

        renamed_from = {old for _, old in report.renamed}
        for path in sorted(missing):
            writer.remove_document(path)
            if path not in renamed_from:
                report.removed.append(path)
        writer.commit(force_rebuild=force_rebuild)
    stats = store.stats()
    report.total_files, report.total_chunks = stats["files"], stats["chunks"]
    for name in ("added", "updated", "removed", "unchanged", "skipped", "renamed", "duplicates"):
        getattr(report, name).sort()
    report.seconds = time.perf_counter() - started
    return report


def _process_here(to_read: list[FileEntry], classify, stage, writer, encoder, *, progress: bool,
                  on_progress: ProgressCallback | None, max_file_bytes: int, chunker: ChunkerSettings,
                  batch_size: int) -> None:
    """The embedded path: read and chunk every changed file, then embed grouped across files (so small
    files still fill batches), staging file by file."""
    def known(sha: str, kind: str) -> bool:
        return writer.find_content(sha, kind) is not None

    to_embed: list[_Pending] = []
    read_bar = _bar(len(to_read), "reading", "file", progress and len(to_read) > 20)
    for entry in to_read:
        pending = classify(load_and_chunk(entry, max_file_bytes, encoder.count_tokens, chunker, known))
        if pending is not None:
            to_embed.append(pending)
        read_bar.update(1)
    read_bar.close()

    total = sum(len(p.chunks) for p in to_embed)
    bar = _bar(total, "embedding", "chunk", progress and total > 0)
    done = 0
    if on_progress:
        on_progress(0, total)
    i = 0
    while i < len(to_embed):
        group, n = [], 0
        while i < len(to_embed) and (not group or n + len(to_embed[i].chunks) <= EMBED_GROUP):
            group.append(to_embed[i])
            n += len(to_embed[i].chunks)
            i += 1
        stage(group, lambda texts: encoder.embed(texts, batch_size=batch_size))
        done += n
        bar.update(n)
        if on_progress:
            on_progress(done, total)
    bar.close()


def _classify_reuse(report: SyncReport, path: str, old, content_id: int, paths_by_content: dict[int, list[str]],
                    missing: set[str]) -> None:
    """A file whose bytes are already stored: a rename (its old path vanished), a duplicate, or an update."""
    holders = [p for p in paths_by_content.get(content_id, []) if p != path]
    if old is not None:
        report.updated.append(path)
    else:
        gone = [p for p in holders if p in missing and p not in {o for _, o in report.renamed}]
        if gone:
            report.renamed.append((path, gone[0]))
        elif holders:
            report.duplicates.append((path, holders[0]))
        else:
            report.added.append(path)  # stored by an interrupted earlier run: nothing to embed
    paths_by_content.setdefault(content_id, []).append(path)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, unit: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1)
