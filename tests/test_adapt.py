"""`assistant adapt` (assistant/adapt.py) on a tiny random encoder: the switch of the index's vectors is atomic
(kill -9 at several points leaves the old index serving, complete; the next run resumes and finishes), the
adapter loads when the index opens and --no-adapt restores the bundled encoder without re-embedding, an index of
the previous release opens as it is, and the weights the reader shares never change."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from assistant.adapt import (AdaptConfig, DistillExample, DistillTask, MlmTask, adapt_index, fingerprint_of,
                             prepare_encoder, usable_question)
from retrieval.retriever import Retriever
from retrieval.store import IndexStore
from retrieval.sync import sync_folder

REPO = Path(__file__).resolve().parents[1]

DOCS = {
    "birds.md": "# Herons\n\nThe grey heron hunts fish in shallow water. Herons nest in colonies called heronries.",
    "boats.md": "# Sailing\n\nA sloop carries one mast. The keel keeps a sailboat upright against the wind.",
    "bread.md": "# Baking\n\nSourdough rises with wild yeast. A starter is flour and water left to ferment.",
    "stars.md": "# Astronomy\n\nA pulsar is a spinning neutron star. Its beams sweep past the earth like a lighthouse.",
    "rocks.md": "# Geology\n\nBasalt forms when lava cools quickly. Granite cools slowly deep underground.",
    "tea.md": "# Tea\n\nGreen tea leaves are steamed or pan fired. Black tea leaves are fully oxidised before drying.",
}

# Shared with the child process of the kill -9 test: a tiny encoder, a question writer and a teacher.
HELPERS = textwrap.dedent("""
    import re
    import torch
    from model.bert import BertModel
    from model.config import EncoderConfig
    from model.encoder import Encoder
    from model.sources import resolve_encoder
    from model.tokenizer import Tokenizer

    def tiny_encoder():
        tokenizer = Tokenizer.from_file(resolve_encoder(None) / "tokenizer.json")
        torch.manual_seed(0)
        model = BertModel(EncoderConfig.tiny(vocab_size=tokenizer.vocab_size)).eval()
        return Encoder(model, tokenizer, name="tiny-encoder", embed_dtype="float32")

    class Writer:
        name = "test writer"
        def write(self, passages, per_passage=1):
            out = []
            for p in passages:
                words = [w for w in re.findall(r"[a-z]{5,}", p.lower())]
                out.append([f"What does the {words[0]} do with {words[-1]}?"] if words else [])
            return out

    class Teacher:
        name = "overlap teacher"
        def score(self, question, passages):
            q = set(re.findall(r"[a-z]+", question.lower()))
            return [float(len(q & set(re.findall(r"[a-z]+", p.lower())))) for p in passages]

    CONFIG = dict(question_chunks=6, negatives=2, mine_depth=3, distill_batch=2, lora_rank=4, embed_batch=2,
                  mlm_head_steps=2, mlm_steps=2, mlm_batch=2, openings=())  # (openings: their own test)
