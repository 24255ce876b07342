"""Errors the retrieval layer raises for problems a user can fix."""

from __future__ import annotations

from model.errors import UserError


class RetrievalError(UserError):
    """Something about documents or the index that the user can fix."""


class IndexMismatchError(RetrievalError):
    """The index was built with another encoder or chunker; it has to be rebuilt."""


class IndexLockedError(RetrievalError):
    """Another process is writing to this index right now."""


class IndexNotFoundError(RetrievalError):
    """No index exists at the given path."""


class IndexCorruptError(RetrievalError):
    """The index's SQLite database (the source of truth) is damaged; `assistant index DIR --repair` fixes it."""


class DiskFullError(RetrievalError):
    """The disk filled up while the index was being written; the previous index was kept."""
