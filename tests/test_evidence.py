"""The answer pipeline with the evidence reader (fakes): refuse, answer, fall back, extract, route, follow-ups."""

from __future__ import annotations

import pytest

from assistant.evidence import (Evidence, evidence_from_spans, extractive_answer, question_overlap, reader_can_read, route,
                                sentence_bounds, states_evidence, term_coverage, wants_sentence)
from assistant.pipeline import Assistant, cite
from assistant.prompts import REFUSAL_TEXT
from assistant.settings import Settings

from assistant_fakes import CORPUS, FakeGenerator, FakeReader, FakeRetriever


def make(reply, answers=("two small low-rank matrices A and B",), **settings):
    settings = {"reader_threshold": 0.0, "reader_overlap_weight": 0.0, "reader_coverage_weight": 0.0,
                "reader_cosine_weight": 0.0, "sentence_fallback": 0.0, **settings}  # the fake reader's scale
    generator = FakeGenerator(reply)
    retriever = FakeRetriever(CORPUS, dense_floor=0.5)
    reader = FakeReader(list(answers))
    return Assistant(retriever, generator, Settings(**settings), reader=reader), generator, reader


def test_guided_answer_states_the_evidence_and_cites_its_passage():
    bot, generator, reader = make("It trains two small low-rank matrices A and B [3].")
    answer = bot.ask("What does LoRA train?")
    lora = next(s for s in answer.sources if s.path == "lora.md")
    assert answer.mode == "guided" and not answer.refused and not answer.fallback
    # The generator's own marker is replaced by the evidence's passage number.
    assert answer.text == f"It trains two small low-rank matrices A and B [{lora.number}]."
    assert answer.citations == [lora.number] and lora.cited
    (evidence,) = answer.evidence
    assert evidence.passage == lora.number
    assert lora.text[evidence.start:evidence.end] == evidence.text == "two small low-rank matrices A and B"
    assert evidence.sentence.startswith("LoRA freezes") and evidence.sentence.endswith("A and B.")
    # The generator saw only the evidence's passage, not all of them.
    prompt = generator.calls[0]["prompt"]
    assert "Attention compares" not in prompt and "LoRA freezes" in prompt
    assert answer.to_dict()["evidence"][0]["text"] == evidence.text


def test_a_generated_answer_that_does_not_state_the_evidence_falls_back_to_the_evidence():
    bot, _, _ = make("It trains the attention heads [1].")
    answer = bot.ask("What does LoRA train?")
    lora = next(s for s in answer.sources if s.path == "lora.md")
    assert answer.fallback and not answer.refused
    assert answer.text == f"two small low-rank matrices A and B [{lora.number}]."
    # A refusal from the generator is not accepted either: the reader found the answer.
    bot, _, _ = make(REFUSAL_TEXT)
    answer = bot.ask("What does LoRA train?")
    assert answer.fallback and not answer.refused and "low-rank matrices" in answer.text


def test_support_adds_question_overlap_to_the_reader_score():
    bot, _, _ = make("unused", reader_overlap_weight=8.0, reader_threshold=7.0)
    # "low-rank matrices" shares most question words with the evidence sentence: 4 + 8 x overlap clears 7.
    answer = bot.ask("What low-rank matrices does LoRA train?", answer_mode="extract")
    assert not answer.refused and answer.evidence[0].support > 7.0
    assert answer.evidence[0].support == pytest.approx(4.0 + 8.0 * question_overlap(
        "What low-rank matrices does LoRA train?", answer.evidence[0].sentence))
    # A question whose words the evidence sentence lacks is refused at the same threshold.
    answer = bot.ask("What colour is the LoRA logo?", answer_mode="extract")
    assert answer.refused


def test_term_coverage_weighs_the_question_terms_found_in_the_passage():
    weights = {"lora": 1.0, "rank": 1.0, "logo": 3.0}
    assert term_coverage(weights, "LoRA keeps a low rank.") == pytest.approx(2 / 5)
    assert term_coverage(weights, "The LoRA logo has a low rank.") == pytest.approx(1.0)
    assert term_coverage({}, "anything") == 0.0


def test_support_adds_term_coverage_and_the_retrieval_cosine():
    from retrieval.store import lexical_tokens

    bot, _, _ = make("unused", reader_coverage_weight=4.0, reader_cosine_weight=2.0, reader_threshold=-100.0)
    supports = {}
    for question in ("What low-rank matrices does LoRA train?", "What colour is the LoRA logo?"):
        answer = bot.ask(question, answer_mode="extract")
        lora = next(s for s in answer.sources if s.path == "lora.md")
        best = max(h.dense_score for h in bot.retriever.search(question, k=bot.settings.k))
        # Without index statistics (the fake retriever) every question term weighs the same.
        coverage = term_coverage(dict.fromkeys(lexical_tokens([question])[0], 1.0), lora.text)
        assert answer.evidence[0].support == pytest.approx(4.0 + 4.0 * coverage + 2.0 * best)
        supports[question] = answer.evidence[0].support
    # The question whose rare terms ("colour", "logo") the passage lacks has less support, and a threshold
    # between the two refuses it and answers the other.
    low, high = sorted(supports.values())
    assert supports["What colour is the LoRA logo?"] == low < high
    bot.settings = bot.settings.replace(reader_threshold=(low + high) / 2)
    assert bot.ask("What colour is the LoRA logo?", answer_mode="extract").refused
    assert not bot.ask("What low-rank matrices does LoRA train?", answer_mode="extract").refused


