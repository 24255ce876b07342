"""Drafts: a guided answer shows the reader's evidence at once, then the checked wording replaces it — and what
was shown is never a claim the final answer withdraws without a Revision marking the change."""

from __future__ import annotations

import threading

from assistant.answer import Answer, Draft, Revision
from assistant.training_data import normalize_answer as normalize_text
from assistant.prompts import REFUSAL_TEXT
from assistant.commands.common import print_stream

from assistant_fakes import FakeGenerator
from test_evidence import make


def run(bot, question, **options):
    """(what a consumer that applies revisions shows at each step, the stream's items, the final Answer)."""
    shown, views, items = "", [], []
    for item in bot.stream(question, drafts=True, **options):
        items.append(item)
        if isinstance(item, Answer):
            return views, items, item
        shown = item.text if isinstance(item, Revision) else shown + item
        views.append(shown)
    raise AssertionError("the stream ended without an Answer")


def test_the_draft_is_the_evidence_and_a_passing_wording_revises_it():
    bot, generator, _ = make("It trains two small low-rank matrices A and B [3].")
    views, items, answer = run(bot, "What does LoRA train?")
    assert isinstance(items[0], Draft)
    lora = next(s for s in answer.sources if s.path == "lora.md")
    assert items[0] == f"two small low-rank matrices A and B [{lora.number}]."
    assert isinstance(items[1], Revision) and items[1].text == answer.text
    assert answer.text == f"It trains two small low-rank matrices A and B [{lora.number}]." and not answer.fallback
    # The revision states what the draft quoted: every view carries the evidence's words.
    claim = normalize_text("two small low-rank matrices A and B")
    assert all(claim in normalize_text(v) for v in views)
    # The first words came before the generator ran: time to first token is the draft's.
    assert answer.timings.time_to_first_token_ms <= answer.timings.total_ms
    # Without drafts the same question streams the checked text only, whole.
    plain = list(bot.stream("What does LoRA train?"))
    assert [type(i) for i in plain] == [str, Answer] and plain[0] == answer.text and not isinstance(plain[0], Draft)


def test_a_failing_wording_leaves_the_draft_as_the_answer_without_a_revision():
    for reply in ("It trains the attention heads [1].", REFUSAL_TEXT):
        bot, _, _ = make(reply)
        views, items, answer = run(bot, "What does LoRA train?")
        assert [type(i) for i in items] == [Draft, Answer]
        assert answer.fallback and views[-1] == answer.text == items[0]


def test_the_final_text_always_equals_what_the_consumer_shows_last():
    for reply in ("It trains two small low-rank matrices A and B [1].", "Attention heads [2].", ""):
        bot, _, _ = make(reply)
        views, _, answer = run(bot, "What does LoRA train?")
        assert views[-1] == answer.text
    # The answer does not depend on drafts.
    bot, _, _ = make("It trains two small low-rank matrices A and B [3].")
    assert bot.ask("What does LoRA train?").text == run(bot, "What does LoRA train?")[2].text


def test_a_cancelled_wording_keeps_the_shown_draft():
    bot, generator, _ = make("It trains two small low-rank matrices A and B [3].")
    cancel = threading.Event()
    stream = bot.stream("What does LoRA train?", drafts=True, cancel=cancel)
    draft = next(stream)
    assert isinstance(draft, Draft)
    cancel.set()
    rest = list(stream)
    answer = rest[-1]
    assert not any(isinstance(i, Revision) for i in rest)
    assert answer.finish_reason == "cancelled" and answer.text == draft and answer.citations


def test_extract_mode_and_refusals_send_no_drafts():
    bot, _, _ = make("unused")
    items = list(bot.stream("What does LoRA train?", answer_mode="extract", drafts=True))
    assert not any(isinstance(i, (Draft, Revision)) for i in items)
    bot, _, _ = make("unused", refusal_threshold=5.0)
    items = list(bot.stream("What is the capital of Australia?", drafts=True))
    assert items[-1].refused and not any(isinstance(i, (Draft, Revision)) for i in items)


def test_the_terminal_rewrites_a_one_line_draft_in_place(capsys):
    answer = Answer("It is B [1].", [1], [], False, None, "q")  # type: ignore[arg-type]
    got = print_stream([Draft("B [1]."), Revision("It is B [1]."), answer], prefix="assistant> ")
    out = capsys.readouterr().out
    assert got is answer
    assert out == "B [1].\r\033[Kassistant> It is B [1].\n"
    print_stream([Draft("a\nb [1]."), Revision("A and b [1]."), answer])
    assert "(reworded) A and b [1]." in capsys.readouterr().out


def test_the_ui_marks_a_draft_until_it_is_final():
    from assistant.ui_render import render_turn

    pending = {"question": "q", "answer": "B [1].", "sources": [], "pending": True, "draft": True}
    assert "checking a fuller wording" in render_turn(0, pending)
    done = {"question": "q", "answer": "It is B [1].", "sources": []}
    assert "checking a fuller wording" not in render_turn(0, done)


def test_fake_generator_is_unchanged():  # the fakes other tests use still stream plain text
    assert "".join(FakeGenerator("abc").stream("p")) == "abc"
