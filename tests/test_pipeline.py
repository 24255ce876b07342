"""The RAG pipeline with stand-in models: packing, numbering and citations, refusal, follow-ups, sampling."""

from __future__ import annotations

import random
import threading

import pytest

from assistant.answer import Answer, QuestionError
from assistant.citations import CitationFilter, clean_citations
from assistant.followup import is_followup, standalone_query
from assistant.packing import pack_prompt
from assistant.pipeline import Assistant
from assistant.prompts import REFUSAL_TEXT
from assistant.settings import Settings
from model.errors import ContextOverflowError, UserError

from assistant_fakes import CORPUS, FakeGenerator, FakeHit, FakeRetriever


def make(reply="LoRA trains low-rank matrices [1].", **settings) -> tuple[Assistant, FakeGenerator, FakeRetriever]:
    generator = FakeGenerator(reply)
    retriever = FakeRetriever(CORPUS, dense_floor=0.5)
    return Assistant(retriever, generator, Settings(**settings)), generator, retriever


# ---------------------------------------------------------------------- citations
def test_invalid_citation_numbers_are_dropped_and_valid_ones_kept():
    text, cited = clean_citations("Rank is small [2] [7]. Also [1, 9] and [3][2].", n_passages=3)
    assert text == "Rank is small [2]. Also [1] and [3][2]."
    assert cited == [2, 1, 3]
    assert clean_citations("Nothing valid [0] [4].", 3) == ("Nothing valid.", [])


def test_answer_maps_citations_to_the_passages_given():
    assistant, generator, _ = make(reply="LoRA trains two small matrices [2] [7].")
    answer = assistant.ask("What does LoRA train?", k=3)
    assert answer.text == "LoRA trains two small matrices [2]."
    assert answer.citations == [2]
    assert [s.number for s in answer.sources] == [1, 2, 3]
    assert [s.cited for s in answer.sources] == [False, True, False]
    # The numbers in the prompt are the numbers of the sources.
    prompt = generator.calls[0]["prompt"]
    for source in answer.sources:
        assert f"[{source.number}] ({source.heading})\n{source.text}" in prompt
    assert answer.sources[0].path == "lora.md"
    assert answer.cited_sources == [answer.sources[1]]


@pytest.mark.parametrize("seed", range(8))
def test_streaming_filter_matches_the_final_clean_text(seed):
    rng = random.Random(seed)
    raw = "It uses rank r [1]. Scores [12] mix values [2, 3][9] and [1][4] end [3"
    pieces, i = [], 0
    while i < len(raw):
        step = rng.randint(1, 4)
        pieces.append(raw[i:i + step])
        i += step
    filt = CitationFilter(3)
    streamed = "".join(filt.feed(p) for p in pieces) + filt.flush()
    assert streamed == clean_citations(raw, 3)[0].rstrip()
    assert "[12]" not in streamed and "[9]" not in streamed and "[4]" not in streamed


def test_stream_yields_clean_deltas_then_the_answer():
    assistant, _, _ = make(reply="Low-rank matrices [1][5] are trained [2].")
    items = list(assistant.stream("What does LoRA train?"))
    assert isinstance(items[-1], Answer) and all(isinstance(x, str) for x in items[:-1])
    assert len(items) > 3  # streamed in pieces
    assert "".join(items[:-1]) == items[-1].text == "Low-rank matrices [1] are trained [2]."
    timings = items[-1].timings
    assert timings.time_to_first_token_ms is not None and timings.total_ms >= timings.time_to_first_token_ms
    assert timings.tokens_per_s == 123.0 and timings.prompt_tokens > 0


# ---------------------------------------------------------------------- packing
def long_passage(path: str, sentences: int) -> FakeHit:
    text = " ".join(f"Sentence {i} of {path} explains low-rank adapters in detail." for i in range(sentences))
    return FakeHit(0, text, path, "Heading", None, 0, len(text), 0.9, 0.9)


