"""Keep an index in step with a folder: embed only what is new or changed, drop what is gone.

- A file whose size and mtime did not change is not even read. Otherwise its bytes are hashed: the same
  bytes as before (a `touch`) cost nothing, and bytes already stored under another path (a rename, a
  copy) reuse the stored chunks and vectors.
- A file read by an older parser than its kind's current one (`retrieval.loaders.PARSER_VERSIONS`, stored with
  its chunks), or one whose scanned pages were not read because tesseract was missing (and now it is there),
  is read again even when unchanged (listed in `SyncReport.reparsed` and `updated`); if the new text is the
  same, its chunks are re-embedded all the same (the store reuses vectors per file content, not per chunk).
- New content is chunked and embedded in batches; each file's vectors are written to SQLite as soon as
  they exist, so a run that is killed loses at most a couple of seconds of work: the next run finds
  those vectors by content hash and goes on from there. Searches see nothing of a run until it commits.
- Uploads (`add_files`) are copied into `<index>/uploads/` and indexed under the path "@uploads/<name>";
  a folder sync keeps them (they are not in the folder, but they are not deleted either), and a rebuild
  re-indexes them from that copy. Upload names go through `retrieval.uploads.safe_upload_name` (never a
  path outside `<index>/uploads/`); a name equal to an earlier upload's replaces that upload only.
- Per-file limits (`retrieval.loaders.LoadLimits`: bytes, unpacked bytes, PDF pages, characters, parse time)
  turn hostile files into skip reasons; no exception from one file stops a sync. A full disk stops the
  sync with `DiskFullError` and leaves the previous index as it was (`retrieval.integrity`).
- Files removed from the index by hand are listed in `<index>/excluded.json` (`set_exclusions`): a folder
  sync leaves them out until they are taken off that list. The files skipped by the last sync, with their
  reasons, are kept in `<index>/skipped.json` (`read_skipped`), so the library view and
  `assistant index --status` can show them without reading the folder again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from retrieval.chunking import Chunk, ChunkerSettings, chunk_document
from retrieval.errors import IndexLockedError, RetrievalError
from retrieval.integrity import disk_full_guard
from retrieval.loaders import (DEFAULT_MAX_FILE_BYTES, Document, FileEntry, LoadLimits, SkipFile, kind_for,
                               load_file, parser_version, scan_folder, size_vs_limit)
from retrieval.ocr import ocr_available
from retrieval.uploads import upload_target
from retrieval.store import (SETTINGS_NAME, DocumentRow, IndexSettings, IndexStore, WriterLock,
                             atomic_write_bytes, default_index_path)

UPLOADS_DIR = "uploads"
UPLOADS_PREFIX = "@uploads/"
EXCLUDED_NAME = "excluded.json"
SKIPPED_NAME = "skipped.json"
ADAPTERS_DIR = "adapters"  # encoder adapters beside an adapted index (assistant/adapt.py)
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
    notes: list[tuple[str, str]] = field(default_factory=list)       # (path, note): indexed, with a caveat
    chunks_embedded: int = 0
    files_embedded: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    total_files: int = 0
    total_chunks: int = 0
    resumed: list[str] = field(default_factory=list)  # files an interrupted earlier run had already embedded
    excluded: list[str] = field(default_factory=list)  # files left out because they are in excluded.json
    reparsed: list[str] = field(default_factory=list)  # unchanged files read again: newer parser, or OCR now there

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
        if self.resumed:
            lines.append(f"resumed an interrupted run: reused the passages of {len(self.resumed)} files it had "
                         "already embedded")
        if self.excluded:
            lines.append(f"{len(self.excluded)} files excluded by hand (see `assistant index --status`)")
        if self.reparsed:
            lines.append(f"read {len(self.reparsed)} unchanged files again: their parser was upgraded, or the OCR "
                         "they needed is now installed")
        for new, old in self.renamed:
            lines.append(f"  renamed: {old} -> {new} (vectors reused)")
        for new, old in self.duplicates:
            lines.append(f"  duplicate: {new} has the same content as {old} (vectors reused)")
        for path, note in self.notes:
            lines.append(f"  note: {path}: {note}")
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
                ivf_nprobe: int | None = None, ray=None, limits: LoadLimits | None = None) -> SyncReport:
    """Bring the index at `index_path` (default: `default_index_path(folder)`) in line with `folder`.

    `rebuild=True` builds a fresh index next to the old one and swaps it in when complete (needed after
    changing the encoder or chunker); until then the old index keeps working.
    `on_progress(done, total)` is called with chunk counts while embedding.
    `faiss_kind`: "auto", "flat" (exact), "hnsw", "ivf" or "ivfpq" (see retrieval.segments); None keeps what
    the index has ("auto" for a new one). `ivf_nlist` / `ivf_nprobe`: IVF lists and lists searched (0 =
    automatic, None = keep). Switching an existing index re-uses its stored vectors (nothing is embedded again).
    `ray`: None (here), "auto", "local", a cluster address, or a `retrieval.ray_sync.RayCluster`: changed
    files are loaded, chunked and embedded by Ray workers; this process stays the one writer.
    `limits`: per-file limits (default: `LoadLimits(max_bytes=max_file_bytes)`).
    """
    kw = dict(rebuild=rebuild, progress=progress, max_file_bytes=max_file_bytes, on_progress=on_progress,
              chunker=chunker, faiss_kind=faiss_kind, batch_size=batch_size, ivf_nlist=ivf_nlist,
              ivf_nprobe=ivf_nprobe, limits=limits)
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
                 ivf_nlist: int | None, ivf_nprobe: int | None, limits: LoadLimits | None = None) -> SyncReport:
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
                        on_progress=on_progress, batch_size=batch_size, cluster=cluster, limits=limits)
    index_path.mkdir(parents=True, exist_ok=True)
    with WriterLock(index_path), disk_full_guard(index_path):
        store = _open_or_create(index_path, settings, folder)
        try:
            switch_faiss = (store.set_vector_settings(faiss_kind, ivf_nlist, ivf_nprobe)
                            or store.vector_settings_pending())
            scan = scan_folder(folder, max_file_bytes)
            entries = list(scan.files)
            skipped = [(s.path, s.reason) for s in scan.skipped]
            excluded = set(read_exclusions(index_path))
            left_out = sorted(e.path for e in entries if e.path in excluded)
            entries = [e for e in entries if e.path not in excluded]
            skipped = [(p, r) for p, r in skipped if p not in excluded]
            uploads = index_path / UPLOADS_DIR
            if uploads.is_dir():
                up = scan_folder(uploads, max_file_bytes)
                for e in up.files:
                    e.path = UPLOADS_PREFIX + e.path
                entries += up.files
                skipped += [(UPLOADS_PREFIX + s.path, s.reason) for s in up.skipped]
            report = _sync_entries(store, entries, skipped, encoder, remove_missing=True, progress=progress,
                                   max_file_bytes=max_file_bytes, on_progress=on_progress, batch_size=batch_size,
                                   force_rebuild=switch_faiss, cluster=cluster, limits=limits)
            report.excluded = left_out
            _write_json(index_path / SKIPPED_NAME, [list(item) for item in report.skipped])
            return report
        finally:
            store.close()


def add_files(paths: Iterable[str | Path], index_path: str | Path, encoder, *, progress: bool = False,
              max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, on_progress: ProgressCallback | None = None,
              chunker: ChunkerSettings | None = None, batch_size: int = 32, names: Sequence[str] | None = None,
              limits: LoadLimits | None = None, lock_wait: float = 30.0) -> SyncReport:
    """Add uploaded files to an index (creating it if needed): each is copied into `<index>/uploads/`
    and indexed as "@uploads/<file name>". A file with the name of an earlier upload replaces it (and
    nothing else). `names[i]`, when given, is the name `paths[i]` was uploaded under (default: its own
    name); it is sanitised by `retrieval.uploads.safe_upload_name`, so it never leads out of the folder.
    While another writer (a sync) holds the index, waits up to `lock_wait` seconds before IndexLockedError."""
    index_path = Path(index_path)
    paths = [Path(p) for p in paths]
    names = list(names) if names is not None else [p.name for p in paths]
    if len(names) != len(paths):
        raise RetrievalError(f"add_files got {len(paths)} files but {len(names)} names")
    settings = index_settings(encoder, chunker)
    index_path.mkdir(parents=True, exist_ok=True)
    with _writer_lock(index_path, lock_wait), disk_full_guard(index_path):
        store = _open_or_create(index_path, settings)
        try:
            uploads = index_path / UPLOADS_DIR
            uploads.mkdir(exist_ok=True)
            entries, skipped = [], []
            for source, name in zip(paths, names):
                try:
                    target = upload_target(uploads, name)
                except SkipFile as exc:
                    skipped.append((UPLOADS_PREFIX + _printable(name), exc.reason))
                    continue
                name = target.name
                try:
                    size = source.stat().st_size
                except OSError as exc:
                    skipped.append((UPLOADS_PREFIX + name, f"unreadable ({exc.strerror or exc})"))
                    continue
                if size > max_file_bytes:  # refused before a byte is copied
                    skipped.append((UPLOADS_PREFIX + name, f"too large ({size_vs_limit(size, max_file_bytes)})"))
                    continue
                tmp = uploads / f".{name}.tmp-{os.getpid()}"
                try:
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, target)
                    st = target.stat()
                except OSError as exc:
                    tmp.unlink(missing_ok=True)
                    if exc.errno == errno.ENOSPC:
                        raise
                    skipped.append((UPLOADS_PREFIX + name, f"unreadable ({exc.strerror or exc})"))
                    continue
                entries.append(FileEntry(UPLOADS_PREFIX + name, target, st.st_size, st.st_mtime_ns, kind_for(name)))
            report = _sync_entries(store, entries, skipped, encoder, remove_missing=False, progress=progress,
                                   max_file_bytes=max_file_bytes, on_progress=on_progress, batch_size=batch_size,
                                   limits=limits)
            copied = {e.path: e.abs_path for e in entries}
            for path, _ in report.skipped:  # keep no copy of what could not be indexed
                if path in copied:
                    copied[path].unlink(missing_ok=True)
            tried = {e.path for e in entries} | {p for p, _ in report.skipped}
            kept = [(p, r) for p, r in read_skipped(index_path) if p not in tried]
            _write_json(index_path / SKIPPED_NAME, [list(item) for item in kept + report.skipped])
            return report
        finally:
            store.close()


@contextlib.contextmanager
def _writer_lock(index_path: Path, wait: float):
    """The index's WriterLock, waiting up to `wait` seconds for another writer to finish."""
    lock = WriterLock(index_path)
    deadline = time.monotonic() + wait
    while True:
        try:
            lock.acquire()
            break
        except IndexLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    try:
        yield lock
    finally:
        lock.release()