""")
exec(HELPERS)  # noqa: S102  tiny_encoder, Writer, Teacher, CONFIG (the same code the child runs)


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def indexed(tmp_path):
    folder = _folder(tmp_path)
    index = tmp_path / "index"
    encoder = tiny_encoder()  # noqa: F821
    sync_folder(folder, index, encoder, progress=False)
    return folder, index, encoder


def _adapt(index: Path, encoder, tmp_path: Path, **changes):
    config = AdaptConfig(**{**CONFIG, **changes})  # noqa: F821
    return adapt_index(index, encoder, config, question_writer=Writer(), teacher=Teacher(),  # noqa: F821
                       work_dir=tmp_path / "work", emit=lambda line: None)


def _live_vectors_ok(index: Path) -> tuple[str, int]:
    """(active encoder, live chunks): the searchable vectors cover every live chunk."""
    store = IndexStore.open(index)
    try:
        ids, _ = store.live_texts()
        assert store.parts().vectors.ntotal == len(ids)
        return store.vector_sets()["active"], len(ids)
    finally:
        store.close()


def _counting(encoder):
    calls = []
    original = encoder.embed

    def embed(texts, *args, **kw):
        calls.append(len(texts))
        return original(texts, *args, **kw)

    encoder.embed = embed
    return calls


def test_adapt_switches_vectors_keeps_the_base_set_and_opens_adapted(indexed, tmp_path):
    folder, index, encoder = indexed
    before = encoder.embed(["grey heron fish"])
    report = _adapt(index, encoder, tmp_path)
    assert report.swapped and fingerprint_of(report.encoder)
    assert encoder.name == report.encoder and encoder.name.startswith("tiny-encoder+adapt:")
    active, chunks = _live_vectors_ok(index)
    assert active == encoder.name
    store = IndexStore.open(index)
    kept, kept_ids, _ = store.kept_vectors()
    store.close()
    assert kept == "tiny-encoder" and len(kept_ids) == chunks
    # A new process opening the index gets the adapter loaded: same query vector as the adapting encoder.
    fresh = tiny_encoder()  # noqa: F821
    prepare_encoder(fresh, index)
    assert fresh.name == encoder.name
    np.testing.assert_allclose(fresh.embed(["grey heron fish"]), encoder.embed(["grey heron fish"]), atol=1e-6)
    assert not np.allclose(fresh.embed(["grey heron fish"]), before, atol=1e-4)
    hits = Retriever(index, fresh).search("grey heron fish", k=2, mode="dense")
    assert hits and abs(hits[0].dense_score - float(fresh.embed([hits[0].text])[0] @ fresh.embed(
        ["grey heron fish"])[0])) < 0.2  # stored vectors are the adapted encoder's (heading differs slightly)
    # A plain encoder is refused by the retriever: vectors never mix silently.
    from retrieval.errors import IndexMismatchError

    with pytest.raises(IndexMismatchError, match="adapt"):
        Retriever(index, tiny_encoder())  # noqa: F821


def test_no_adapt_restores_the_base_without_embedding_and_adapt_on_returns(indexed, tmp_path):
    from assistant.adapt import activate

    folder, index, encoder = indexed
    base_vectors = IndexStore.open(index).live_vectors()[1].copy()
    _adapt(index, encoder, tmp_path)
    adapted_name = encoder.name
    plain = tiny_encoder()  # noqa: F821
    calls = _counting(plain)
    prepare_encoder(plain, index, use_adapt=False)
    assert plain.name == "tiny-encoder" and calls == []  # the kept vectors came back; nothing embedded
    assert _live_vectors_ok(index)[0] == "tiny-encoder"
    np.testing.assert_array_equal(IndexStore.open(index).live_vectors()[1], base_vectors)
    # A file added while adaptation is off: switching on embeds only its chunks.
    (folder / "moss.md").write_text("# Moss\n\nMosses grow on damp stones and need no roots.", encoding="utf-8")
    sync_folder(folder, index, plain, progress=False)
    again = tiny_encoder()  # noqa: F821
    calls = _counting(again)
    assert activate(index, again)
    assert again.name == adapted_name and sum(calls) == 1
    assert _live_vectors_ok(index)[0] == adapted_name
    # Removing the adapter folder by hand: the next open falls back to the bundled encoder's vectors.
    import shutil

    shutil.rmtree(index / "adapters")
    other = tiny_encoder()  # noqa: F821
    calls = _counting(other)
    prepare_encoder(other, index)
    assert other.name == "tiny-encoder" and sum(calls) == 0  # moss.md's base vector was embedded at its sync
    assert _live_vectors_ok(index)[0] == "tiny-encoder"


def test_assistant_opens_an_adapted_index_with_its_adapter_and_no_adapt_flag(indexed, tmp_path):
    from assistant.pipeline import Assistant
    from assistant_fakes import FakeGenerator

    folder, index, encoder = indexed
    _adapt(index, encoder, tmp_path)
    bot = Assistant.from_folder(folder, index, encoder=tiny_encoder(), generator=FakeGenerator(),  # noqa: F821
                                use_reader=False, refusal_threshold=-1.0)
    assert bot.encoder.name == encoder.name and bot.stats()["encoder"] == encoder.name
    assert bot.retrieve("sourdough starter")[0]
    off = Assistant.from_index(index, encoder=tiny_encoder(), generator=FakeGenerator(),  # noqa: F821
                               use_reader=False, use_adapt=False)
    assert off.encoder.name == "tiny-encoder" and off.stats()["encoder"] == "tiny-encoder"
    # The first assistant notices the switch made by the second and follows it (no mixed vectors).
    hits, _ = bot.retrieve("sourdough starter")
    assert hits and bot.encoder.name == "tiny-encoder"


def test_index_of_the_previous_release_opens_without_re_embedding(indexed, tmp_path):
    folder, index, encoder = indexed
    db = sqlite3.connect(index / "index.sqlite")  # what the release before adaptation wrote: neither the
    db.execute("DROP TABLE kept_vectors")          # kept-vectors table nor an encoder record in meta
    db.execute("DELETE FROM meta WHERE key IN ('encoder', 'kept_encoder')")
    db.commit()
    db.close()
    fresh = tiny_encoder()  # noqa: F821
    calls = _counting(fresh)
    prepare_encoder(fresh, index)
    report = sync_folder(folder, index, fresh, progress=False)
    assert calls == [] and report.chunks_embedded == 0 and fresh.name == "tiny-encoder"
    assert Retriever(index, fresh).search("pulsar neutron star", k=1)[0].path == "stars.md"
    store = IndexStore.open(index)
    assert store.vector_sets() == {"active": "tiny-encoder", "kept": None}
    store.close()
    _adapt(index, fresh, tmp_path)  # and it can be adapted (the table is created in the switch)
    assert _live_vectors_ok(index)[0] == fresh.name


def test_the_reader_sees_the_same_weights_after_adaptation(indexed, tmp_path):
    from model.cross_encoder import base_fingerprint
    from model.reader import Reader, ReaderConfig

    folder, index, encoder = indexed
    state = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    fingerprint = base_fingerprint(encoder.model)
    torch.manual_seed(1)
    reader = Reader.new(encoder, ReaderConfig(own_layers=1, lora_rank=2, window=64, stride=16))
    question, passages = "what do herons hunt?", [DOCS["birds.md"], DOCS["boats.md"]]
    spans = [(s.passage, s.start, s.end, round(s.score, 5)) for s in reader.read(question, passages)]
    _adapt(index, encoder, tmp_path, mlm=True)
    assert encoder.adapter is not None
    after = encoder.model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state) and set(state) == set(after)
    assert base_fingerprint(encoder.model) == fingerprint
    assert [(s.passage, s.start, s.end, round(s.score, 5)) for s in reader.read(question, passages)] == spans


def test_mlm_task_counts_masked_positions_only_and_distill_moves_margins():
    encoder = tiny_encoder()  # noqa: F821
    from assistant.adapt import MlmModel, token_rows, trainable_copy

    model, _ = trainable_copy(encoder, AdaptConfig(lora_rank=4))
    tok = encoder.tokenizer.hf
    task = MlmTask(0, tok.token_to_id("[MASK]"), [tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")],
                   encoder.model.config.vocab_size)
    rows = token_rows(encoder, list(DOCS.values()), 64)
    torch.manual_seed(0)
    batch = task.collate(rows)
    loss, count = task.loss(MlmModel.build(model), batch)
    assert count == int((batch[2] != -100).sum()) > 0 and torch.isfinite(loss)
    # Distillation: the student's margins move toward the teacher's.
    q = token_rows(encoder, ["which stone cools slowly?", "what keeps a boat upright?"], 16)
    p = token_rows(encoder, [DOCS["rocks.md"], DOCS["boats.md"]], 64)
    n = token_rows(encoder, [DOCS["tea.md"], DOCS["bread.md"]], 64)
    examples = [DistillExample(q[i], p[i], n[i], 3.0) for i in range(2)]
    distill = DistillTask(0, scale=10.0)
    opt = torch.optim.AdamW([x for x in model.parameters() if x.requires_grad], lr=1e-2)
    first = None
    for _ in range(15):
        loss, _ = distill.loss(model, distill.collate(examples))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_usable_question_filter():
    passage = "The grey heron hunts fish in shallow water."
    assert usable_question("What does the grey heron hunt?", passage)
    assert not usable_question("What is the passage about?", passage)
    assert not usable_question("The heron hunts fish.", passage)
    assert not usable_question("What is the capital of France?", passage)


def test_round_trip_filter_drops_questions_that_lead_to_another_passage(indexed, tmp_path):
    """consistency_depth: a synthetic question is trained on only when BM25 or the dense index ranks its own
    passage near the top; one written mostly in another passage's words is dropped, the specific ones stay."""
    import re

    _, index, encoder = indexed
    bodies = [text.split("\n\n", 1)[1] for text in DOCS.values()]

    class MixedWriter:
        name = "mixed writer"

        def write(self, passages, per_passage=1):
            out = []
            for p in passages:
                k = next(k for k, body in enumerate(bodies) if body in p)
                own = re.findall(r"[a-z]{5,}", bodies[k].lower())
                other = re.findall(r"[a-z]{5,}", bodies[(k + 1) % len(bodies)].lower())
                out.append([f"What does the {own[0]} do with {own[-1]}?",
                            f"What do {other[1]} and {other[2]} and {other[-1]} say about {own[0]}?"])
            return out

    config = AdaptConfig(**{**CONFIG, "consistency_depth": 1, "question_chunks": 6})  # noqa: F821
    report = adapt_index(index, encoder, config, question_writer=MixedWriter(), teacher=Teacher(),  # noqa: F821
                         work_dir=tmp_path / "work", emit=lambda line: None)
    negatives = next(step for step in report.steps if step.name == "negatives")
    usable = [(q, p) for p, qs in zip(bodies, MixedWriter().write(bodies)) for q in qs if usable_question(q, p)]
    misleading = sum(" and " in q for q, _ in usable)
    assert negatives.items == len(usable) and misleading >= 3
    # those that lead elsewhere: BM25 ranks the other passage first, and only the (random, tiny) dense index could
    # happen to rank the own passage first for one of them; every specific question is kept
    dropped = negatives.detail["dropped_by_round_trip"]
    assert misleading - 1 <= dropped <= misleading


