"""The Gradio app's handlers and rendering (streaming, sources, chips, escaping, saved chats, library, uploads)
on stand-in models."""

from __future__ import annotations

import html
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from assistant.answer import Answer, Source, Timings
from assistant.conversations import ConversationStore
from assistant.pipeline import Assistant
from assistant.settings import Settings
from assistant.evidence import Evidence
from assistant.ui import ChatApp, build_app, history_for_model
from assistant.ui_render import (esc, evidence_highlights, render_chat, render_passage, short_model_name,
                                 turn_from_answer)

from assistant_fakes import CORPUS, FakeGenerator, FakeRetriever

DEFAULTS = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=64,
                k=3, mode="hybrid")


def make_app(reply="LoRA trains low-rank matrices [1] [8].", **kw) -> tuple[ChatApp, FakeGenerator]:
    generator = FakeGenerator(reply, **kw)
    return ChatApp(Assistant(FakeRetriever(CORPUS, dense_floor=0.5), generator, Settings())), generator


def ask(app, question, turns=None, session="tab-1", **options):
    values = {**DEFAULTS, **options}
    return list(app.respond(question, turns or [], *values.values(), session=session))


def test_answer_streams_in_and_sources_follow_it_in_numeric_order():
    app, _ = make_app(reply="LoRA trains low-rank matrices [2] [8].")
    texts, updates = [], []
    for update in app.respond("What does LoRA train?", [], *DEFAULTS.values(), session="tab-1"):
        texts.append(update[0][-1]["answer"])  # the chat as shown at each update
        updates.append(update)
    assert len(updates) > 4 and len(set(texts)) > 3     # the text grew step by step
    turns, box, error = updates[-1]
    assert box == "" and error == ""
    turn = turns[-1]
    assert turn["answer"] == "LoRA trains low-rank matrices [2]." and "tokens/s" in turn["timing"]
    assert [s["number"] for s in turn["sources"]] == [1, 2, 3]
    assert [s["cited"] for s in turn["sources"]] == [False, True, False]
    page = render_chat(turns)
    assert '<button class="cite" data-turn="0" data-n="2"' in page     # the marker is a chip
    assert page.count('<details class="source') == 3 and 'id="src-0-2"' in page
    assert "not cited" in page and "similarity" in page.split('class="scores"')[1]  # scores behind a toggle
    assert 'data-action="regenerate" data-arg="0"' in page and 'class="copy" data-text="LoRA trains' in page
    assert history_for_model(turns) == [{"role": "user", "content": "What does LoRA train?"},
                                        {"role": "assistant", "content": "LoRA trains low-rank matrices [2]."}]


def test_document_and_model_text_is_escaped():
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)"> ${1+1} {{value}} `x`'
    source = Source(1, "evil<b>.md", "<i>h</i>", None, hostile, 0.5, 0.6, True, hostile)
    answer = Answer(hostile + " [1]", [1], [source], False, Timings(), "q")
    page = render_chat([turn_from_answer(hostile, answer)])
    for bad in ("<script", "<img", "<b>", "<i>", "${", "{{", "`"):
        assert bad not in page, bad
    assert "&lt;script&gt;" in page and 'data-n="1"' in page
    assert esc("a$b{c}") == "a&#36;b&#123;c&#125;"


def test_highlights_from_evidence_mark_the_supporting_words():
    text = "LoRA freezes the weights. It trains two small matrices."
    assert render_passage(text, [(29, 54)]) == "LoRA freezes the weights. It <mark>trains two small matrices</mark>."
    assert render_passage("<a> b", [(0, 3)]) == "<mark>&lt;a&gt;</mark> b"
    evidence = [Evidence(1, "trains two small matrices", 29, 54, text[26:], 26, len(text), 3.0)]
    source = Source(1, "lora.md", None, None, text, 0.5, 0.6, True, text)
    answer = Answer("It trains matrices [1].", [1], [source], False, Timings(), "q", evidence=evidence)
    assert evidence_highlights(answer) == {1: [(29, 54)]}
    sentence_answer = Answer("It trains two small matrices [1].", [1], [source], False, Timings(), "q",
                             evidence=[Evidence(1, "trains", 29, 35, text[26:], 26, len(text), 3.0, "sentence")])
    assert evidence_highlights(sentence_answer) == {1: [(26, len(text))]}  # the sentence the answer states
    turn = turn_from_answer("q", answer)
    assert turn["sources"][0]["highlights"] == [[29, 54]]
    assert "<mark>trains two small matrices</mark>" in render_chat([turn])


