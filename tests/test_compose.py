"""Open answers (assistant/kinds.py, assistant/compose.py, assistant/open_answers.py) on stand-ins: each kind of
question is routed to its composition, every sentence is cited to exact words of its passage, a generated sentence
that no evidence supports is caught, a summary of a named file is never refused."""

from __future__ import annotations

import pytest

from assistant.compose import (check_sentences, passage_units, supported_by)
from assistant.kinds import classify, comparison_sides, count_in, list_object, subject_of
from assistant.pipeline import Assistant
from assistant.settings import Settings

from assistant_fakes import FakeGenerator, FakeHit, FakeReader, FakeRetriever

DOCS = [
    ("decoding.md", "Decoding strategies › Greedy decoding",
     "Greedy decoding always picks the single most probable next token. Greedy decoding is fast and deterministic."),
    ("decoding.md", "Decoding strategies › Beam search",
     "Beam search keeps several partial sequences, called beams, at every step. Beam search finds higher-probability "
     "sequences than greedy decoding."),
    ("decoding.md", "Decoding strategies › Top-k sampling",
     "Top-k sampling keeps only the k most probable tokens and samples from them."),
    ("tokenizers.md", "Tokenizers › BPE",
     "BPE merges the most frequent pair of symbols until the vocabulary reaches its target size."),
    ("tokenizers.md", "Tokenizers › WordPiece",
     "WordPiece merges the pair that most increases the likelihood of the training data."),
    ("rag.md", "RAG › Indexing",
     "The indexing pipeline prepares documents for search. First, loaders read the files. Second, a chunker splits "
     "the text into passages. Third, an embedding model turns each chunk into a vector."),
    ("families.md", "Families › Three families",
     "Transformer models come in three families. Encoder-only models read a whole text at once. Decoder-only models "
     "generate text one token at a time. Encoder-decoder models encode an input and decode an output."),
    ("lora.md", "LoRA",
     "LoRA stands for Low-Rank Adaptation. LoRA freezes the pretrained weights and trains two small matrices.\n\n"
     "Advantages of LoRA:\n- It trains far fewer parameters.\n- It needs less GPU memory.\n- It adds no inference "
     "latency."),
]


class DocRetriever(FakeRetriever):
    """The word-overlap retriever, plus what the open path uses: document paths and a document's chunks."""

    def paths(self) -> list[str]:
        return sorted({p for p, _, _ in self.passages})

    def document_chunks(self, path: str, query: str | None = None, limit: int = 400) -> list[FakeHit]:
        out, start = [], 0
        for i, (p, heading, text) in enumerate(self.passages):
            if p == path:
                out.append(FakeHit(i, text, p, heading, None, start, start + len(text), 0.0, 0.0))
                start += len(text) + 2
        return out


def make(**settings) -> tuple[Assistant, FakeGenerator, DocRetriever]:
    generator = FakeGenerator("Should not be called [1].")
    retriever = DocRetriever(DOCS, dense_floor=0.4)
    bot = Assistant(retriever, generator, Settings(**{"open_min_support": 0.0, **settings}), reader=FakeReader([]))
    return bot, generator, retriever


def assert_sentences_cite_their_words(answer) -> None:
    """Every sentence of the answer: cited in the text, and resting on exact words of its cited passage."""
    by_number = {s.number: s for s in answer.sources}
    assert answer.sentences
    markers = [int(m) for m in __import__("re").findall(r"\[(\d+)\]", answer.text)]
    assert markers == [s.passage for s in answer.sentences]  # the k-th marker belongs to the k-th sentence
    for sentence in answer.sentences:
        words = by_number[sentence.passage].text[sentence.start:sentence.end]
        assert words
        if sentence.role != "generated":  # extracted: the sentence is its words
            assert sentence.text.endswith(" ".join(words.split()))
        assert supported_by(sentence.text, words)
        assert by_number[sentence.passage].cited