def test_openings_add_one_question_per_chunk_that_starts_with_them(indexed, tmp_path):
    """AdaptConfig.openings: besides its free questions, each sampled chunk gets one question forced to begin with
    one of the openings (the writer is asked with them); those are trained on too and cached for a resumed run."""
    import json
    import re

    _, index, encoder = indexed
    calls = []

    class OpeningWriter:
        name = "opening writer"

        def write(self, passages, per_passage=1, openings=None):
            calls.append(openings)
            out = []
            for i, p in enumerate(passages):
                words = re.findall(r"[a-z]{5,}", p.lower())
                start = openings[i] if openings else "What does the"
                out.append([f"{start} {words[0]} with {words[-1]}?"])
            return out

    config = AdaptConfig(**{**CONFIG, "openings": ("How do I", "How can I")})  # noqa: F821
    report = adapt_index(index, encoder, config, question_writer=OpeningWriter(), teacher=Teacher(),  # noqa: F821
                         work_dir=tmp_path / "work", emit=lambda line: None)
    questions = next(step for step in report.steps if step.name == "questions")
    chunks = len(DOCS)
    assert calls[0] is None and all(o and set(o) <= {"How do I", "How can I"} for o in calls[1:])
    assert questions.detail["questions"] == 2 * chunks and questions.detail["usable"] == 2 * chunks
    cached = [json.loads(line) for line in (tmp_path / "work" / "questions.jsonl").read_text().splitlines()]
    opened = [row for row in cached if row["key"].startswith("open:")]
    assert len(opened) == chunks and all(row["questions"][0].startswith("How ") for row in opened)
    calls.clear()  # a second run reuses every cached question
    adapt_index(index, encoder, config, question_writer=OpeningWriter(), teacher=Teacher(),  # noqa: F821
                work_dir=tmp_path / "work", emit=lambda line: None, swap=False)
    assert calls == []
    assert AdaptConfig.from_dict(json.loads(json.dumps(config.to_dict()))).openings == config.openings  # noqa: F821


