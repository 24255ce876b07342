"""Answer a question from one cell of a table in a passage.

Passages hold tables as Markdown pipe tables (retrieval.pipe_tables: what every loader writes; a chunk that
continues a split table repeats its header). `find_tables` reads them cell by cell with exact offsets;
`answer_cell` picks the row and the column a question names and returns that cell; `cell_sentence` words the
answer ("Accuracy for TinyLM-2: 91.2"); `is_table_text` says whether a passage is mostly a table.

How a row and a column are picked: the question's words (lower-cased, plurals folded: "models" = "model",
numbers kept, "1,000" = "1000", digits after letters kept in the word: "r0", a Greek letter read as its name:
"κ" = "kappa", common question words dropped) are matched against each header cell (without a parenthesised
unit: "r0 (Å)") and against each row: its first cell (the label) must match and counts fully, its other cells
count half; a row whose label is not named (a symbol such as "Ø") may be named by another of its cells named in
full. A candidate's score is the weight of its matched words times (1 + the share of its own words that
matched) / 2, so an exact label beats a longer one that only contains it ("TinyLM-2" vs "TinyLM-2 Large"). A
word of the question is used by the column or by the row, not both (one that appears twice may serve each
once). `term_weights` (e.g. IDF) weigh rare words more; otherwise every word weighs 1. The best (row, column)
pair wins when both its row and its column are named and no other pair scores as high; otherwise there is no
answer (None).

Other look-ups: a question that names the first column's header and a cell ("which command gives a fraction
of a day") gets that row's label; a two-column label -> value table (or three columns with an arrow between:
"| [ref] ty * | ⇒ | [[ty]] |"), whose header is often just its first pair, answers the label a question names,
or the label of the value it names. A table set in two halves side by side (its header repeats) is read as one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.pipe_tables import find_pipe_tables, split_row

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_][^\W_]*")  # numbers ("1,000", "2.5"); words, digits after letters kept ("r0", "int32")
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
        tables.append(_unfolded(Table(header, rows, block.start, block.end)))
    return tables


def _unfolded(table: Table) -> Table:
    """A table set in two halves side by side (the header's cells repeat: "| | r_c | r_0 | | r_c | r_0 |", as
    papers fold a long table to fit a column) as one table: the right half's rows under the left half's.
    Other tables are returned as they are."""
    width = len(table.header)
    half = width // 2
    if width < 4 or width % 2 or not table.rows or any(len(r) != width for r in table.rows):
        return table
    left, right = [c.text.strip() for c in table.header[:half]], [c.text.strip() for c in table.header[half:]]
    if left != right or sum(bool(t) for t in left) < 1:
        return table
    rows = [r[:half] for r in table.rows] + [r[half:] for r in table.rows if any(c.text.strip() for c in r[half:])]
    return Table(table.header[:half], rows, table.start, table.end)


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


_GREEK = dict(zip("αβγδεζηθικλμνξοπρστυφχψωϵϑϕς",
                  "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma "
                  "tau upsilon phi chi psi omega epsilon theta phi sigma".split()))
_GREEK_LETTER = re.compile("[" + "".join(_GREEK) + "]")


_QUALIFIER = re.compile(r"\([^()]*\)")


def _head_words(text: str) -> list[str]:
    """A column header's words without its parenthesised qualifier ("r0 (Å)", "Unit cost (GBP)": a unit is not
    part of the name a question must give), unless the qualifier is all there is."""
    return _words(_QUALIFIER.sub(" ", text)) or _words(text)


def _words(text: str) -> list[str]:
    """The words that name things: lower-cased, plurals folded, question words dropped; a Greek letter is its
    name ("κr0" and "kappa r0", "δ Pav" and "delta Pav" name the same)."""
    text = text.lower()
    if _GREEK_LETTER.search(text):
        text = _GREEK_LETTER.sub(lambda m: f" {_GREEK[m.group(0)]} ", text)
    return [_stem(w) for w in _TOKEN.findall(text) if w not in _STOP]


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

    A row whose label the question does not name is named only by another cell (not `skip`) that the question
    names in full, with at least two distinct words ("the character used for Swedish names" names the row
    "| Ø | 1 in 1,000 | For Swedish names |"), at half weight; "which model has 91.2" asks for a label, not a
    cell."""
    best = _match(row_words[0] if row_words else [], available, weight)
    if best.score <= 0:
        named = [m for i, words in enumerate(row_words[1:], start=1) if i != skip and len(set(words)) >= 2
                 for m in [_match(sorted(set(words)), available, weight, 0.5)] if m.precision >= 0.999]
        return max(named, key=lambda m: m.score) if named else best
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
        head_words = [_head_words(c.text) for c in table.header]
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
    named = _best_named(candidates, available, weight)
    label_answer = _answer_label(available, weight, text)
    if named is not None and label_answer is not None:
        return named[0] if named[1] >= label_answer[1] else label_answer[0]
    if named is not None or label_answer is not None:
        return (named or label_answer)[0]
    if candidates:
        return None  # a row and a column are named, but not clearly: no pair look-up either
    return _answer_pair(question_words, available, weight, text)