@pytest.mark.parametrize("context_length,max_new", [(512, 100), (700, 256), (1024, 64), (2048, 900)])
def test_packing_never_exceeds_the_context_window(context_length, max_new):
    generator = FakeGenerator(context_length=context_length)
    hits = [long_passage(f"doc{i}.md", 40) for i in range(6)]
    history = []
    for turn in range(6):
        history.append({"role": "user", "content": f"Earlier question {turn} " + "about adapters " * 30})
        history.append({"role": "assistant", "content": f"Earlier answer {turn} " + "with words " * 30})
    question = "How does the rank of a LoRA adapter trade accuracy against size? " * 3
    packed = pack_prompt(generator, question, hits, history, max_new_tokens=max_new)
    assert generator.count_tokens(packed.prompt) + max_new <= context_length
    assert packed.prompt_tokens == generator.count_tokens(packed.prompt)
    assert packed.prompt == generator.render_chat(packed.messages)
    if context_length - max_new >= 700:
        assert len(packed.passages) >= 1
    assert question.strip() in packed.prompt
    # Passages keep rank order; a truncated passage ends at a sentence boundary.
    assert [h.path for h in packed.hits] == [f"doc{i}.md" for i in range(len(packed.hits))]
    assert all(p.text.endswith(".") for p in packed.passages)


def test_packing_keeps_everything_when_it_fits_and_drops_oldest_history_first():
    generator = FakeGenerator(context_length=4096)
    hits = [long_passage("a.md", 3), long_passage("b.md", 3)]
    history = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
               {"role": "user", "content": "second question"}, {"role": "assistant", "content": "second answer"}]
    packed = pack_prompt(generator, "q?", hits, history, max_new_tokens=100)
    assert len(packed.passages) == 2 and packed.history == history
    assert packed.passages[0].text == hits[0].text

    # Shrink the window until history must go: the newest turns survive longest.
    base = pack_prompt(generator, "q?", hits[:1], [], max_new_tokens=100).prompt_tokens
    small = FakeGenerator(context_length=base + 100 + 12)
    packed = pack_prompt(small, "q?", hits[:1], history, max_new_tokens=100)
    assert len(packed.passages) == 1
    assert packed.history == [] or packed.history[-1]["content"] == "second answer"
    assert "first question" not in packed.prompt


def test_packing_a_question_that_cannot_fit_is_a_user_error():
    generator = FakeGenerator(context_length=300)
    with pytest.raises(ContextOverflowError, match="shorten the question"):
        pack_prompt(generator, "word " * 400, [long_passage("a.md", 2)], [], max_new_tokens=100)
    with pytest.raises(ContextOverflowError, match="max_new_tokens"):
        pack_prompt(generator, "q", [], [], max_new_tokens=300)


def test_ask_respects_max_context_tokens_setting():
    assistant, generator, _ = make(max_context_tokens=400, max_new_tokens=100, k=4)
    assistant.retriever.passages = [(f"d{i}.md", "H", "Low rank adapters are small. " * 40) for i in range(4)]
    answer = assistant.ask("What does LoRA train?")
    assert generator.count_tokens(generator.calls[0]["prompt"]) + 100 <= 400
    assert 1 <= len(answer.sources) < 4


# ---------------------------------------------------------------------- refusal
def test_low_similarity_refuses_without_calling_the_generator():
    assistant, generator, retriever = make(refusal_threshold=0.9)
    retriever.dense_floor = 0.0
    answer = assistant.ask("Who won the football world cup in 1954?")
    assert generator.calls == []
    assert answer.refused and answer.text == REFUSAL_TEXT and answer.finish_reason == "refused"
    assert answer.citations == [] and len(answer.sources) == 4
    assert not any(s.cited for s in answer.sources)


def test_model_refusal_is_marked_refused_without_citations():
    assistant, generator, _ = make(reply=REFUSAL_TEXT + " [1]")
    answer = assistant.ask("What does LoRA train?")
    assert len(generator.calls) == 1
    assert answer.refused and answer.citations == [] and not any(s.cited for s in answer.sources)