# ---------------------------------------------------------------------- kinds
@pytest.mark.parametrize("question,kind", [
    ("Who introduced LoRA?", "factoid"),
    ("What is LoRA?", "definition"),
    ("What does GGUF stand for?", "definition"),
    ("Why does beam search favour short outputs?", "explanation"),
    ("How does top-p sampling work?", "explanation"),
    ("List the decoding strategies described in the documents.", "list"),
    ("What are the advantages of LoRA?", "list"),
    ("What is the difference between BPE and WordPiece?", "comparison"),
    ("Compare greedy decoding with beam search.", "comparison"),
    ("Summarize the document about decoding.", "summary"),
    ("What are the steps of a RAG indexing pipeline?", "procedure"),
    ("How do I index a folder?", "procedure"),
    ("Is greedy decoding deterministic?", "yesno"),
    ("How many layers does the encoder have?", "count"),
    ("can you please explain why greedy decoding repeats itself", "explanation"),
])
def test_question_kinds(question, kind):
    assert classify(question) == kind


def test_question_parts():
    assert comparison_sides("What is the difference between BPE and WordPiece?") == ("BPE", "WordPiece")
    assert comparison_sides("How does beam search differ from greedy decoding?") == ("beam search", "greedy decoding")
    assert comparison_sides("BPE vs WordPiece") == ("BPE", "WordPiece")
    assert comparison_sides("What is LoRA?") is None
    assert subject_of("What is LoRA?") == "LoRA"
    assert list_object("What are the three families of transformer models?") == "families"
    assert count_in("What are the three families of transformer models?") == 3


# ---------------------------------------------------------------------- units
def test_units_are_exact_slices_with_items_headings_and_abbreviations():
    text = ("# Title\n\nLoRA was made by Hu et al. in 2021. It is small.\n\nSteps:\n- load the files\n"
            "  and read them\n- chunk them\n\n```\ncode()\n```\n| a | b |")
    units = passage_units(text)
    assert [u.role for u in units] == ["heading", "sentence", "sentence", "sentence", "item", "item", "code", "table"]
    for unit in units:
        assert text[unit.start:unit.end] == unit.text
    assert units[1].text == "LoRA was made by Hu et al. in 2021."  # "et al." does not end the sentence
    assert units[4].text == "- load the files\n  and read them"  # an item's continuation line is the item's


# ---------------------------------------------------------------------- routing and layouts
def test_a_definition_answers_with_the_defining_sentence():
    bot, generator, _ = make()
    answer = bot.ask("What is LoRA?")
    assert answer.kind == "definition" and answer.layout == "text" and not answer.refused
    assert answer.text.startswith("LoRA stands for Low-Rank Adaptation [")
    assert generator.calls == []
    assert_sentences_cite_their_words(answer)


def test_a_list_of_the_documents_sections_is_bullets():
    bot, _, _ = make()
    answer = bot.ask("List the decoding strategies described in the documents.")
    assert answer.kind == "list" and answer.layout == "bullets"
    lines = answer.text.splitlines()
    assert all(line.startswith("- ") for line in lines) and len(lines) >= 3
    for name in ("Greedy decoding", "Beam search", "Top-k sampling"):
        assert any(name in line for line in lines)
    assert_sentences_cite_their_words(answer)


def test_a_list_answered_from_list_items_and_a_counted_enumeration():
    bot, _, _ = make()
    answer = bot.ask("What are the advantages of LoRA?")
    assert answer.layout == "bullets"
    assert [s.role for s in answer.sentences] == ["item", "item", "item"]
    assert "fewer parameters" in answer.text and "no inference latency" in answer.text
    assert_sentences_cite_their_words(answer)
    answer = bot.ask("What are the three families of transformer models?")
    assert [s.role for s in answer.sentences] == ["sentence", "item", "item", "item"]
    assert all(f in answer.text for f in ("Encoder-only", "Decoder-only", "Encoder-decoder"))
    assert_sentences_cite_their_words(answer)


def test_a_procedure_is_numbered_steps_in_reading_order():
    bot, _, _ = make()
    answer = bot.ask("What are the steps of a RAG indexing pipeline?")
    assert answer.kind == "procedure" and answer.layout == "bullets"
    steps = [line for line in answer.text.splitlines() if line[:2] in ("1.", "2.", "3.")]
    assert [s[:2] for s in steps] == ["1.", "2.", "3."]
    assert "loaders" in steps[0] and "chunker" in steps[1] and "embedding" in steps[2]
    assert_sentences_cite_their_words(answer)


