"""Split a `Document` into passages sized by the encoder's own token count.

How a document is cut, from coarse to fine:
1. sections: Markdown / RST headings found in the text (or headings the loader recorded for HTML and
   DOCX) give each section a heading path such as "Attention › Multi-head attention"; PDF pages are
   also hard boundaries, so every chunk has one page number;
2. units inside a section: sentences of prose paragraphs, lines of code; a unit longer than the budget is
   cut at word boundaries (and a giant "word" at characters);
3. units are packed greedily up to `target_tokens`; the next chunk starts with the last units of the
   previous one, up to `overlap_tokens`.

Tables (Markdown pipe tables, the form every loader writes them in: see retrieval.pipe_tables) are one
unit: a table that fits the budget is kept whole in one chunk (it may share it with the prose around it); a
longer one is cut into groups of whole rows, each group a chunk of its own that starts with the table's
header line and separator line (a single row longer than the budget is cut at words, the only case where a
row is split). Tables inside code files are not looked for.

No chunk exceeds the encoder window: what gets embedded is "heading path\\n" + text, and that is checked
with `count_tokens` before a chunk is returned. A chunk's `text` is an exact slice `doc.text[start:end]`,
with one exception: a chunk that continues a split table (the second and later row groups) has the table's
header and separator lines, then a newline, then the slice `doc.text[start:end]` of its rows; `start`/`end`
still span only the rows. `Chunk.repeated_header()` gives that prefix ("" for every other chunk), so that
`chunk.text == chunk.repeated_header() + doc.text[chunk.start:chunk.end]` always holds. Documents without
tables are chunked exactly as before tables were recognised (hence no CHUNKER_VERSION change).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from retrieval.loaders import Document
from retrieval.pipe_tables import PipeTableBlock, find_pipe_tables

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
    """A passage of a document. `start`/`end` are character offsets into the document text.

    `text` is `doc.text[start:end]`, except for a chunk that continues a table split into row groups: its
    text is the table's header line and separator line, a newline, then `doc.text[start:end]` (its rows).
    `repeated_header()` is that prefix, or "" for every other chunk.
    """

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

    def repeated_header(self) -> str:
        """The table header (+ separator + newline) put in front of the slice, or "" when `text` is the slice."""
        extra = len(self.text) - (self.end - self.start)
        return self.text[:extra] if extra > 0 else ""


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


@dataclass
class _TableUnits:
    """A pipe table among a section's units: `units[head]` is its header + separator, the next `n_rows` its rows."""

    block: PipeTableBlock
    head: int
    n_rows: int


