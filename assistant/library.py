"""The document library: what an assistant's index holds, and the changes a user may make to it.

    library = Library(assistant)
    library.entries("lora")            # indexed, skipped and excluded files whose path contains "lora"
    library.remove("notes/old.md")     # a folder file: dropped now and excluded from later syncs (reversible)
    library.remove("@uploads/x.pdf")   # an upload: dropped and its uploaded copy deleted
    library.restore("notes/old.md")    # off the exclusion list; the next re-sync indexes it again
    library.resync(on_progress)        # the folder's index brought up to date (retrieval.sync.sync_folder)
    library.resolve_file(path)         # the file behind a source, only if it lies inside the folder or uploads
    library.page_view("a.pdf", 2, passage, marks)  # page 2's whole text, a source's marked words placed in it
    library.example_questions()        # a few questions built from the indexed documents' headings

UI-free (the Gradio page and the HTTP server can both use it); it changes the index only through
`retrieval.sync` and swaps in a fresh retriever under the assistant's index lock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from model.errors import UserError


class LibraryError(UserError):
    """A library action that cannot be done (no index, unknown file, ...)."""


@dataclass
class LibraryEntry:
    path: str
    state: str                 # "indexed" | "skipped" | "excluded"
    chunks: int = 0
    size: int = 0
    modified: float | None = None   # the file's modification time (seconds since the epoch) when indexed
    reason: str = ""           # why a file was skipped

    @property
    def upload(self) -> bool:
        return self.path.startswith(_uploads_prefix())


def _uploads_prefix() -> str:
    from retrieval.sync import UPLOADS_PREFIX

    return UPLOADS_PREFIX


@dataclass
class PageView:
    """One page of a paged document as the index holds it, with marked words placed in it.

    `marks` are (start, end, sentence) offsets into `text`; sentence is the composed answer's sentence the
    words support, or None for an evidence highlight."""

    path: str
    page: int
    text: str
    marks: list[tuple[int, int, int | None]]


class Library:
    """Library actions on one assistant (anything with index_path, folder, encoder, retriever, _index_lock)."""

    def __init__(self, assistant: Any) -> None:
        self.assistant = assistant

    # ------------------------------------------------------------------ reading
    @property
    def index_path(self) -> Path | None:
        return getattr(self.assistant, "index_path", None)

    def _store(self) -> Any:
        retriever = getattr(self.assistant, "retriever", None)
        store = getattr(retriever, "store", None)
        if store is not None and hasattr(retriever, "refresh"):
            retriever.refresh()
        return store

    def entries(self, contains: str = "") -> list[LibraryEntry]:
        """Indexed files first, then skipped, then excluded ones, each group by path; `contains` filters
        paths case-insensitively."""
        from retrieval.sync import read_exclusions, read_skipped

        store = self._store()
        out: list[LibraryEntry] = []
        if store is not None:
            with self.assistant._index_lock:
                documents, counts = store.documents(), store.chunk_counts()
            for path, row in sorted(documents.items()):
                out.append(LibraryEntry(path, "indexed", counts.get(path, 0), row.size, row.mtime_ns / 1e9))
        if self.index_path is not None:
            indexed = {e.path for e in out}
            out += [LibraryEntry(p, "skipped", reason=r) for p, r in sorted(read_skipped(self.index_path))
                    if p not in indexed]
            out += [LibraryEntry(p, "excluded", reason="removed from the index by hand")
                    for p in read_exclusions(self.index_path)]
        needle = (contains or "").strip().lower()
        return [e for e in out if needle in e.path.lower()] if needle else out

    def counts(self) -> dict[str, int]:
        """{"indexed": n, "skipped": n, "excluded": n}."""
        counts = {"indexed": 0, "skipped": 0, "excluded": 0}
        for entry in self.entries():
            counts[entry.state] += 1
        return counts

    # ------------------------------------------------------------------ changing
    def remove(self, path: str) -> str:
        """Take a file out of the index; returns a sentence saying what happened."""
        from retrieval.sync import UPLOADS_DIR, read_exclusions, remove_documents, set_exclusions

        index_path = self._require_index()
        path = (path or "").strip()
        with self.assistant._index_lock:
            if path.startswith(_uploads_prefix()):
                copy = self._inside(index_path / UPLOADS_DIR, path[len(_uploads_prefix()):])
                gone = remove_documents(index_path, [path])
                if copy is not None:
                    copy.unlink(missing_ok=True)
                if not gone and copy is None:
                    raise LibraryError(f"{path} is not in the index")
                self._reopen()
                return f"Removed {path} and deleted its uploaded copy."
            if path not in {e.path for e in self.entries()}:
                raise LibraryError(f"{path} is not in the index")
            set_exclusions(index_path, [*read_exclusions(index_path), path])
            remove_documents(index_path, [path])
            self._reopen()
        return (f"Removed {path} from the index. It stays in the folder and is excluded from re-syncs "
                "(restore it under Excluded).")

    def restore(self, path: str) -> str:
        """Take a file off the exclusion list (indexed again at the next re-sync)."""
        from retrieval.sync import read_exclusions, set_exclusions

        index_path = self._require_index()
        excluded = read_exclusions(index_path)
        if path not in excluded:
            raise LibraryError(f"{path} is not excluded")
        set_exclusions(index_path, [p for p in excluded if p != path])
        return f"{path} is no longer excluded; re-sync to index it again."

    def resync(self, on_progress: Callable[[int, int], Any] | None = None) -> Any:
        """Bring the index up to date with the folder (only new or changed files are embedded)."""
        from retrieval.sync import sync_folder

        index_path = self._require_index()
        folder = getattr(self.assistant, "folder", None)
        if folder is None:
            raise LibraryError("this index was opened without its folder, so there is nothing to re-sync; "
                               "start the assistant with the folder")
        with self.assistant._index_lock:
            report = sync_folder(folder, index_path, self.assistant.encoder, progress=False, on_progress=on_progress)
            self._reopen()
        return report

    def _require_index(self) -> Path:
        if self.index_path is None or getattr(self.assistant, "encoder", None) is None:
            raise LibraryError("this assistant has no on-disk index")
        return Path(self.index_path)

    def _reopen(self) -> None:
        from retrieval.retriever import Retriever

        self.assistant.retriever = Retriever(self.index_path, self.assistant.encoder)

    # ------------------------------------------------------------------ files
    def resolve_file(self, path: str) -> Path | None:
        """The file on disk behind an indexed path, or None: only indexed paths, and only files that
        resolve (symbolic links followed) to a place inside the indexed folder or the uploads folder."""
        from retrieval.sync import UPLOADS_DIR

        store = self._store()
        if not path or store is None or path not in store.documents():
            return None
        if path.startswith(_uploads_prefix()):
            return self._inside(Path(self.index_path) / UPLOADS_DIR, path[len(_uploads_prefix()):])
        folder = getattr(self.assistant, "folder", None)
        return self._inside(Path(folder), path) if folder is not None else None

    def page_view(self, path: str, page: int, passage: str = "",
                  marks: list[tuple[int, int, int | None]] | None = None) -> PageView | None:
        """Page `page` of an indexed file, with `marks` (offsets into `passage`, the text of one of its chunks as
        a source showed it) placed in the page's text (see `place_marks`). None unless the file is one
        `resolve_file` would open (indexed, inside the folder or the uploads) and the index has that page."""
        if page is None or int(page) < 1 or self.resolve_file(path) is None:
            return None
        retriever = getattr(self.assistant, "retriever", None)
        if retriever is None or not hasattr(retriever, "page_text"):
            return None
        with self.assistant._index_lock:
            text, spans = retriever.page_text(path, int(page))
        if not text:
            return None
        return PageView(path, int(page), text, place_marks(text, spans, passage, marks or []))

    @staticmethod
    def _inside(base: Path, relative: str) -> Path | None:
        try:
            root = base.resolve(strict=True)
            target = (root / relative).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        return target if target.is_file() and target.is_relative_to(root) else None

    # ------------------------------------------------------------------ example questions
    def example_questions(self, n: int = 4) -> list[str]:
        """Up to n questions made from section headings of different documents (the first usable section
        of documents spread over the library)."""
        store = self._store()
        if store is None:
            return []
        with self.assistant._index_lock:
            rows = store.chunk_rows(store.chunk_ids_for_paths(lambda path: True))
        first: dict[str, tuple[int, str]] = {}
        for row in rows.values():
            question = question_from_heading(row.heading)
            if question is None:
                continue
            path = row.paths[0]
            if path not in first or row.ordinal < first[path][0]:
                first[path] = (row.ordinal, question)
        picks = [first[p][1] for p in sorted(first)]
        if len(picks) > n:  # spread over the library rather than the first n files alphabetically
            step = len(picks) / n
            picks = [picks[int(i * step)] for i in range(n)]
        return list(dict.fromkeys(picks))[:n]


def passage_offset(page_text: str, spans: list[tuple[int, int, int]], passage: str) -> int | None:
    """Where character 0 of `passage` (a chunk's text) stands in `page_text`, from the chunk spans that
    `Retriever.page_text` gives: the chunk whose slice is the passage, or whose slice ends it (a table chunk
    with its repeated header in front: the offset is then before the slice, and the header's characters have
    no place in the page), else wherever the passage occurs in the page. None when it is not there (a passage
    cut to fit the prompt, or an index changed since the answer)."""
    if not passage:
        return None
    for _, start, end in spans:
        if page_text[start:end] == passage:
            return start
    for _, start, end in spans:
        body = page_text[start:end]
        if body and len(passage) > len(body) and passage.endswith(body):
            return start - (len(passage) - len(body))
    found = page_text.find(passage)
    return found if found >= 0 else None


def place_marks(page_text: str, spans: list[tuple[int, int, int]], passage: str,
                marks: list[tuple[int, int, int | None]]) -> list[tuple[int, int, int | None]]:
    """Marks on a passage (start, end, sentence) moved into the page's text: by the passage's position in the
    page where the words there are the same; otherwise the marked words are looked for in the page (any
    whitespace between them), from the passage's position on. A mark whose words are not in the page is left
    out."""
    offset = passage_offset(page_text, spans, passage)
    placed: list[tuple[int, int, int | None]] = []
    for start, end, sentence in marks:
        start, end = max(0, int(start)), min(len(passage), int(end))
        words = passage[start:end]
        if not words.strip():
            continue
        if offset is not None and 0 <= offset + start and page_text[offset + start:offset + end] == words:
            placed.append((offset + start, offset + end, sentence))
            continue
        pattern = re.compile(r"\s+".join(re.escape(w) for w in words.split()))
        found = pattern.search(page_text, max(0, offset or 0)) or pattern.search(page_text)
        if found:
            placed.append((found.start(), found.end(), sentence))
    return placed


_GENERIC = {"summary", "introduction", "overview", "conclusion", "conclusions", "references", "contents",
            "table of contents", "notes", "see also", "further reading", "abstract", "background"}
_QUESTION_START = re.compile(r"^(what|why|how|when|where|which|who)\b", re.IGNORECASE)


def question_from_heading(heading: str | None) -> str | None:
    """`Attention › Queries, keys and values` -> "What are queries, keys and values?"; None for headings
    that make no question (none, generic ones like "Summary", or very long ones)."""
    if not heading:
        return None
    parts = [p.strip() for p in heading.split("›") if p.strip()]
    if len(parts) < 2:  # the document title alone: too broad to make a good question
        return None
    section = parts[-1].rstrip(".:?")
    words = section.split()
    if section.lower() in _GENERIC or not words or len(words) > 8:
        return None
    match = re.match(r"^what (.+) (is|are|does|do)$", section, re.IGNORECASE)  # "What attention is"
    if match:
        verb = match.group(2).lower()
        return f"What {verb} {match.group(1)}{' do' if verb in ('does', 'do') else ''}?"
    if _QUESTION_START.match(section):  # "How it finds answers", "Why chain-of-thought helps"
        return section[0].upper() + section[1:] + "?"
    if not section[:1].isupper() or sum(w[:1].isupper() for w in words) == len(words) > 1:
        lower = section  # an acronym or a Title Case name: keep as written
    else:
        lower = section[0].lower() + section[1:] if not section[:2].isupper() else section
    verb = "are" if " and " in lower or lower.endswith("s") and not lower.endswith("ss") else "is"
    return f"What {verb} {lower}?"