def test_the_reader_refuses_when_no_passage_holds_an_answer_and_shows_the_nearest_passages():
    bot, generator, _ = make("Should not be called [1].", answers=["not in any passage"])
    answer = bot.ask("What does LoRA train?")
    assert answer.refused and answer.text == REFUSAL_TEXT and answer.finish_reason == "refused"
    assert answer.sources and not any(s.cited for s in answer.sources) and answer.evidence == []
    assert generator.calls == []
    # A lower threshold lets the same evidence through (the threshold is the one knob).
    answer = bot.ask("What does LoRA train?", reader_threshold=-5.0, answer_mode="extract")
    assert not answer.refused


def test_extract_mode_answers_with_the_evidence_alone():
    bot, generator, _ = make("unused")
    answer = bot.ask("What does LoRA train?", answer_mode="extract")
    assert answer.mode == "extract" and generator.calls == []
    assert answer.text.startswith("two small low-rank matrices A and B [")
    # Explanation questions get the whole sentence, not a fragment.
    answer = bot.ask("Why does LoRA train low-rank matrices?", answer_mode="extract")
    assert answer.evidence[0].kind == "sentence"
    assert answer.text.startswith("LoRA freezes the pretrained weights and trains two small low-rank matrices")


def test_generate_mode_and_questions_the_reader_cannot_answer_go_to_the_generator():
    bot, generator, reader = make("LoRA trains matrices [1].")
    answer = bot.ask("What does LoRA train?", answer_mode="generate")
    assert answer.mode == "generate" and reader.questions == []
    assert len(generator.calls) == 1
    # A summary is composed from the passages' sentences (assistant/compose.py): no generator, no reader spans.
    answer = bot.ask("Summarize what the documents say about LoRA")
    assert answer.kind == "summary" and answer.sentences and reader.questions == []
    assert len(generator.calls) == 1


def test_a_follow_up_in_guided_mode_is_read_with_its_standalone_question():
    bot, _, reader = make("The rank r is usually between 4 and 64 [2].", answers=["between 4 and 64"])
    chat = bot.conversation()
    chat.ask("What does LoRA train?")
    answer = chat.ask("and how big is it?")
    assert "LoRA" in reader.questions[-1] and "how big is it" in reader.questions[-1]
    assert answer.sources[answer.citations[0] - 1].path == "lora.md"
    assert "between 4 and 64" in answer.text and not answer.refused


def test_without_a_reader_answers_come_from_the_generator():
    generator, retriever = FakeGenerator("LoRA trains matrices [1]."), FakeRetriever(CORPUS, dense_floor=0.5)
    answer = Assistant(retriever, generator, Settings()).ask("What does LoRA train?")
    assert answer.mode == "generate" and answer.text == "LoRA trains matrices [1]."


# ---------------------------------------------------------------------- pure helpers
def test_routing_sentences_and_the_final_check():
    assert route("Summarize the documents", ["LoRA is a method."]) == "generator"
    assert route("List all the PEFT methods", ["LoRA is a method."]) == "generator"
    assert route("Who introduced LoRA?", ["def f(x):\n    return {x: [y for y in x]};"]) == "generator"
    assert route("Who introduced LoRA?", ["東京は日本の首都です。人口は約1400万人。"]) == "generator"
    assert route("Who introduced LoRA?", ["LoRA was introduced by Edward Hu in 2021."]) == "reader"
    assert reader_can_read("Le café de José Müller ouvre en 1999.")
    assert wants_sentence("Why is the sky blue?") and wants_sentence("How does attention work?")
    assert not wants_sentence("How many layers does it have?")
    text = "LoRA was introduced by Hu et al. in 2021. It freezes W (e.g. the query) and trains B A. Done."
    i = text.index("B A")
    s, e = sentence_bounds(text, i, i + 3)
    assert text[s:e] == "It freezes W (e.g. the query) and trains B A."
    ev = Evidence(2, "Edward Hu", 10, 19, "LoRA was introduced by Edward Hu.", 0, 33, 3.0)
    assert states_evidence("Edward Hu introduced it [1].", ev)
    assert not states_evidence("Microsoft did [1].", ev)
    assert not states_evidence("Edward Hu " + "and many more words " * 12, ev)
    assert extractive_answer(ev) == "Edward Hu [2]."
    assert cite("Edward Hu introduced it [1].", 3) == "Edward Hu introduced it [3]."
    assert cite("Edward Hu", 2) == "Edward Hu [2]"
    # A lone-letter span is answered with its sentence.
    from model.reader import Span

    text = "LoRA learns two small matrices: B of size d by r and A of size r by k. It is cheap."
    (ev,) = evidence_from_spans([Span(0, text.index("k."), text.index("k.") + 1, "k", 2.0, 0.0)], [text], [1], "What?")
    assert ev.kind == "sentence" and extractive_answer(ev).startswith("LoRA learns two small matrices")