# ---------------------------------------------------------------------- follow-ups
@pytest.mark.parametrize("question", ["and how big is it?", "What about its rank?", "why?", "How big is it?"])
def test_followups_are_detected(question):
    assert is_followup(question)


@pytest.mark.parametrize("question", ["What does multi-head attention compute?", "How does byte-pair encoding work?"])
def test_standalone_questions_are_left_alone(question):
    assert not is_followup(question)
    assert standalone_query(question, [{"role": "user", "content": "What is LoRA?"}]) == question


def test_followup_retrieves_the_previous_topic():
    assistant, _, retriever = make()
    history = [{"role": "user", "content": "What is LoRA?"},
               {"role": "assistant", "content": "LoRA trains low-rank matrices [1]."}]
    answer = assistant.ask("and how big is it?", history=history)
    assert "LoRA" in answer.query and "how big is it" in answer.query
    assert answer.sources[0].path == "lora.md"
    # Without the history the same words retrieve something else first.
    plain = assistant.ask("and how big is it?", refusal_threshold=0.0)
    assert plain.query == "and how big is it?"
    # Two follow-ups in a row still carry the topic.
    history += [{"role": "user", "content": "and how big is it?"}, {"role": "assistant", "content": "Small."}]
    assert "LoRA" in standalone_query("what about its rank?", history)


def test_history_reaches_the_prompt_without_stale_citation_numbers():
    assistant, generator, _ = make()
    history = [{"role": "user", "content": "What is LoRA?"},
               {"role": "assistant", "content": "LoRA trains low-rank matrices [3]."}]
    assistant.ask("and how big is it?", history=history)
    prompt = generator.calls[0]["prompt"]
    assert "LoRA trains low-rank matrices." in prompt and "matrices [3]" not in prompt


def test_chat_uses_the_last_user_message_as_question():
    assistant, generator, retriever = make()
    messages = [{"role": "system", "content": "ignored"},
                {"role": "user", "content": "How does attention mix the values?"},
                {"role": "assistant", "content": "By softmax weights [1]."},
                {"role": "user", "content": "What is byte-pair encoding?"}]
    answer = assistant.chat(messages)
    assert retriever.queries[-1][0] == "What is byte-pair encoding?"
    assert answer.sources[0].path == "tokenization.md"
    assert "How does attention mix the values?" in generator.calls[0]["prompt"]
    with pytest.raises(QuestionError):
        assistant.chat([{"role": "assistant", "content": "hi"}])


# ---------------------------------------------------------------------- options and errors
def test_sampling_options_reach_the_generator():
    assistant, generator, retriever = make(temperature=0.0, max_new_tokens=77)
    assistant.ask("What does LoRA train?", temperature=0.7, top_k=5, top_p=0.9, min_p=0.05,
                  repetition_penalty=1.3, no_repeat_ngram_size=3, seed=11, num_beams=1, stop=["\n\n"],
                  k=2, retrieval_mode="lexical")
    params = generator.calls[0]["params"]
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (0.7, 5, 0.9, 0.05)
    assert (params.repetition_penalty, params.no_repeat_ngram_size, params.seed) == (1.3, 3, 11)
    assert params.max_new_tokens == 77 and params.stop == ("\n\n",)
    assert retriever.queries[-1][1:] == (2, "lexical")
    assistant.ask("What does LoRA train?")
    assert generator.calls[1]["params"].temperature == 0.0  # per-call options do not stick
    assert "\nQuestion:" in generator.calls[1]["params"].stop  # the model may not invent a next question


def test_bad_options_and_questions_are_user_errors():
    assistant, generator, _ = make()
    with pytest.raises(UserError, match="unknown option"):
        assistant.ask("What is LoRA?", temprature=0.5)
    with pytest.raises(UserError):
        assistant.ask("What is LoRA?", top_p=1.5)
    with pytest.raises(QuestionError, match="empty"):
        assistant.ask("   ")
    with pytest.raises(QuestionError, match="50,000 characters"):
        assistant.ask("x" * 50_000)
    assert generator.calls == []