@pytest.mark.parametrize("question,expected", [("", "empty"), ("y" * 50_000, "the limit is")])
def test_bad_questions_show_a_message_and_keep_the_conversation(question, expected):
    app, generator = make_app()
    first = ask(app, "What does LoRA train?")[-1][0]
    (turns, box, error), = ask(app, question, first)
    assert expected in error and turns == first and generator.calls[1:] == []
    assert box == question  # the user's text stays in the box to be fixed


def test_stop_really_stops_the_generation():
    app, generator = make_app(reply="word " * 400, delay=0.002)
    results = []
    thread = threading.Thread(target=lambda: results.extend(ask(app, "What does LoRA train?", session="s")))
    thread.start()
    while not generator.calls:
        pass
    app.stop("s")
    thread.join(timeout=10)
    final_turn = results[-1][0][-1]
    assert final_turn["note"] == "(stopped)"
    assert len(final_turn["answer"]) < len("word " * 400) - 50


def test_tabs_do_not_share_conversations_or_stop_buttons():
    app, _ = make_app(reply="Answer [1].", delay=0.001)
    out = {}

    def tab(name, question):
        out[name] = ask(app, question, session=name)[-1][0]

    threads = [threading.Thread(target=tab, args=(f"tab{i}", f"Question {i} about LoRA?")) for i in range(3)]
    for t in threads:
        t.start()
    app.stop("some-other-tab")
    for t in threads:
        t.join()
    for i in range(3):
        assert [t["question"] for t in out[f"tab{i}"]] == [f"Question {i} about LoRA?"]
        assert out[f"tab{i}"][0]["answer"] == "Answer [1]." and not out[f"tab{i}"][0]["note"]


def test_refusal_shows_the_nearest_passages():
    app, generator = make_app()
    app.assistant.settings.refusal_threshold = 2.0
    turns, _, _ = ask(app, "Who won the 1954 world cup?")[-1]
    assert generator.calls == []
    assert "could not find" in turns[0]["answer"].lower() and "nearest" in turns[0]["note"]
    assert "Nearest passages (not used)" in render_chat(turns) and len(turns[0]["sources"]) == 3


def test_answers_are_saved_per_owner_and_continue_with_their_history(tmp_path):
    app, generator = make_app(reply="Answer [1].")
    app.conversations = ConversationStore(tmp_path / "chats.sqlite3")
    options = list(DEFAULTS.values())
    *_, (turns, _, _, chat_id) = app.ask("alice", "", "What does LoRA train?", [], options)
    assert chat_id and app.chat_choices("alice") == [("What does LoRA train?", chat_id)]
    assert app.chat_choices("bob") == [] and app.open_chat("bob", chat_id) == ("", [], "")
    reopened = ConversationStore(tmp_path / "chats.sqlite3")  # a server restart
    app.conversations = reopened
    current, loaded, title = app.open_chat("alice", None)
    assert current == chat_id and loaded == turns and title == "What does LoRA train?"
    *_, (turns2, _, _, same_id) = app.ask("alice", current, "And how big is it?", loaded, options)
    assert same_id == chat_id and len(reopened.get("alice", chat_id).turns) == 2
    assert "What does LoRA train?" in generator.calls[-1]["prompt"]  # the history went to the model
    assert app.rename_chat("alice", chat_id, "LoRA") == "" and app.chat_choices("alice")[0][0] == "LoRA"
    app.delete_chat("alice", chat_id)
    assert app.chat_choices("alice") == []


