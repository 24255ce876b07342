"""The on-disk index: one folder with SQLite (documents, chunks, vectors), FAISS and BM25 segments.

Layout of an index folder (format 2)::

    settings.json          encoder id + dim, chunker settings, vector index kind, format version
    index.sqlite           tables meta, contents, documents, chunks, dead (WAL mode); the source of truth
    vectors-<gen>.faiss    base FAISS index (flat, HNSW, IVF or IVF-PQ; ids = chunk ids), written at compaction
    bm25-<gen>/            base bm25s index, chunk_ids.npy (row -> chunk id), stats.json (documents, tokens)
    delta-<gen>.npz        chunk ids + vectors added by the commit of generation <gen> (small)
    lock                   held (flock) by the one process writing

What is searchable at a generation is its *manifest* (SQLite `meta`): the base files, the delta files, and
the chunk ids removed since the base was written (table `dead`). A commit that adds or removes a few
files writes one small delta file and a few SQLite rows, not the whole index; when the deltas or the dead
ids grow past a fraction of the base (or the vector index kind should change), the commit *compacts*:
it writes a new base from all live chunks. Small indexes (below COMPACT_BELOW chunks) always compact,
which costs little and keeps them in one piece.

Files with the same bytes share one "content" row and its chunks and vectors, so a renamed or duplicated
file is never embedded again. A content is *live* when some document points to it.

Crash safety: the generation number and the manifest in SQLite say which files belong to the index. A
writer first writes the next generation's new files (temp + fsync + rename), then, in one SQLite
transaction, updates the documents, the manifest and the dead ids, and bumps the generation. A process
killed at any point leaves either the old generation or the new one, both complete. Chunks embedded by a
killed run stay in SQLite as unreferenced contents; the next run reuses them instead of embedding again,
and a commit deletes the ones nobody claimed.

Format 1 (one `vectors-<gen>.faiss` + `bm25-<gen>/` rewritten by every commit) is migrated in place on
open: its files become the base of format 2, nothing is embedded again.

Vector sets (encoder adaptation, `assistant adapt`): the vectors in `chunks.vector` and the FAISS files are those of
the *active* encoder, named by the SQLite `meta` key `encoder` when present (else settings.json's `encoder`, as
every index before adaptation). `IndexWriter.switch_vectors` replaces them with another encoder's vectors for all
live chunks: the new base files are written first, then one transaction moves the current vectors into the table
`kept_vectors` (meta `kept_encoder`), writes the new ones into `chunks`, and switches the manifest, the generation
and `meta.encoder`. So a process killed at any point leaves the old index or the new one, both complete, and the
kept set switches back without embedding again (only chunks added since). Readers compare `meta.encoder` with
their encoder's name when they follow a new generation (`IndexStore.reload`), so vectors never mix.

Format 3 records with each content the parser that made its text: `parser_version` (the loader kind's
`retrieval.loaders.PARSER_VERSIONS` entry) and `incomplete` ("ocr" when pages were left unread for want of
tesseract); both are part of the content's key, so a file re-read by a newer parser gets new chunks instead of
the old ones found by its hash. A format 1 or 2 index is migrated on open (the contents table is rebuilt with
the two columns; its rows get version 1 and ""), nothing is embedded again; `retrieval.sync` then re-reads
only the files of the kinds whose parser has changed since.
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
from retrieval.segments import IVF_KINDS

FORMAT_VERSION = 3
COMPACT_BELOW = 20_000      # indexes with fewer live chunks are rewritten whole by every commit
DELTA_MIN = 2_000           # deltas may hold max(DELTA_MIN, DELTA_FRACTION * base) chunks before a compaction
DELTA_FRACTION = 0.02
DEAD_FRACTION = 0.10        # ... and the dead ids up to this fraction of the base
MAX_DELTA_FILES = 16        # more delta files than this are merged into one
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
    faiss: str = "auto"  # vector index kind: "auto" (flat, IVF from segments.IVF_AUTO_MIN chunks), "flat",
                         # "hnsw", "ivf", "ivfsq" or "ivfpq" (see retrieval.segments)
    hnsw_m: int = 32
    ivf_nlist: int = 0   # IVF lists; 0 = from the size (segments.nlist_for)
    ivf_nprobe: int = 0  # IVF lists searched per query; 0 = measured at build to reach recall@10 >= 0.95
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
        if self.format_version > other.format_version:
            return f"index format {self.format_version} is newer than this version reads ({other.format_version})"
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
    parser_version: int = 1  # of its content (see FORMAT_VERSION 3)
    incomplete: str = ""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contents(
    id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL, kind TEXT NOT NULL,
    n_chunks INTEGER NOT NULL, chars INTEGER NOT NULL,
    parser_version INTEGER NOT NULL DEFAULT 1, incomplete TEXT NOT NULL DEFAULT '',
    UNIQUE(sha256, kind, parser_version, incomplete));
CREATE TABLE IF NOT EXISTS documents(
    path TEXT PRIMARY KEY, content_id INTEGER NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS documents_content ON documents(content_id);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY AUTOINCREMENT, content_id INTEGER NOT NULL, ordinal INTEGER NOT NULL,
    text TEXT NOT NULL, heading TEXT NOT NULL, page INTEGER, start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_content ON chunks(content_id);
CREATE TABLE IF NOT EXISTS dead(chunk_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS kept_vectors(chunk_id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
"""
EMPTY_MANIFEST = {"base": {"vectors": None, "lexical": None, "n": 0, "stats": True, "info": {}}, "deltas": []}


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _meta_encoder(db: Path) -> str | None:
    """The active vector set's encoder recorded in SQLite (None: settings.json's `encoder` holds)."""
    conn = sqlite3.connect(db, timeout=30.0)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='encoder'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return row[0] if row else None