def test_a_comparison_has_a_paragraph_per_side_from_a_search_per_side():
    bot, _, retriever = make()
    answer = bot.ask("What is the difference between BPE and WordPiece?")
    assert answer.kind == "comparison" and answer.layout == "sides"
    first, second = answer.text.split("\n\n")
    assert first.startswith("**BPE:**") and "most frequent pair" in first
    assert second.startswith("**WordPiece:**") and "likelihood" in second
    assert {s.group for s in answer.sentences} == {"BPE", "WordPiece"}
    assert any(q.startswith("BPE") for q, _, _ in retriever.queries)
    assert any(q.startswith("WordPiece") for q, _, _ in retriever.queries)
    assert_sentences_cite_their_words(answer)


def test_a_summary_of_a_named_file_reads_that_file_and_is_never_refused():
    # A refusal threshold no passage reaches: a named document is still summarised.
    bot, _, _ = make(refusal_threshold=5.0)
    answer = bot.ask("Summarize decoding.md")
    assert answer.kind == "summary" and not answer.refused
    assert {s.path for s in answer.sources} == {"decoding.md"}
    assert len(answer.sentences) >= 3
    # In reading order: greedy before beam search before top-k.
    text = answer.text
    assert text.index("Greedy") < text.index("Beam") < text.index("Top-k")
    assert_sentences_cite_their_words(answer)
    # A question about something not in the documents is still refused.
    assert bot.ask("Summarize the history of the Roman empire.").refused


def test_open_answers_stream_a_sentence_at_a_time():
    bot, _, _ = make()
    pieces = [p for p in bot.stream("What are the steps of a RAG indexing pipeline?") if isinstance(p, str)]
    assert len(pieces) >= 3 and "".join(pieces).strip() == bot.ask(
        "What are the steps of a RAG indexing pipeline?").text


def test_without_a_reader_or_with_open_answers_off_the_generator_answers():
    generator = FakeGenerator("From the model [1].")
    bot = Assistant(DocRetriever(DOCS, dense_floor=0.4), generator, Settings(), reader=None)
    assert bot.ask("List the decoding strategies.").text == "From the model [1]."
    bot, generator, _ = make(open_answers=False)
    generator.reply = "From the model [1]."
    assert bot.ask("What is LoRA?", answer_mode="generate").text == "From the model [1]."


def test_a_factoid_the_reader_refuses_falls_back_to_a_clearly_relevant_sentence():
    fake_scale = {"reader_threshold": 0.0, "reader_coverage_weight": 0.0, "reader_cosine_weight": 0.0,
                  "reader_overlap_weight": 0.0}
    bot, _, _ = make(**fake_scale, sentence_fallback=2.0)
    answer = bot.ask("Which vocabulary does WordPiece merge pairs for?")  # the fake reader finds no span
    assert not answer.refused and "WordPiece merges the pair" in answer.text and len(answer.sentences) == 1
    bot, _, _ = make(**fake_scale, sentence_fallback=0.0)
    assert bot.ask("Which vocabulary does WordPiece merge pairs for?").refused


# ---------------------------------------------------------------------- the check on generated text
def test_the_check_keeps_supported_sentences_and_replaces_an_invented_one():
    passage = "LoRA freezes the pretrained weights. LoRA trains two small matrices B and A. The rank is 8."
    units = passage_units(passage)
    from assistant.compose import _sentence

    evidence = [_sentence(u, [1]) for u in units]
    generated = ("LoRA keeps the pretrained weights frozen. LoRA was invented on the Moon in 1850. "
                 "The rank is 16.")
    sentences, replaced = check_sentences(generated, evidence, [passage], [1])
    texts = [s.text for s in sentences]
    assert replaced == 2  # the Moon and the wrong number
    assert "LoRA keeps the pretrained weights frozen." in texts
    assert not any("Moon" in t or "16" in t for t in texts)
    assert "The rank is 8." in texts  # the evidence it contradicted is said instead
    for s in sentences:
        assert supported_by(s.text, passage[s.start:s.end])


