"""Helpers shared by the ask / chat / ui / eval commands (settings, opening the assistant, printing)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def open_assistant(args: argparse.Namespace, **extra: Any) -> tuple[Any, Callable[[], Any]]:
    """Settings from the flags, and a function that opens the assistant they name (syncing the folder's
    index with a progress bar on stderr). Splitting the two lets commands check input before loading models."""
    from assistant.settings import from_args

    settings = from_args(args, **extra)

    def factory() -> Any:
        from assistant.pipeline import Assistant

        progress = TqdmProgress("indexing")
        try:
            return Assistant.from_settings(settings, progress=progress)
        finally:
            progress.close()

    return settings, factory


class TqdmProgress:
    """A progress callback for retrieval's sync: accepts (done, total[, description]) calls or
    (fraction, description) like gr.Progress, and shows a tqdm bar on stderr only when there is work."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar = None

    def __call__(self, done: Any = None, total: Any = None, desc: Any = None, **kw: Any) -> None:
        from tqdm import tqdm

        desc = kw.get("description", desc)
        if isinstance(total, str) and desc is None:
            desc, total = total, None
        if isinstance(done, float) and total is None and 0.0 <= done <= 1.0:
            done, total = round(done * 1000), 1000
        if not isinstance(done, int) or not isinstance(total, int) or total <= 0:
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=desc or self.description, file=sys.stderr, leave=False)
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        if desc:
            self._bar.set_description(str(desc), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_source(source: Any) -> str:
    """One line per source: `[n] file › heading (score 0.61, cos 0.55) *cited*`."""
    mark = " (cited)" if source.cited else ""
    cos = "" if source.dense_score is None else f", cos {source.dense_score:.2f}"
    return f"  [{source.number}] {source.location}  (score {source.score:.3f}{cos}){mark}"


def print_sources(answer: Any, file: Any = None) -> None:
    """Print the sources under an answer: cited ones, or on a refusal the nearest passages."""
    file = file or sys.stdout
    if not answer.sources:
        return
    title = "Nearest passages (not used):" if answer.refused else "Sources:"
    print(title, file=file)
    for source in answer.sources:
        print(format_source(source), file=file)