def test_cancel_stops_generation():
    assistant, generator, _ = make(reply="word " * 200)
    cancel = threading.Event()
    pieces = []
    for item in assistant.stream("What does LoRA train?", cancel=cancel):
        if isinstance(item, str):
            pieces.append(item)
            if len(pieces) == 3:
                cancel.set()
        else:
            answer = item
    assert answer.finish_reason == "cancelled"
    assert len(answer.text) < 30


def test_concurrent_callers_each_get_their_own_answer():
    generator = FakeGenerator(reply=lambda prompt: "Answer about " + prompt.split("Question: ")[-1].split("<")[0].strip(),
                              delay=0.002)
    assistant = Assistant(FakeRetriever(CORPUS, dense_floor=0.5), generator, Settings())
    questions = [f"What is topic number {i} in LoRA?" for i in range(6)]
    results: dict[int, str] = {}

    def worker(i):
        results[i] = assistant.ask(questions[i]).text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"Answer about {q}" for i, q in enumerate(questions)}
    assert generator.max_active == 1  # the model lock serialised them


# ---------------------------------------------------------------------- with the real retrieval and generator code
def write_docs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for path, heading, text in CORPUS:
        (folder / path).write_text(f"# {heading}\n\n{text}\n", encoding="utf-8")


def test_from_folder_indexes_and_a_followup_retrieves_the_right_file(tmp_path):
    from retrieval.testing import HashingEncoder

    write_docs(tmp_path / "docs")
    generator = FakeGenerator(reply="It holds well under one percent of the parameters [1].")
    assistant = Assistant.from_folder(tmp_path / "docs", tmp_path / "index", encoder=HashingEncoder(),
                                      generator=generator, refusal_threshold=0.0, k=2)
    assert assistant.stats()["files"] == 4
    history = [{"role": "user", "content": "What does LoRA freeze?"},
               {"role": "assistant", "content": "The pretrained weights [1]."}]
    answer = assistant.ask("and how big is it?", history=history)
    assert answer.sources[0].path == "lora.md"
    assert answer.citations == [1] and answer.sources[0].cited
    # Re-opening syncs incrementally and finds the same index.
    again = Assistant.from_folder(tmp_path / "docs", tmp_path / "index", encoder=HashingEncoder(),
                                  generator=generator)
    assert again.stats()["chunks"] == assistant.stats()["chunks"]


def test_missing_folder_and_index_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Assistant.from_folder(tmp_path / "nope", generator=FakeGenerator(), encoder=object())
    with pytest.raises(UserError, match="no index"):
        Assistant.from_index(tmp_path / "nope", generator=FakeGenerator(), encoder=object())


def test_tiny_real_generator_never_overflows_its_window(tiny_tokenizer):
    """The real Generator (tiny random decoder, 640-token window): prompt + answer always fit."""
    import torch

    from model.config import DecoderConfig
    from model.decoder import Decoder
    from model.generate import Generator

    torch.manual_seed(0)
    config = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size, max_seq_len=640)
    generator = Generator(Decoder(config).init_weights(seed=0).eval(), tiny_tokenizer)
    assert generator.context_length == 640
    long_text = " ".join(f"Attention sentence {i} mixes values by softmax." for i in range(200))
    retriever = FakeRetriever([(f"d{i}.md", "H", long_text) for i in range(5)], dense_floor=0.5)
    assistant = Assistant(retriever, generator, Settings(max_new_tokens=24, k=5, repetition_penalty=1.0))
    history = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "reply " * 300}]
    answer = assistant.ask("How does attention mix values?", history=history, seed=0)
    assert answer.timings.prompt_tokens + 24 <= generator.context_length
    assert answer.timings.generated_tokens <= 24
    assert answer.finish_reason in ("eos", "length", "stop")
    assert 1 <= len(answer.sources) < 5