def test_a_small_folder_is_warned_that_adapting_may_not_help(indexed, tmp_path):
    """Below SMALL_FOLDER_CHUNKS chunks the run says, before training, that adaptation has not helped folders that
    small and how to go back; the warning is repeated in the summary, and the run still adapts."""
    from assistant.adapt import SMALL_FOLDER_CHUNKS

    _, index, encoder = indexed
    lines: list[str] = []
    report = adapt_index(index, encoder, AdaptConfig(**CONFIG), question_writer=Writer(),  # noqa: F821
                         teacher=Teacher(), work_dir=tmp_path / "work", emit=lines.append, swap=False)  # noqa: F821
    assert report.chunks < SMALL_FOLDER_CHUNKS and len(report.warnings) == 1
    warned = next(i for i, line in enumerate(lines) if "warning" in line)
    assert f"only {report.chunks} chunks" in lines[warned] and "assistant adapt --off" in lines[warned]
    assert warned < next(i for i, line in enumerate(lines) if "distill" in line)  # said before the training
    assert f"warning: {report.warnings[0]}" in report.summary()
    assert any(step.name == "distill" and not step.skipped for step in report.steps)


def test_small_folders_get_several_openings_per_chunk(indexed, tmp_path):
    """AdaptConfig.max_openings_per_chunk: when a small folder gets several free questions per chunk, it gets as
    many forced openings (each chunk's different ones, in turn), up to the limit."""
    import json
    import re

    _, index, encoder = indexed
    asked: dict[str, list[str]] = {}

    class OpeningWriter:
        name = "opening writer"

        def write(self, passages, per_passage=1, openings=None):
            out = []
            for i, p in enumerate(passages):
                words = re.findall(r"[a-z]{5,}", p.lower())
                if openings:
                    asked.setdefault(p, []).append(openings[i])
                out.append([f"{openings[i] if openings else 'What does the'} {words[0]} with {words[-1]}?"])
            return out

    chunks = len(DOCS)  # noqa: F821
    openings = ("How do I", "How can I", "Is there a way to")
    config = AdaptConfig(**{**CONFIG, "openings": openings, "question_chunks": 2 * chunks,  # noqa: F821
                            "max_questions_per_chunk": 3, "max_openings_per_chunk": 2})
    report = adapt_index(index, encoder, config, question_writer=OpeningWriter(), teacher=Teacher(),  # noqa: F821
                         work_dir=tmp_path / "work", emit=lambda line: None, swap=False)
    questions = next(step for step in report.steps if step.name == "questions")
    assert questions.detail["per_chunk"] == 2
    assert len(asked) == chunks and all(len(set(o)) == 2 and set(o) <= set(openings) for o in asked.values())
    assert questions.detail["questions"] == 3 * chunks and questions.detail["usable"] == 3 * chunks
    assert json.loads(json.dumps(config.to_dict()))["max_openings_per_chunk"] == 2


