"""Answer a question from one cell of a table in a passage.

Passages hold tables as Markdown pipe tables (retrieval.pipe_tables: what every loader writes; a chunk that
continues a split table repeats its header). `find_tables` reads them cell by cell with exact offsets;
`answer_cell` picks the row and the column a question names and returns that cell; `cell_sentence` words the
answer ("Accuracy for TinyLM-2: 91.2"); `is_table_text` says whether a passage is mostly a table.

How a row and a column are picked: the question's words (lower-cased, plurals folded: "models" = "model",
numbers kept, "1,000" = "1000", common question words dropped) are matched against each header cell and
against each row: its first cell (the label) must match and counts fully, its other cells count half. A
candidate's score is the weight of its matched words times (1 + the share of its own words that matched) / 2,
so an exact label beats a longer one that only contains it ("TinyLM-2" vs "TinyLM-2 Large"). A word of the
question is used by the column or by the row, not both (one that appears twice may serve each once).
`term_weights` (e.g. IDF) weigh rare words more; otherwise every word weighs 1. The best (row, column) pair
wins when both its row and its column are named and no other pair scores as high; otherwise there is no
answer (None).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.pipe_tables import find_pipe_tables, split_row

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
_STOP = frozenset("""
a an the of for in on at to by with from and or is are was were be been being do does did has have had what
which who whom whose when where how much many value values table tables row rows column columns cell cells
give me tell show list find get please this that these those it its their there here as per according s
""".split())


@dataclass(frozen=True)
class Cell:
    """One cell of a table: its text and where it is (`passage[start:end] == text`)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Table:
    """A pipe table found in a passage: header cells, body rows of cells, and its (start, end) span."""

    header: list[Cell]
    rows: list[list[Cell]]
    start: int
    end: int


@dataclass(frozen=True)
class CellAnswer:
    """The cell that answers a question.

    `value` is the cell's text, at `start`/`end` in the passage; `row_label` is the row's first cell (the
    label the question named); `column_label` the header text (or "column N" for a missing header cell).
    `table_start`/`table_end` span the whole table; `row`/`column` index the body row and the column.
    `confidence` in [0, 1] grows with how exactly the row and column are named and how far ahead of the
    next candidate they are.
    """

    value: str
    row_label: str
    column_label: str
    start: int
    end: int
    table_start: int
    table_end: int
    confidence: float
    row: int
    column: int


_NUMERIC = re.compile(r"^[\s\d.,%+\-–]*$")


def find_tables(text: str) -> list[Table]:
    """Every pipe table in `text`, in order, with exact cell offsets.

    A header that wraps over several lines (PDF tables often read as "| Energy |" then "| (kWh/kg |" then
    "| powder) |") gives body rows whose first cell is empty and that hold no numbers: those rows are folded into
    the header cells' text (whose offsets stay those of the first header line)."""
    tables = []
    for block in find_pipe_tables(text):
        header = [Cell(text[a:b], a, b) for a, b in split_row(text, *block.header)]
        rows = [[Cell(text[a:b], a, b) for a, b in split_row(text, *span)] for span in block.rows]
        while rows and not rows[0][0].text.strip() and any(c.text.strip() for c in rows[0]) and all(
                not c.text.strip() or not _NUMERIC.match(c.text) for c in rows[0]):
            extra, rows = rows[0], rows[1:]
            header = [Cell(" ".join(t for t in (cell.text.strip(), extra[i].text.strip() if i < len(extra) else "")
                                    if t), cell.start, cell.end) for i, cell in enumerate(header)]
        tables.append(Table(header, rows, block.start, block.end))
    return tables


def is_table_text(text: str) -> bool:
    """True when at least half of the passage's non-space characters lie in pipe tables."""
    total = len(text) - sum(text.count(ch) for ch in " \t\n\r")
    if total <= 0:
        return False
    inside = 0
    for block in find_pipe_tables(text):
        piece = text[block.start:block.end]
        inside += len(piece) - sum(piece.count(ch) for ch in " \t\n\r")
    return inside * 2 >= total


def _stem(word: str) -> str:
    """Fold a plural to its singular, lightly: "accuracies" -> "accuracy", "boxes" -> "box", "models" -> "model"."""
    if word[:1].isdigit():
        return word.replace(",", "")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    return [_stem(w) for w in (m.lower() for m in _TOKEN.findall(text)) if w not in _STOP]


@dataclass
class _Match:
    score: float
    precision: float   # share of the candidate's own word weight that the question matched
    used: Counter      # question words it used


