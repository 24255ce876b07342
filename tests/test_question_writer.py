"""The question writer (assistant.question_writer) on a tiny random generator: its API contract (one list per
passage in input order, blanks get [], deterministic for a seed, progress), prompt building, loading of each
writer kind and refusal of mismatched generators. Quality is measured by `python -m assistant.question_writer
evaluate`, not here."""

from __future__ import annotations

import pytest

from assistant.question_writer import (
    DEFAULT_PATH,
    QuestionWriter,
    WriterSettings,
    clean_question,
    is_question,
    rank_summary,
    read_writer_info,
    save_writer_info,
    source_ranks,
)
from model.config import DecoderConfig
from model.decoder import Decoder
from model.errors import CheckpointError
from model.generate import Generator
from model.prompt_tuning import PromptTuningConfig, SoftPrompt, save_soft_prompt

PASSAGES = [
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "",
    "Attention lets every token look at every other token in the sequence.",
    "Retrieval-augmented generation grounds answers in documents and cites them [1]. " * 6,
    "   ",
    "def add(a, b):\n    return a + b\n",
]


@pytest.fixture()
def generator(tiny_tokenizer) -> Generator:
    decoder = Decoder(DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)).init_weights(std=0.3, seed=0).eval()
    return Generator(decoder, tiny_tokenizer, identity="tiny@1", device="cpu")


def test_clean_question() -> None:
    assert clean_question(" What is RAG? It is retrieval.") == "What is RAG?"
    assert clean_question("\n\nQuestion: Who wrote it?\nAnswer: me") == "Who wrote it?"
    assert clean_question("When did it end") == "When did it end"
    assert clean_question("   ") == ""
    assert clean_question("How do I  copy\ta tree?") == "How do I copy a tree?"  # one space between words


def test_prompt_caps_the_passage_and_uses_the_instruction(generator: Generator) -> None:
    writer = QuestionWriter(generator, settings=WriterSettings(max_passage_tokens=12))
    long_ids = writer.prompt_ids(PASSAGES[3])
    short_ids = writer.prompt_ids(PASSAGES[3][:40])
    template = len(writer.prompt_ids("x")) - 1
    assert len(long_ids) <= template + 12 + 2  # (re-tokenising the cut text may merge a token or two)
    assert len(generator.tokenizer.encode(PASSAGES[3])) > 12
    assert generator.tokenizer.decode(long_ids).count(INSTRUCTION_WORD) == 1
    assert len(short_ids) < len(long_ids) + 5


INSTRUCTION_WORD = "passage answers"


def test_write_returns_a_list_per_passage_in_order(generator: Generator) -> None:
    writer = QuestionWriter(generator, settings=WriterSettings(max_new_tokens=6))
    calls = []
    out = writer.write(PASSAGES, batch_size=2, on_progress=lambda done, total: calls.append((done, total)))
    assert len(out) == len(PASSAGES)
    assert out[1] == [] and out[4] == []
    assert all(len(q) == 1 for i, q in enumerate(out) if i not in (1, 4))  # (a random model writes something)
    assert calls[-1] == (4, 4) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    # greedy, batched by length: each passage gets what it gets alone
    alone = [writer.write([p])[0] for p in PASSAGES]
    assert out == alone


def test_sampled_questions_are_deterministic_for_a_seed(generator: Generator) -> None:
    writer = QuestionWriter(generator, settings=WriterSettings(max_new_tokens=6, temperature=1.5, top_p=1.0))
    first = writer.write(PASSAGES, per_passage=3, batch_size=4, seed=1)
    assert first == writer.write(PASSAGES, per_passage=3, batch_size=4, seed=1)
    assert first != writer.write(PASSAGES, per_passage=3, batch_size=4, seed=2)
    assert all(len(set(q)) == len(q) <= 3 for q in first)
    assert sum(len(q) for q in first) > 4  # sampling gives distinct questions
    with pytest.raises(ValueError):
        writer.write(PASSAGES, per_passage=0)
    with pytest.raises(TypeError):
        writer.write(["ok", None])  # type: ignore[list-item]


def test_openings_start_the_question_and_the_writer_continues_them(generator: Generator) -> None:
    """A passage's opening words begin its question (the reply is forced to start with them, and generation goes
    on from there); passages without one get what they get without openings; one opening per passage."""
    writer = QuestionWriter(generator, settings=WriterSettings(max_new_tokens=6))
    openings = ["How do I", "", "", "Is there a way to", "How", ""]
    out = writer.write(PASSAGES, batch_size=2, openings=openings)
    free = writer.write(PASSAGES, batch_size=2)
    for i, opening in enumerate(openings):
        if not PASSAGES[i].strip():
            assert out[i] == []
        elif opening:
            assert out[i][0].startswith(opening), out[i]
            tokens = generator.tokenizer.encode(opening, add_special_tokens=False)
            from model.sampling import SamplingParams

            reply = generator.generate_batch([writer.prompt_ids(PASSAGES[i]) + tokens],
                                             SamplingParams(max_new_tokens=6, stop=("\n",), temperature=0.0))[0]
            assert out[i][0] == clean_question(opening + reply.text)
        else:
            assert out[i] == free[i]
    with pytest.raises(ValueError, match="one opening per passage"):
        writer.write(PASSAGES, openings=["How do I"])


