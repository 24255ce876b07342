"""The Gradio app's handlers (streaming, sources, errors, stop, uploads) on stand-in models."""

from __future__ import annotations

import threading

import pytest

from assistant.pipeline import Assistant
from assistant.settings import Settings
from assistant.ui import ChatApp, build_app, history_for_model

from assistant_fakes import CORPUS, FakeGenerator, FakeRetriever

DEFAULTS = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_new_tokens=64,
                k=3, mode="hybrid")


def make_app(reply="LoRA trains low-rank matrices [1] [8].", **kw) -> tuple[ChatApp, FakeGenerator]:
    generator = FakeGenerator(reply, **kw)
    return ChatApp(Assistant(FakeRetriever(CORPUS, dense_floor=0.5), generator, Settings())), generator


def ask(app, question, turns=None, session="tab-1", **options):
    values = {**DEFAULTS, **options}
    return list(app.respond(question, turns or [], *values.values(), session=session))


def test_answer_streams_in_and_sources_follow_it():
    app, _ = make_app()
    updates = ask(app, "What does LoRA train?")
    texts = [messages[1]["content"] for messages, *_ in updates]
    assert len(updates) > 4
    assert texts[-1].startswith("LoRA trains low-rank matrices [1].\n\n<sub>retrieval ")
    assert "tokens/s" in texts[-1]                  # timings under the answer
    assert len(set(texts)) > 3                     # the text grew step by step
    messages, box, turns, error = updates[-1]
    assert box == "" and error == ""
    boxes = [m for m in messages if m.get("metadata")]
    assert len(boxes) == 3
    assert boxes[0]["metadata"]["title"].startswith("[1] lora.md › LoRA · score")
    assert "cited" in boxes[0]["metadata"]["title"] and "cited" not in boxes[1]["metadata"]["title"]
    assert "low-rank matrices" in boxes[0]["content"]
    assert history_for_model(turns) == [{"role": "user", "content": "What does LoRA train?"},
                                        {"role": "assistant", "content": "LoRA trains low-rank matrices [1]."}]


@pytest.mark.parametrize("question,expected", [("", "empty"), ("y" * 50_000, "the limit is")])
def test_bad_questions_show_a_message_and_keep_the_conversation(question, expected):
    app, generator = make_app()
    first = ask(app, "What does LoRA train?")[-1][2]
    (messages, box, turns, error), = ask(app, question, first)
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
    final_turn = results[-1][2][-1]
    assert final_turn["note"] == "(stopped)"
    assert len(final_turn["answer"]) < len("word " * 400) - 50


def test_tabs_do_not_share_conversations_or_stop_buttons():
    app, _ = make_app(reply="Answer [1].", delay=0.001)
    out = {}

    def tab(name, question):
        out[name] = ask(app, question, session=name)[-1][2]

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
    messages, _, turns, _ = ask(app, "Who won the 1954 world cup?")[-1]
    assert generator.calls == []
    assert "could not find" in messages[1]["content"].lower() and "nearest" in messages[1]["content"]
    assert len([m for m in messages if m.get("metadata")]) == 3


def test_clear_forgets_the_conversation():
    app, _ = make_app()
    assert app.clear("tab-1") == ([], [], "", "")
    assert app.cancel_event("tab-1").is_set()


def test_upload_indexes_good_files_and_reports_corrupt_ones(tmp_path):
    from retrieval.testing import HashingEncoder

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "base.md").write_text("# Base\n\nAttention mixes values with softmax weights.\n")
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
    message, status = app.upload([str(good), str(corrupt)], progress=lambda *a, **k: calls.append(a))
    assert "Indexed: `@uploads/zorblat.md`" in message
    assert "Could not index `@uploads/broken.pdf`" in message and "Nothing already indexed" in message
    assert "2 files" in status and assistant.stats()["chunks"] > before
    assert calls  # the progress bar moved
    messages, *_ = ask(app, "What colour is the zorblat?")[-1]
    assert messages[1]["content"].startswith("Zorblat is a purple fruit [1].")
    assert "@uploads/zorblat.md" in [m for m in messages if m.get("metadata")][0]["metadata"]["title"]


def test_app_builds_with_stable_element_ids():
    app, _ = make_app()
    demo = build_app(app.assistant)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    for name in ["chatbot", "question", "send", "stop", "clear", "message", "upload", "upload-status",
                 "index-status", "temperature", "top-k", "top-p", "min-p", "repetition-penalty",
                 "max-new-tokens", "passages", "retrieval-mode"]:
        assert name in ids, name


def test_unexpected_failures_show_a_message_instead_of_hanging():
    app, generator = make_app()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    generator.stream = broken
    messages, box, turns, error = ask(app, "What does LoRA train?")[-1]
    assert "disk on fire" in error and turns == [] and box == "What does LoRA train?"
    app.assistant.add_files = broken
    message, _ = app.upload(["/tmp/x.md"])
    assert "disk on fire" in message and "unchanged" in message
