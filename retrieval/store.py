"""The on-disk index: one folder with SQLite (documents, chunks, vectors), FAISS and a BM25 index.

Layout of an index folder::

    settings.json          encoder id + dim, chunker settings, FAISS kind, format version (written once)
    index.sqlite           tables meta, contents, documents, chunks (WAL mode); the source of truth
    vectors-<gen>.faiss    FAISS index of the live chunks' vectors (ids = chunk ids)
    bm25-<gen>/            bm25s index of the live chunks' text, plus chunk_ids.npy (row -> chunk id)
    lock                   held (flock) by the one process writing

Files with the same bytes share one "content" row and its chunks and vectors, so a renamed or duplicated
file is never embedded again. A content is *live* when some document points to it.

Crash safety: the generation number in SQLite's `meta` table says which FAISS/BM25 files belong to the
index. A writer first writes the next generation's FAISS and BM25 files (temp + fsync + rename), then, in
one SQLite transaction, updates the documents and bumps the generation. A process killed at any point
leaves either the old generation or the new one, both complete. Chunks embedded by a killed run stay in
SQLite as unreferenced contents; the next run reuses them instead of embedding again, and a commit
deletes the ones nobody claimed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from retrieval.errors import IndexLockedError, IndexMismatchError, IndexNotFoundError, RetrievalError
from retrieval.integrity import check_sqlite, warn_rebuilt

FORMAT_VERSION = 1
SETTINGS_NAME = "settings.json"
SQLITE_NAME = "index.sqlite"
LOCK_NAME = "lock"
FLUSH_SECONDS = 2.0  # staged (embedded, not yet committed) vectors reach the disk at least this often

_faiss = None


def faiss_module():
    """Import faiss once, with the BLAS threshold that makes batched flat search fast (see DESIGN.md)."""
    global _faiss
    if _faiss is None:
        import faiss

        faiss.cvar.distance_compute_blas_threshold = 20
        _faiss = faiss
    return _faiss


def cache_dir() -> Path:
    """The assistant's cache folder (model.sources.cache_dir when available)."""
    try:
        from model.sources import cache_dir as model_cache_dir

        return Path(model_cache_dir())
    except (ImportError, AttributeError):
        return Path(os.environ.get("ASSISTANT_CACHE") or Path.home() / ".cache" / "assistant")


def default_index_path(folder: str | Path) -> Path:
    """Where the index of a document folder lives unless told otherwise:
    `<cache>/indexes/<folder name>-<sha1 of its absolute path, 10 hex>`."""
    absolute = Path(folder).expanduser().resolve()
    digest = hashlib.sha1(str(absolute).encode()).hexdigest()[:10]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in absolute.name) or "root"
    return cache_dir() / "indexes" / f"{name}-{digest}"


@dataclass
class IndexSettings:
    """What an index was built with. Encoder and chunker must match to reuse it."""

    encoder: str
    dim: int
    chunker: dict
    faiss: str = "flat"  # "flat" (exact inner product) or "hnsw" (approximate, for large collections)
    hnsw_m: int = 32
    format_version: int = FORMAT_VERSION
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexSettings":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def mismatch(self, other: "IndexSettings") -> str | None:
        """Why an index built with `self` cannot be used with `other` (None when it can)."""
        if self.format_version != other.format_version:
            return f"index format {self.format_version}, this version reads format {other.format_version}"
        if self.encoder != other.encoder or self.dim != other.dim:
            return f"built with encoder {self.encoder} ({self.dim}-d), now using {other.encoder} ({other.dim}-d)"
        if self.chunker != other.chunker:
            return f"built with chunker settings {self.chunker}, now using {other.chunker}"
        return None


def rebuild_hint(path: Path, folder: str | Path | None = None) -> str:
    return f"Rebuild it with `assistant index {folder or 'DIR'} --rebuild --index {path}` (or delete {path})."


# ---------------------------------------------------------------- atomic files

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file next to `path`, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name == "posix":
        _fsync_path(folder)


# ---------------------------------------------------------------- lock