def test_soft_prompt_writer_loads_and_refuses_other_generators(generator: Generator, tmp_path) -> None:
    decoder = generator.decoder
    soft = SoftPrompt.initialise(decoder, PromptTuningConfig(4, "random"), seed=3)
    folder = tmp_path / "writer"
    save_soft_prompt(folder, soft, PromptTuningConfig(4, "random"), "tiny@1", decoder=decoder)
    save_writer_info(folder, "prompt", WriterSettings(max_new_tokens=6), "tiny@1", soft.weight.numel())
    writer = QuestionWriter.load(generator, folder)
    assert writer.method == "prompt" and writer.trained_parameters == 4 * decoder.config.dim
    with_prompt = writer.write(PASSAGES[:1])
    base = QuestionWriter(generator, settings=WriterSettings(max_new_tokens=6)).write(PASSAGES[:1])
    assert with_prompt != base  # the soft prompt is used
    other = Generator(decoder, generator.tokenizer, identity="tiny@1+adapter:answers", device="cpu")
    with pytest.raises(CheckpointError, match="trained on base weights"):
        QuestionWriter.load(other, folder)


def test_lora_writer_needs_its_own_generator_and_broken_folders_are_refused(generator: Generator,
                                                                            tmp_path) -> None:
    folder = tmp_path / "lora_writer"
    save_writer_info(folder, "lora", WriterSettings(), "tiny@1", 100)
    with pytest.raises(CheckpointError, match="needs a generator loaded with it"):
        QuestionWriter.load(generator, folder)
    with pytest.raises(CheckpointError, match="not a question-writer folder"):
        QuestionWriter.load(generator, tmp_path / "nothing")
    (folder / "writer.json").write_text('{"format": "other"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="does not understand|this version"):
        QuestionWriter.load(generator, folder)


def test_the_shipped_writer_folder_is_readable_and_small() -> None:
    info = read_writer_info(DEFAULT_PATH)
    assert info["method"] in ("base", "prompt", "lora")
    for path in DEFAULT_PATH.iterdir():
        assert path.stat().st_size < 16 * 2**20, f"{path.name} is over 16 MiB"
    if info["method"] == "prompt":
        assert (DEFAULT_PATH / "soft_prompt.safetensors").is_file()
    if info["method"] == "lora":
        assert (DEFAULT_PATH / "adapter.safetensors").is_file()
    for path in (DEFAULT_PATH / "prompt").iterdir():  # the soft-prompt alternative
        assert path.stat().st_size < 16 * 2**20
    assert read_writer_info(DEFAULT_PATH / "prompt")["method"] == "prompt"


def test_source_ranks_count_ties_against_the_source() -> None:
    ranks = source_ranks([[0.5, 0.9, 0.5], [1.0, 0.2, 0.3]], [0, 0])
    assert ranks == [3, 1]
    assert rank_summary(ranks) == {"top1": 0.5, "top5": 1.0, "mrr10": round((1 + 1 / 3) / 2, 4)}
    assert rank_summary(ranks, [False, True])["question_top1"] == 0.5
    assert rank_summary(ranks, [True, False])["question_top1"] == 0.0


def test_is_question() -> None:
    assert is_question("When was the Eiffel Tower completed?")
    assert not is_question("The Eiffel Tower was completed in 1889.")
    assert not is_question("What does the passage say?")
    assert not is_question("Why?")


REAL_PASSAGE = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
                "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889 as "
                "the centrepiece of the 1889 World's Fair.")


def _about_the_passage(question: str) -> bool:
    words = {w.strip("?,.'").lower() for w in question.split()}
    return bool(words & {"eiffel", "tower", "paris", "gustave", "1889", "fair", "champ", "mars", "lattice"})


@pytest.mark.real
def test_shipped_writers_write_questions_about_the_passage(real_decoder) -> None:
    """The shipped LoRA writer (its own generator) and the soft-prompt alternative (on the plain base model) write
    real questions about a passage; the soft prompt refuses a generator that carries another adapter."""
    writer = QuestionWriter.load()
    assert writer.method in ("lora", "prompt")
    (question,), blank = writer.write([REAL_PASSAGE, " "])
    assert is_question(question) and _about_the_passage(question), question
    assert blank == []
    (how,) = writer.write([REAL_PASSAGE], openings=["How can I"])[0]
    assert how.startswith("How can I ") and is_question(how) and _about_the_passage(how), how
    base = Generator(real_decoder.model, real_decoder.tokenizer, identity=real_decoder.identity, device="cpu")
    prompt_writer = QuestionWriter.load(base, DEFAULT_PATH / "prompt")
    sampled = prompt_writer.write([REAL_PASSAGE], per_passage=3, seed=0)[0]
    assert sampled and all(is_question(q) and _about_the_passage(q) for q in sampled), sampled
    adapted = Generator(real_decoder.model, real_decoder.tokenizer, identity=real_decoder.identity + "+adapter:x",
                        device="cpu")
    with pytest.raises(CheckpointError):
        QuestionWriter.load(adapted, DEFAULT_PATH / "prompt")