def _match(words: list[str], available: Counter, weight: dict[str, float], scale: float = 1.0) -> _Match:
    """How well the question words in `available` name a cell whose words are `words`."""
    if not words:
        return _Match(0.0, 0.0, Counter())
    own = Counter(words)
    used = Counter({w: min(n, available[w]) for w, n in own.items() if available[w] > 0})
    matched = sum(weight.get(w, 1.0) * n for w, n in used.items())
    total = sum(weight.get(w, 1.0) * n for w, n in own.items())
    precision = matched / total if total > 0 else 0.0
    return _Match(scale * matched * (1 + precision) / 2, precision, used)


def _row_match(row_words: list[list[str]], available: Counter, weight: dict[str, float], skip: int) -> _Match:
    """A row named by its label (first cell, full weight) and, at half weight, its other cells but `skip`.

    A row whose label the question does not name is not named at all (score 0): "which model has 91.2" asks
    for a label, not a cell."""
    best = _match(row_words[0] if row_words else [], available, weight)
    if best.score <= 0:
        return best
    left = available - best.used
    score, used = best.score, Counter(best.used)
    for i, words in enumerate(row_words[1:], start=1):
        if i == skip or not words:
            continue
        extra = _match(words, left, weight, 0.5)
        if extra.score > 0:
            score += extra.score
            used += extra.used
            left -= extra.used
    return _Match(score, best.precision, used)


def answer_cell(question: str, text: str, term_weights: dict[str, float] | None = None) -> CellAnswer | None:
    """The table cell of `text` whose row and column `question` names, or None when none clearly is.

    `term_weights` maps words of the question (any case) to weights such as IDF, so rare words count more.
    A row and a column must both be named by at least one word each, the best pair must beat every other
    pair, and the value must not be a restatement of the question's own words (the answer to "which model
    scores 91.2" is not "91.2").
    """
    question_words = _words(question)
    if not question_words:
        return None
    weight: dict[str, float] = {}
    for word, value in (term_weights or {}).items():
        for w in _words(word):
            weight[w] = max(float(value), 0.0)
    available = Counter(question_words)
    candidates: list[tuple[float, int, int, int, _Match, _Match, Table]] = []
    for t_index, table in enumerate(find_tables(text)):
        if not table.rows:
            continue
        width = max(len(table.header), *(len(r) for r in table.rows))
        if width < 2:
            continue
        head_words = [_words(c.text) for c in table.header]
        body_words = [[_words(c.text) for c in row] for row in table.rows]
        for col in range(1, width):
            col_m = _match(head_words[col] if col < len(head_words) else [], available, weight)
            if col_m.score <= 0:
                continue
            rest = available - col_m.used
            for r_index, words in enumerate(body_words):
                if col >= len(table.rows[r_index]):
                    continue
                row_m = _row_match(words, rest, weight, col)
                if row_m.score > 0:
                    candidates.append((col_m.score + row_m.score, t_index, r_index, col, col_m, row_m, table))
    if not candidates:
        return _answer_pair(question_words, available, weight, text)
    candidates.sort(key=lambda c: -c[0])
    best = candidates[0]
    total, _, r_index, col, col_m, row_m, table = best
    rivals_row = [c[0] for c in candidates[1:] if c[3] == col and (c[1], c[2]) != (best[1], best[2])]
    rivals_col = [c[0] for c in candidates[1:] if (c[1], c[2]) == (best[1], best[2]) and c[3] != col]
    if any(abs(c[0] - total) < 1e-9 for c in candidates[1:]):
        return None  # two cells are named equally well
    cell = table.rows[r_index][col]
    value = cell.text.strip()
    if not value or _restates(value, available - col_m.used - row_m.used):
        return None
    row = table.rows[r_index]
    label = row[0].text.strip()  # never empty: the label is what named the row
    column = table.header[col].text.strip() if col < len(table.header) else ""
    explained = sum(weight.get(w, 1.0) * n for w, n in (col_m.used + row_m.used).items())
    asked = sum(weight.get(w, 1.0) * n for w, n in available.items())
    coverage = explained / asked if asked > 0 else 0.0
    margin_row = min(1.0, 3.0 * (1.0 - max(rivals_row) / total)) if rivals_row else 1.0
    margin_col = min(1.0, 3.0 * (1.0 - max(rivals_col) / total)) if rivals_col else 1.0
    confidence = (0.4 * (row_m.precision + col_m.precision) / 2 + 0.3 * coverage
                  + 0.3 * (max(margin_row, 0.0) + max(margin_col, 0.0)) / 2)
    return CellAnswer(value, label, column or f"column {col + 1}", cell.start, cell.end, table.start,
                      table.end, round(min(max(confidence, 0.0), 1.0), 4), r_index, col)