def _units_with_tables(text: str, start: int, end: int, tables: list[PipeTableBlock]) \
        -> tuple[list[tuple[int, int, bool]], list[_TableUnits]]:
    """Like `_units` (prose: sentences), with each table as one header unit followed by one unit per row."""
    units: list[tuple[int, int, bool]] = []
    groups: list[_TableUnits] = []
    pos = start
    for block in tables:
        units.extend(_units(text, pos, block.start, False))
        groups.append(_TableUnits(block, len(units), len(block.rows)))
        units.append((block.start, block.head_end, True))
        units.extend((a, b, False) for a, b in block.rows)
        pos = block.end
    units.extend(_units(text, pos, end, False))
    return units, groups


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
    section_units: list[list[tuple[int, int, bool]]] = []
    section_tables: list[list[_TableUnits]] = []
    for s in sections:
        tables = [] if code else find_pipe_tables(text, s.start, s.end)
        if tables:
            units, groups = _units_with_tables(text, s.start, s.end, tables)
        else:
            units, groups = _units(text, s.start, s.end, code), []
        section_units.append(units)
        section_tables.append(groups)
    flat = [u for units in section_units for u in units]
    counts = count_tokens([text[a:b] for a, b, _ in flat]) if flat else []
    chunks: list[Chunk] = []
    idx = 0
    for section, units, groups in zip(sections, section_units, section_tables):
        unit_counts = list(counts[idx: idx + len(units)])
        idx += len(units)
        heading = section.heading
        cost = heading_cost.get(heading, 0)
        if cost > settings.max_tokens // 4:  # absurdly long heading path: keep its last parts only
            heading = _shorten_heading(heading, count_tokens, settings.max_tokens // 4)
            cost = count_tokens([heading + "\n"])[0] if heading else 0
        budget = max(8, min(target, settings.max_tokens - cost))
        if groups:
            spans = _pack_with_tables(text, units, unit_counts, groups, budget, overlap_budget, count_tokens)
            for prefix, a, b in spans:
                chunks.append(Chunk(prefix + text[a:b], doc.path, heading, section.page, a, b, len(chunks)))
            continue
        for a, b in _pack(_sized(text, units, unit_counts, budget, count_tokens), budget, overlap_budget):
            chunks.append(Chunk(text[a:b], doc.path, heading, section.page, a, b, len(chunks)))
    return _enforce_window(chunks, count_tokens, settings.max_tokens, tables=not code)


def _sized(text: str, units: list[tuple[int, int, bool]], unit_counts: list[int], budget: int,
           count_tokens: CountTokens) -> list[tuple[int, int, bool, int]]:
    """(start, end, starts_paragraph, tokens) units, those longer than the budget cut into pieces."""
    sized: list[tuple[int, int, bool, int]] = []
    for unit, n in zip(units, unit_counts):
        if n > budget:
            pieces = _split_long(text, unit, budget, count_tokens)
            sized.extend((a, b, f, m) for (a, b, f), m in zip(pieces, count_tokens([text[a:b] for a, b, _ in pieces])))
        else:
            sized.append((*unit, n))
    return sized


def _pack_with_tables(text: str, units: list[tuple[int, int, bool]], unit_counts: list[int],
                      groups: list[_TableUnits], budget: int, overlap: int, count_tokens: CountTokens) \
        -> list[tuple[str, int, int]]:
    """(prefix, start, end) chunk spans of a section that holds tables.

    A table that fits the budget is one unit packed with the prose around it; a longer one ends the prose
    run before it and becomes row-group chunks (see `_table_row_groups`). A table whose header alone takes
    over half the budget cannot be repeated usefully: its lines are packed like prose.
    """
    spans: list[tuple[str, int, int]] = []
    run: list[tuple[int, int, bool, int]] = []

    def flush() -> None:
        if run:
            spans.extend(("", a, b) for a, b in _pack(run, budget, overlap))
            run.clear()

    by_head = {g.head: g for g in groups}
    i = 0
    while i < len(units):
        group = by_head.get(i)
        if group is None:
            run.extend(_sized(text, [units[i]], [unit_counts[i]], budget, count_tokens))
            i += 1
            continue
        stop = i + 1 + group.n_rows
        head_cost, total = unit_counts[i], sum(unit_counts[i:stop])
        if total <= budget:
            run.append((group.block.start, group.block.end, True, total))
        elif head_cost > budget // 2:
            run.extend(_sized(text, units[i:stop], unit_counts[i:stop], budget, count_tokens))
        else:
            flush()
            spans.extend(_table_row_groups(text, group.block, units[i + 1:stop], unit_counts[i + 1:stop],
                                           head_cost, budget, count_tokens))
        i = stop
    flush()
    return spans


def _table_row_groups(text: str, block: PipeTableBlock, rows: list[tuple[int, int, bool]], row_counts: list[int],
                      head_cost: int, budget: int, count_tokens: CountTokens) -> list[tuple[str, int, int]]:
    """Chunks of whole rows of a table longer than the budget; every one starts with the table header.

    The first chunk is the slice from the header to its last row; the others are the header and separator
    lines + "\n" (the prefix) and the slice of their rows. Each holds at most `budget` tokens with its header.
    A row longer than `budget - head_cost` on its own is cut at words into pieces that each get a chunk.
    """
    room = budget - head_cost
    items = _sized(text, rows, row_counts, room, count_tokens)
    prefix = text[block.start:block.head_end] + "\n"
    spans: list[tuple[str, int, int]] = []
    i = 0
    while i < len(items):
        j, total = i, 0
        while j < len(items) and (j == i or total + items[j][3] <= room):
            total += items[j][3]
            j += 1
        a, b = items[i][0], items[j - 1][1]
        spans.append(("", block.start, b) if not spans else (prefix, a, b))
        i = j
    return spans


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


def _enforce_window(chunks: list[Chunk], count_tokens: CountTokens, max_tokens: int, *,
                    tables: bool = True) -> list[Chunk]:
    """Last line of defence: re-count what will really be embedded; split anything over the cap.

    With `tables`, a chunk holding a table is halved at a line boundary and keeps the header (see
    `_split_table_chunk`); other chunks are halved at a space, as always."""
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
        halves = _split_table_chunk(chunk) if tables else None
        if halves is not None:
            out.extend(_enforce_window(list(halves), count_tokens, max_tokens, tables=tables))
            continue
        if chunk.repeated_header():  # a single table line too long even for halving at rows: drop the header
            body = chunk.text[len(chunk.repeated_header()):]
            chunk = Chunk(body, chunk.path, chunk.heading, chunk.page, chunk.start, chunk.end, 0)
            if not body.strip():
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
        out.extend(_enforce_window([c for c in (left, right) if c.text], count_tokens, max_tokens, tables=tables))
    for ordinal, chunk in enumerate(out):
        chunk.ordinal = ordinal
    return out


def _split_table_chunk(chunk: Chunk) -> tuple[Chunk, Chunk] | None:
    """Halve an over-long chunk that holds (part of) a table at the line boundary nearest its middle.

    The right half gets the header of the table the cut falls in (when the cut is after that table's
    separator), so a table's rows are never separated from their header. None when the chunk holds no table,
    or has no line boundary to cut at.
    """
    prefix = chunk.repeated_header()
    tables = find_pipe_tables(chunk.text)
    if not prefix and not tables:
        return None
    body = chunk.text[len(prefix):]
    half = len(body) // 2
    cut = body.rfind("\n", 0, half)
    if cut <= 0:
        cut = body.find("\n", half)
    if cut <= 0:
        return None
    left_body = body[:cut].rstrip()
    rest = body[cut:]
    lead = len(rest) - len(rest.lstrip())
    right_body = rest.strip()
    if not left_body.strip() or not right_body:
        return None
    at = len(prefix) + cut + lead  # where the right half starts, in chunk.text
    right_prefix = ""
    for block in tables:
        if block.head_end < at <= block.end:
            right_prefix = chunk.text[block.start:block.head_end] + "\n"
            break
    left = Chunk(prefix + left_body, chunk.path, chunk.heading, chunk.page, chunk.start,
                 chunk.start + len(left_body), 0)
    right_start = chunk.start + cut + lead
    right = Chunk(right_prefix + right_body, chunk.path, chunk.heading, chunk.page, right_start,
                  right_start + len(right_body), 0)
    return left, right