def _best_named(candidates: list[tuple[float, int, int, int, _Match, _Match, Table]], available: Counter,
                weight: dict[str, float]) -> tuple[CellAnswer, float] | None:
    """The cell of the best (row, column) candidate and the share of the question it explains, or None when
    two cells are named equally well or the value restates the question."""
    if not candidates:
        return None
    candidates = sorted(candidates, key=lambda c: -c[0])
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
    # the label; a row named by another of its cells may have none: that cell stands for it
    label = row[0].text.strip() or next((c.text.strip() for i, c in enumerate(row) if i != col and c.text.strip()), "")
    column = table.header[col].text.strip() if col < len(table.header) else ""
    explained = sum(weight.get(w, 1.0) * n for w, n in (col_m.used + row_m.used).items())
    asked = sum(weight.get(w, 1.0) * n for w, n in available.items())
    coverage = explained / asked if asked > 0 else 0.0
    margin_row = min(1.0, 3.0 * (1.0 - max(rivals_row) / total)) if rivals_row else 1.0
    margin_col = min(1.0, 3.0 * (1.0 - max(rivals_col) / total)) if rivals_col else 1.0
    confidence = (0.4 * (row_m.precision + col_m.precision) / 2 + 0.3 * coverage
                  + 0.3 * (max(margin_row, 0.0) + max(margin_col, 0.0)) / 2)
    # a row named by part of its label is less surely the one asked about, whatever its rivals in this passage
    # (a passage holding only part of a table has fewer of them)
    confidence *= 0.5 + 0.5 * row_m.precision
    return CellAnswer(value, label, column or f"column {col + 1}", cell.start, cell.end, table.start,
                      table.end, round(min(max(confidence, 0.0), 1.0), 4), r_index, col), coverage