def _answer_pair(question_words: list[str], available: Counter, weight: dict[str, float],
                 text: str) -> CellAnswer | None:
    """A two-column table is a mapping from a label to its value ("| null_terminated | array of pointers |"),
    and its header is often just its first pair (PDF tables read without a header line). When the question names
    no column, a row whose label it names exactly (all the label's words, no rival label as good) answers with
    its value; the header row counts as a row. Confidence is lower than a named row and column."""
    candidates: list[tuple[float, Table, Cell, Cell]] = []
    rivals: list[float] = []
    tables = [t for t in find_tables(text)
              if all(len(r) == 2 for r in [t.header, *t.rows])
              and sum(1 for r in [t.header, *t.rows] if r[0].text.strip() and r[1].text.strip()) >= 2]
    for table in tables:
        pairs = [r for r in [table.header, *table.rows] if r[0].text.strip() and r[1].text.strip()]
        for label, value in pairs:
            # a label repeats words and has one-letter aliases ("-n, --name=NAME"): all its distinct words of two
            # letters or more must be named
            own = sorted(set(_words(label.text)))
            match = _match([w for w in own if len(w) > 1] or own, available, weight)
            if match.score <= 0 or match.precision < 0.999:
                continue
            if len(set(_words(value.text))) >= 2 and _restates(value.text, available):
                rivals.append(match.score)  # still a rival for other labels
                continue  # the question names this value: it asks for a label (see _answer_reverse)
            candidates.append((match.score, table, label, value))
    if not candidates:
        return _answer_reverse(available, weight, tables)
    best = _clear_winner(candidates, rivals)
    if best is None:
        return None
    score, table, label, value = best
    if _restates(value.text.strip(), available - Counter(_words(label.text))):
        return None
    asked = sum(weight.get(w, 1.0) * n for w, n in available.items())
    coverage = min(1.0, score / asked) if asked > 0 else 0.0
    confidence = round(0.5 + 0.2 * coverage, 4)
    return CellAnswer(value.text.strip(), label.text.strip(), "", value.start, value.end, table.start,
                      table.end, confidence, -1, 1)


def _clear_winner(candidates: list[tuple[float, Table, Cell, Cell]], rivals: Sequence[float] = ()
                  ) -> tuple[float, Table, Cell, Cell] | None:
    """The first best-scoring candidate when it scores above every other candidate and every rival score (a tie
    is no answer); None when there is none."""
    if not candidates:
        return None
    best = max(candidates, key=lambda c: c[0])
    others = [c[0] for c in candidates if c is not best] + list(rivals)
    return None if others and max(others) >= best[0] - 1e-9 else best


REVERSE_MIN_COVERAGE = 0.3  # share of the question's weighted words a reverse look-up's value must name


def _answer_reverse(available: Counter, weight: dict[str, float], tables: list[Table]) -> CellAnswer | None:
    """A reverse look-up in a label -> value table: "which option checks the syntax only" names a value in full
    ("checks the syntax only") and asks for its label ("-c, --check"). The value's distinct words (at least two)
    must all be question words and make up REVERSE_MIN_COVERAGE of the question's weight, no other value as well
    named, and the label must add words the question does not have. Confidence is that of a pair."""
    candidates: list[tuple[float, Table, Cell, Cell]] = []
    for table in tables:
        for label, value in [table.header, *table.rows]:
            if not (label.text.strip() and value.text.strip()):
                continue
            words = sorted(set(_words(value.text)))
            if len(words) < 2:
                continue
            match = _match(words, available, weight)
            if match.score <= 0 or match.precision < 0.999:
                continue
            candidates.append((match.score, table, label, value))
    best = _clear_winner(candidates)
    if best is None:
        return None
    score, table, label, value = best
    if _restates(label.text.strip(), available):
        return None
    asked = sum(weight.get(w, 1.0) * n for w, n in available.items())
    coverage = min(1.0, score / asked) if asked > 0 else 0.0
    if coverage < REVERSE_MIN_COVERAGE:  # the value is only a part of what the question asks about
        return None
    confidence = round(0.5 + 0.2 * coverage, 4)
    return CellAnswer(label.text.strip(), value.text.strip(), "", label.start, label.end, table.start,
                      table.end, confidence, -1, 0)


def _restates(value: str, unused: Counter) -> bool:
    """Whether every word of the value is a question word that named neither the row nor the column."""
    words = Counter(_words(value))
    return bool(words) and not (words - unused)


def cell_sentence(cell: CellAnswer) -> str:
    """The answer in words: "<column> for <row>: <value>" (no citation marker, no final full stop)."""
    value = cell.value.strip()
    if value.endswith(".") and not value.endswith(".."):
        value = value[:-1].rstrip()
    if not cell.column_label:  # a label -> value pair
        return f"{cell.row_label}: {value}"
    return f"{cell.column_label} for {cell.row_label}: {value}"