def test_upload_reports_each_file_and_rejected_ones_as_rejected(tmp_path):
    from retrieval.testing import HashingEncoder

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "base.md").write_text("# Base\n\n## Softmax\n\nAttention mixes values with softmax weights.\n")
    assistant = Assistant.from_folder(docs, tmp_path / "index", encoder=HashingEncoder(),
                                      generator=FakeGenerator("Zorblat is a purple fruit [1]."),
                                      refusal_threshold=0.0)
    app = ChatApp(assistant)
    before = assistant.stats()["chunks"]
    good = tmp_path / "zorblat.md"
    good.write_text("# Zorblat\n\nThe zorblat is a purple fruit that grows on Mars.\n")
    corrupt = tmp_path / "broken.pdf"
    corrupt.write_bytes(b"%PDF-1.4\n this is not really a pdf \x00\x01\x02")
    calls = []
    report, status = app.upload([str(good), str(corrupt)], progress=lambda *a, **k: calls.append(a))
    assert "✓ @uploads/zorblat.md: indexed" in report
    assert 'rejected">✗ @uploads/broken.pdf: rejected' in report
    assert "2 files" in status and assistant.stats()["chunks"] > before
    assert calls  # the progress bar moved
    turns, *_ = ask(app, "What colour is the zorblat?")[-1]
    assert turns[0]["answer"].startswith("Zorblat is a purple fruit [1].")
    assert turns[0]["sources"][0]["path"] == "@uploads/zorblat.md" and turns[0]["sources"][0]["openable"]
    opened = Path(app.open_file("@uploads/zorblat.md"))
    assert opened.name == "zorblat.md" and "purple fruit" in opened.read_text()
    assert app.open_file("../docs/base.md") is None and app.open_file("/etc/passwd") is None
    assert "What is softmax?" in render_chat([], app.examples(refresh=True))
    # the copies handed to the browser go with the app (one temporary folder per app, not one per copy)
    downloads = opened.parent.parent
    assert downloads.name.startswith("assistant-open-")
    del app
    import gc

    gc.collect()
    assert not downloads.exists()


