"""Index integrity: find damage early, say what happened, repair without losing work.

- `check_sqlite(path)`: run when an index is opened. The SQLite database is the source of truth, so a damaged
  one must be found before anything reads from it or writes to it. The check is cheap: the file header, the
  expected tables, and `PRAGMA quick_check` (no hashing). A passing check is remembered in `.integrity-ok`
  next to the database, keyed by the size and mtime of the database and its WAL, so an unchanged index is
  not checked again on every open. A failure raises `IndexCorruptError` naming the file and the fix.
- `repair_index(folder, index_path, encoder)` (`assistant index DIR --repair`): builds a new index from the
  folder in a sibling directory, first staging every content (chunks + vectors) it can still read from the
  damaged database so those files are not embedded again, then swaps the new index in.
- `warn_rebuilt(...)`: the FAISS and BM25 files are derived from SQLite; when one is lost or unreadable it
  is rebuilt from SQLite (as before) and now a warning says so.
- `disk_full_guard(index_path)`: a full disk during a sync (ENOSPC, SQLite's "database or disk is full",
  FAISS's write error) becomes `DiskFullError` saying that the previous index was kept. The generation
  scheme of `retrieval.store` is what keeps it: nothing a reader sees changes until the final commit.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from retrieval.errors import DiskFullError, IndexCorruptError

log = logging.getLogger(__name__)

CHECK_STAMP = ".integrity-ok"
REQUIRED_TABLES = {"meta", "contents", "documents", "chunks"}
_SQLITE_MAGIC = b"SQLite format 3\x00"


def repair_hint(db: Path) -> str:
    index = Path(db).parent
    return (f"Repair it with `assistant index DIR --repair --index {index}` (it rebuilds the index from your "
            "folder and reuses every vector it can still read), or delete the folder and index again.")


# ---------------------------------------------------------------- the check on open

def _stamp(db: Path) -> list:
    out = []
    for p in (db, db.with_name(db.name + "-wal")):
        try:
            st = p.stat()
            out.append([p.name, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([p.name, None, None])
    return out


def check_sqlite(db: str | Path, force: bool = False) -> None:
    """Raise IndexCorruptError (naming `db`) when the index database is damaged; cheap when unchanged."""
    db = Path(db)
    stamp_file = db.with_name(CHECK_STAMP)
    stamp = _stamp(db)
    if not force:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp_file.read_text()) == stamp:
                return
    try:
        problem = sqlite_problem(db)
    except sqlite3.OperationalError:  # locked, read-only, ...: not a verdict on the file; check next time
        return
    if problem:
        raise IndexCorruptError(f"the index database {db} is damaged ({problem}). " + repair_hint(db))
    with contextlib.suppress(OSError):  # a read-only index is simply checked again next time
        tmp = stamp_file.with_name(f"{stamp_file.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, stamp_file)


def sqlite_problem(db: Path) -> str | None:
    """What is wrong with the database file, in words, or None when it looks sound. Raises
    sqlite3.OperationalError when it cannot tell (the database is locked or cannot be opened for reading)."""
    try:
        with open(db, "rb") as fh:
            head = fh.read(100)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        return "not an SQLite database: its header is missing or overwritten"
    conn = None
    try:
        conn = sqlite3.connect(db, timeout=30.0)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = REQUIRED_TABLES - tables
        if missing:
            return f"tables missing: {', '.join(sorted(missing))}"
        rows = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            return "quick_check: " + "; ".join(str(r)[:120] for r in rows)
    except sqlite3.OperationalError as exc:
        if "malformed" in str(exc) or "not a database" in str(exc):
            return str(exc)
        raise
    except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB
        return str(exc)
    finally:
        if conn is not None:
            conn.close()
    return None


# ---------------------------------------------------------------- derived files

def warn_rebuilt(part: str, file: Path, why: str) -> None:
    """Log that a derived file (FAISS or BM25) was rebuilt from SQLite, and why."""
    log.warning("%s %s %s; rebuilt it from the SQLite database (the source of truth), nothing is lost",
                part, file, why)


# ---------------------------------------------------------------- full disk

_DISK_FULL_WORDS = ("database or disk is full", "no space left", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, (sqlite3.Error, RuntimeError, OSError)):
        text = str(exc).lower()
        return any(word in text for word in _DISK_FULL_WORDS)
    return False


@contextlib.contextmanager
def disk_full_guard(index_path: str | Path):
    """Turn a full disk inside the block into DiskFullError; remove this process's half-written temp files."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        index_path = Path(index_path)
        freed = _remove_own_temp_files(index_path)
        raise DiskFullError(
            f"the disk holding the index {index_path} is full ({str(exc)[:160]}). The sync stopped and the index "
            f"is as it was before it (nothing already indexed was lost{'; temporary files removed' if freed else ''})."
            " Free some disk space and run it again; files embedded so far are reused.") from None