_CHILD = HELPERS + textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import assistant.adapt as adapt
    import retrieval.store as store
    from assistant.adapt import AdaptConfig, adapt_index

    index, work, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def stop_here(name):
        print(f"AT {name}", flush=True)
        time.sleep(120)  # wait to be killed

    calls = {"loss": 0}
    loss = adapt.DistillTask.loss
    def slow_loss(self, model, batch):
        calls["loss"] += 1
        if point == "train" and calls["loss"] == 3:
            stop_here("train")
        return loss(self, model, batch)
    adapt.DistillTask.loss = slow_loss

    update = adapt.Progress.update
    def watch(self, done, force=False):
        update(self, done, force)
        if point == "embed" and self._step == "embed" and done >= 4:
            stop_here("embed")
    adapt.Progress.update = watch
    adapt.EMBED_SHARD = 4

    write_base = store.IndexWriter._write_base
    def base_then_stop(self, *args, **kw):
        out = write_base(self, *args, **kw)
        if point == "switch" and (len(args) > 4 or kw.get("vectors_of_live") is not None):
            stop_here("switch")
        return out
    store.IndexWriter._write_base = base_then_stop

    prune = adapt._prune_adapters
    def committed(path):
        if point == "committed":
            stop_here("committed")
        return prune(path)
    adapt._prune_adapters = committed

    config = AdaptConfig(**CONFIG)
    adapt_index(index, tiny_encoder(), config, question_writer=Writer(), teacher=Teacher(), work_dir=work,
                emit=lambda line: None)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("point", ["train", "embed", "switch", "committed"])
def test_kill_9_during_adapt_leaves_a_complete_index_and_the_next_run_finishes(indexed, tmp_path, point):
    folder, index, encoder = indexed
    base_name = encoder.name
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(index), str(tmp_path / "work"), point],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"AT {point}", f"the run did not reach {point}: {line!r}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The index opens, complete, with the old vectors (or, killed after the commit, the new ones), and serves.
    active, chunks = _live_vectors_ok(index)
    assert chunks == len(DOCS)
    assert (active == base_name) == (point != "committed")
    reader = tiny_encoder()  # noqa: F821
    prepare_encoder(reader, index)
    assert reader.name == active
    assert Retriever(index, reader).search("pulsar neutron star", k=1, mode="lexical")[0].path == "stars.md"
    assert Retriever(index, reader).search("pulsar neutron star", k=3, mode="dense")
    # The next run resumes and finishes; nothing half-written is left behind.
    fresh = tiny_encoder()  # noqa: F821
    prepare_encoder(fresh, index)
    report = _adapt(index, fresh, tmp_path)
    steps = {s.name: s for s in report.steps}
    if point == "train":
        assert steps["distill"].resumed
    if point == "embed":
        assert steps["embed"].resumed
    assert _live_vectors_ok(index)[0] == fresh.name
    assert not [p.name for p in index.rglob("*") if ".tmp-" in p.name]
    store = IndexStore.open(index)
    assert store.kept_vectors()[0] == base_name
    store.close()


