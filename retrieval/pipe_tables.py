"""Markdown pipe tables: the one form a table takes inside `Document.text`.

The contract every loader follows (HTML, DOCX, CSV/TSV, PDF): a header line `| h1 | h2 |`, a separator line
`|---|---|`, then one body line per row `| a | b |`, with a blank line before and after the table. Cells are
single-line: a newline inside a cell becomes a space and a `|` becomes `/` (`clean_cell`).

`format_pipe_table` writes a table that way; `find_pipe_tables` finds the tables in a text (written by a
loader, or by hand in a Markdown file: outer pipes are optional and fenced code blocks are skipped) as line
spans, which the chunker keeps together and `assistant.tables` reads cell by cell (`split_row`).
A text that only looks a little like a table (a `|` in prose, a separator whose column count differs from the
header's) is not a table: recognition never fails, it just finds nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

_SEPARATOR_CELL = re.compile(r"[ \t]*:?-+:?[ \t]*\Z")
_SEPARATOR_CHARS = re.compile(r"[ \t]*[|:-][ \t|:-]*\Z")
_FENCE = re.compile(r"[ \t]*(```|~~~)")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def clean_cell(value: object) -> str:
    """One cell's text for a pipe table: whitespace runs (newlines too) become one space, `|` becomes `/`."""
    text = "" if value is None else str(value)
    return " ".join(text.replace("|", "/").split())


def format_pipe_table(header: Sequence[object], rows: Iterable[Sequence[object]], *, clean: bool = True) -> str:
    """A pipe table (no blank lines around it): the header line, the separator, one line per row.

    Cells are cleaned with `clean_cell` (`clean=False`: the caller already did). Every line gets as many
    cells as the widest row (or the header); short rows are padded with empty cells.
    """
    if clean:
        body = [[clean_cell(c) for c in row] for row in rows]
        head = [clean_cell(c) for c in header]
    else:
        body = [list(map(str, row)) for row in rows]
        head = list(map(str, header))
    width = max([len(head), *(len(r) for r in body)]) if (head or body) else 0
    width = max(width, 1)
    head += [""] * (width - len(head))
    lines = [_line(head), "|" + "|".join("---" for _ in range(width)) + "|"]
    lines.extend(_line(r + [""] * (width - len(r))) for r in body)
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


@dataclass(frozen=True)
class PipeTableBlock:
    """Where one pipe table lies in a text: (start, end) character spans, each without edge whitespace.

    `header` and `separator` are the spans of those two lines, `rows` one span per body line; `start` is the
    header's start and `end` the end of the last line.
    """

    start: int
    end: int
    header: tuple[int, int]
    separator: tuple[int, int]
    rows: tuple[tuple[int, int], ...]

    @property
    def head_end(self) -> int:
        """Where the separator line ends: `text[start:head_end]` is the header line, a newline, the separator."""
        return self.separator[1]


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start] in " \t\r":
        start += 1
    while end > start and text[end - 1] in " \t\r":
        end -= 1
    return start, end


def split_row(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) spans of the cells of the table line `text[start:end]`, each without edge whitespace.

    Cells are separated by `|` (not by an escaped `\\|`); a leading and a trailing `|` open and close the line.
    An empty cell is an empty span.
    """
    start, end = _stripped(text, start, end)
    bounds = [m.start() for m in _UNESCAPED_PIPE.finditer(text, start, end)]
    edges = [start - 1, *bounds, end]
    cells = []
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        a += 1
        if a == b and ((i == 0 and bounds and bounds[0] == start) or (i == len(edges) - 2 and bounds
                                                                       and bounds[-1] == end - 1)):
            continue  # the empty "cell" before a leading pipe or after a trailing one
        cells.append(_stripped(text, a, b))
    return cells


def _is_separator(text: str, start: int, end: int) -> int:
    """The column count of a separator line such as `|---|:--:|`, or 0 when the line is not one."""
    line = text[start:end]
    if "|" not in line or "-" not in line or not _SEPARATOR_CHARS.match(line):
        return 0
    cells = split_row(text, start, end)
    if not cells or not all(_SEPARATOR_CELL.match(text[a:b] or " ") and b > a for a, b in cells):
        return 0
    return len(cells)


def find_pipe_tables(text: str, start: int = 0, end: int | None = None) -> list[PipeTableBlock]:
    """The pipe tables that lie inside `text[start:end]`, in order, as spans into `text`.

    A table is a line holding a `|` directly followed by a separator line with the same number of cells,
    then every following non-blank line that holds a `|`. Lines inside ``` / ~~~ fences are never tables.
    """
    end = len(text) if end is None else min(end, len(text))
    if "|" not in text[start:end] or "-" not in text[start:end]:
        return []
    lines: list[tuple[int, int]] = []
    pos = start
    while pos <= end:
        stop = text.find("\n", pos, end)
        stop = end if stop < 0 else stop
        lines.append((pos, stop))
        pos = stop + 1
    blocks: list[PipeTableBlock] = []
    in_fence = False
    i = 0
    while i < len(lines):
        a, b = lines[i]
        if _FENCE.match(text, a, b):
            in_fence = not in_fence
            i += 1
            continue
        if in_fence or "|" not in text[a:b] or i + 1 >= len(lines) or not text[a:b].strip():
            i += 1
            continue
        s_a, s_b = lines[i + 1]
        columns = _is_separator(text, s_a, s_b)
        if not columns or columns != len(split_row(text, a, b)) or _is_separator(text, a, b):
            i += 1
            continue
        rows = []
        j = i + 2
        while j < len(lines):
            r_a, r_b = lines[j]
            line = text[r_a:r_b]
            if not line.strip() or "|" not in line or _FENCE.match(text, r_a, r_b):
                break
            rows.append(_stripped(text, r_a, r_b))
            j += 1
        header = _stripped(text, a, b)
        separator = _stripped(text, s_a, s_b)
        blocks.append(PipeTableBlock(header[0], rows[-1][1] if rows else separator[1], header, separator,
                                     tuple(rows)))
        i = j
    return blocks