def test_model_names_are_short_with_the_full_id_on_hover():
    full = "SmolLM2-135M-Instruct.Q4_1.gguf@sha256:b179c9523d0e6a0f+adapter:adapter+int4"
    assert short_model_name(full) == "SmolLM2-135M-Instruct.Q4_1"
    assert short_model_name("sentence-transformers/all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    app, _ = make_app()
    app.assistant.generator.identity = full
    assert f'title="{full}">SmolLM2-135M-Instruct.Q4_1</span>' in app.status()


def test_app_builds_with_stable_element_ids():
    app, _ = make_app()
    demo = build_app(app.assistant)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    for name in ["chatbot", "question", "send", "stop", "new-chat", "chats", "chat-title", "rename-chat",
                 "delete-chat", "message", "owner", "models", "upload", "upload-status", "index-status", "library",
                 "library-filter", "library-message", "resync", "resync-status", "source-file", "temperature",
                 "top-k", "top-p", "min-p", "repetition-penalty", "max-new-tokens", "passages", "retrieval-mode"]:
        assert name in ids, name


def test_unexpected_failures_show_a_message_instead_of_hanging():
    app, generator = make_app()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    generator.stream = broken
    turns, box, error = ask(app, "What does LoRA train?")[-1]
    assert "disk on fire" in error and turns == [] and box == "What does LoRA train?"
    app.assistant.add_files = broken
    message, _ = app.upload(["/tmp/x.md"])
    assert "disk on fire" in message and "unchanged" in message


# ---------------------------------------------------------------------- composed answers
LORA = CORPUS[0][2]      # "LoRA freezes the pretrained weights and trains ... A and B. The rank r is usually ..."
TOKENS = CORPUS[2][2]    # "A tokenizer splits text into tokens. Byte-pair encoding merges ..."


def composed_answer(text: str, picks: list[tuple[int, str]], layout: str, kind: str = "explanation",
                    groups: list[str] | None = None) -> Answer:
    """An Answer over sources [1] (LORA) and [2] (TOKENS) whose k-th sentence cites picks[k] = (n, words)."""
    from assistant.answer import AnswerSentence

    sources = [Source(1, "lora.md", "LoRA", None, LORA[:80], 0.9, 0.8, True, LORA),
               Source(2, "tokenization.md", "Tokenization", None, TOKENS[:80], 0.7, 0.6, True, TOKENS)]
    texts = {1: LORA, 2: TOKENS}
    sentences = [AnswerSentence(words, n, texts[n].index(words), texts[n].index(words) + len(words), 1.0,
                                "item" if layout == "bullets" else "sentence", (groups or [""] * 9)[k])
                 for k, (n, words) in enumerate(picks)]
    return Answer(text, sorted({n for n, _ in picks}), sources, False, Timings(), "q", sentences=sentences,
                  kind=kind, layout=layout, mode="guided")


FIRST = "LoRA freezes the pretrained weights"
SECOND = "The rank r is usually between 4 and 64"


def test_each_chip_of_a_composed_answer_is_tied_to_its_sentence_and_its_supporting_words():
    answer = composed_answer(f"{FIRST} [1]. {SECOND} [1].", [(1, FIRST), (1, SECOND)], "text")
    turn = turn_from_answer("What is LoRA?", answer)
    assert turn["layout"] == "text" and turn["kind"] == "explanation"
    assert [(s["passage"], LORA[s["start"]:s["end"]]) for s in turn["sentences"]] == [(1, FIRST), (1, SECOND)]
    page = render_chat([turn])
    assert '<button class="cite" data-turn="0" data-n="1" data-s="0"' in page
    assert '<button class="cite" data-turn="0" data-n="1" data-s="1"' in page
    # both sentences rest on passage [1]: each stretch is marked with the sentence it supports, nothing else
    assert f'<mark data-s="0">{FIRST}</mark>' in page and f'<mark data-s="1">{SECOND}</mark>' in page
    assert page.count("<mark") == 2
    assert '<div class="text" id="answer-0"' in page  # plain text stays plain (pre-wrap), no blocks


def test_overlapping_supporting_words_name_every_sentence_they_support():
    text = "LoRA freezes the pretrained weights and trains two small matrices."
    html = render_passage(text, None, [(0, 35, 0), (17, text.index("."), 1)])
    assert html == ('<mark data-s="0">LoRA freezes the </mark><mark data-s="0 1">pretrained weights</mark>'
                    '<mark data-s="1"> and trains two small matrices</mark>.')
    assert render_passage(text, [(0, 4), (2, 12)]) == "<mark>LoRA freezes</mark> the pretrained weights and " \
                                                       "trains two small matrices."


def test_bullets_sides_and_tables_render_as_lists_labelled_paragraphs_and_tables():
    items = composed_answer(f"LoRA in short:\n- {FIRST} [1]\n- {SECOND} [1]", [(1, FIRST), (1, SECOND)],
                            "bullets", kind="list")
    page = render_chat([turn_from_answer("List LoRA facts", items)])
    assert '<div class="text composed" id="answer-0" data-layout="bullets">' in page
    assert (f'<p>LoRA in short:</p><ul><li>{FIRST} <button class="cite" data-turn="0" data-n="1" data-s="0"'
            in page)
    assert f'</li><li>{SECOND} <button class="cite" data-turn="0" data-n="1" data-s="1"' in page
    assert page.count("<li>") == 2 and "- " not in page.split('id="answer-0"')[1].split("</ul>")[0]

    steps = composed_answer(f"To use LoRA:\n1. {FIRST} [1]\n2. {SECOND} [1]", [(1, FIRST), (1, SECOND)],
                            "bullets", kind="procedure")
    page = render_chat([turn_from_answer("How do I use LoRA?", steps)])
    assert f'<p>To use LoRA:</p><ol><li>{FIRST} <button class="cite" data-turn="0" data-n="1" data-s="0"' in page
    assert page.count("<li>") == 2 and "2. " not in page.split('id="answer-0"')[1].split('class="actions"')[0]

    bpe = "Byte-pair encoding merges frequent pairs of symbols"
    sides = composed_answer(f"**LoRA:** {FIRST} [1].\n\n**BPE:** {bpe} [2].", [(1, FIRST), (2, bpe)], "sides",
                            kind="comparison", groups=["LoRA", "BPE"])
    page = render_chat([turn_from_answer("Compare LoRA and BPE", sides)])
    shown = page.split('id="answer-0"')[1].split('class="actions"')[0]
    assert shown.count('<p class="side">') == 2 and "**" not in shown
    assert '<p class="side"><strong class="side-label">BPE:</strong> Byte-pair' in page
    assert 'data-n="2" data-s="1"' in page and f'<mark data-s="1">{bpe}</mark>' in page

    table = composed_answer(f"| Method | Holds |\n|---|:---:|\n| LoRA | {FIRST} [1] |\n| BPE | {bpe} [2] |",
                            [(1, FIRST), (2, bpe)], "text", kind="comparison")
    page = render_chat([turn_from_answer("Compare", table)])
    assert "<table><thead><tr><th>Method</th><th>Holds</th></tr></thead><tbody>" in page
    assert '<td>LoRA</td><td>LoRA freezes the pretrained weights <button class="cite" data-turn="0" data-n="1" ' \
           'data-s="0"' in page
    assert page.count("<tr>") == 3 and "|---|" not in page.split('class="actions"')[0] and 'data-n="2" data-s="1"' in page


def test_a_turn_saved_by_the_previous_release_still_loads_and_renders_as_before(tmp_path):
    old_turn = {  # what the previous release saved: no layout, kind or sentences; highlights from the evidence
        "question": "What does LoRA train?", "answer": "- LoRA trains **two** small matrices [1].",
        "sources": [{"number": 1, "path": "lora.md", "heading": "LoRA", "page": None, "text": LORA,
                     "score": 0.9, "dense_score": 0.8, "cited": True, "highlights": [[40, 84]],
                     "openable": False}],
        "note": "", "timing": "retrieval 3 ms · total 0.1 s", "refused": False}
    store = ConversationStore(tmp_path / "chats.sqlite3")
    chat_id = store.create("alice", turns=[old_turn])
    app, _ = make_app()
    app.conversations = ConversationStore(tmp_path / "chats.sqlite3")
    current, loaded, _ = app.open_chat("alice", None)
    assert current == chat_id and loaded == [old_turn]
    page = app.render(loaded)
    assert '<div class="text" id="answer-0"' in page and "<ul>" not in page   # plain text, as it was shown
    assert "- LoRA trains **two** small matrices" in page
    assert '<button class="cite" data-turn="0" data-n="1" title="open source [1]">1</button>' in page  # no data-s
    assert f"<mark>{LORA[40:84]}</mark>" in page and page.count("<mark") == 1


def test_a_composed_answer_streams_and_is_saved_with_its_sentences(tmp_path):
    from assistant_fakes import composing

    app, _ = make_app(reply="LoRA freezes the weights [1].")
    app.assistant.stream = composing(app.assistant.stream, lambda q, a: {"picks": [(1, 0), (1, 1)]})
    app.conversations = ConversationStore(tmp_path / "chats.sqlite3")
    *_, (turns, _, error, chat_id) = app.ask("alice", "", "What does LoRA train?", [], list(DEFAULTS.values()))
    assert error == "" and len(turns[0]["sentences"]) == 2
    saved = ConversationStore(tmp_path / "chats.sqlite3").get("alice", chat_id).turns
    assert saved == turns
    first, second = saved[0]["sentences"]
    lora = saved[0]["sources"][0]["text"]
    assert lora[first["start"]:first["end"]].startswith("LoRA freezes") and second["start"] > first["end"]
    page = app.render(saved)
    assert page.count('data-s="0"') == 2 and page.count('data-s="1"') == 2   # chip + mark for each sentence


# ---------------------------------------------------------------------- pages in citations
def test_a_paged_source_is_cited_with_its_page_everywhere():
    from assistant.answer import passage_label
    from assistant.commands.common import format_source
    from assistant.ui_render import source_label

    assert passage_label("report.pdf", None, 3) == "report.pdf, p. 3"
    assert passage_label("report.pdf", "Results", 3) == "report.pdf › Results, p. 3"
    assert passage_label("notes.md", "Setup", None) == "notes.md › Setup"
    source = Source(2, "report.pdf", None, 3, "Gulls.", 0.5, 0.6, True, "Gulls.")
    assert source.location == "report.pdf, p. 3"
    assert format_source(source).startswith("  [2] report.pdf, p. 3  (score")
    view = turn_from_answer("q", Answer("Gulls [2].", [2], [source], False, Timings(), "q"))["sources"][0]
    assert source_label(view) == "report.pdf, p. 3"
    page = render_chat([turn_from_answer("q", Answer("Gulls [2].", [2], [source], False, Timings(), "q"))])
    assert "report.pdf, p. 3" in page and " · p. 3" in page and "page 3" not in page
    assert "Open page" not in page                  # not openable: no page button either
    assert source_label({"path": "a.pdf", "page": "x"}) == "a.pdf"   # a damaged save shows no page


def test_an_openable_paged_source_has_an_open_page_button_carrying_its_marks():
    import json

    from assistant.ui_render import render_source

    view = {"number": 1, "path": 'a"<b>.pdf', "heading": None, "page": 2, "text": "One two three four.",
            "highlights": [[4, 7]], "openable": True, "cited": True, "score": 0.1}
    html_page = render_source(0, view)
    assert '<button class="open-page" data-path="a&quot;&lt;b&gt;.pdf" data-page="2"' in html_page
    assert ">Open page 2</button>" in html_page and '<div class="page-view" hidden></div>' in html_page
    marks = html_page.split('data-marks="', 1)[1].split('"', 1)[0]
    assert json.loads(html.unescape(marks)) == [[4, 7, None]]
    marks = render_source(0, view, [(0, 3, 0), (8, 13, 1)]).split('data-marks="', 1)[1].split('"', 1)[0]
    assert json.loads(html.unescape(marks)) == [[0, 3, 0], [8, 13, 1]]   # a composed answer's sentences
    assert "open-page" not in render_source(0, {**view, "page": None})
    assert "open-page" not in render_source(0, {**view, "openable": False})


PAGE_TWO = ("The lighthouse keeper counts seventeen gulls at dawn.\nShe writes every count in a blue ledger.\n"
            "The ledger holds forty years of <b>gulls</b>.\nOn stormy days she counts none at all.")


@pytest.fixture
def paged_app(tmp_path):
    """A ChatApp over a real index of a folder with a 2-page PDF (page 2 cut into several chunks)."""
    from conftest_retrieval import _pdf
    from retrieval.chunking import ChunkerSettings
    from retrieval.retriever import Retriever
    from retrieval.sync import sync_folder
    from retrieval.testing import HashingEncoder

    docs = tmp_path / "docs"
    docs.mkdir()
    _pdf(docs / "keeper.pdf", ["The harbour opens at six.", PAGE_TWO])
    (docs / "notes.md").write_text("# Notes\n\nNo pages here.\n")
    encoder = HashingEncoder()
    sync_folder(docs, tmp_path / "index", encoder, progress=False,
                chunker=ChunkerSettings(target_tokens=24, overlap_tokens=12))
    assistant = Assistant(Retriever(tmp_path / "index", encoder), FakeGenerator("x"), Settings(), encoder=encoder,
                          index_path=tmp_path / "index", folder=docs)
    return ChatApp(assistant, ConversationStore(tmp_path / "chats.sqlite3"))


def test_open_page_shows_the_whole_page_with_the_cited_words_marked(paged_app):
    chunks = [h for h in paged_app.assistant.retriever.document_chunks("keeper.pdf") if h.page == 2]
    later = next(h for h in chunks if "blue ledger" in h.text and not h.text.startswith("The lighthouse"))
    start = later.text.index("blue ledger")
    panel = paged_app.open_page({"path": "keeper.pdf", "page": 2, "passage": later.text,
                                 "marks": [[start, start + len("blue ledger"), 0], [0, 3, None]]})
    assert panel.startswith('<div class="page-head">keeper.pdf, p. 2</div><div class="page-text">')
    assert 'The lighthouse keeper counts' in panel and "harbour" not in panel       # page 2, all of it
    assert '<mark data-s="0">blue ledger</mark>' in panel and panel.count("blue ledger") == 1
    assert panel.count("<mark") == 2 and "&lt;b&gt;gulls&lt;/b&gt;" in panel and "<b>" not in panel
    view = paged_app.library.page_view("keeper.pdf", 2, later.text, [(start, start + 11, 0)])
    assert view.text[view.marks[0][0]:view.marks[0][1]] == "blue ledger"
    assert view.marks[0][0] > start                              # placed by the chunk's position in the page
    spaced = later.text.replace(" ", "  ")                       # its whitespace changed: not in the page as is
    at = spaced.index("blue  ledger")
    moved = paged_app.library.page_view("keeper.pdf", 2, spaced, [(at, at + 12, None)]).marks
    assert moved == [(view.marks[0][0], view.marks[0][1], None)]  # the same words found in the page


def test_open_page_refuses_what_open_file_refuses_and_malformed_requests(paged_app):
    for request in ({"path": "../docs/keeper.pdf", "page": 2}, {"path": "/etc/passwd", "page": 1},
                    {"path": "keeper.pdf", "page": 9}, {"path": "notes.md", "page": 1},
                    {"path": "keeper.pdf", "page": "two"}, {"path": "keeper.pdf", "page": 0}, "keeper.pdf", None,
                    {"path": '<img src=x onerror="alert(1)">.pdf', "page": 1}):
        panel = paged_app.open_page(request)
        assert panel.startswith('<div class="page-missing">') and "<img" not in panel, request
    panel = paged_app.open_page({"path": "keeper.pdf", "page": 1, "passage": 5, "marks": [["a", 2, 0], 7, None]})
    assert "The harbour opens at six." in panel and "<mark" not in panel      # bad marks are dropped


def test_the_chat_view_serves_open_page_to_the_page_script():
    app_blocks = build_app(Assistant(FakeRetriever(CORPUS), FakeGenerator("x"), Settings()))
    chat_view = next(b for b in app_blocks.blocks.values() if getattr(b, "elem_id", None) == "chatbot")
    assert [f.__name__ for f in chat_view.server_fns] == ["open_page"]
    assert chat_view.open_page({"path": "lora.md", "page": 1}).startswith('<div class="page-missing">')