def _answer_label(available: Counter, weight: dict[str, float], text: str) -> tuple[CellAnswer, float] | None:
    """A look-up of a row's label by another of its cells, when the question names the label column's header:
    "Which command gives the symbol for a fraction of a day?" names "Command" (the header of the first column)
    and the cell "fraction of a day" (all its words, without a parenthesised remark), so the answer is that
    row's first cell ("\\fd"). A cell of one distinct word must also have its column's header named ("the
    journal Nature": "Journal name"). The best such cell must be unique and explain REVERSE_MIN_COVERAGE of the
    question; returns the answer and the share of the question it explains."""
    candidates: list[tuple[float, Table, Cell, Cell, Counter]] = []
    for table in find_tables(text):
        if not table.rows or len(table.header) < 2:
            continue
        head = _match(_head_words(table.header[0].text), available, weight)
        if head.score <= 0 or head.precision < 0.5:
            continue
        rest = available - head.used
        for col in range(1, len(table.header)):
            col_m = _match(_head_words(table.header[col].text), rest, weight)
            left = rest - col_m.used if col_m.score > 0 else rest
            for row in table.rows:
                if col >= len(row) or not row[0].text.strip() or not row[col].text.strip():
                    continue
                words = sorted(set(_head_words(row[col].text)))
                if not words or (len(words) < 2 and col_m.score <= 0):
                    continue
                match = _match(words, left, weight)
                if match.score <= 0 or match.precision < 0.999:
                    continue
                used = head.used + match.used + (col_m.used if col_m.score > 0 else Counter())
                score = head.score + match.score + max(col_m.score, 0.0)
                candidates.append((score, table, row[0], row[col], used))
    if not candidates:
        return None
    best = max(candidates, key=lambda c: c[0])
    if any(c is not best and c[0] >= best[0] - 1e-9 and c[2].start != best[2].start for c in candidates):
        return None  # two rows are named as well
    score, table, label, cell, used = best
    if _restates(label.text.strip(), available):
        return None
    explained = sum(weight.get(w, 1.0) * n for w, n in used.items())
    asked = sum(weight.get(w, 1.0) * n for w, n in available.items())
    coverage = min(1.0, explained / asked) if asked > 0 else 0.0
    if coverage < REVERSE_MIN_COVERAGE:
        return None
    confidence = round(0.5 + 0.3 * coverage, 4)
    return CellAnswer(label.text.strip(), cell.text.strip(), "", label.start, label.end, table.start,
                      table.end, confidence, -1, 0), coverage


def _answer_pair(question_words: list[str], available: Counter, weight: dict[str, float],
                 text: str) -> CellAnswer | None:
    """A two-column table is a mapping from a label to its value ("| null_terminated | array of pointers |"),
    and its header is often just its first pair (PDF tables read without a header line). When the question names
    no column, a row whose label it names exactly (all the label's words, no rival label as good) answers with
    its value; the header row counts as a row. Confidence is lower than a named row and column."""
    candidates: list[tuple[float, Table, Cell, Cell]] = []
    rivals: list[float] = []
    tables = [t for t in (_pair_view(t) for t in find_tables(text)) if t is not None]
    for table in tables:
        pairs = [r for r in [table.header, *table.rows] if r[0].text.strip() and r[1].text.strip()]
        shared = _shared_words([label for label, _ in pairs])
        for label, value in pairs:
            # a label repeats words and has one-letter aliases ("-n, --name=NAME"): all its distinct words of two
            # letters or more must be named, but not the words every label of the table has ("ty" of
            # "[ref] ty *", "[unique] ty *", "[ptr] ty *")
            own = sorted(set(_words(label.text)))
            long = [w for w in own if len(w) > 1] or own
            match = _match([w for w in long if w not in shared] or long, available, weight)
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


_ARROWS = frozenset(["=>", "⇒", "->", "→", "⟶", "⟹", "↦", "|->", ":=", "::="])


def _pair_view(table: Table) -> Table | None:
    """A table read as label -> value pairs, or None: a two-column table with at least two filled pairs, or a
    three-column one whose middle column is the same arrow in every row ("| [ref] ty * | ⇒ | [[ty]] |"), read
    without that column. The header row is a pair like the others (PDF tables often have none)."""
    rows = [table.header, *table.rows]
    if all(len(r) == 3 for r in rows) and len({r[1].text.strip() for r in rows}) == 1 \
            and rows[0][1].text.strip() in _ARROWS:
        table = Table([table.header[0], table.header[2]], [[r[0], r[2]] for r in table.rows], table.start,
                      table.end)
        rows = [table.header, *table.rows]
    if not all(len(r) == 2 for r in rows):
        return None
    if sum(1 for r in rows if r[0].text.strip() and r[1].text.strip()) < 2:
        return None
    return table


def _shared_words(labels: Sequence[Cell]) -> set[str]:
    """The words that every one of three or more labels has."""
    if len(labels) < 3:
        return set()
    common = set(_words(labels[0].text))
    for label in labels[1:]:
        common &= set(_words(label.text))
    return common


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
