"""The saved-chats store: owners see only their own chats, writes survive reopening, schema versions."""

from __future__ import annotations

import sqlite3

import pytest

from assistant.conversations import (DEFAULT_TITLE, SCHEMA_VERSION, ConversationStore, ConversationStoreError,
                                     default_path, title_from)

TURN = {"question": "What is LoRA?", "answer": "Low-rank adapters [1].", "sources": [{"number": 1}]}


def test_chats_survive_reopening_and_are_named_after_their_first_question(tmp_path):
    path = tmp_path / "chats.sqlite3"
    store = ConversationStore(path)
    chat = store.create("alice")
    assert store.list("alice")[0].title == DEFAULT_TITLE
    assert store.save("alice", chat, [TURN, {"question": "x", "pending": True}])  # pending turns are not kept
    store.close()

    reopened = ConversationStore(path)
    [summary] = reopened.list("alice")
    assert summary.id == chat and summary.title == "What is LoRA?"
    assert reopened.get("alice", chat).turns == [TURN]


def test_owners_do_not_see_or_change_each_others_chats(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    mine = store.create("alice")
    store.save("alice", mine, [TURN])
    assert store.list("bob") == [] and store.get("bob", mine) is None
    assert not store.save("bob", mine, []) and not store.rename("bob", mine, "x") and not store.delete("bob", mine)
    assert store.get("alice", mine).turns == [TURN]
    with pytest.raises(ConversationStoreError):
        store.list("")


def test_rename_delete_and_order(tmp_path):
    store = ConversationStore(None)  # in memory
    first, second = store.create("a"), store.create("a")
    store.save("a", first, [TURN])  # updated last -> listed first
    assert [c.id for c in store.list("a")] == [first, second]
    assert store.rename("a", second, "  My   chat ") and store.get("a", second).title == "My chat"
    assert not store.rename("a", second, "   ")
    store.save("a", second, [TURN])
    assert store.get("a", second).title == "My chat"  # a chosen title is kept
    assert store.delete("a", first) and [c.id for c in store.list("a")] == [second]


def test_schema_version_is_recorded_and_newer_files_are_refused(tmp_path):
    path = tmp_path / "c.sqlite3"
    ConversationStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConversationStoreError, match="newer version"):
        ConversationStore(path)
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(ConversationStoreError, match="not a chats file"):
        ConversationStore(tmp_path / "junk.sqlite3")


def test_titles_and_default_location(tmp_path):
    assert title_from("  a  b\nc ") == "a b c" and title_from("") == DEFAULT_TITLE
    long = title_from("word " * 40)
    assert long.endswith("…") and len(long) <= 60
    assert default_path(tmp_path / "idx") == tmp_path / "idx.chats.sqlite3" and default_path(None) is None