def _printable(name: str) -> str:
    """A rejected upload name as it can be shown: control characters escaped, at most 80 characters."""
    return repr(str(name))[1:-1][:80]


def read_exclusions(index_path: str | Path) -> list[str]:
    """Paths removed from the index by hand, which a folder sync leaves out (sorted)."""
    return sorted(str(p) for p in _read_json(Path(index_path) / EXCLUDED_NAME))


def set_exclusions(index_path: str | Path, paths: Iterable[str]) -> None:
    """Replace the exclusion list (written atomically). Takes effect at the next folder sync."""
    _write_json(Path(index_path) / EXCLUDED_NAME, sorted(set(paths)))


def read_skipped(index_path: str | Path) -> list[tuple[str, str]]:
    """The files the last sync (or upload) could not index, with the reason: [(path, reason)]."""
    return [(str(p), str(r)) for p, r in _read_json(Path(index_path) / SKIPPED_NAME)]


def remove_documents(index_path: str | Path, paths: Iterable[str]) -> list[str]:
    """Drop these paths' passages from the index now (a folder file comes back at the next sync unless it
    is also excluded). Returns the paths that were indexed and are now gone."""
    index_path = Path(index_path)
    with WriterLock(index_path):
        store = IndexStore.open(index_path)
        try:
            known = store.documents()
            gone = sorted(p for p in set(paths) if p in known)
            if gone:
                with store.writer(lock_held=True) as writer:
                    for path in gone:
                        writer.remove_document(path)
                    writer.commit()
            return gone
        finally:
            store.close()