def test_unrelated_passages_behind_a_clear_match_are_not_given():
    from assistant.pipeline import relevant_hits

    hits = [FakeHit(i, "t", f"{i}.md", None, None, 0, 1, 0.03, cos) for i, cos in enumerate([0.78, 0.06, 0.5, 0.38])]
    assert [h.path for h in relevant_hits(hits, threshold=0.3, relative_floor=0.5)] == ["0.md", "2.md"]
    assert [h.path for h in relevant_hits(hits, threshold=0.0, relative_floor=0.0)] == ["0.md", "1.md", "2.md", "3.md"]


def test_conversation_keeps_history_for_followups():
    assistant, generator, retriever = make()
    chat = assistant.conversation()
    chat.ask("What does LoRA freeze?")
    answer = chat.ask("and how big is it?")
    assert "LoRA" in answer.query and answer.sources[0].path == "lora.md"
    assert len(chat.messages) == 4 and "What does LoRA freeze?" in generator.calls[1]["prompt"]
    chat.reset()
    assert chat.ask("and how big is it?", refusal_threshold=0.0).query == "and how big is it?"


@pytest.mark.real
def test_followup_rewriting_on_the_real_corpus_and_encoder():
    """With the real encoder on corpus/: "and how big is it?" after a LoRA question retrieves the LoRA
    document (alone it retrieves unrelated passages, below the refusal threshold)."""
    from pathlib import Path

    from model.encoder import Encoder
    from retrieval.retriever import Retriever
    from retrieval.store import default_index_path
    from retrieval.sync import sync_folder

    corpus = Path(__file__).resolve().parents[1] / "corpus"
    encoder = Encoder.load(None)
    index = default_index_path(corpus)
    sync_folder(corpus, index, encoder, progress=False)
    assistant = Assistant(Retriever(index, encoder), FakeGenerator(), Settings())
    history = [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "An adapter."}]
    hits, _ = assistant.retrieve(standalone_query("and how big is it?", history))
    assert all(h.path == "peft-lora.md" for h in hits[:3])
    alone, _ = assistant.retrieve("and how big is it?")
    assert "peft-lora.md" not in [h.path for h in alone[:3]]


def test_pipeline_defines_what_it_exports_and_re_exports_nothing():
    """The modules the pipeline was split into are imported from where they live: no shim names here."""
    import assistant.pipeline as pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name).__module__ == "assistant.pipeline", name
    for moved in ("_snippet", "passage_label", "_CITATION", "FOLLOWUP_OPENERS", "_sentences", "ContextOverflowError"):
        assert not hasattr(pipeline, moved), moved


# ---------------------------------------------------------------------- concurrent questions
def test_concurrent_questions_prepare_one_at_a_time_first_come_and_overlap_generation():
    """Retrieval (and the reader) runs one question at a time, in arrival order; a question's answer is
    generated while the next one prepares (the turn ends before generation)."""
    import time

    second_prepared = threading.Event()
    active, peak, order = [0], [0], []
    lock = threading.Lock()

    class SlowRetriever(FakeRetriever):
        def search(self, query, k=5, mode="hybrid", **kw):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                order.append(query)
            time.sleep(0.05)
            with lock:
                active[0] -= 1
            if "attention" in query.lower():
                second_prepared.set()
            return super().search(query, k, mode, **kw)

    def reply(prompt: str) -> str:
        if "LoRA" in prompt.split("Question:")[-1] or prompt.rstrip().endswith("LoRA?"):
            assert second_prepared.wait(5), "the next question could not prepare while this one was generated"
        return "An answer [1]."

    generator = FakeGenerator(reply)
    assistant = Assistant(SlowRetriever(CORPUS, dense_floor=0.5), generator, Settings())
    questions = ["What is LoRA?", "How does attention work?", "What does a tokenizer do?"]
    answers: dict[str, Answer] = {}
    threads = []
    for q in questions:
        threads.append(threading.Thread(target=lambda q=q: answers.__setitem__(q, assistant.ask(q))))
        threads[-1].start()
        time.sleep(0.01)  # arrival order
    for t in threads:
        t.join(10)
    assert set(answers) == set(questions)
    assert peak[0] == 1
    assert order == questions