def _remove_own_temp_files(index_path: Path) -> int:
    suffix = f".tmp-{os.getpid()}"
    removed = 0
    for folder in (index_path, index_path / "uploads"):
        with contextlib.suppress(OSError):
            for p in folder.iterdir():
                if p.name.startswith(".") and p.name.endswith(suffix):
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                    removed += 1
    return removed


# ---------------------------------------------------------------- repair

@dataclass
class RepairReport:
    """What `repair_index` did: the sync of the new index, and how much the damaged database gave back."""

    sync: object  # retrieval.sync.SyncReport
    damage: str | None  # what was wrong with the old database (None: it looked sound)
    salvaged_contents: int = 0  # contents (sets of chunks + vectors) read back from the old database
    salvaged_chunks: int = 0
    reused_contents: int = 0  # of those, how many the new index uses (files still in the folder)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"repair: the old database was {'damaged (' + self.damage + ')' if self.damage else 'readable'}",
                 f"read back {self.salvaged_chunks} passages with their vectors ({self.salvaged_contents} files' worth)"
                 f" from it; {self.reused_contents} files reused them instead of being embedded again"]
        lines += self.notes
        return "\n".join(lines + [self.sync.summary()])


def salvage_contents(db: Path, dim: int) -> dict[tuple[str, str, int, str], tuple[list, np.ndarray]]:
    """Every content of a (possibly damaged) index database whose chunks and vectors are all readable:
    {(sha256, kind, parser version, incomplete): (chunks as objects with text/heading/page/start/end/ordinal,
    vectors [n, dim])}. A database from before parser versions (format 2) gives version 1 and ""."""
    out: dict[tuple[str, str, int, str], tuple[list, np.ndarray]] = {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error:
        return out
    try:
        try:
            versioned = "parser_version" in {r[1] for r in conn.execute("PRAGMA table_info(contents)")}
        except sqlite3.DatabaseError:
            versioned = False
        columns = "id, sha256, kind, n_chunks" + (", parser_version, incomplete" if versioned else ", 1, ''")
        for content_id, sha, kind, n_chunks, version, incomplete in _readable_rows(conn, "contents", columns):
            try:
                rows = conn.execute(
                    "SELECT ordinal, text, heading, page, start_char, end_char, vector FROM chunks"
                    " WHERE content_id=? ORDER BY ordinal", (content_id,)).fetchall()
            except sqlite3.DatabaseError:
                continue
            if len(rows) != n_chunks or not rows or any(len(r[6]) != 4 * dim for r in rows):
                continue
            if [r[0] for r in rows] != list(range(n_chunks)):
                continue
            vectors = np.frombuffer(b"".join(r[6] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            if not np.isfinite(vectors).all():
                continue
            chunks = [SimpleNamespace(ordinal=r[0], text=r[1], heading=r[2], page=r[3], start=r[4], end=r[5])
                      for r in rows]
            out[(sha, kind, int(version), str(incomplete))] = (chunks, vectors)
    except sqlite3.DatabaseError:
        pass
    finally:
        conn.close()
    return out


def _readable_rows(conn: sqlite3.Connection, table: str, columns: str, block: int = 256):
    """Rows of `table` by rowid, skipping the parts of it that cannot be read."""
    try:
        yield from conn.execute(f"SELECT {columns} FROM {table}").fetchall()
        return
    except sqlite3.DatabaseError:
        pass
    try:
        top = conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        try:
            top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()[0] or 0
        except (sqlite3.DatabaseError, TypeError):
            return
    for low in range(0, top + 1, block):
        try:
            yield from conn.execute(f"SELECT {columns} FROM {table} WHERE rowid BETWEEN ? AND ?",
                                    (low, low + block - 1)).fetchall()
            continue
        except sqlite3.DatabaseError:
            pass
        for rowid in range(low, low + block):
            with contextlib.suppress(sqlite3.DatabaseError):
                yield from conn.execute(f"SELECT {columns} FROM {table} WHERE rowid=?", (rowid,)).fetchall()


def repair_index(folder: str | Path, index_path: str | Path, encoder, *, chunker=None, progress: bool = False,
                 **sync_kw) -> RepairReport:
    """Rebuild the index of `folder` at `index_path` from the folder, reusing every readable vector of the
    old (damaged) database; the new index replaces the old one only when complete. Uploads are kept."""
    from retrieval.chunking import ChunkerSettings
    from retrieval.store import SETTINGS_NAME, SQLITE_NAME, IndexSettings, IndexStore, WriterLock
    from retrieval.sync import UPLOADS_DIR, index_settings, swap_in, sync_folder

    folder, index_path = Path(folder), Path(index_path)
    db = index_path / SQLITE_NAME
    settings = index_settings(encoder, chunker)
    notes = []
    old_settings = None
    with contextlib.suppress(OSError, ValueError, TypeError):
        old_settings = IndexSettings.from_dict(json.loads((index_path / SETTINGS_NAME).read_text()))
    if chunker is None and old_settings is not None and old_settings.encoder == settings.encoder:
        settings.chunker, settings.faiss = old_settings.chunker, old_settings.faiss
    index_path.mkdir(parents=True, exist_ok=True)
    with WriterLock(index_path), disk_full_guard(index_path):
        try:
            damage = sqlite_problem(db) if db.exists() else "missing"
        except sqlite3.OperationalError as exc:
            damage = f"could not be checked: {exc}"
        salvage: dict = {}
        if db.exists():
            if old_settings is not None and old_settings.mismatch(settings) is None:
                salvage = salvage_contents(db, settings.dim)
            else:
                notes.append("the old index was built with other encoder or chunker settings: nothing reused")
        fresh = index_path.with_name(index_path.name + ".repair")
        shutil.rmtree(fresh, ignore_errors=True)
        if (index_path / UPLOADS_DIR).is_dir():
            shutil.copytree(index_path / UPLOADS_DIR, fresh / UPLOADS_DIR, ignore=shutil.ignore_patterns(".*"))
        store = IndexStore.create(fresh, settings)
        try:
            with store.writer() as writer:
                for (sha, kind, version, incomplete), (chunks, vectors) in salvage.items():
                    writer.stage_content(sha, kind, chunks, vectors, version, incomplete)
                writer.flush()  # staged, not live: the sync below claims what the folder still has
        finally:
            store.close()
        report = sync_folder(folder, fresh, encoder, chunker=ChunkerSettings(**settings.chunker),
                             faiss_kind=settings.faiss, progress=progress, **sync_kw)
        store = IndexStore.open(fresh)
        try:
            live = {(row.sha256, row.kind, row.parser_version, row.incomplete) for row in store.documents().values()}
        finally:
            store.close()
        swap_in(fresh, index_path, aside=".damaged")
    report.index_path = str(index_path)
    return RepairReport(report, damage, len(salvage), sum(len(c) for c, _ in salvage.values()),
                        len(live & set(salvage)), notes)
