"""assistant.tables: pipe tables read cell by cell with exact offsets, and a question answered from one cell."""

from __future__ import annotations

from assistant.tables import answer_cell, cell_sentence, find_tables, is_table_text
from retrieval.chunking import ChunkerSettings, chunk_document
from retrieval.loaders import Document
from retrieval.pipe_tables import format_pipe_table
from retrieval.testing import HashingEncoder

PASSAGE = """Table 2 compares the models on the held-out set.

| Model | Top-1 accuracy (%) | Top-5 accuracy (%) | Parameters |
|---|---:|---:|---|
| TinyLM-2 | 91.2 | 98.1 | 120M |
| TinyLM-2 Large | 93.0 | 99.0 | 350M |
| BaseNet | 88.4 | 97.5 | 90M |

The large model is the most accurate, at almost three times the size."""


def test_find_tables_gives_exact_cell_offsets():
    [table] = find_tables(PASSAGE)
    assert PASSAGE[table.start:table.end].startswith("| Model |") and PASSAGE[table.end - 7:table.end] == "| 90M |"
    assert [c.text for c in table.header] == ["Model", "Top-1 accuracy (%)", "Top-5 accuracy (%)", "Parameters"]
    assert [[c.text for c in row] for row in table.rows][1] == ["TinyLM-2 Large", "93.0", "99.0", "350M"]
    for cell in [*table.header, *(c for row in table.rows for c in row)]:
        assert PASSAGE[cell.start:cell.end] == cell.text and cell.text == cell.text.strip()
    assert find_tables("No table here | just a pipe.\n\n|---|\n") == []
    assert find_tables("| a | b |\n|---|---|---|\n| 1 | 2 |") == []  # separator and header disagree


def test_answer_cell_picks_the_named_row_and_column():
    answer = answer_cell("What is the top-1 accuracy of TinyLM-2?", PASSAGE)
    assert answer is not None
    assert (answer.value, answer.row_label, answer.column_label) == ("91.2", "TinyLM-2", "Top-1 accuracy (%)")
    assert PASSAGE[answer.start:answer.end] == "91.2"
    assert PASSAGE[answer.table_start:answer.table_end] == PASSAGE[PASSAGE.index("| Model"):PASSAGE.index("\n\nThe")]
    assert 0.5 < answer.confidence <= 1.0
    assert cell_sentence(answer) == "Top-1 accuracy (%) for TinyLM-2: 91.2"
    # the longer label, when the question names it
    large = answer_cell("top-5 accuracy of the TinyLM-2 Large model", PASSAGE)
    assert (large.value, large.row_label, large.column_label) == ("99.0", "TinyLM-2 Large", "Top-5 accuracy (%)")
    # plural in the question, singular in the table and back; any case
    assert answer_cell("how many PARAMETERS has basenet", PASSAGE).value == "90M"
    plural = "| Model | Parameter |\n|---|---|\n| BaseNets | 90M |\n| TinyLMs | 120M |"
    assert answer_cell("the parameters of the TinyLM", plural).value == "120M"


def test_no_answer_unless_both_a_row_and_a_column_are_named():
    assert answer_cell("What is in the table?", PASSAGE) is None
    assert answer_cell("Tell me about TinyLM-2", PASSAGE) is None  # a row, no column
    assert answer_cell("What is the top-1 accuracy?", PASSAGE) is None  # a column, no row
    assert answer_cell("What is the accuracy of TinyLM-2?", PASSAGE) is None  # top-1 or top-5: ambiguous
    assert answer_cell("Which has a top-1 accuracy of 91.2?", PASSAGE) is None  # a label, but of which column?
    assert answer_cell("", PASSAGE) is None and answer_cell("accuracy of TinyLM-2", "no table") is None


def test_numbers_name_rows_and_term_weights_break_ties():
    text = "Yearly figures:\n\n| Year | Revenue | Profit |\n|---|---|---|\n| 2020 | 1,000 | 50 |\n| 2021 | 1,200 | 80 |"
    answer = answer_cell("What was the profit in 2021?", text)
    assert (answer.value, answer.row_label, answer.column_label) == ("80", "2021", "Profit")
    assert cell_sentence(answer_cell("revenues in 2020", text)) == "Revenue for 2020: 1,000"
    assert answer_cell("revenue or profit in 2021", text) is None  # two columns named equally
    weighted = answer_cell("revenue or profit in 2021", text, {"profit": 3.0, "revenue": 1.0})
    assert weighted.value == "80"