def lexical_tokens(texts: Sequence[str]) -> list[list[str]]:
    """The BM25 tokenisation, shared by indexing and queries: lower-cased words, English stopwords out."""
    import bm25s

    return bm25s.tokenize(list(texts), return_ids=False, stopwords="en", show_progress=False)


# ---------------------------------------------------------------- store

@dataclass
class IndexParts:
    """What searches read at one generation (see retrieval.segments)."""

    generation: int
    vectors: "VectorSegments"
    lexical: "LexicalSegments"


class IndexStore:
    """Read access to an index folder, plus `writer()` for the one process allowed to change it.

    Thread-safe for readers (one SQLite connection guarded by a lock). The searchable parts are loaded on
    first use (`parts()`), so a writer that only adds a few files never reads the large base files.
    """

    def __init__(self, path: Path, settings: IndexSettings) -> None:
        self.path = Path(path)
        self.settings = settings
        self._conn = _connect(self.path / SQLITE_NAME)
        self._db_lock = threading.RLock()
        self._parts_lock = threading.Lock()
        self.generation = -1
        self._parts: IndexParts | None = None
        self._cache: dict[str, object] = {}  # file name -> loaded base or delta (files never change)
        self.reload()

    # ---- opening

    @staticmethod
    def exists(path: str | Path) -> bool:
        return (Path(path) / SETTINGS_NAME).is_file()

    @classmethod
    def open(cls, path: str | Path, expected: IndexSettings | None = None,
             folder: str | Path | None = None) -> "IndexStore":
        """Open an existing index (migrating an older format in place); with `expected`, check it was built
        with the same encoder and chunker."""
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
        if settings.format_version < FORMAT_VERSION:
            settings = _migrate(path, settings)
        settings.encoder = _meta_encoder(path / SQLITE_NAME) or settings.encoder
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
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)", (json.dumps(EMPTY_MANIFEST),))
        finally:
            conn.close()
        # settings.json last: its presence marks a complete, openable index.
        settings.format_version = FORMAT_VERSION
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

    def _snapshot(self) -> tuple[int, dict, np.ndarray]:
        """(generation, manifest, dead chunk ids), read in one SQLite transaction."""
        with self._db_lock:
            self._conn.execute("BEGIN")
            try:
                rows = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
                dead = np.array([r[0] for r in self._conn.execute("SELECT chunk_id FROM dead ORDER BY chunk_id")],
                                dtype=np.int64)
            finally:
                self._conn.execute("COMMIT")
        manifest = json.loads(rows["manifest"]) if "manifest" in rows else EMPTY_MANIFEST
        return int(rows.get("generation", 0)), manifest, dead

    def manifest(self) -> dict:
        return self._snapshot()[1]

    def has_tables(self) -> bool:
        """Whether any live chunk holds a pipe table (a "|---" separator line); cached per index generation."""
        generation = self._read_generation()
        cached = getattr(self, "_tables_cache", None)
        if cached is not None and cached[0] == generation:
            return cached[1]
        with self._db_lock:
            row = self._conn.execute(
                "SELECT 1 FROM chunks WHERE content_id IN (SELECT content_id FROM documents) AND text LIKE '%|---%'"
                " LIMIT 1").fetchone()
        self._tables_cache = (generation, row is not None)
        return row is not None

    def changed_on_disk(self) -> bool:
        """True when another process committed a new generation since we loaded."""
        return self._read_generation() != self.generation

    def reload(self) -> bool:
        """Follow the current generation; its parts are loaded at the next `parts()`. True if it changed."""
        generation = self._read_generation()
        if generation == self.generation:
            return False
        with self._parts_lock:
            self.generation = generation
            self._parts = None
            with self._db_lock:
                row = self._conn.execute("SELECT value FROM meta WHERE key='encoder'").fetchone()
            if row is not None:
                self.settings.encoder = row[0]
        return True

    def vector_sets(self) -> dict[str, str | None]:
        """{"active": the encoder whose vectors are searched, "kept": the encoder of the kept set or None}."""
        with self._db_lock:
            rows = dict(self._conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('encoder', 'kept_encoder')").fetchall())
        return {"active": rows.get("encoder", self.settings.encoder), "kept": rows.get("kept_encoder")}

    def kept_vectors(self) -> tuple[str | None, np.ndarray, np.ndarray]:
        """(encoder of the kept vector set or None, chunk ids [n], vectors float32 [n, dim]) for the live chunks
        that have a kept vector (chunks added after the switch have none)."""
        kept = self.vector_sets()["kept"]
        if kept is None:
            return None, np.zeros(0, np.int64), np.zeros((0, self.settings.dim), np.float32)
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT k.chunk_id, k.vector FROM kept_vectors k JOIN chunks c ON c.id = k.chunk_id"
                " WHERE c.content_id IN (SELECT content_id FROM documents) ORDER BY k.chunk_id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.settings.dim)
        return kept, ids, vectors

    def parts(self) -> IndexParts:
        """The searchable parts of the current generation (loaded once per generation)."""
        with self._parts_lock:
            if self._parts is not None and self._parts.generation == self.generation:
                return self._parts
            for _ in range(5):
                generation, manifest, dead = self._snapshot()
                try:
                    parts = self._load_parts(generation, manifest, dead)
                except FileNotFoundError:
                    time.sleep(0.05)  # a writer replaced that generation under us; read the new one
                    continue
                self._parts, self.generation = parts, generation
                live_files = {manifest["base"]["vectors"], manifest["base"]["lexical"],
                              *(d["file"] for d in manifest["deltas"])}
                self._cache = {k: v for k, v in self._cache.items() if k in live_files}
                return parts
        raise RetrievalError(f"the index at {self.path} keeps changing or is damaged. " + rebuild_hint(self.path))

    def _still_current(self, generation: int) -> bool:
        return self._read_generation() == generation

    def _load_parts(self, generation: int, manifest: dict, dead: np.ndarray) -> IndexParts:
        from retrieval.segments import LexicalSegments, VectorInfo, VectorSegments

        dim = self.settings.dim
        base = manifest["base"]
        try:
            delta_ids, delta_vectors = self._load_deltas(generation, manifest["deltas"])
            base_index = self._load_file(generation, base["vectors"], read_vector_file)
            vectors = VectorSegments(base_index, VectorInfo.from_dict(base.get("info")), delta_ids, delta_vectors,
                                     dead, dim, nprobe=self.settings.ivf_nprobe or None)
        except _Damaged as exc:  # a lost or unreadable file: rebuild from the source of truth, all live vectors
            warn_rebuilt("the FAISS file", self.path / exc.args[0], exc.args[1])
            delta_ids = None
            ids, all_vectors = self.live_vectors()
            base_index = _flat_of(ids, all_vectors, dim)
            vectors = VectorSegments(base_index, VectorInfo(kind="flat", n=len(ids)), np.zeros(0, np.int64),
                                     np.zeros((0, dim), np.float32), np.zeros(0, np.int64), dim)
        try:
            if delta_ids is None:
                raise _Damaged
            bm25, bm25_ids, stats = self._load_file(generation, base["lexical"], read_bm25_folder) \
                or (None, np.zeros(0, np.int64), None)
            alive = delta_ids[~np.isin(delta_ids, dead)] if len(dead) else delta_ids
            delta_texts = self.texts_of(alive)
            lexical = LexicalSegments(bm25, bm25_ids, stats, list(delta_texts), list(delta_texts.values()), dead,
                                      self.texts_of)
        except _Damaged as exc:
            if exc.args:  # (none: the vector part was lost, and has already been reported)
                warn_rebuilt("the BM25 folder", self.path / exc.args[0], exc.args[1])
            ids, texts = self.live_texts()
            lexical = LexicalSegments(build_bm25(texts), np.asarray(ids, dtype=np.int64), None, [], [],
                                      np.zeros(0, np.int64), self.texts_of)
        return IndexParts(generation, vectors, lexical)

    def _load_file(self, generation: int, name: str | None, read):
        """A base or delta file of `generation` (cached: files never change once written). None for None.
        Raises FileNotFoundError when a writer has moved on (retry), _Damaged when it is lost or unreadable."""
        if name is None:
            return None
        if name not in self._cache:
            try:
                self._cache[name] = read(self.path / name)
            except Exception as exc:
                if not self._still_current(generation):
                    raise FileNotFoundError(name) from None
                why = "is missing" if not (self.path / name).exists() else \
                    f"is unreadable ({type(exc).__name__}: {str(exc)[:100]})"
                raise _Damaged(name, why) from None
        return self._cache[name]

    def _load_deltas(self, generation: int, deltas: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = [np.zeros(0, np.int64)], [np.zeros((0, self.settings.dim), np.float32)]
        for delta in deltas:
            part_ids, part_vectors = self._load_file(generation, delta["file"], read_delta_file)
            ids.append(part_ids)
            vectors.append(part_vectors)
        return np.concatenate(ids), np.concatenate(vectors)  # [m], [m, dim]

    def texts_of(self, chunk_ids: Sequence[int]) -> dict[int, str]:
        """{chunk id: lexical text ("heading\\ntext")} of these chunks (ids no longer stored are left out)."""
        from retrieval.chunking import embedding_text

        ids = [int(i) for i in chunk_ids]
        out: dict[int, str] = {}
        with self._db_lock:
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                for r in self._conn.execute(
                        f"SELECT id, heading, text FROM chunks WHERE id IN ({','.join('?' * len(part))})", part):
                    out[r[0]] = embedding_text(r[1], r[2])
        return dict(sorted(out.items()))

    def live_vectors(self, content_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids int64 [n], vectors float32 [n, dim]) of live chunks (or of the given contents)."""
        with self._db_lock:
            if content_ids is None:
                content_ids = [r[0] for r in self._conn.execute("SELECT DISTINCT content_id FROM documents")]
            return _vectors_of(self._conn, content_ids, self.settings.dim)

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
                "SELECT d.path, d.content_id, d.sha256, d.size, d.mtime_ns, d.kind,"
                " coalesce(c.parser_version, 1), coalesce(c.incomplete, '')"
                " FROM documents d LEFT JOIN contents c ON c.id = d.content_id").fetchall()
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
        """Counts, settings and how the vector index was built (kind, lists, nprobe, measured recall)."""
        with self._db_lock:
            files = self._conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self._conn.execute(
                "SELECT count(*) FROM chunks WHERE content_id IN (SELECT content_id FROM documents)").fetchone()[0]
        generation, manifest, dead = self._snapshot()
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        vectors = dict(manifest["base"].get("info") or {})
        if self.settings.ivf_nprobe and vectors.get("kind") in IVF_KINDS:
            vectors["nprobe"] = self.settings.ivf_nprobe  # set by the user; recall was measured at the build's
        return {"files": files, "chunks": chunks, "encoder": self.settings.encoder, "dim": self.settings.dim,
                "faiss": self.settings.faiss, "generation": generation, "path": str(self.path),
                "bytes_on_disk": size, "chunker": self.settings.chunker, "format": self.settings.format_version,
                "vectors": vectors, "segments": {"base_chunks": manifest["base"]["n"],
                                                 "delta_files": len(manifest["deltas"]),
                                                 "delta_chunks": sum(d["n"] for d in manifest["deltas"]),
                                                 "dead_chunks": len(dead)}}

    # ---- writing

    def set_vector_settings(self, kind: str | None = None, nlist: int | None = None,
                            nprobe: int | None = None) -> bool:
        """Record the vector index kind and IVF settings (None keeps each). Returns True when the base must be
        rebuilt from the stored vectors (pass it to `commit(force_rebuild=...)`); a new nprobe applies at once.
        Call only while holding the writer lock."""
        from retrieval.segments import KINDS

        if kind is not None and kind not in KINDS:
            raise RetrievalError(f"unknown vector index kind {kind!r}; use one of {', '.join(KINDS)}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe)):
            if value is not None and value < 0:
                raise RetrievalError(f"--{name} must be 0 (automatic) or positive")
        rebuild = (kind is not None and kind != self.settings.faiss) or \
            (nlist is not None and nlist != self.settings.ivf_nlist)
        changed = rebuild or (nprobe is not None and nprobe != self.settings.ivf_nprobe)
        if kind is not None:
            self.settings.faiss = kind
        if nlist is not None:
            self.settings.ivf_nlist = nlist
        if nprobe is not None:
            self.settings.ivf_nprobe = nprobe
        if changed:
            atomic_write_bytes(self.path / SETTINGS_NAME, json.dumps(self.settings.to_dict(), indent=2).encode())
            with self._parts_lock:
                self._parts = None
        return rebuild

    def vector_settings_pending(self) -> bool:
        """True when the base vector index was not built with the current settings (a rebuild for a new kind
        or list count was interrupted): the next sync rebuilds it."""
        from retrieval.segments import VectorInfo

        base = self.manifest()["base"]
        if not base["vectors"]:
            return False
        info = VectorInfo.from_dict(base.get("info"))
        if self.settings.faiss not in ("auto", info.kind):
            return True
        return info.kind in IVF_KINDS and bool(self.settings.ivf_nlist) and self.settings.ivf_nlist != info.nlist

    def set_faiss_kind(self, kind: str) -> None:
        """Record a new vector index kind; the next `commit(force_rebuild=True)` rebuilds it."""
        self.set_vector_settings(kind=kind)


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



# ---------------------------------------------------------------- files

class _Damaged(Exception):
    """An index file of the current generation is lost or unreadable (rebuilt from SQLite)."""


def build_bm25(texts: Sequence[str], tokens: list[list[str]] | None = None):
    """A bm25s index over `texts` (None when empty)."""
    if not texts:
        return None
    import bm25s

    model = bm25s.BM25()
    model.index(tokens if tokens is not None else lexical_tokens(texts), show_progress=False)
    return model


def read_vector_file(path: Path):
    """A FAISS index file, memory-mapped where FAISS can (IVF lists, flat codes), else read."""
    faiss = faiss_module()
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return faiss.read_index(str(path))


def read_bm25_folder(folder: Path):
    """(bm25s model or None, chunk ids [n], stats dict or None) of a base lexical folder."""
    ids = np.load(folder / "chunk_ids.npy")
    stats_file = folder / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else None
    if len(ids) == 0:
        return None, ids, stats
    import bm25s

    return bm25s.BM25.load(str(folder), show_progress=False, verbosity=0), ids, stats


def read_delta_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["ids"].astype(np.int64), data["vectors"].astype(np.float32)


def _flat_of(ids: np.ndarray, vectors: np.ndarray, dim: int):
    from retrieval.segments import _new_index

    index = _new_index("flat", dim)
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def _vectors_of(conn: sqlite3.Connection, content_ids: Iterable[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids [n] sorted, vectors float32 [n, dim]) of these contents' chunks."""
    rows = []
    content_ids = sorted(content_ids)
    for i in range(0, len(content_ids), 500):
        part = content_ids[i:i + 500]
        rows += conn.execute(
            f"SELECT id, vector FROM chunks WHERE content_id IN ({','.join('?' * len(part))})", part).fetchall()
    rows.sort()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
    return ids, vectors.reshape(len(rows), dim)


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_file():
            _fsync_path(file)
    _fsync_dir(folder)


def _publish(tmp: Path, final: Path) -> None:
    """fsync a written temp file or folder, rename it into place, fsync the parent."""
    if tmp.is_dir():
        _fsync_tree(tmp)
    else:
        _fsync_path(tmp)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _generation_of(name: str) -> int | None:
    """The generation a part file belongs to ("vectors-3.faiss" -> 3); -1 for temp files; None otherwise."""
    if name.startswith(".") and ".tmp-" in name:
        return -1
    for prefix in ("vectors-", "bm25-", "delta-"):
        if name.startswith(prefix):
            stem = name[len(prefix):].split(".")[0]
            return int(stem) if stem.isdigit() else None
    return None


def _migrate(path: Path, settings: IndexSettings) -> IndexSettings:
    """Format 1 -> 2 in place: the generation's FAISS file and BM25 folder become the base; 2 -> 3: the
    contents get their parser version (`_add_parser_columns`); nothing is embedded again. Idempotent (a
    migration killed half-way is simply done again)."""
    conn = _connect(path / SQLITE_NAME)
    try:
        conn.executescript(_SCHEMA)  # adds the new tables (IF NOT EXISTS)
        _add_parser_columns(conn)
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT 1 FROM meta WHERE key='manifest'").fetchone() is None:
            generation = int((conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone() or [0])[0])
            n = conn.execute("SELECT count(*) FROM chunks WHERE content_id IN "
                             "(SELECT content_id FROM documents)").fetchone()[0]
            kind = "hnsw" if settings.faiss == "hnsw" else "flat"
            manifest = {"base": {"vectors": f"vectors-{generation}.faiss" if generation else None,
                                 "lexical": f"bm25-{generation}" if generation else None,
                                 "n": n, "stats": False, "info": {"kind": kind, "n": n}},
                        "deltas": []}
            conn.execute("INSERT INTO meta VALUES ('manifest', ?)", (json.dumps(manifest),))
        conn.execute("COMMIT")
    finally:
        conn.close()
    # Format 1 had no "auto": flat was simply the default, so it becomes auto (flat below the IVF size).
    if settings.format_version < 2 and settings.faiss == "flat":
        settings.faiss = "auto"
    settings.format_version = FORMAT_VERSION
    atomic_write_bytes(path / SETTINGS_NAME, json.dumps(settings.to_dict(), indent=2).encode())
    return settings


def _add_parser_columns(conn: sqlite3.Connection) -> None:
    """Format 2 -> 3: rebuild `contents` with `parser_version` (1 for every old row: what the release before
    versions parsed) and `incomplete` (""), both in its unique key; ids (and so chunks) are kept. One
    transaction; nothing happens when the columns are there already."""
    def has_columns() -> bool:
        return "parser_version" in {r[1] for r in conn.execute("PRAGMA table_info(contents)")}

    if has_columns():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not has_columns():  # (another process may have migrated it meanwhile)
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='contents'").fetchone()
            conn.execute("DROP TABLE IF EXISTS contents_v3")
            conn.execute("CREATE TABLE contents_v3("
                         "id INTEGER PRIMARY KEY AUTOINCREMENT, sha256 TEXT NOT NULL, kind TEXT NOT NULL,"
                         " n_chunks INTEGER NOT NULL, chars INTEGER NOT NULL,"
                         " parser_version INTEGER NOT NULL DEFAULT 1, incomplete TEXT NOT NULL DEFAULT '',"
                         " UNIQUE(sha256, kind, parser_version, incomplete))")
            conn.execute("INSERT INTO contents_v3(id, sha256, kind, n_chunks, chars)"
                         " SELECT id, sha256, kind, n_chunks, chars FROM contents")
            conn.execute("DROP TABLE contents")
            conn.execute("ALTER TABLE contents_v3 RENAME TO contents")
            if seq is not None:  # ids of deleted contents are not handed out again
                conn.execute("UPDATE sqlite_sequence SET seq=max(seq, ?) WHERE name='contents'", (seq[0],))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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

    def find_content(self, sha256: str, kind: str, parser_version: int = 1, incomplete: str = "") -> int | None:
        """The id of stored chunks for these bytes read by this parser version (live, or staged by an earlier
        interrupted run)."""
        row = self.conn.execute(
            "SELECT id FROM contents WHERE sha256=? AND kind=? AND parser_version=? AND incomplete=?",
            (sha256, kind, parser_version, incomplete)).fetchone()
        return row[0] if row else None

    def complete_contents(self) -> set[tuple[str, str, int]]:
        """(sha256, kind, parser_version) of every complete stored content (live, or staged by an earlier
        interrupted run): a snapshot another thread can consult where `find_content` would answer non-None."""
        return set(self.conn.execute("SELECT sha256, kind, parser_version FROM contents WHERE incomplete=''"))

    def stage_content(self, sha256: str, kind: str, chunks: Sequence, vectors: np.ndarray,
                      parser_version: int = 1, incomplete: str = "") -> int:
        """Store chunks + vectors for a file's bytes (as read by `parser_version` of its kind's parser). Survives
        a crash (flushed every ~2 s) but is not searchable until a document points to it and `commit()` runs."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [n_chunks, dim]
        if len(chunks) != len(vectors) or (len(vectors) and vectors.shape[1] != self.store.settings.dim):
            raise ValueError(f"{len(chunks)} chunks but vectors of shape {vectors.shape}")
        existing = self.find_content(sha256, kind, parser_version, incomplete)
        if existing is not None:
            return existing
        cur = self.conn.execute(
            "INSERT INTO contents(sha256, kind, n_chunks, chars, parser_version, incomplete) VALUES (?,?,?,?,?,?)",
            (sha256, kind, len(chunks), sum(len(c.text) for c in chunks), parser_version, incomplete))
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
        searchable chunks changed.

        Writes one delta file with the added chunks' vectors and records the removed chunks as dead; or, when
        the deltas or dead ids have grown past their limits (or `force_rebuild`), a new base of all live chunks.
        """
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
        manifest = json.loads(self.conn.execute("SELECT value FROM meta WHERE key='manifest'").fetchone()[0])
        content_changed = bool(to_add or to_remove) or force_rebuild
        new_manifest, removed_ids, compacted = manifest, np.zeros(0, np.int64), False
        if content_changed:
            new_gen = generation + 1
            self._remove_files(lambda name, gen: gen == -1 or gen > generation)  # leftovers of a killed writer
            add_ids, add_vectors = _vectors_of(self.conn, to_add, store.settings.dim)
            removed_ids = self._chunk_ids_of(to_remove)
            new_manifest, compacted = self._write_parts(new_gen, manifest, new_live, add_ids, add_vectors,
                                                        removed_ids, force_rebuild)
        # One transaction: documents, garbage contents, dead ids, manifest, generation.
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
            self.conn.execute("DELETE FROM chunks WHERE content_id IN (SELECT id FROM contents"
                              " WHERE id NOT IN (SELECT content_id FROM documents))")
            self.conn.execute("DELETE FROM contents WHERE id NOT IN (SELECT content_id FROM documents)")
            if content_changed:
                if compacted:
                    self.conn.execute("DELETE FROM dead")
                else:
                    self.conn.executemany("INSERT OR IGNORE INTO dead VALUES (?)",
                                          [(int(i),) for i in removed_ids])
                self.conn.execute("UPDATE meta SET value=? WHERE key='manifest'", (json.dumps(new_manifest),))
                self.conn.execute("UPDATE meta SET value=? WHERE key='generation'", (str(generation + 1),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("BEGIN")
        self.changes.clear()
        if content_changed:
            # Keep the previous generation's files a moment for readers that are loading it; drop the rest.
            keep = _manifest_files(manifest) | _manifest_files(new_manifest)
            self._remove_files(lambda name, gen: name not in keep and gen <= generation + 1)
        store.reload()
        return content_changed

    def switch_vectors(self, encoder: str, ids: np.ndarray, vectors: np.ndarray, keep_current: bool = True) -> None:
        """Make `vectors` (float32 [n, dim], of chunk `ids` [n], covering every live chunk) the searched vectors,
        recorded as `encoder`'s, in one atomic commit (see the module docstring). `keep_current`: the vectors
        searched until now become the kept set (else the kept set stays as it is, e.g. the bundled encoder's
        when one adapter replaces another). Staged contents nobody points to are dropped: their vectors are the
        old encoder's. No document changes may be pending."""
        from retrieval.segments import IVF_AUTO_MIN, resolve_kind

        store = self.store
        if self.changes:
            raise RetrievalError("switch_vectors: commit the pending document changes first")
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), store.settings.dim):
            raise ValueError(f"{len(ids)} chunk ids but vectors of shape {vectors.shape}")
        self.flush()
        live = {r[0] for r in self.conn.execute("SELECT DISTINCT content_id FROM documents")}
        live_ids = self._chunk_ids_of(live)  # sorted
        given = dict(zip(ids.tolist(), range(len(ids))))
        missing = [int(i) for i in live_ids if int(i) not in given]
        if missing:
            raise RetrievalError(f"switch_vectors: no vector for {len(missing)} live chunks (e.g. {missing[:3]}); "
                                 "embed them first")
        rows = np.array([given[int(i)] for i in live_ids], dtype=np.int64)
        live_vectors = vectors[rows] if len(rows) else np.zeros((0, store.settings.dim), np.float32)  # [n, dim]
        generation = int(self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
        manifest = json.loads(self.conn.execute("SELECT value FROM meta WHERE key='manifest'").fetchone()[0])
        current = (self.conn.execute("SELECT value FROM meta WHERE key='encoder'").fetchone() or
                   [store.settings.encoder])[0]
        new_gen = generation + 1
        self._remove_files(lambda name, gen: gen == -1 or gen > generation)  # leftovers of a killed writer
        kind_now = (manifest["base"].get("info") or {}).get("kind", "flat")
        kind = resolve_kind(store.settings.faiss, len(live_ids))
        if store.settings.faiss == "auto" and kind_now in ("ivf", "ivfsq") and len(live_ids) >= IVF_AUTO_MIN // 2:
            kind = kind_now  # the same hysteresis as a commit's
        new_manifest = self._write_base(new_gen, live, kind, manifest["base"], (live_ids, live_vectors))
        self.conn.execute("COMMIT")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("CREATE TABLE IF NOT EXISTS kept_vectors(chunk_id INTEGER PRIMARY KEY,"
                              " vector BLOB NOT NULL)")
            self.conn.execute("DELETE FROM chunks WHERE content_id IN (SELECT id FROM contents"
                              " WHERE id NOT IN (SELECT content_id FROM documents))")
            self.conn.execute("DELETE FROM contents WHERE id NOT IN (SELECT content_id FROM documents)")
            if keep_current:
                self.conn.execute("DELETE FROM kept_vectors")
                self.conn.execute("INSERT INTO kept_vectors SELECT id, vector FROM chunks")
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('kept_encoder', ?)", (current,))
            else:
                self.conn.execute("DELETE FROM kept_vectors WHERE chunk_id NOT IN (SELECT id FROM chunks)")
            self.conn.executemany("UPDATE chunks SET vector=? WHERE id=?",
                                  [(live_vectors[i].tobytes(), int(cid)) for i, cid in enumerate(live_ids)])
            self.conn.execute("DELETE FROM dead")
            self.conn.execute("UPDATE meta SET value=? WHERE key='manifest'", (json.dumps(new_manifest),))
            self.conn.execute("UPDATE meta SET value=? WHERE key='generation'", (str(new_gen),))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('encoder', ?)", (encoder,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("BEGIN")
        keep = _manifest_files(manifest) | _manifest_files(new_manifest)
        self._remove_files(lambda name, gen: name not in keep and gen <= new_gen)
        store.reload()
        store.settings.encoder = encoder
        with contextlib.suppress(OSError):  # informative only: meta.encoder is what counts
            atomic_write_bytes(store.path / SETTINGS_NAME, json.dumps(store.settings.to_dict(), indent=2).encode())

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("COMMIT")
        self.conn.close()

    # ---- parts

    def _write_parts(self, new_gen: int, manifest: dict, live: set[int], add_ids: np.ndarray,
                     add_vectors: np.ndarray, removed_ids: np.ndarray, force_rebuild: bool) -> tuple[dict, bool]:
        """Write the files of generation `new_gen`; returns (its manifest, whether it is a new base)."""
        from retrieval.segments import IVF_AUTO_MIN, resolve_kind

        settings = self.store.settings
        base = manifest["base"]
        dead = self.conn.execute("SELECT count(*) FROM dead").fetchone()[0] + len(removed_ids)
        delta_n = sum(d["n"] for d in manifest["deltas"]) + len(add_ids)
        live_n = base["n"] + delta_n - dead
        kind_now = (base.get("info") or {}).get("kind", "flat")
        kind = resolve_kind(settings.faiss, live_n)
        if settings.faiss == "auto" and kind_now in ("ivf", "ivfsq") and live_n >= IVF_AUTO_MIN // 2:
            # hysteresis: do not flip back and forth around the threshold; and an "auto" IVF base built by an
            # earlier release (IVF-Flat, before auto chose 8-bit lists) keeps its kind: no rebuild on upgrade
            kind = kind_now
        compact = (force_rebuild or live_n < COMPACT_BELOW or not base["vectors"] or not base.get("stats")
                   or kind != kind_now
                   or delta_n > max(DELTA_MIN, DELTA_FRACTION * base["n"]) or dead > DEAD_FRACTION * base["n"])
        if compact:
            return self._write_base(new_gen, live, kind, base), True
        deltas = list(manifest["deltas"])
        if len(add_ids):
            deltas.append(self._write_delta(new_gen, add_ids, add_vectors))
        if len(deltas) > MAX_DELTA_FILES:  # merge them into one (writes the deltas, not the base)
            ids, vectors = self.store._load_deltas(self.store._read_generation(), deltas)
            deltas = [self._write_delta(new_gen, ids, vectors, name=f"delta-{new_gen}.merged.npz")]
        return {"base": base, "deltas": deltas}, False

    def _write_delta(self, new_gen: int, ids: np.ndarray, vectors: np.ndarray, name: str | None = None) -> dict:
        final = self.store.path / (name or f"delta-{new_gen}.npz")
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=ids.astype(np.int64), vectors=vectors.astype(np.float32))
        _publish(tmp, final)
        return {"file": final.name, "n": int(len(ids))}

    def _write_base(self, new_gen: int, live: set[int], kind: str, old_base: dict,
                    vectors_of_live: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        """A new base of all live chunks: vectors-<gen>.faiss (re-using an IVF's training while the
        collection has not outgrown it) and bm25-<gen>/. `vectors_of_live`: (ids, vectors) to use instead of
        the stored ones (a vector-set switch)."""
        from retrieval.chunking import embedding_text
        from retrieval.segments import VectorInfo, build_vector_index

        faiss = faiss_module()
        store, settings = self.store, self.store.settings
        ids, vectors = vectors_of_live or _vectors_of(self.conn, live, settings.dim)
        template, template_info = None, VectorInfo.from_dict(old_base.get("info"))
        if kind in IVF_KINDS and template_info.kind == kind and old_base.get("vectors"):
            with contextlib.suppress(Exception):
                template = read_vector_file(store.path / old_base["vectors"])
        index, info = build_vector_index(kind, settings.dim, ids, vectors, hnsw_m=settings.hnsw_m,
                                         nlist=settings.ivf_nlist or None, nprobe=settings.ivf_nprobe or None,
                                         template=template, template_info=template_info)
        vectors_final = store.path / f"vectors-{new_gen}.faiss"
        tmp = vectors_final.with_name(f".{vectors_final.name}.tmp-{os.getpid()}")
        faiss.write_index(index, str(tmp))
        _publish(tmp, vectors_final)
        del index, vectors, template

        rows = []
        live_list = sorted(live)
        for i in range(0, len(live_list), 500):
            part = live_list[i:i + 500]
            rows += self.conn.execute(
                f"SELECT id, heading, text FROM chunks WHERE content_id IN ({','.join('?' * len(part))})",
                part).fetchall()
        rows.sort()
        lexical_final = store.path / f"bm25-{new_gen}"
        tmp = lexical_final.with_name(f".{lexical_final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        texts = [embedding_text(r[1], r[2]) for r in rows]
        tokens = lexical_tokens(texts) if texts else []
        model = build_bm25(texts, tokens)
        if model is not None:
            model.save(str(tmp), show_progress=False)
        np.save(tmp / "chunk_ids.npy", np.array([r[0] for r in rows], dtype=np.int64))
        (tmp / "stats.json").write_text(json.dumps({"n_docs": len(tokens),
                                                    "total_tokens": int(sum(len(t) for t in tokens))}))
        _publish(tmp, lexical_final)
        return {"base": {"vectors": vectors_final.name, "lexical": lexical_final.name, "n": int(len(ids)),
                         "stats": True, "info": info.to_dict()}, "deltas": []}

    def _remove_files(self, condition) -> None:
        """Delete part files (and temp files) for which `condition(name, generation)` holds."""
        for p in self.store.path.iterdir():
            gen = _generation_of(p.name)
            if gen is None or not condition(p.name, gen):
                continue
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


def _manifest_files(manifest: dict) -> set[str]:
    base = manifest["base"]
    return {name for name in (base["vectors"], base["lexical"], *(d["file"] for d in manifest["deltas"])) if name}