# ---------------------------------------------------------------------- table cells
def _table_pdf(path) -> None:
    """A one-page PDF: a sentence, then a results table drawn cell by cell."""
    from reportlab.pdfgen import canvas

    rows = [["Model", "Params", "Accuracy"], ["Base", "110M", "81.2"], ["Large", "340M", "84.6"],
            ["Tiny", "14M", "72.0"]]
    c = canvas.Canvas(str(path))
    c.setFont("Times-Roman", 10)
    c.drawString(72, 760, "The evaluation compared three encoder models on the same benchmark.")
    for r, row in enumerate(rows):
        for col, cell in enumerate(row):
            c.setFont("Times-Bold" if r == 0 else "Times-Roman", 10)
            c.drawString(72 + 120 * col, 720 - 16 * r, cell)
    c.drawString(72, 640, "The large model wins by a clear margin.")
    c.showPage()
    c.save()


@pytest.mark.parametrize("source", ["pdf", "markdown"])
def test_a_table_cell_question_gets_the_cell_with_its_row_and_column(tmp_path, source):
    from retrieval.testing import HashingEncoder

    folder = tmp_path / "docs"
    folder.mkdir()
    if source == "pdf":
        _table_pdf(folder / "results.pdf")
    else:
        (folder / "results.md").write_text(
            "# Results\n\nThe evaluation compared three encoder models on the same benchmark.\n\n"
            "| Model | Params | Accuracy |\n|---|---|---|\n| Base | 110M | 81.2 |\n| Large | 340M | 84.6 |\n"
            "| Tiny | 14M | 72.0 |\n\nThe large model wins by a clear margin.\n")
    (folder / "other.md").write_text("# Other\n\nBeam search keeps several partial sequences at every step.\n")
    bot = Assistant.from_folder(folder, tmp_path / "index", encoder=HashingEncoder(),
                                generator=FakeGenerator("Should not be called [1]."), refusal_threshold=-1.0)
    answer = bot.ask("What accuracy did the Large model reach?")
    assert not answer.refused and answer.layout == "cell"
    assert answer.text.startswith("Accuracy for Large: 84.6 [")
    (sentence,) = answer.sentences
    source_text = answer.sources[sentence.passage - 1].text
    assert sentence.role == "cell" and source_text[sentence.start:sentence.end] == "84.6"
    assert answer.sources[sentence.passage - 1].path.startswith("results.")
    if source == "pdf":
        assert answer.sources[sentence.passage - 1].page == 1 and "p. 1" in answer.sources[sentence.passage - 1].location
    # No column named: not a cell question.
    assert bot.ask("Which model is in the table?").layout != "cell"


# ---------------------------------------------------------------------- the generator's rewording, checked
def test_with_rewording_on_every_generated_sentence_is_checked_and_an_invented_one_replaced():
    bot, generator, _ = make(open_rewrite=True)
    generator.reply = ("Transformer models come in three families [1]. Encoder-only models read a whole text at "
                       "once [1]. Decoder-only models were invented on the Moon in 1850 [1].")
    answer = bot.ask("What are the three families of transformer models?")
    assert len(generator.calls) == 1  # the generator saw the composed evidence
    texts = [s.text for s in answer.sentences]
    assert not any("Moon" in t for t in answer.text.split("\n")) and all("Moon" not in t for t in texts)
    assert any(s.role == "generated" for s in answer.sentences)  # the supported ones are kept as written
    assert any("Decoder-only models generate text one token at a time" in t for t in texts)  # evidence instead
    assert_sentences_cite_their_words(answer)


def test_a_sentence_answer_the_reader_finds_no_span_for_needs_strong_term_support():
    """Definitions, explanations and yes/no: when the reader's best span in every sentence is below the floor
    (it reads "no answer"), only a unit with strong term support is said; otherwise the question is refused."""
    class NoAnswerReader(FakeReader):
        def read_units(self, question, passages, bounds):
            return [], [[-5.0] * len(b) for b in bounds]

    retriever = DocRetriever(DOCS, dense_floor=0.4)
    bot = Assistant(retriever, FakeGenerator("unused [1]."), Settings(open_min_support=0.0, open_strong_support=99.0),
                    reader=NoAnswerReader([]))
    assert bot.ask("Why does greedy decoding repeat itself?").refused
    bot.settings = bot.settings.replace(open_strong_support=0.0)
    assert not bot.ask("Why does greedy decoding repeat itself?").refused
