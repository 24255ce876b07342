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

        return Assistant.from_settings(settings, progress=sys.stderr.isatty())

    return settings, factory


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
    for evidence in getattr(answer, "evidence", None) or ():
        print(format_evidence(evidence), file=file)


def format_evidence(evidence: Any) -> str:
    """`Evidence [2] (score 4.1): "exact words" in "...its sentence..."` for the terminal."""
    sentence = " ".join(evidence.sentence.split())
    if len(sentence) > 240:
        sentence = sentence[:239] + "…"
    return (f"Evidence [{evidence.passage}] (score {evidence.score:.1f}, characters {evidence.start}-{evidence.end}): "
            f"\"{evidence.text}\" in \"{sentence}\"")
