"""Split a `Document` into passages sized by the encoder's own token count.

How a document is cut, from coarse to fine:
1. sections: Markdown / RST headings found in the text (or headings the loader recorded for HTML and
   DOCX) give each section a heading path such as "Attention › Multi-head attention"; PDF pages are
   also hard boundaries, so every chunk has one page number;
2. units inside a section: sentences of prose paragraphs, lines of code; a unit longer than the budget is
   cut at word boundaries (and a giant "word" at characters);
3. units are packed greedily up to `target_tokens`; the next chunk starts with the last units of the
   previous one, up to `overlap_tokens`.

No chunk exceeds the encoder window: what gets embedded is "heading path\\n" + text, and that is checked
with `count_tokens` before a chunk is returned. A chunk's `text` is an exact slice `doc.text[start:end]`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from retrieval.loaders import Document

HEADING_SEPARATOR = " › "
CHUNKER_VERSION = 1


@dataclass(frozen=True)
class ChunkerSettings:
    """How chunks are sized. Recorded in the index; changing it needs a rebuild."""

    target_tokens: int = 200
    overlap_tokens: int = 30
    max_tokens: int = 254  # hard cap on embedded content tokens (encoder max_length - [CLS] - [SEP])
    version: int = CHUNKER_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_encoder(cls, encoder, target_tokens: int = 200, overlap_tokens: int = 30) -> "ChunkerSettings":
        """Settings whose hard cap is the encoder's window (minus its two special tokens)."""
        max_tokens = int(encoder.max_length) - 2
        return cls(min(target_tokens, max_tokens), min(overlap_tokens, target_tokens // 2), max_tokens)


@dataclass
class Chunk:
    """A passage of a document. `start`/`end` are character offsets into the document text."""

    text: str
    path: str
    heading: str
    page: int | None
    start: int
    end: int
    ordinal: int

    def embedding_text(self) -> str:
        """What the encoder and the lexical index see: the heading path, then the text."""
        return embedding_text(self.heading, self.text)


def embedding_text(heading: str, text: str) -> str:
    return f"{heading}\n{text}" if heading else text


CountTokens = Callable[[Sequence[str]], list]

# ---------------------------------------------------------------- structure

_MD_ATX = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_MD_SETEXT = re.compile(r"^(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_RST_ADORN = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}[ \t]*$")


def find_headings(doc: Document) -> list[tuple[int, int, str, int]]:
    """(offset where the heading starts, level, title, offset where its body starts) for the document."""
    if doc.headings is not None:
        return [(pos, level, title, pos + len(title)) for pos, level, title in doc.headings]
    if doc.kind == "markdown":
        return _markdown_headings(doc.text)
    if doc.kind == "rst":
        return _rst_headings(doc.text)
    return []


def _lines_with_offsets(text: str) -> list[tuple[int, str]]:
    out, pos = [], 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out


def _markdown_headings(text: str) -> list[tuple[int, int, str, int]]:
    headings = []
    in_fence = False
    lines = _lines_with_offsets(text)
    for i, (pos, line) in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        match = _MD_ATX.match(line)
        if match:
            headings.append((pos, len(match.group(1)), match.group(2).strip(), pos + len(line)))
            continue
        if i + 1 < len(lines) and line.strip() and not line.startswith((" ", "\t", "-", "*", ">", "|")):
            under = lines[i + 1][1]
            if _MD_SETEXT.match(under) and (i == 0 or not lines[i - 1][1].strip()):
                body = lines[i + 1][0] + len(under)
                headings.append((pos, 1 if under.startswith("=") else 2, line.strip(), body))
    return headings


def _rst_headings(text: str) -> list[tuple[int, int, str, int]]:
    """RST section titles: a line underlined (optionally also overlined) by a repeated punctuation char.

    Levels follow the order in which adornment styles first appear, as docutils does.
    """
    headings, styles = [], []
    lines = _lines_with_offsets(text)
    i = 0
    while i < len(lines) - 1:
        pos, line = lines[i]
        nxt = lines[i + 1][1]
        overline = False
        if _RST_ADORN.match(line) and i + 2 < len(lines) and _RST_ADORN.match(lines[i + 2][1]) \
                and lines[i + 1][1].strip() and lines[i + 2][1].strip()[0] == line.strip()[0]:
            title, char, overline, title_pos = nxt.strip(), line.strip()[0], True, pos
            step = 3
        elif line.strip() and not _RST_ADORN.match(line) and _RST_ADORN.match(nxt) \
                and len(nxt.rstrip()) >= len(line.rstrip()) and not line.startswith((" ", "\t")):
            title, char, title_pos = line.strip(), nxt.strip()[0], pos
            step = 2
        else:
            i += 1
            continue
        style = (char, overline)
        if style not in styles:
            styles.append(style)
        last_pos, last_line = lines[i + step - 1]
        headings.append((title_pos, styles.index(style) + 1, title, last_pos + len(last_line)))
        i += step
    return headings


@dataclass
class _Section:
    start: int
    end: int
    heading: str
    page: int | None


def _sections(doc: Document) -> list[_Section]:
    """Cut the document at headings and pages; each piece knows its heading path and page."""
    text = doc.text
    cuts: dict[int, None] = {0: None}
    heading_at: dict[int, tuple[int, str, int]] = {}
    for pos, level, title, body in find_headings(doc):
        cuts[pos] = None
        heading_at[pos] = (level, title, body)
    page_of: list[tuple[int, int, int]] = doc.pages or []
    for start, end, _ in page_of:
        cuts[start] = None
        cuts[end] = None
    cuts[len(text)] = None
    bounds = sorted(c for c in cuts if 0 <= c <= len(text))
    stack: list[tuple[int, str]] = []  # (level, title)
    sections = []
    for start, end in zip(bounds, bounds[1:]):
        if start in heading_at:
            level, title, body = heading_at[start]
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            start = min(max(start, body), end)  # the heading line itself is in the path, not the text
        page = None
        for p_start, p_end, number in page_of:
            if p_start <= start < p_end:
                page = number
                break
        if page_of and page is None:
            continue  # the blank line between two pages
        if text[start:end].strip():
            sections.append(_Section(start, end, HEADING_SEPARATOR.join(t for _, t in stack), page))
    return sections


# ---------------------------------------------------------------- units

_PARAGRAPH = re.compile(r"\S(?:.*?\S)??(?=\n[ \t]*\n|\s*\Z)", re.S)
_SENTENCE = re.compile(r"\S.*?(?:[.!?][\"')\]]*(?=\s)|\Z)", re.S)
_LINE = re.compile(r"[^\n]*\S[^\n]*")
_WORD = re.compile(r"\S+")


def _spans(pattern: re.Pattern, text: str, offset: int) -> list[tuple[int, int]]:
    return [(offset + m.start(), offset + m.end()) for m in pattern.finditer(text) if m.group().strip()]


def _units(text: str, start: int, end: int, code: bool) -> list[tuple[int, int, bool]]:
    """(start, end, starts_paragraph) spans covering the non-blank text of [start, end)."""
    piece = text[start:end]
    units = []
    for p_start, p_end in _spans(_PARAGRAPH, piece, start):
        inner = _spans(_LINE if code else _SENTENCE, text[p_start:p_end], p_start)
        for j, (u_start, u_end) in enumerate(inner):
            # strip trailing whitespace so spans end on text
            while u_end > u_start and text[u_end - 1].isspace():
                u_end -= 1
            units.append((u_start, u_end, j == 0))
    return units


def _split_long(text: str, span: tuple[int, int, bool], limit: int, count: CountTokens) \
        -> list[tuple[int, int, bool]]:
    """Cut one over-long unit at word boundaries (and giant words at characters) into pieces <= limit."""
    start, end, first = span
    words = _spans(_WORD, text[start:end], start)
    pieces: list[tuple[int, int]] = []
    word_counts = count([text[a:b] for a, b in words])
    for (a, b), n in zip(words, word_counts):
        if n <= limit:
            pieces.append((a, b))
            continue
        # A "word" longer than the window (a URL, base64, a long identifier): cut by characters.
        step = max(1, (b - a) * limit // (n + 1))
        pos = a
        while pos < b:
            stop = min(b, pos + step)
            while stop - pos > 1 and count([text[pos:stop]])[0] > limit:
                stop = pos + max(1, (stop - pos) // 2)
            pieces.append((pos, stop))
            pos = stop
    counts = count([text[a:b] for a, b in pieces])
    out, cur_start, cur_end, cur_n = [], None, None, 0
    for (a, b), n in zip(pieces, counts):
        if cur_start is not None and cur_n + n > limit:
            out.append((cur_start, cur_end, first and not out))
            cur_start, cur_n = None, 0
        if cur_start is None:
            cur_start = a
        cur_end, cur_n = b, cur_n + n
    if cur_start is not None:
        out.append((cur_start, cur_end, first and not out))
    return out


# ---------------------------------------------------------------- packing

def chunk_document(doc: Document, count_tokens: CountTokens, settings: ChunkerSettings | None = None,
                   *, max_tokens: int | None = None, overlap: int | None = None) -> list[Chunk]:
    """Cut `doc` into chunks whose embedded text ("heading\\ntext") fits the encoder window.

    `count_tokens(texts) -> list[int]` must be the encoder's own (content tokens, no specials).
    `max_tokens`/`overlap` override the target size and overlap of `settings`.
    """
    settings = settings or ChunkerSettings()
    target = max_tokens if max_tokens is not None else settings.target_tokens
    target = min(target, settings.max_tokens)
    overlap_budget = overlap if overlap is not None else settings.overlap_tokens
    text = doc.text
    code = doc.kind == "code"
    sections = _sections(doc)
    if not sections:
        return []
    # Heading token costs: the heading is embedded with every chunk of its section.
    heading_names = sorted({s.heading for s in sections if s.heading})
    heading_cost = dict(zip(heading_names, count_tokens([h + "\n" for h in heading_names]))) \
        if heading_names else {}
    section_units = [_units(text, s.start, s.end, code) for s in sections]
    flat = [u for units in section_units for u in units]
    counts = count_tokens([text[a:b] for a, b, _ in flat]) if flat else []
    chunks: list[Chunk] = []
    idx = 0
    for section, units in zip(sections, section_units):
        unit_counts = list(counts[idx: idx + len(units)])
        idx += len(units)
        heading = section.heading
        cost = heading_cost.get(heading, 0)
        if cost > settings.max_tokens // 4:  # absurdly long heading path: keep its last parts only
            heading = _shorten_heading(heading, count_tokens, settings.max_tokens // 4)
            cost = count_tokens([heading + "\n"])[0] if heading else 0
        budget = max(8, min(target, settings.max_tokens - cost))
        # Split units longer than the budget.
        sized: list[tuple[int, int, bool, int]] = []
        for unit, n in zip(units, unit_counts):
            if n > budget:
                pieces = _split_long(text, unit, budget, count_tokens)
                sized.extend((a, b, f, m) for (a, b, f), m in zip(pieces, count_tokens([text[a:b] for a, b, _ in pieces])))
            else:
                sized.append((*unit, n))
        for a, b in _pack(sized, budget, overlap_budget):
            chunks.append(Chunk(text[a:b], doc.path, heading, section.page, a, b, len(chunks)))
    return _enforce_window(chunks, count_tokens, settings.max_tokens)


def _pack(units: list[tuple[int, int, bool, int]], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Greedy packing of units (start, end, starts_paragraph, tokens) into spans of <= budget tokens.

    Consecutive units are joined by the whitespace between them in the document, which (for a BERT
    WordPiece tokenizer) adds no tokens, so a chunk's token count is the sum of its units' counts.
    """
    spans: list[tuple[int, int]] = []
    i, n = 0, len(units)
    while i < n:
        j, total = i, 0
        while j < n and (j == i or total + units[j][3] <= budget):
            total += units[j][3]
            j += 1
        spans.append((units[i][0], units[j - 1][1]))
        if j >= n:
            break
        # Next chunk starts with trailing units of this one, up to the overlap budget,
        # but always advances by at least one unit.
        back, carried = j, 0
        while back - 1 > i and carried + units[back - 1][3] <= overlap:
            back -= 1
            carried += units[back][3]
        i = back
    return spans


def _shorten_heading(heading: str, count_tokens: CountTokens, limit: int) -> str:
    parts = heading.split(HEADING_SEPARATOR)
    while parts:
        candidate = HEADING_SEPARATOR.join(parts)
        if count_tokens([candidate + "\n"])[0] <= limit:
            return candidate
        parts = parts[1:]
    return ""


def _enforce_window(chunks: list[Chunk], count_tokens: CountTokens, max_tokens: int) -> list[Chunk]:
    """Last line of defence: re-count what will really be embedded; split anything over the cap."""
    if not chunks:
        return chunks
    counts = count_tokens([c.embedding_text() for c in chunks])
    if all(n <= max_tokens for n in counts):
        return chunks
    out: list[Chunk] = []
    for chunk, n in zip(chunks, counts):
        if n <= max_tokens:
            out.append(chunk)
            continue
        half = len(chunk.text) // 2
        cut = chunk.text.rfind(" ", 0, half) if " " in chunk.text[:half] else half
        cut = max(1, cut)
        left = Chunk(chunk.text[:cut].rstrip(), chunk.path, chunk.heading, chunk.page, chunk.start,
                     chunk.start + len(chunk.text[:cut].rstrip()), 0)
        rest = chunk.text[cut:]
        lead = len(rest) - len(rest.lstrip())
        right = Chunk(rest.lstrip(), chunk.path, chunk.heading, chunk.page, chunk.start + cut + lead,
                      chunk.end, 0)
        out.extend(_enforce_window([c for c in (left, right) if c.text], count_tokens, max_tokens))
    for ordinal, chunk in enumerate(out):
        chunk.ordinal = ordinal
    return out
