"""Saved chats: a small SQLite store of conversations, each owned by one browser.

    store = ConversationStore(path)                 # None: in memory (tests, an assistant without an index)
    chat_id = store.create(owner)                   # owner: an opaque per-browser id (kept in localStorage)
    store.save(owner, chat_id, turns)               # turns: the UI's list of dicts (question, answer, sources)
    store.list(owner) -> [ChatSummary]; store.get(owner, chat_id) -> Chat | None
    store.rename(owner, chat_id, title); store.delete(owner, chat_id)

Every call names the owner, and rows of other owners are invisible to it: two browsers using one server
never see each other's chats. Each write is one SQLite transaction (WAL journal, synchronous=FULL), so a
crash leaves either the old or the new state. `PRAGMA user_version` holds the schema version; `_migrate`
brings older files up to date (and refuses files from a newer version instead of damaging them).
Nothing here knows about Gradio: the HTTP server can reuse it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import UserError

SCHEMA_VERSION = 1
DEFAULT_TITLE = "New chat"
TITLE_CHARS = 60

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS chats(
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, turns TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chats_owner ON chats(owner, updated);
"""


class ConversationStoreError(UserError):
    """The chats file cannot be used (written by a newer version, or not a chats file)."""


@dataclass
class ChatSummary:
    id: str
    title: str
    updated: float


@dataclass
class Chat:
    id: str
    title: str
    created: float
    updated: float
    turns: list[dict] = field(default_factory=list)


def title_from(question: str) -> str:
    """A chat's default title: its first question, on one line, cut at a word near TITLE_CHARS."""
    flat = " ".join((question or "").split())
    if len(flat) <= TITLE_CHARS:
        return flat or DEFAULT_TITLE
    return flat[: TITLE_CHARS - 1].rsplit(" ", 1)[0] + "…"


class ConversationStore:
    """Conversations on disk (one SQLite file), scoped by owner. Thread-safe."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(":memory:" if self.path is None else str(self.path), timeout=30.0,
                                     check_same_thread=False, isolation_level=None)
        try:
            if self.path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise ConversationStoreError(f"{self.path} is not a chats file ({exc}); move it away and restart") from exc

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConversationStoreError(
                f"{self.path} was written by a newer version of the assistant (chats schema {version}, this "
                f"version knows {SCHEMA_VERSION}); upgrade, or move the file away to start a new chat list")
        if version < 1:
            with self._transaction() as conn:
                for statement in filter(str.strip, _SCHEMA_V1.split(";")):  # executescript would commit
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Future versions: `if version < 2: ...` steps here, each in its own transaction.

    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self_inner):
                store._conn.execute("BEGIN IMMEDIATE")
                return store._conn

            def __exit__(self_inner, exc_type, *_):
                store._conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ reading
    def list(self, owner: str) -> list[ChatSummary]:
        """The owner's chats, most recently updated first."""
        with self._lock:
            rows = self._conn.execute("SELECT id, title, updated FROM chats WHERE owner = ? ORDER BY updated DESC",
                                      (_owner(owner),)).fetchall()
        return [ChatSummary(*row) for row in rows]

    def get(self, owner: str, chat_id: str) -> Chat | None:
        """One of the owner's chats with its turns; None if it does not exist or belongs to someone else."""
        with self._lock:
            row = self._conn.execute("SELECT id, title, created, updated, turns FROM chats WHERE id = ? AND owner = ?",
                                     (chat_id or "", _owner(owner))).fetchone()
        if row is None:
            return None
        return Chat(row[0], row[1], row[2], row[3], json.loads(row[4]))

    # ------------------------------------------------------------------ writing
    def create(self, owner: str, title: str = DEFAULT_TITLE, turns: list[dict] | None = None) -> str:
        """A new chat for the owner; returns its id."""
        chat_id = uuid.uuid4().hex
        now = time.time()
        with self._lock, self._transaction() as conn:
            conn.execute("INSERT INTO chats(id, owner, title, created, updated, turns) VALUES (?, ?, ?, ?, ?, ?)",
                         (chat_id, _owner(owner), title, now, now, _dump(turns or [])))
        return chat_id

    def save(self, owner: str, chat_id: str, turns: list[dict]) -> bool:
        """Replace a chat's turns (a chat still titled DEFAULT_TITLE is named after its first question).
        False if the chat is not the owner's."""
        turns = [t for t in turns if not t.get("pending")]
        with self._lock, self._transaction() as conn:
            row = conn.execute("SELECT title FROM chats WHERE id = ? AND owner = ?",
                               (chat_id or "", _owner(owner))).fetchone()
            if row is None:
                return False
            title = row[0]
            if title == DEFAULT_TITLE and turns:
                title = title_from(turns[0].get("question", ""))
            conn.execute("UPDATE chats SET turns = ?, title = ?, updated = ? WHERE id = ?",
                         (_dump(turns), title, time.time(), chat_id))
        return True

    def rename(self, owner: str, chat_id: str, title: str) -> bool:
        title = " ".join((title or "").split())[:200]
        if not title:
            return False
        with self._lock, self._transaction() as conn:
            cursor = conn.execute("UPDATE chats SET title = ? WHERE id = ? AND owner = ?",
                                  (title, chat_id or "", _owner(owner)))
        return cursor.rowcount == 1

    def delete(self, owner: str, chat_id: str) -> bool:
        with self._lock, self._transaction() as conn:
            cursor = conn.execute("DELETE FROM chats WHERE id = ? AND owner = ?", (chat_id or "", _owner(owner)))
        return cursor.rowcount == 1


def _owner(owner: str) -> str:
    owner = (owner or "").strip()
    if not owner:  # no id (a browser without JavaScript storage): nobody's chats, not everybody's
        raise ConversationStoreError("no owner id given for the chats")
    return owner


def _dump(turns: list[dict[str, Any]]) -> str:
    return json.dumps(turns, ensure_ascii=False)


def default_path(index_path: str | Path | None) -> Path | None:
    """Where an index's chats live: beside the index folder (`<index>.chats.sqlite3`), so rebuilding the
    index (which swaps the folder) keeps them. None (in memory) without an on-disk index."""
    if index_path is None:
        return None
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".chats.sqlite3")