def test_a_continuation_chunk_of_a_split_table_is_still_answerable():
    rows = [[f"Model-{i}", f"{60 + i / 10:.1f}", f"{i * 10}M"] for i in range(60)]
    text = "# Scores\n\n" + format_pipe_table(["Model", "Top-1 accuracy (%)", "Parameters"], rows) + "\n"
    doc = Document("s.md", text, "markdown", "0" * 64, len(text), 0.0)
    encoder = HashingEncoder()
    chunks = chunk_document(doc, encoder.count_tokens, ChunkerSettings(target_tokens=80, overlap_tokens=10,
                                                                        max_tokens=100))
    [chunk] = [c for c in chunks if "| Model-42 |" in c.text]
    assert chunk.repeated_header(), "Model-42 is in a continuation chunk"
    answer = answer_cell("What is the top-1 accuracy of Model-42?", chunk.text)
    assert answer is not None and answer.value == "64.2" and chunk.text[answer.start:answer.end] == "64.2"
    assert is_table_text(chunk.text)


def test_is_table_text_and_the_sentence_wording():
    assert is_table_text(PASSAGE)
    prose = "Some long prose. " * 40 + "\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    assert not is_table_text(prose) and not is_table_text("") and not is_table_text("plain words")
    answer = answer_cell("notes of beta", "| Name | Notes |\n|---|---|\n| alpha | x |\n| beta | Done. |")
    assert cell_sentence(answer) == "Notes for beta: Done"


def test_a_two_column_table_answers_a_label_it_names_without_a_column():
    """A label -> value table whose header is only its first pair (as PDF tables often read): the row the
    question names exactly gives its value; an unnamed or ambiguous label gives nothing."""
    from assistant.tables import answer_cell, cell_sentence

    text = ("| managed | array type with bigarray attribute |\n|---|---|\n| ml2c | typedef |\n"
            "| object | interface |\n| propget | function declaration |\n")
    cell = answer_cell("Where can propget appear?", text)
    assert cell is not None and cell.value == "function declaration"
    assert text[cell.start:cell.end] == "function declaration"
    assert cell_sentence(cell) == "propget: function declaration"
    header_pair = answer_cell("Where can managed appear?", text)
    assert header_pair is not None and header_pair.value == "array type with bigarray attribute"
    assert answer_cell("Where can anything appear?", text) is None


def test_pair_label_with_repeated_words_and_reverse_lookup():
    from assistant.tables import answer_cell, cell_sentence

    text = ("| -c, --check | checks the syntax only |\n|---|---|\n| -o, --output=FILE | output file |\n"
            "| -n, --name=NAME | array name |\n| -h, --help | display this help and exit |\n")
    cell = answer_cell("What does the --name option set?", text)
    assert cell is not None and cell.value == "array name" and cell.confidence >= 0.5
    rev = answer_cell("Which option checks the syntax only?", text)
    assert rev is not None and rev.value == "-c, --check" and rev.confidence >= 0.5
    assert "-c, --check" in cell_sentence(rev)
    assert answer_cell("Which option is the fastest?", text) is None


def test_a_reverse_lookup_needs_the_value_to_be_much_of_the_question():
    from assistant.tables import answer_cell

    text = ("| Field | Holds |\n|---|---|\n| Structure | ASN.1 definitions |\n"
            "| Encoding | DER rules |\n")
    # "ASN.1 definitions" is one small part of what this question asks about: no table answer.
    assert answer_cell("What is the main type the library uses to keep parsed ASN.1 definitions in memory "
                       "while a program runs?", text) is None
    rev = answer_cell("Which part holds ASN.1 definitions?", text)
    assert rev is not None and rev.value == "Structure"


def test_a_headerless_arrow_mapping_table_answers_from_the_label_it_names():
    """"| [ref] ty * | ⇒ | [[ty]] |": the arrow column is not a column of values and the first line is a
    pair like the others; the word every label shares ("ty") need not be named."""
    text = ("| [ref] ty * | ⇒ | [[ty]] |\n|---|---|---|\n| [unique] ty * | ⇒ | [[ty]] option |\n"
            "| [ptr] ty * | ⇒ | [[ty]] Com.opaque |\n")
    cell = answer_cell("What Caml type does a [ptr] pointer map to?", text)
    assert cell is not None and cell.value == "[[ty]] Com.opaque" and cell.row_label == "[ptr] ty *"
    assert text[cell.start:cell.end] == "[[ty]] Com.opaque"
    assert answer_cell("What does a [ref] pointer map to?", text).value == "[[ty]]"
    assert answer_cell("What does ty map to?", text) is None  # every label has it: no row is named
    # without the arrow in every row it is a three-column table, and no column is named
    mixed = text.replace("| [unique] ty * | ⇒ |", "| [unique] ty * | maps |")
    assert answer_cell("What Caml type does a [ptr] pointer map to?", mixed) is None