class WriterLock:
    """An exclusive, per-index writer lock. Uses flock where available, so a lock held by a process that
    died (even by kill -9) is released by the OS and simply taken over; elsewhere a pid file whose pid is
    no longer running is taken over."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "WriterLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_pidfile()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise IndexLockedError(
                f"the index {self.path.parent} is being updated by another process (pid {holder}). "
                "Wait for it to finish and try again.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _acquire_pidfile(self) -> "WriterLock":  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _pid_alive(pid):
                    raise IndexLockedError(
                        f"the index {self.path.parent} is being updated by another process (pid {pid}). "
                        f"Wait for it to finish; if no such process runs, delete {self.path}.") from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return self
        raise IndexLockedError(f"could not lock {self.path}; delete it if no indexing is running.")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None
        if os.name != "posix":  # pragma: no cover
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:  # pragma: no cover - Windows path only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- rows

@dataclass
class ChunkRow:
    """A stored chunk, joined with the paths of the documents that hold it."""

    id: int
    content_id: int
    ordinal: int
    text: str
    heading: str
    page: int | None
    start: int
    end: int
    vector: np.ndarray  # float32 [dim]
    paths: tuple[str, ...]


@dataclass
class DocumentRow:
    path: str
    content_id: int
    sha256: str
    size: int
    mtime_ns: int
    kind: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contents(
    id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL, kind TEXT NOT NULL,
    n_chunks INTEGER NOT NULL, chars INTEGER NOT NULL, UNIQUE(sha256, kind));
CREATE TABLE IF NOT EXISTS documents(
    path TEXT PRIMARY KEY, content_id INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS documents_content ON documents(content_id);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY AUTOINCREMENT, content_id INTEGER NOT NULL, ordinal INTEGER NOT NULL,
    text TEXT NOT NULL, heading TEXT NOT NULL, page INTEGER, start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_content ON chunks(content_id);
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def lexical_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The BM25 tokenisation, shared by indexing and queries: lower-cased words, English stopwords out."""
    import bm25s

    return bm25s.tokenize(list(texts), return_ids=False, stopwords="en", show_progress=False)


# ---------------------------------------------------------------- store

