"""Helpers shared by the ask / chat / ui / eval commands (settings, opening the assistant, printing)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

PROGRESS_EVERY_S = 5.0


class ProgressLines:
    """`on_progress(done, total)` for output that is not a terminal: a plain line when work starts, then one
    every few seconds, and one at the end (a log file gets a few readable lines instead of a bar)."""

    def __init__(self, what: str = "indexing", unit: str = "passages", every: float = PROGRESS_EVERY_S,
                 file: Any = None) -> None:
        self.what, self.unit, self.every = what, unit, every
        self.file = file
        self._started: float | None = None
        self._last = 0.0
        self._ended = False
        self._announced = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        file = self.file or sys.stderr
        if self._started is None:
            self._started = self._last = now
        if total and not self._announced:  # the first call with work to do (a sync starts at 0 of 0)
            self._announced = True
            print(f"{self.what}: embedding {total:,} {self.unit}...", file=file, flush=True)
            if done < total:
                return
        if total and done >= total and not self._ended:
            self._ended = True
            seconds = now - self._started
            rate = f", {done / seconds:.1f} {self.unit}/s" if seconds > 0 else ""
            print(f"{self.what}: {done:,}/{total:,} {self.unit} embedded in {seconds:.0f} s{rate}", file=file,
                  flush=True)
        elif now - self._last >= self.every and done < total:
            self._last = now
            print(f"{self.what}: {done:,}/{total:,} {self.unit} ({100 * done / max(total, 1):.0f}%, "
                  f"{now - self._started:.0f} s)", file=file, flush=True)


def progress_options(quiet: bool = False) -> dict[str, Any]:
    """How to show indexing progress: a bar on a terminal, else plain lines every few seconds."""
    if quiet:
        return {"progress": False, "on_progress": None}
    tty = sys.stderr.isatty()
    return {"progress": tty, "on_progress": None if tty else ProgressLines()}


def open_assistant(args: argparse.Namespace, **extra: Any) -> tuple[Any, Callable[[], Any]]:
    """Settings from the flags, and a function that opens the assistant they name (syncing the folder's
    index with progress on stderr). Splitting the two lets commands check input before loading models."""
    from assistant.settings import from_args

    settings = from_args(args, **extra)

    def factory() -> Any:
        from assistant.pipeline import Assistant

        assistant = Assistant.from_settings(settings, **progress_options())
        report_sync(getattr(assistant, "sync_report", None))
        return assistant

    return settings, factory


def report_sync(report: Any, file: Any = None, where: str = "`assistant index --status`") -> None:
    """After the sync at opening: one line if files were skipped (their reasons are listed by `assistant index`
    and the library view, not repeated on every question), and one if an interrupted run was resumed."""
    if report is None:
        return
    file = file or sys.stderr
    if report.resumed:
        print(f"indexing resumed an interrupted run: reused the passages of {len(report.resumed)} files it had "
              "already embedded", file=file)
    if report.skipped:
        n = len(report.skipped)
        print(f"{n} file{'s' if n != 1 else ''} could not be indexed; see {where}", file=file)


def format_source(source: Any) -> str:
    """One line per source: `[n] file › heading (score 0.61, cos 0.55) *cited*`."""
    mark = " (cited)" if source.cited else ""
    cos = "" if source.dense_score is None else f", cos {source.dense_score:.2f}"
    return f"  [{source.number}] {source.location}  (score {source.score:.3f}{cos}){mark}"


def print_sources(answer: Any, file: Any = None) -> None:
    """Print the sources under an answer: cited ones, or on a refusal the nearest passages; then, for a composed
    answer, one line per sentence with the words it rests on (otherwise one line per piece of evidence)."""
    file = file or sys.stdout
    if not answer.sources:
        return
    title = "Nearest passages (not used):" if answer.refused else "Sources:"
    print(title, file=file)
    for source in answer.sources:
        print(format_source(source), file=file)
    sentences = getattr(answer, "sentences", None) or ()
    if sentences:  # a composed answer: each sentence's supporting words (they are its evidence)
        print("Supporting words:", file=file)
        texts = {source.number: source.text for source in answer.sources}
        for sentence in sentences:
            print(format_sentence(sentence, texts.get(sentence.passage, "")), file=file)
        return
    for evidence in getattr(answer, "evidence", None) or ():
        print(format_evidence(evidence), file=file)


def shorten(text: str, limit: int = 100) -> str:
    """`text` on one line (whitespace collapsed), cut at a word boundary with `…` when longer than `limit`."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "…"


def format_sentence(sentence: Any, passage_text: str, limit: int = 100) -> str:
    """`  [2] "the words of passage 2 the sentence rests on"` (shortened) for one sentence of a composed
    answer; `  [2] (no supporting words)` when its offsets do not name any words of the passage."""
    start, end = int(sentence.start), int(sentence.end)
    words = passage_text[start:end] if 0 <= start < end <= len(passage_text) else ""
    if not words.strip():
        return f"  [{sentence.passage}] (no supporting words)"
    return f'  [{sentence.passage}] "{shorten(words, limit)}"'


def format_evidence(evidence: Any) -> str:
    """`Evidence [2] (score 4.1): "exact words" in "...its sentence..."` for the terminal."""
    sentence = " ".join(evidence.sentence.split())
    if len(sentence) > 240:
        sentence = sentence[:239] + "…"
    return (f"Evidence [{evidence.passage}] (score {evidence.score:.1f}, characters {evidence.start}-{evidence.end}): "
            f"\"{evidence.text}\" in \"{sentence}\"")


def print_stream(items: Any, prefix: str = "") -> Any:
    """Print a streamed answer to the terminal (after `prefix`) and return its final Answer.

    A Draft (the quoted evidence, shown at once) that a Revision rewords is rewritten in place when it fits on
    one line, else the revision follows on its own line marked "(reworded)"."""
    from assistant.answer import Answer, Revision

    shown, answer = "", None
    for item in items:
        if isinstance(item, Answer):
            answer = item
        elif isinstance(item, Revision):
            if "\n" not in shown:
                print("\r\033[K" + prefix + item.text, end="", flush=True)
            else:
                print("\n(reworded) " + item.text, end="", flush=True)
            shown = item.text
        else:
            print(item, end="", flush=True)
            shown += item
    print()
    return answer