def test_a_label_is_looked_up_by_another_cell_when_its_column_header_is_named():
    text = ("| Command | Output | Meaning |\n|---|---|---|\n| \\fd | d. | fraction of a day |\n"
            "| \\fh | h. | fraction of an hour |\n| \\nat | Nature | Nature |\n"
            "| \\sci | Science | Science |\n")
    cell = answer_cell("Which command gives the symbol for a fraction of a day?", text)
    assert cell is not None and cell.value == "\\fd" and text[cell.start:cell.end] == "\\fd"
    assert cell_sentence(cell) == "fraction of a day: \\fd"
    assert answer_cell("Which command gives the symbol for a fraction?", text) is None  # day or hour?
    assert answer_cell("Which symbol gives a fraction of a day?", text) is None  # the label column is not named
    # a cell of one word needs its own column named too ("Meaning")
    assert answer_cell("Which command has the meaning Science?", text).value == "\\sci"
    assert answer_cell("Which command is Science?", text) is None


def test_a_table_folded_in_two_halves_and_greek_and_unit_headers():
    text = ("| | rc (Å) | r0 (Å) | κr0 | | rc (Å) | r0 (Å) | κr0 |\n|---|---|---|---|---|---|---|---|\n"
            "| Cu | 0.800 | 14.10 | 2.550 | Sn a | 0.680 | 1.870 | 3.700 |\n"
            "| Ga | 0.310 | 16.70 | 3.330 | Cs d | 1.420 | 3.030 | 3.740 |\n"
            "| Tl | 0.480 | 18.90 | 3.550 | | | | |\n")
    [table] = find_tables(text)
    assert [r[0].text for r in table.rows] == ["Cu", "Ga", "Tl", "Sn a", "Cs d"] and len(table.header) == 4
    assert answer_cell("What is rc for Cs?", text).value == "1.420"  # a label of the right half
    assert answer_cell("What is r0 for Cu?", text).value == "14.10"  # r0, not κr0: "(Å)" is a unit
    assert answer_cell("What is the kappa r0 value for Ga?", text).value == "3.330"  # κ is kappa
    assert answer_cell("What is r0 for Sn?", text).value == "1.870"


def test_a_row_is_named_by_another_of_its_cells_when_its_label_is_a_symbol():
    text = ("| Non-English or Math | Frequency | Comments |\n|---|---|---|\n| Ø | 1 in 1,000 | For Swedish names |\n"
            "| π | 1 in 5 | Common in math |\n| $ | 4 in 5 | Used in business |\n")
    cell = answer_cell("What is the frequency of the character used for Swedish names?", text)
    assert cell is not None and cell.value == "1 in 1,000" and cell.row_label == "Ø"
    assert answer_cell("What is the frequency of the character used?", text) is None  # no cell named in full


def test_a_row_named_by_part_of_its_label_is_less_sure_than_an_exact_label():
    """A passage holding only a row where the named word is part of a longer label must not outrank the
    passage with the exact label and its rivals (a continuation chunk of a table has fewer rivals)."""
    head = "| Attribute | Context where it can appear |\n|---|---|\n"
    exact = head + ("| camlint | int or long integer type |\n"
                    "| int_default ( camlint / nativeint / int32 / int64 ) | interface |\n"
                    "| long_default ( camlint / nativeint / int32 / int64 ) | interface |\n")
    partial = head + "| long_default ( camlint / nativeint / int32 / int64 ) | interface |\n| out | function parameter |\n"
    question = "In which context can the camlint attribute appear?"
    weights = {"context": 4.7, "can": 1.8, "camlint": 5.0, "attribute": 2.8, "appear": 3.3}  # IDF-like
    a, b = answer_cell(question, exact, weights), answer_cell(question, partial, weights)
    assert a.value == "int or long integer type" and b.value == "interface"
    assert a.confidence > b.confidence