class IndexStore:
    """Read access to an index folder, plus `writer()` for the one process allowed to change it.

    Thread-safe for readers (one SQLite connection guarded by a lock).
    """

    def __init__(self, path: Path, settings: IndexSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self._conn = _connect(self.path / SQLITE_NAME)
        self._db_lock = threading.RLock()
        self.generation = -1
        self.faiss_index = None
        self.bm25 = None            # bm25s.BM25 or None when there is nothing to index
        self.bm25_ids = np.zeros(0, dtype=np.int64)  # BM25 row -> chunk id
        self.reload()

    # ---- opening

    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / SETTINGS_NAME).is_file()

    @classmethod
    def open(cls, path: str | Path, expected: IndexSettings | None = None,
             folder: str | Path | None = None) -> "IndexStore":
        """Open an existing index; with `expected`, check it was built with the same encoder and chunker."""
        path = Path(path)
        settings_file = path / SETTINGS_NAME
        if not settings_file.is_file():
            raise IndexNotFoundError(
                f"no index at {path}. Build one with `assistant index DIR --index {path}`.")
        try:
            settings = IndexSettings.from_dict(json.loads(settings_file.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise RetrievalError(f"the index settings {settings_file} are unreadable ({exc}). "
                                 + rebuild_hint(path)) from None
        if not (path / SQLITE_NAME).is_file():
            raise RetrievalError(f"the index at {path} has no {SQLITE_NAME}. " + rebuild_hint(path))
        check_sqlite(path / SQLITE_NAME)  # damaged source of truth: a clear error naming the file
        if expected is not None:
            reason = settings.mismatch(expected)
            if reason:
                raise IndexMismatchError(f"the index at {path} does not match: {reason}. "
                                         + rebuild_hint(path, folder))
        return cls(path, settings)

    @classmethod
    def create(cls, path: str | Path, settings: IndexSettings) -> "IndexStore":
        """Create an empty index folder (refuses to write into a non-empty folder that is not an index)."""
        path = Path(path)
        if cls.exists(path):
            raise RetrievalError(f"an index already exists at {path}")
        if path.exists() and any(p.name not in (LOCK_NAME, "uploads") and not p.name.startswith(".")
                                 for p in path.iterdir()):
            raise RetrievalError(f"{path} exists and is not an index. Choose another --index folder.")
        path.mkdir(parents=True, exist_ok=True)
        conn = _connect(path / SQLITE_NAME)
        try:
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('generation', '0')")
        finally:
            conn.close()
        # settings.json last: its presence marks a complete, openable index.
        atomic_write_bytes(path / SETTINGS_NAME, json.dumps(settings.to_dict(), indent=2).encode())
        return cls(path, settings)

    def close(self) -> None:
        with self._db_lock:
            self._conn.close()

    # ---- reading

    def _read_generation(self) -> int:
        with self._db_lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def changed_on_disk(self) -> bool:
        """True when another process committed a new generation since we loaded."""
        return self._read_generation() != self.generation

    def reload(self) -> bool:
        """Load the FAISS and BM25 parts of the current generation if it changed. Returns True if it did."""
        for _ in range(5):
            generation = self._read_generation()
            if generation == self.generation:
                return False
            try:
                faiss_index = self._load_faiss(generation)
                bm25, bm25_ids = self._load_bm25(generation)
            except FileNotFoundError:
                time.sleep(0.05)  # a writer replaced that generation under us; read the new one
                continue
            self.faiss_index, self.bm25, self.bm25_ids = faiss_index, bm25, bm25_ids
            self.generation = generation
            return True
        raise RetrievalError(f"the index at {self.path} keeps changing or is damaged. " + rebuild_hint(self.path))

    def _faiss_file(self, generation: int) -> Path:
        return self.path / f"vectors-{generation}.faiss"

    def _bm25_dir(self, generation: int) -> Path:
        return self.path / f"bm25-{generation}"

    def _load_faiss(self, generation: int):
        faiss = faiss_module()
        file = self._faiss_file(generation)
        if generation == 0:
            return self.new_faiss_index()
        if not file.exists():
            if self._read_generation() != generation:
                raise FileNotFoundError(file)
            warn_rebuilt("the FAISS file", file, "is missing")
            return self._faiss_from_sqlite()  # lost or never written: rebuild from the source of truth
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as exc:
            warn_rebuilt("the FAISS file", file, f"is unreadable ({(str(exc).strip().splitlines() or ['?'])[-1][:100]})")
            return self._faiss_from_sqlite()
        if index.d != self.settings.dim:
            warn_rebuilt("the FAISS file", file, f"holds {index.d}-d vectors, not {self.settings.dim}-d")
            return self._faiss_from_sqlite()
        return index

    def _load_bm25(self, generation: int):
        folder = self._bm25_dir(generation)
        if generation == 0:
            return None, np.zeros(0, dtype=np.int64)
        if not folder.exists():
            if self._read_generation() != generation:
                raise FileNotFoundError(folder)
            warn_rebuilt("the BM25 folder", folder, "is missing")
            return self._bm25_from_sqlite()
        try:
            ids = np.load(folder / "chunk_ids.npy")
            if len(ids) == 0:
                return None, ids
            import bm25s

            return bm25s.BM25.load(str(folder), show_progress=False, verbosity=0), ids
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) and self._read_generation() != generation:
                raise  # a writer replaced that generation under us; reload() reads the new one
            warn_rebuilt("the BM25 folder", folder, f"is unreadable ({type(exc).__name__}: {str(exc)[:100]})")
            return self._bm25_from_sqlite()

    def new_faiss_index(self):
        faiss = faiss_module()
        dim = self.settings.dim
        if self.settings.faiss == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 80
            inner.hnsw.efSearch = 64
        elif self.settings.faiss == "flat":
            inner = faiss.IndexFlatIP(dim)
        else:
            raise RetrievalError(f"unknown FAISS index kind {self.settings.faiss!r}; use 'flat' or 'hnsw'")
        return faiss.IndexIDMap2(inner)

    def _faiss_from_sqlite(self):
        index = self.new_faiss_index()
        ids, vectors = self.live_vectors()
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index

    def _bm25_from_sqlite(self):
        ids, texts = self.live_texts()
        return build_bm25(texts), np.asarray(ids, dtype=np.int64)

    def live_vectors(self, content_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids int64 [n], vectors float32 [n, dim]) of live chunks (or of the given contents)."""
        with self._db_lock:
            if content_ids is None:
                rows = self._conn.execute(
                    "SELECT id, vector FROM chunks WHERE content_id IN (SELECT content_id FROM documents)"
                    " ORDER BY id").fetchall()
            else:
                rows = []
                ids = list(content_ids)
                for i in range(0, len(ids), 500):
                    part = ids[i:i + 500]
                    rows += self._conn.execute(
                        f"SELECT id, vector FROM chunks WHERE content_id IN ({','.join('?' * len(part))})"
                        " ORDER BY id", part).fetchall()
        chunk_ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.settings.dim)
        return chunk_ids, vectors

    def live_texts(self) -> tuple[list[int], list[str]]:
        """Chunk ids and their lexical text ("heading\\ntext") of all live chunks, by id."""
        from retrieval.chunking import embedding_text

        with self._db_lock:
            rows = self._conn.execute(
                "SELECT id, heading, text FROM chunks WHERE content_id IN (SELECT content_id FROM documents)"
                " ORDER BY id").fetchall()
        return [r[0] for r in rows], [embedding_text(r[1], r[2]) for r in rows]

    def documents(self) -> dict[str, DocumentRow]:
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT path, content_id, sha256, size, mtime_ns, kind FROM documents").fetchall()
        return {r[0]: DocumentRow(*r) for r in rows}

    def chunk_counts(self) -> dict[str, int]:
        """Number of stored chunks (passages) of each indexed path (for the library view)."""
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT d.path, c.n_chunks FROM documents d JOIN contents c ON c.id = d.content_id").fetchall()
        return {path: int(n) for path, n in rows}

    def chunk_rows(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRow]:
        """The stored chunks with these ids (ids no longer live are left out)."""
        if not len(chunk_ids):
            return {}
        ids = [int(i) for i in chunk_ids]
        with self._db_lock:
            rows = []
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                rows += self._conn.execute(
                    "SELECT c.id, c.content_id, c.ordinal, c.text, c.heading, c.page, c.start_char, c.end_char,"
                    " c.vector, group_concat(d.path, char(0)) FROM chunks c JOIN documents d"
                    " ON d.content_id = c.content_id"
                    f" WHERE c.id IN ({','.join('?' * len(part))}) GROUP BY c.id", part).fetchall()
        out = {}
        for r in rows:
            paths = tuple(sorted(r[9].split("\x00")))
            out[r[0]] = ChunkRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                                 np.frombuffer(r[8], dtype=np.float32), paths)
        return out

    def chunk_ids_for_paths(self, keep) -> np.ndarray:
        """Ids of live chunks whose document path satisfies `keep(path) -> bool`."""
        with self._db_lock:
            docs = self._conn.execute("SELECT path, content_id FROM documents").fetchall()
            contents = sorted({cid for path, cid in docs if keep(path)})
            ids: list[int] = []
            for i in range(0, len(contents), 500):
                part = contents[i:i + 500]
                ids += [r[0] for r in self._conn.execute(
                    f"SELECT id FROM chunks WHERE content_id IN ({','.join('?' * len(part))})", part)]
        return np.array(sorted(ids), dtype=np.int64)

    def stats(self) -> dict:
        """Counts and settings, for the CLI and the UI."""
        with self._db_lock:
            files = self._conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self._conn.execute(
                "SELECT count(*) FROM chunks WHERE content_id IN (SELECT content_id FROM documents)").fetchone()[0]
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {"files": files, "chunks": chunks, "encoder": self.settings.encoder, "dim": self.settings.dim,
                "faiss": self.settings.faiss, "generation": self.generation, "path": str(self.path),
                "bytes_on_disk": size, "chunker": self.settings.chunker}

    # ---- writing

    def set_faiss_kind(self, kind: str) -> None:
        """Record a new FAISS index kind; the next `commit(force_rebuild=True)` rebuilds it from the stored
        vectors. Call only while holding the writer lock."""
        if kind not in ("flat", "hnsw"):
            raise RetrievalError(f"unknown FAISS index kind {kind!r}; use 'flat' or 'hnsw'")
        self.settings.faiss = kind
        atomic_write_bytes(self.path / SETTINGS_NAME, json.dumps(self.settings.to_dict(), indent=2).encode())

    @contextlib.contextmanager
    def writer(self, lock_held: bool = False):
        """Hold the writer lock and yield an `IndexWriter`. Nothing is visible to readers until `commit()`.

        `lock_held=True` when the caller already holds the `WriterLock` of this folder."""
        lock = None if lock_held else WriterLock(self.path).acquire()
        try:
            self.reload()
            writer = IndexWriter(self)
            try:
                yield writer
            finally:
                writer.close()
        finally:
            if lock is not None:
                lock.release()


def build_bm25(texts: Sequence[str]):
    """A bm25s index over `texts` (None when empty)."""
    if not texts:
        return None
    import bm25s

    model = bm25s.BM25()
    model.index(lexical_tokens(texts), show_progress=False)
    return model


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_file():
            _fsync_path(file)
    _fsync_dir(folder)


@dataclass
class _DocChange:
    row: DocumentRow | None  # None = remove


class IndexWriter:
    """Stage embedded contents and document changes; `commit()` makes them visible atomically."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.conn = _connect(store.path / SQLITE_NAME)  # its own connection: staging commits are separate
        self.changes: dict[str, _DocChange] = {}
        self._pending_stage = 0
        self._last_flush = time.monotonic()
        self.conn.execute("BEGIN")

    # ---- contents

    def find_content(self, sha256: str, kind: str) -> int | None:
        """The id of stored chunks for these bytes (live, or staged by an earlier interrupted run)."""
        row = self.conn.execute("SELECT id FROM contents WHERE sha256=? AND kind=?", (sha256, kind)).fetchone()
        return row[0] if row else None

    def stage_content(self, sha256: str, kind: str, chunks: Sequence, vectors: np.ndarray) -> int:
        """Store chunks + vectors for a file's bytes. Survives a crash (flushed every ~2 s) but is not
        searchable until a document points to it and `commit()` runs."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [n_chunks, dim]
        if len(chunks) != len(vectors) or (len(vectors) and vectors.shape[1] != self.store.settings.dim):
            raise ValueError(f"{len(chunks)} chunks but vectors of shape {vectors.shape}")
        existing = self.find_content(sha256, kind)
        if existing is not None:
            return existing
        cur = self.conn.execute(
            "INSERT INTO contents(sha256, kind, n_chunks, chars) VALUES (?,?,?,?)",
            (sha256, kind, len(chunks), sum(len(c.text) for c in chunks)))
        content_id = cur.lastrowid
        self.conn.executemany(
            "INSERT INTO chunks(content_id, ordinal, text, heading, page, start_char, end_char, vector)"
            " VALUES (?,?,?,?,?,?,?,?)",
            [(content_id, c.ordinal, c.text, c.heading, c.page, c.start, c.end, vectors[i].tobytes())
             for i, c in enumerate(chunks)])
        self._pending_stage += 1
        if time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()
        return content_id

    def flush(self) -> None:
        """Make staged contents durable (they stay invisible to searches)."""
        self.conn.execute("COMMIT")
        self.conn.execute("BEGIN")
        self._pending_stage = 0
        self._last_flush = time.monotonic()

    # ---- documents

    def set_document(self, row: DocumentRow) -> None:
        self.changes[row.path] = _DocChange(row)

    def remove_document(self, path: str) -> None:
        self.changes[path] = _DocChange(None)

    # ---- commit

    def commit(self, force_rebuild: bool = False) -> bool:
        """Apply document changes and switch readers to the new generation. Returns True if the set of
        searchable chunks changed."""
        store = self.store
        self.flush()
        current = {r[0]: (r[1], r[2], r[3], r[4]) for r in self.conn.execute(
            "SELECT path, content_id, sha256, size, mtime_ns FROM documents")}
        old_live = {v[0] for v in current.values()}
        new_docs = dict(current)
        for path, change in self.changes.items():
            if change.row is None:
                new_docs.pop(path, None)
            else:
                r = change.row
                new_docs[path] = (r.content_id, r.sha256, r.size, r.mtime_ns)
        new_live = {v[0] for v in new_docs.values()}
        to_add, to_remove = new_live - old_live, old_live - new_live
        generation = int(self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
        content_changed = bool(to_add or to_remove) or force_rebuild
        if content_changed:
            new_gen = generation + 1
            self._remove_generation_files(lambda g: g > generation)  # leftovers of a killed writer
            self._write_faiss(new_gen, generation, to_add, to_remove, new_live, force_rebuild)
            self._write_bm25(new_gen, new_live)
        # One transaction: documents, garbage contents, generation.
        self.conn.execute("COMMIT")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for path, change in self.changes.items():
                if change.row is None:
                    self.conn.execute("DELETE FROM documents WHERE path=?", (path,))
                else:
                    r = change.row
                    self.conn.execute("INSERT OR REPLACE INTO documents VALUES (?,?,?,?,?,?)",
                                      (r.path, r.content_id, r.sha256, r.size, r.mtime_ns, r.kind))
            # Contents nobody points to any more (including ones staged by killed runs).
            self.conn.execute("DELETE FROM chunks WHERE content_id NOT IN (SELECT content_id FROM documents)")
            self.conn.execute("DELETE FROM contents WHERE id NOT IN (SELECT content_id FROM documents)")
            if content_changed:
                self.conn.execute("UPDATE meta SET value=? WHERE key='generation'", (str(generation + 1),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("BEGIN")
        self.changes.clear()
        if content_changed:
            # Keep the previous generation a moment for readers that are loading it; drop older ones.
            self._remove_generation_files(lambda g: g < generation)
        store.reload()
        return content_changed

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("COMMIT")
        self.conn.close()

    def _generations_on_disk(self) -> dict[int, list[Path]]:
        out: dict[int, list[Path]] = {}
        for p in self.store.path.iterdir():
            for prefix in ("vectors-", "bm25-"):
                if p.name.startswith(prefix):
                    stem = p.name[len(prefix):].split(".")[0]
                    if stem.isdigit():
                        out.setdefault(int(stem), []).append(p)
            if p.name.startswith(".") and ".tmp-" in p.name:
                out.setdefault(-1, []).append(p)
        return out

    def _remove_generation_files(self, condition) -> None:
        for gen, paths in self._generations_on_disk().items():
            if gen == -1 or condition(gen):
                for p in paths:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            p.unlink()

    def _chunk_ids_of(self, content_ids: Iterable[int]) -> np.ndarray:
        ids: list[int] = []
        content_ids = list(content_ids)
        for i in range(0, len(content_ids), 500):
            part = content_ids[i:i + 500]
            ids += [r[0] for r in self.conn.execute(
                f"SELECT id FROM chunks WHERE content_id IN ({','.join('?' * len(part))})", part)]
        return np.array(sorted(ids), dtype=np.int64)

    def _vectors_of(self, content_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        content_ids = sorted(content_ids)
        for i in range(0, len(content_ids), 500):
            part = content_ids[i:i + 500]
            rows += self.conn.execute(
                f"SELECT id, vector FROM chunks WHERE content_id IN ({','.join('?' * len(part))})", part).fetchall()
        rows.sort()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        return ids, vectors.reshape(len(rows), self.store.settings.dim)  # [n, dim]

    def _write_faiss(self, new_gen: int, old_gen: int, to_add: set[int], to_remove: set[int],
                     live: set[int], force_rebuild: bool) -> None:
        faiss = faiss_module()
        store = self.store
        incremental = (not force_rebuild and store.generation == old_gen and store.faiss_index is not None
                       and (store.settings.faiss == "flat" or not to_remove))
        if incremental:
            index = faiss.clone_index(store.faiss_index)
            if to_remove:
                index.remove_ids(self._chunk_ids_of(to_remove))
            add = to_add
        else:
            index = store.new_faiss_index()
            add = live
        if add:
            ids, vectors = self._vectors_of(add)
            for i in range(0, len(ids), 20000):
                index.add_with_ids(vectors[i:i + 20000], ids[i:i + 20000])
        final = store._faiss_file(new_gen)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        faiss.write_index(index, str(tmp))
        _fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_dir(store.path)

    def _write_bm25(self, new_gen: int, live: set[int]) -> None:
        from retrieval.chunking import embedding_text

        rows = []
        live_list = sorted(live)
        for i in range(0, len(live_list), 500):
            part = live_list[i:i + 500]
            rows += self.conn.execute(
                f"SELECT id, heading, text FROM chunks WHERE content_id IN ({','.join('?' * len(part))})",
                part).fetchall()
        rows.sort()
        final = self.store._bm25_dir(new_gen)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model = build_bm25([embedding_text(r[1], r[2]) for r in rows])
        if model is not None:
            model.save(str(tmp), show_progress=False)
        np.save(tmp / "chunk_ids.npy", np.array([r[0] for r in rows], dtype=np.int64))
        _fsync_tree(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.store.path)