def _read_json(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):  # a damaged list must not stop indexing; it is rewritten on the next change
        return []
    return data if isinstance(data, list) else []


def _write_json(path: Path, data: list) -> None:
    atomic_write_bytes(path, json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8"))


def _rebuild(folder: Path, index_path: Path, encoder, settings: IndexSettings, **kw) -> SyncReport:
    """Build a fresh index in a sibling folder, then swap it in. The old one serves until the swap."""
    with WriterLock(index_path):  # no other writer may touch the old index meanwhile
        fresh = index_path.with_name(index_path.name + ".rebuild")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        if (index_path / UPLOADS_DIR).is_dir():
            shutil.copytree(index_path / UPLOADS_DIR, fresh / UPLOADS_DIR)
        if (index_path / EXCLUDED_NAME).exists():
            shutil.copyfile(index_path / EXCLUDED_NAME, fresh / EXCLUDED_NAME)
        if (index_path / ADAPTERS_DIR).is_dir():  # an adapted encoder's adapter (assistant adapt) stays with it
            shutil.copytree(index_path / ADAPTERS_DIR, fresh / ADAPTERS_DIR, ignore=shutil.ignore_patterns(".*"))
        chunker = ChunkerSettings(**settings.chunker)
        report = _sync_folder(folder, fresh, encoder, chunker=chunker, faiss_kind=settings.faiss,
                              ivf_nlist=settings.ivf_nlist, ivf_nprobe=settings.ivf_nprobe, rebuild=False, **kw)
        swap_in(fresh, index_path)
    report.index_path = str(index_path)
    return report


def swap_in(fresh: Path, index_path: Path, aside: str = ".old") -> None:
    """Put the complete index folder `fresh` where `index_path` is (the old one goes aside, then away)."""
    old = index_path.with_name(index_path.name + aside)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(index_path, old)
    os.replace(fresh, index_path)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class _Pending:
    entry: FileEntry
    doc: Document
    chunks: list[Chunk]
    vectors: np.ndarray | None = None  # [n_chunks, dim] when embedded elsewhere (Ray workers)
    token_ids: list[list[int]] | None = None  # each chunk's embedding text tokenized, when the chunker kept them


@dataclass
class LoadedFile:
    """What loading a changed file gave: its document and, unless its bytes are already stored (`known`),
    its chunks; `vectors` when the chunks were embedded too (Ray workers); `skip` instead when unreadable."""

    entry: FileEntry
    doc: Document | None = None
    chunks: list[Chunk] | None = None
    vectors: np.ndarray | None = None
    skip: str | None = None
    token_ids: list[list[int]] | None = None  # [n_chunks][tokens]: the chunks' embedding texts, tokenized


class TokenRecorder:
    """A chunker's `count_tokens` that keeps the ids of each text it tokenizes. The chunker's last check counts
    every chunk's exact embedding text, so `ids_of` those texts costs no second pass of the tokenizer when the
    chunks are embedded. One per file: what it keeps goes with it."""

    def __init__(self, token_ids: Callable[[Sequence[str]], list[list[int]]]) -> None:
        self.token_ids = token_ids
        self.seen: dict[str, list[int]] = {}

    def __call__(self, texts: Sequence[str]) -> list[int]:
        return [len(row) for row in self.ids_of(texts)]

    def ids_of(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of `texts`, tokenizing only those not seen yet (once each)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if missing:
            self.seen.update(zip(missing, self.token_ids(missing)))
        return [self.seen[t] for t in texts]


def load_and_chunk(entry: FileEntry, max_file_bytes: int, count_tokens, chunker: ChunkerSettings,
                   known: Callable[[str, str], bool], limits: LoadLimits | None = None,
                   token_ids: Callable[[Sequence[str]], list[list[int]]] | None = None) -> LoadedFile:
    """Read one file; chunk it unless `known(sha256, kind)` says its bytes are stored already. Any error from
    the file (SkipFile, or a loader or chunker failure) becomes its skip reason: no single file stops a sync.
    With `token_ids` (the encoder's; it replaces `count_tokens`) the chunks come with their tokenized
    embedding texts, for `Encoder.embed_token_ids`."""
    try:
        doc = load_file(entry, max_bytes=max_file_bytes, limits=limits)
    except Exception as exc:
        return LoadedFile(entry, skip=exc.reason if isinstance(exc, SkipFile)
                          else f"cannot read ({type(exc).__name__}: {exc})")
    if known(doc.sha256, doc.kind):
        return LoadedFile(entry, doc)
    try:
        if token_ids is None:
            return LoadedFile(entry, doc, chunk_document(doc, count_tokens, chunker))
        recorder = TokenRecorder(token_ids)
        chunks = chunk_document(doc, recorder, chunker)
        return LoadedFile(entry, doc, chunks, token_ids=recorder.ids_of([c.embedding_text() for c in chunks]))
    except Exception as exc:  # a chunker bug on one odd file must not stop the sync
        return LoadedFile(entry, skip=f"cannot split into passages ({type(exc).__name__}: {exc})")


REUSE_TOKEN_IDS = True  # embed the ids the chunker counted (False: tokenize again, as releases before did)


def _token_ids_of(encoder) -> Callable[[Sequence[str]], list[list[int]]] | None:
    """The encoder's `token_ids` when it can also embed from ids (the project's Encoder), else None."""
    reusable = REUSE_TOKEN_IDS and hasattr(encoder, "token_ids") and hasattr(encoder, "embed_token_ids")
    return encoder.token_ids if reusable else None


def _embedder(encoder, batch_size: int) -> Callable[[list[str], list[list[int]] | None], np.ndarray]:
    """`stage`'s embed: from the token ids when every chunk came with them, else from the texts."""
    def embed(texts: list[str], ids: list[list[int]] | None) -> np.ndarray:
        if ids is not None and hasattr(encoder, "embed_token_ids"):
            return encoder.embed_token_ids(ids, batch_size=batch_size)
        return encoder.embed(texts, batch_size=batch_size)
    return embed


def _sync_entries(store: IndexStore, entries: Sequence[FileEntry], skipped: list[tuple[str, str]], encoder, *,
                  remove_missing: bool, progress: bool, max_file_bytes: int,
                  on_progress: ProgressCallback | None, batch_size: int, force_rebuild: bool = False,
                  cluster=None, limits: LoadLimits | None = None) -> SyncReport:
    """Sync `entries` into `store`. Files whose size and mtime are unchanged are not read; the others are
    loaded and chunked here and embedded in groups (or, with `cluster`, loaded, chunked and embedded by
    its workers, see retrieval.ray_sync), and staged in the order of `entries` either way. No exception from
    one file stops the sync: it becomes that file's skip reason."""
    started = time.perf_counter()
    limits = limits or LoadLimits(max_bytes=max_file_bytes)
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

        def key_of(doc: Document) -> tuple[str, str, int, str]:
            return (doc.sha256, doc.kind, doc.parser_version, doc.incomplete)

        def classify(item: LoadedFile) -> _Pending | None:
            """Record what a loaded file is; return it when its chunks must be staged."""
            entry, doc = item.entry, item.doc
            old = known.get(entry.path)
            if item.skip is not None:
                report.skipped.append((entry.path, item.skip))
                if old is not None:
                    missing.add(entry.path)  # it was indexed but cannot be read any more
                return None
            if doc.note:
                report.notes.append((entry.path, doc.note))
            if old is not None and (old.sha256, old.kind, old.parser_version, old.incomplete) == key_of(doc):
                attach(entry, doc.sha256, doc.kind, old.content_id)  # touched, not changed
                report.unchanged.append(entry.path)
                return None
            content_id = writer.find_content(*key_of(doc))
            if content_id is not None:
                _classify_reuse(report, entry.path, old, content_id, paths_by_content, missing)
                attach(entry, doc.sha256, doc.kind, content_id)
                return None
            chunks = item.chunks if item.chunks is not None else chunk_document(doc, encoder.count_tokens, chunker)
            if not chunks:
                report.skipped.append((entry.path, "no text to index: the file holds only markup or whitespace"))
                if old is not None:
                    missing.add(entry.path)
                return None
            if item.chunks is None:
                return _Pending(entry, doc, chunks)
            return _Pending(entry, doc, chunks, item.vectors, item.token_ids)

        def stage(group: list[_Pending], embed: Callable[[list[str], list[list[int]] | None], np.ndarray]) -> None:
            """Stage a group of files' chunks (embedding those not embedded yet: `embed(texts, token_ids)`, the
            ids None unless every one of those chunks came with its ids) and attach their documents."""
            key_groups: list[_Pending] = []
            texts: list[str] = []
            ids: list[list[int]] | None = []
            for p in group:
                key = key_of(p.doc)
                if key in staged_now:  # the same bytes twice in this run
                    continue
                staged_now[key] = -1
                key_groups.append(p)
                if p.vectors is None:
                    texts += [c.embedding_text() for c in p.chunks]
                    if ids is not None and p.token_ids is not None:
                        ids.extend(p.token_ids)
                    else:
                        ids = None
            t0 = time.perf_counter()
            vectors = embed(texts, ids) if texts else np.zeros((0, store.settings.dim), np.float32)
            report.embed_seconds += time.perf_counter() - t0
            row = 0
            for p in key_groups:
                k = len(p.chunks)
                if p.vectors is None:
                    p.vectors, row = vectors[row:row + k], row + k
                staged_now[key_of(p.doc)] = writer.stage_content(
                    p.doc.sha256, p.doc.kind, p.chunks, p.vectors, p.doc.parser_version, p.doc.incomplete)
                report.chunks_embedded += k
                report.files_embedded += 1
            embedded_here = {id(p) for p in key_groups}
            for p in group:
                content_id = staged_now[key_of(p.doc)]
                old = known.get(p.entry.path)
                if id(p) in embedded_here:
                    (report.updated if old is not None else report.added).append(p.entry.path)
                    paths_by_content.setdefault(content_id, []).append(p.entry.path)
                else:
                    _classify_reuse(report, p.entry.path, old, content_id, paths_by_content, missing)
                attach(p.entry, p.doc.sha256, p.doc.kind, content_id)

        to_read: list[FileEntry] = []
        can_ocr: bool | None = None  # asked once, and only when some file waits for OCR
        for entry in entries:
            old = known.get(entry.path)
            if old is not None and old.size == entry.size and old.mtime_ns == entry.mtime_ns and old.kind == entry.kind:
                stale = old.parser_version < parser_version(old.kind)
                if not stale and old.incomplete == "ocr":
                    can_ocr = ocr_available() if can_ocr is None else can_ocr
                    stale = can_ocr
                if not stale:
                    report.unchanged.append(entry.path)
                    continue
                report.reparsed.append(entry.path)
            to_read.append(entry)
        if cluster is not None:
            cluster.process(to_read, classify, stage, writer, report, progress=progress, on_progress=on_progress,
                            max_file_bytes=max_file_bytes, chunker=chunker, encoder=encoder)
        else:
            _process_here(to_read, classify, stage, writer, encoder, progress=progress, on_progress=on_progress,
                          max_file_bytes=max_file_bytes, chunker=chunker, batch_size=batch_size, limits=limits)

        renamed_from = {old for _, old in report.renamed}
        for path in sorted(missing):
            writer.remove_document(path)
            if path not in renamed_from:
                report.removed.append(path)
        writer.commit(force_rebuild=force_rebuild)
    stats = store.stats()
    report.total_files, report.total_chunks = stats["files"], stats["chunks"]
    for name in ("added", "updated", "removed", "unchanged", "skipped", "renamed", "duplicates", "notes", "resumed",
                 "reparsed"):
        getattr(report, name).sort()
    report.seconds = time.perf_counter() - started
    return report


READ_AHEAD = 8  # files a background thread reads and chunks ahead of the embedding (0: no thread)


def _read_ahead(entries: list[FileEntry], prepare: Callable[[FileEntry], LoadedFile], stop: threading.Event,
                ahead: int | None = None) -> Iterator[tuple[LoadedFile, bool]]:
    """(`prepare(entry)`, whether the next one is ready too) in the order of `entries`, prepared by a
    background thread up to `ahead` files in front of the consumer. Preparing is mostly the parser worker's
    process (a PDF's layout analysis, OCR), file reads and the tokenizer (all outside the GIL), so it runs while
    the consumer embeds; the consumer setting `stop` (or leaving the loop) ends the thread after the file it is
    on. With `ahead` 0 there is no thread and each file is prepared when asked for."""
    ahead = READ_AHEAD if ahead is None else ahead
    if ahead <= 0:
        for entry in entries:
            if stop.is_set():
                return
            yield prepare(entry), True
        return
    out: queue.Queue = queue.Queue(maxsize=ahead)

    def work() -> None:
        for entry in entries:
            if stop.is_set():
                return
            try:
                item = prepare(entry)
            except Exception as exc:  # prepare turns a file's errors into its skip reason; this is a bug's
                item = LoadedFile(entry, skip=f"cannot read ({type(exc).__name__}: {exc})")
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    thread = threading.Thread(target=work, name="assistant-read-ahead", daemon=True)
    thread.start()
    try:
        for _ in entries:
            while True:
                try:
                    item = out.get(timeout=0.5)
                    break
                except queue.Empty:
                    if not thread.is_alive() and out.empty():  # died of a BaseException: nothing more comes
                        raise RuntimeError("the indexing thread that reads files stopped early; nothing was lost "
                                           "(files already indexed stay), run the indexing again") from None
            yield item, not out.empty()
    finally:
        stop.set()


def _process_here(to_read: list[FileEntry], classify, stage, writer, encoder, *, progress: bool,
                  on_progress: ProgressCallback | None, max_file_bytes: int, chunker: ChunkerSettings,
                  batch_size: int, limits: LoadLimits | None = None) -> None:
    """The embedded path: files are read and chunked by a read-ahead thread (so parsing overlaps embedding);
    chunks are embedded in groups of about EMBED_GROUP across files (so small files still fill batches), or
    of a batch or more when the reader has nothing ready (so the encoder does not wait for it), and staged file
    by file, in the order of `to_read`. `on_progress(done, total)` counts chunks: while files are still being
    read, `total` is those of the files read so far plus an estimate for the rest (their count times the mean
    chunks per file so far); it is exact once every file is read."""
    stored = writer.complete_contents()  # read by the read-ahead thread (the writer's connection is not)

    def prepare(entry: FileEntry) -> LoadedFile:
        # bytes stored before this run are not chunked again (classify reuses them); those staged earlier in
        # this run are (rare), as the snapshot does not see them
        return load_and_chunk(entry, max_file_bytes, encoder.count_tokens, chunker,
                              lambda sha, kind: (sha, kind, parser_version(kind)) in stored, limits,
                              token_ids=_token_ids_of(encoder))

    to_embed: list[_Pending] = []
    waiting = done = total = files_read = 0
    embed = _embedder(encoder, batch_size)

    def expected() -> int:
        """Chunks of the files read so far, plus the rest at the mean chunks per file so far (and at least one
        each, so that `done == total` is only ever said at the end)."""
        left = len(to_read) - files_read
        return max(total + (round(left * total / files_read) if files_read and left else 0), done + left)

    read_bar = _bar(len(to_read), "reading", "file", progress and len(to_read) > 20)
    bar = _bar(0, "embedding", "chunk", progress and len(to_read) > 0)
    if on_progress:
        on_progress(0, 0)

    def embed_groups(least: int) -> None:
        """Embed and stage the waiting files in groups while `least` chunks or more wait."""
        nonlocal waiting, done
        while to_embed and waiting >= least:
            group, n = [], 0
            while to_embed and (not group or n + len(to_embed[0].chunks) <= EMBED_GROUP):
                n += len(to_embed[0].chunks)
                group.append(to_embed.pop(0))
            stage(group, embed)
            waiting -= n
            done += n
            bar.update(n)
            if on_progress:
                on_progress(done, expected())

    stop = threading.Event()
    try:
        for item, more_ready in _read_ahead(to_read, prepare, stop):
            pending = classify(item)
            read_bar.update(1)
            files_read += 1
            if pending is not None:
                to_embed.append(pending)
                waiting += len(pending.chunks)
                total += len(pending.chunks)
            bar.total = expected()
            embed_groups(EMBED_GROUP if more_ready else max(1, min(batch_size, EMBED_GROUP)))
    finally:
        stop.set()  # an error here must not leave the read-ahead thread loading the rest of the folder
    read_bar.close()
    embed_groups(1)
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
            report.resumed.append(path)
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