_UI_CHILD = HELPERS + textwrap.dedent("""
    import sys
    from pathlib import Path
    from assistant.adapt import AdaptConfig, adapt_index
    adapt_index(Path(sys.argv[1]), tiny_encoder(), AdaptConfig(**CONFIG), question_writer=Writer(),
                teacher=Teacher(), work_dir=Path(sys.argv[2]), status_file=Path(sys.argv[3]), emit=lambda line: None)
    print("total 1.0 s")
""")


def test_library_button_adapts_in_a_child_process_and_the_chat_follows(indexed, tmp_path):
    from assistant.conversations import ConversationStore
    from assistant.pipeline import Assistant
    from assistant.ui import ChatApp
    from assistant_fakes import FakeGenerator

    folder, index, encoder = indexed
    bot = Assistant.from_folder(folder, index, encoder=tiny_encoder(), generator=FakeGenerator(),  # noqa: F821
                                use_reader=False, refusal_threshold=-1.0)
    app = ChatApp(bot, ConversationStore(tmp_path / "chats.sqlite3"))
    env_path = str(REPO)
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r}); exec({_UI_CHILD!r})",
               str(index), str(tmp_path / "work"), "{status}"]
    lines = list(app.adapt(command=command, poll_s=0.05))
    assert lines[0].startswith("Adapting") and lines[-1].startswith("Adapted:"), lines
    assert any(line.startswith("adapt ") for line in lines[1:-1])  # progress lines from the child's status file
    assert bot.encoder.name.startswith("tiny-encoder+adapt:") and bot.encoder.name in lines[-1]
    assert bot.retrieve("sourdough starter")[0]
    # A child that fails leaves the index as it was and says so.
    failing = [sys.executable, "-c", "import sys; sys.exit('error: no space left')"]
    lines = list(app.adapt(command=failing, poll_s=0.05))
    assert "no space left" in lines[-1] and "unchanged" in lines[-1]


def test_an_adapted_encoder_starts_a_new_index_with_the_bundled_weights(indexed, tmp_path):
    folder, index, encoder = indexed
    _adapt(index, encoder, tmp_path)
    assert encoder.adapter is not None
    other = tmp_path / "other-index"
    prepare_encoder(encoder, other)
    sync_folder(folder, other, encoder, progress=False)
    assert encoder.name == "tiny-encoder" and _live_vectors_ok(other)[0] == "tiny-encoder"
    prepare_encoder(encoder, index)  # and back on the adapted index, its adapter again
    assert encoder.name == _live_vectors_ok(index)[0] != "tiny-encoder"


def test_cli_status_names_the_searched_and_kept_vectors(indexed, tmp_path, capsys):
    from assistant.cli import main

    folder, index, encoder = indexed
    assert main(["adapt", "--index", str(index), "--status"]) == 0
    assert "not adapted" in capsys.readouterr().out
    _adapt(index, encoder, tmp_path)
    assert main(["adapt", "--index", str(index), "--status"]) == 0
    out = capsys.readouterr().out
    assert f"searches vectors of: {encoder.name}" in out and "keeps vectors of:    tiny-encoder" in out
    assert main(["adapt", "--index", str(index), "--on", "--off"]) == 1
    assert "one of" in capsys.readouterr().err


def test_cli_how_to_turns_the_openings_on_and_off(indexed, monkeypatch):
    """`assistant adapt --how-to` asks for how-to questions (AdaptConfig.openings); --no-how-to for none."""
    import assistant.adapt
    import model.encoder
    from assistant.cli import main

    _, index, encoder = indexed
    seen = []

    def fake_adapt(index_path, enc, config, **kw):
        seen.append(config.openings)
        return assistant.adapt.AdaptReport(index_path=str(index_path))

    monkeypatch.setattr(assistant.adapt, "adapt_index", fake_adapt)
    monkeypatch.setattr(assistant.adapt, "prepare_encoder", lambda *a, **k: None)
    monkeypatch.setattr(model.encoder.Encoder, "load", classmethod(lambda cls, *a, **k: encoder))
    for flag in ("--how-to", "--no-how-to"):
        assert main(["adapt", "--index", str(index), "--quiet", flag]) == 0
    assert seen == [assistant.adapt.HOWTO_OPENINGS, ()]
