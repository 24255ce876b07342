"""The cross-encoder reranker (model/cross_encoder.py) on a tiny random encoder: scores in order and shape,
a few training steps separate a positive from near misses, save/load round trip, another base refused, the
merged inference copy matching the network, and the retriever's rerank stage reordering hits."""

from __future__ import annotations

import random

import pytest
import torch

from model.config import EncoderConfig
from model.cross_encoder import (CrossEncoder, CrossEncoderConfig, ListwiseTask, PairGroup, base_fingerprint,
                                 pad_pairs)
from model.encoder import BertModel, Encoder
from model.errors import CheckpointError
from model.sources import resolve_encoder
from model.tokenizer import Tokenizer
from model.train import Trainer, TrainConfig


@pytest.fixture(scope="module")
def bert_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(resolve_encoder(None) / "tokenizer.json")


def tiny_encoder(tokenizer: Tokenizer, seed: int = 0, name: str = "tiny-bert") -> Encoder:
    torch.manual_seed(seed)
    config = EncoderConfig.tiny(vocab_size=tokenizer.vocab_size)
    return Encoder(BertModel(config).eval(), tokenizer, name=name)


TINY = dict(layers=2, lora_rank=4, lora_alpha=8.0, max_length=48, max_question_tokens=12)
WORDS = ["river", "stone", "cloud", "apple", "table", "green", "music", "light", "paper", "horse"]
CODES = ["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango"]


def _groups(ce: CrossEncoder, n: int, seed: int) -> list[PairGroup]:
    """'which passage names the code X ?': the passage with 'code X' beside two without a code."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        code, other = rng.sample(CODES, 2)
        filler = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))  # noqa: E731
        passages = [f"{filler()} code {code} {filler()}", f"{filler()} {other} {filler()}",
                    f"{filler()} {filler()}"]
        q = ce.pairs.question_ids(f"which passage names the code {code} ?")
        out.append(PairGroup([ce.pairs.pair(q, p) for p in ce.pairs.passage_ids(passages)]))
    return out


def test_scores_have_one_value_per_passage_in_input_order(bert_tokenizer):
    ce = CrossEncoder.new(tiny_encoder(bert_tokenizer), CrossEncoderConfig(**TINY), run_dtype="float32")
    passages = ["short", "a much longer passage " * 20, "", "middle length passage here"]
    scores = ce.score("a question ?", passages, batch_size=2)
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    one_by_one = [ce.score("a question ?", [p])[0] for p in passages]
    assert scores == pytest.approx(one_by_one, abs=1e-4)  # batching and length sorting keep each passage's score
    assert ce.score("q", []) == []
    ids, types = ce.pairs.pairs("q " * 40, ["word " * 200])[0]
    assert len(ids) == len(types) <= TINY["max_length"]


def test_merged_inference_copy_matches_the_network_with_lora(bert_tokenizer):
    ce = CrossEncoder.new(tiny_encoder(bert_tokenizer), CrossEncoderConfig(**TINY, own_layers=1),
                          run_dtype="float32")
    with torch.no_grad():
        for p in ce.model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-zero LoRA update, own block and head
    batch = pad_pairs(ce.pairs.pairs("what is it ?", ["river stone", "a longer passage about the stone river"]))
    with torch.no_grad():
        direct = ce.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert torch.allclose(ce._scores(batch), direct, atol=1e-4)


def test_a_few_steps_separate_the_positive_from_near_misses(bert_tokenizer):
    encoder = tiny_encoder(bert_tokenizer)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    ce = CrossEncoder.new(encoder, CrossEncoderConfig(**TINY, own_layers=1), run_dtype="float32")
    config = TrainConfig(max_steps=80, batch_size=16, lr=3e-3, warmup_steps=3, progress=False, device="cpu")
    result = Trainer(ce.model, _groups(ce, 400, seed=0), None, config, task=ListwiseTask()).train()
    assert result.train_loss[-1][1] < result.train_loss[0][1] / 2
    ce.model.eval()
    wins = 0
    for group_seed in range(20):
        rng = random.Random(100 + group_seed)
        code, other = rng.sample(CODES, 2)
        scores = ce.score(f"which passage names the code {code} ?",
                          [f"apple green {other} paper", f"river code {code} light", "stone cloud table music"])
        wins += scores[1] > max(scores[0], scores[2])
    assert wins >= 17
    assert all(torch.equal(before[k], v) for k, v in encoder.model.state_dict().items())  # the base is untouched


def test_save_load_round_trip_and_wrong_base_refused(bert_tokenizer, tmp_path):
    encoder = tiny_encoder(bert_tokenizer)
    ce = CrossEncoder.new(encoder, CrossEncoderConfig(**TINY, own_layers=1), run_dtype="float32")
    with torch.no_grad():
        for p in ce.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    passages = ["river stone", "cloud apple table", "code tango"]
    expected = ce.score("which code ?", passages)
    folder = ce.save(tmp_path / "ce", metadata={"note": "test"}, dtype=torch.float32)
    loaded = CrossEncoder.load(encoder, folder, run_dtype="float32")
    assert loaded.metadata["note"] == "test" and loaded.config.own_layers == 1
    assert loaded.score("which code ?", passages) == pytest.approx(expected, abs=1e-5)
    other = tiny_encoder(bert_tokenizer, seed=1, name="other")  # same shapes, other weights
    with pytest.raises(CheckpointError, match="fingerprint"):
        CrossEncoder.load(other, folder)
    with pytest.raises(CheckpointError, match="not a cross-encoder folder"):
        CrossEncoder.load(encoder, tmp_path / "nothing")
    (folder / "cross_encoder.safetensors").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="damaged"):
        CrossEncoder.load(encoder, folder)


def test_fingerprint_is_the_same_for_a_bfloat16_copy_of_the_base(bert_tokenizer):
    encoder = tiny_encoder(bert_tokenizer)
    copy16 = BertModel(encoder.model.config)
    copy16.load_state_dict(encoder.model.state_dict())
    assert base_fingerprint(copy16.to(torch.bfloat16)) == base_fingerprint(encoder.model)
    assert base_fingerprint(tiny_encoder(bert_tokenizer, seed=3).model) != base_fingerprint(encoder.model)


class WordReranker:
    """Scores a passage by whether it holds a word: the stage's contract, without a network."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.calls: list[int] = []

    def score(self, question, passages):
        self.calls.append(len(passages))
        return [10.0 if self.word in p else -float(i) for i, p in enumerate(passages)]


def test_rerank_stage_reorders_the_retrievers_hits(tmp_path):
    from retrieval.retriever import Retriever
    from retrieval.store import default_index_path
    from retrieval.sync import sync_folder
    from retrieval.testing import HashingEncoder

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(8):
        extra = " zebra" if i == 6 else ""
        (folder / f"f{i}.txt").write_text(f"notes about rivers and stones number {i}{extra}\n", encoding="utf-8")
    encoder = HashingEncoder()
    index = tmp_path / "index"
    sync_folder(folder, index, encoder, progress=False)
    reranker = WordReranker("zebra")
    retriever = Retriever(index, encoder, reranker=reranker)
    plain = retriever.search("rivers and stones", k=3, mode="hybrid")
    assert all(h.rerank_score is None for h in plain) and reranker.calls == []
    reranked = retriever.search("rivers and stones", k=3, mode="hybrid", rerank=8, rerank_mode="replace")
    assert reranker.calls == [8]
    assert reranked[0].path == "f6.txt" and reranked[0].rerank_score == 10.0
    assert [h.rank for h in reranked] == [1, 2, 3]
    scores = [h.rerank_score for h in reranked]
    assert scores == sorted(scores, reverse=True)
    assert Retriever(index, encoder).search("rivers and stones", k=3, rerank=8)[0].rerank_score is None


def test_cls_block_equals_row_zero_of_the_full_block(bert_tokenizer):
    from torch import nn

    from model.cross_encoder import cls_block
    from model.lora import LowRankSide

    torch.manual_seed(0)
    layer = tiny_encoder(bert_tokenizer).model.layers[0]
    hidden, inner = layer.qkv.in_features, layer.mlp_in.out_features
    x = torch.randn(3, 9, hidden)  # [B, T, H]
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False  # a padded row
    side = nn.ModuleDict({"qkv": LowRankSide(hidden, 3 * hidden, 4, 8.0), "attn_out": LowRankSide(hidden, hidden, 4, 8.0),
                          "mlp_in": LowRankSide(hidden, inner, 4, 8.0), "mlp_out": LowRankSide(inner, hidden, 4, 8.0)})
    with torch.no_grad():
        for p in side.parameters():
            p.normal_(0, 0.1)
        for s, m in ((None, None), (None, mask), (side, mask)):
            torch.testing.assert_close(cls_block(layer, x, m, s), layer(x, m, side=s)[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [dict(own_layers=0), dict(own_layers=2, lora_rank=0), dict(own_layers=1)])
def test_network_scores_equal_a_plain_run_of_its_blocks(bert_tokenizer, options):
    """The network (trained through `forward`) against every block run whole by BertLayer, LoRA added by hand."""
    encoder = tiny_encoder(bert_tokenizer)
    ce = CrossEncoder.new(encoder, CrossEncoderConfig(**{**TINY, **options}), run_dtype="float32")
    with torch.no_grad():
        for p in ce.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = pad_pairs(ce.pairs.pairs("which stone ?", ["river stone", "a much longer passage about a green horse"]))
    net = ce.model
    with torch.no_grad():
        mask = batch["attention_mask"].bool()[:, None, None, :]
        x = encoder.model.embeddings(batch["input_ids"], batch["token_type_ids"])
        flags = net.match_flags(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        x = x + net.match(flags)
        for i in range(net.n_shared):
            x = encoder.model.layers[i](x, mask, side=None if net.side is None else net.side[i])
        for layer in net.own:
            x = layer(x, mask)
        expected = net.score_head(x[:, 0])
        torch.testing.assert_close(net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                                   expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ce._scores(batch), expected, atol=1e-4, rtol=1e-4)  # the merged inference copy


def test_damaged_or_foreign_folders_are_checkpoint_errors(bert_tokenizer, tmp_path):
    import json

    encoder = tiny_encoder(bert_tokenizer)
    folder = CrossEncoder.new(encoder, CrossEncoderConfig(**TINY)).save(tmp_path / "ce")
    meta = json.loads((folder / "cross_encoder.json").read_text())
    (folder / "cross_encoder.json").write_text(json.dumps({**meta, "config": {**meta["config"], "layers": 1,
                                                                              "own_layers": 1}}))
    with pytest.raises(CheckpointError, match="does not match"):  # weights of 2 blocks, config says 1
        CrossEncoder.load(encoder, folder)
    (folder / "cross_encoder.json").write_text(json.dumps({**meta, "config": {**meta["config"], "layers": 9}}))
    with pytest.raises(CheckpointError, match="does not fit"):  # deeper than the encoder
        CrossEncoder.load(encoder, folder)
    (folder / "cross_encoder.json").write_text(json.dumps({**meta, "format": "something-else/3"}))
    with pytest.raises(CheckpointError, match="another version"):
        CrossEncoder.load(encoder, folder)
    (folder / "cross_encoder.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        CrossEncoder.load(encoder, folder)
    (folder / "cross_encoder.json").write_text(json.dumps(meta))
    data = (folder / "cross_encoder.safetensors").read_bytes()
    (folder / "cross_encoder.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="damaged"):
        CrossEncoder.load(encoder, folder)


def _word_folder(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    topics = ["rivers and stones", "green apples", "music and light", "paper horses", "cloud tables",
              "stone bridges over rivers", "river light at noon", "apple paper music"]
    for i, topic in enumerate(topics):
        (folder / f"f{i}.md").write_text(f"# Note {i}\n\nNotes about {topic}, number {i}.\n", encoding="utf-8")
    return folder


def test_reranked_search_orders_hits_by_the_cross_encoder(bert_tokenizer, tmp_path):
    """A real (tiny, random) cross-encoder as the stage: the top N come back in the order of its own scores."""
    from retrieval.chunking import embedding_text
    from retrieval.retriever import Retriever
    from retrieval.sync import sync_folder

    encoder = tiny_encoder(bert_tokenizer)
    sync_folder(_word_folder(tmp_path), tmp_path / "index", encoder, progress=False)
    ce = CrossEncoder.new(encoder, CrossEncoderConfig(**TINY, own_layers=1), run_dtype="float32")
    with torch.no_grad():
        for p in ce.model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # scores spread out, so the order is not the retriever's
    retriever = Retriever(tmp_path / "index", encoder, reranker=ce)
    query = "stones in the river"
    plain = retriever.search(query, k=6, mode="hybrid")
    scores = ce.score(query, [embedding_text(h.heading, h.text) for h in plain])
    expected = [plain[i].chunk_id for i in sorted(range(len(plain)), key=lambda i: -scores[i])]
    assert expected != [h.chunk_id for h in plain]  # the test would notice a stage that keeps the order
    reranked = retriever.search(query, k=6, mode="hybrid", rerank=6, rerank_mode="replace")
    assert [h.chunk_id for h in reranked] == expected
    assert [h.rerank_score for h in reranked] == pytest.approx(sorted(scores, reverse=True), abs=1e-5)
    top3 = retriever.search(query, k=3, mode="hybrid", rerank=6, rerank_mode="replace")  # the best 3 of the 6
    assert [h.chunk_id for h in top3] == expected[:3]
    # the default fuses the two orders: 1/(61 + retriever rank) + 1/(61 + cross-encoder rank), ties to the retriever
    ce_rank = {i: r for r, i in enumerate(sorted(range(len(plain)), key=lambda i: -scores[i]))}
    fused = sorted(range(len(plain)), key=lambda i: (-(1 / (61 + i) + 1 / (61 + ce_rank[i])), i))
    replaced = [[h.chunk_id for h in plain].index(c) for c in expected]
    assert fused != list(range(len(plain))) and fused != replaced  # the test tells the three orders apart
    assert [h.chunk_id for h in retriever.search(query, k=6, mode="hybrid", rerank=6)] == \
        [plain[i].chunk_id for i in fused]


def test_assistant_reranks_through_settings_and_shows_the_reranked_sources(bert_tokenizer, tmp_path):
    from assistant.pipeline import Assistant, load_reranker
    from assistant.settings import Settings, SettingsError
    from retrieval.chunking import embedding_text
    from tests.assistant_fakes import FakeGenerator

    encoder = tiny_encoder(bert_tokenizer)
    ce = CrossEncoder.new(encoder, CrossEncoderConfig(**TINY, own_layers=1), run_dtype="float32")
    with torch.no_grad():
        for p in ce.model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    folder = ce.save(tmp_path / "ce", dtype=torch.float32)
    docs = _word_folder(tmp_path)
    common = dict(encoder=encoder, generator=FakeGenerator(reply="Rivers carry stones [1]."), refusal_threshold=-1.0,
                  relative_floor=0.0, use_reader=False, open_answers=False, answer_mode="generate", k=3)
    plain = Assistant.from_folder(docs, tmp_path / "index", **common)
    assert plain.retriever.reranker is None  # rerank=0, the default: no reranker loaded
    assistant = Assistant.from_folder(docs, tmp_path / "index", rerank=8, reranker=folder, rerank_mode="replace",
                                      **common)
    hits, _ = assistant.retrieve("stones in the river")
    assert all(h.rerank_score is not None for h in hits)
    candidates = plain.retriever.search("stones in the river", k=8, mode="hybrid")
    loaded = CrossEncoder.load(encoder, folder, run_dtype="float32")
    scores = loaded.score("stones in the river", [embedding_text(c.heading, c.text) for c in candidates])
    best = sorted(range(len(candidates)), key=lambda i: -scores[i])[:3]
    assert best != [0, 1, 2]  # the reranked top 3 are not the retriever's
    assert [h.chunk_id for h in hits] == [candidates[i].chunk_id for i in best]
    answer = assistant.ask("stones in the river")
    assert [s.path for s in answer.sources] == [candidates[i].path for i in best]
    with pytest.raises(SettingsError, match="does not exist"):
        Settings(rerank=20, reranker=tmp_path / "missing").reranker_path()
    with pytest.raises(SettingsError, match="rerank_mode"):
        Settings(rerank=20, rerank_mode="sideways").validate()
    from assistant.settings import RERANK_MODES
    from retrieval.retriever import RERANK_MODES as RETRIEVER_MODES
    assert RERANK_MODES == RETRIEVER_MODES  # the settings' copy (it imports nothing heavy) stays the retriever's
    other = tiny_encoder(bert_tokenizer, seed=5, name="other")
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_reranker(Settings(rerank=20, reranker=folder), other)


def test_match_flags_mark_tokens_found_in_the_other_segment(bert_tokenizer):
    ce = CrossEncoder.new(tiny_encoder(bert_tokenizer), CrossEncoderConfig(**TINY))
    batch = pad_pairs(ce.pairs.pairs("where is the stone ?", ["the stone, the river .", "green apple"]))
    flags = ce.model.match_flags(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    tokens = [[bert_tokenizer.hf.id_to_token(i) for i in row] for row in batch["input_ids"].tolist()]
    marked = [{t for t, f in zip(row, fl) if f} for row, fl in zip(tokens, flags.tolist())]
    assert marked[0] == {"the", "stone"}  # in both segments; [CLS]/[SEP], '?', ',', '.' and padding never match
    assert marked[1] == set()
    assert flags[0].sum() == 5  # question: the, stone; passage: the, stone, the


def test_the_bundled_reranker_is_skipped_beside_another_encoder(bert_tokenizer, tmp_path, monkeypatch, caplog):
    import assistant.settings as settings_module
    from assistant.pipeline import load_reranker
    from assistant.settings import Settings

    trained_on = tiny_encoder(bert_tokenizer)
    CrossEncoder.new(trained_on, CrossEncoderConfig(**TINY)).save(tmp_path / "bundled")
    monkeypatch.setattr(settings_module, "DEFAULT_RERANKER", tmp_path / "bundled")
    assert isinstance(load_reranker(Settings(rerank=20), trained_on), CrossEncoder)
    assert load_reranker(Settings(rerank=0), trained_on) is None
    other = tiny_encoder(bert_tokenizer, seed=7, name="other")
    with caplog.at_level("WARNING"):
        assert load_reranker(Settings(rerank=20), other) is None  # the shipped one: warn, do not rerank
    assert "trained on another encoder" in caplog.text
    with pytest.raises(CheckpointError, match="fingerprint"):  # the same folder asked for by name: an error
        load_reranker(Settings(rerank=20, reranker=tmp_path / "bundled"), other)


@pytest.mark.real
def test_shipped_reranker_prefers_the_passage_that_answers():
    """The shipped weights on the real MiniLM: the passage that answers beats near misses on the same topic."""
    from assistant.settings import DEFAULT_RERANKER

    if not (DEFAULT_RERANKER / "cross_encoder.safetensors").exists():
        pytest.skip("no reranker shipped")
    encoder = Encoder.load()
    ce = CrossEncoder.load(encoder, DEFAULT_RERANKER)
    cases = [
        ("In what year did the railway bridge at Selby open?",
         ["The railway bridge at Selby opened in 1871, after four years of building work.",
          "Selby is a market town on the River Ouse, known for its abbey church.",
          "The river at Selby is tidal, and floods reached the town centre in 1947."]),
        ("Who designed the abbey's west window?",
         ["The abbey's choir was rebuilt in the fourteenth century after a fire.",
          "The west window of the abbey was designed by the architect John Oldrid Scott.",
          "Visitors reach the abbey from the market place in a few minutes."]),
    ]
    for question, passages in cases:
        scores = ce.score(question, passages)
        best = max(range(len(passages)), key=lambda i: scores[i])
        assert "1871" in passages[best] or "Scott" in passages[best], (question, scores)


def test_technical_groups_put_the_passage_first_and_never_its_own_object_among_the_misses(bert_tokenizer,
                                                                                          tmp_path):
    """assistant.docstring_pairs' pairs become listwise groups: [the question's passage, near misses...], no
    miss from the same object, a held-out share kept apart, rows without a question only as misses."""
    import json

    from assistant.rerank_training import technical_groups

    ce = CrossEncoder.new(tiny_encoder(bert_tokenizer), CrossEncoderConfig(**TINY))
    rows = []
    for i, code in enumerate(CODES):
        for part in range(2):  # two passages of the same object: neither may be the other's miss
            rows.append({"package": "pkg", "name": f"pkg.{code}", "passage": f"## pkg.{code}\n\n{code} part {part} "
                         f"{WORDS[i]} {WORDS[(i + part) % len(WORDS)]}",
                         "question": f"what does {code} do with {WORDS[i]}?" if part == 0 else None})
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    train, held, counts = technical_groups(path, ce.pairs, negatives=3, lexical=2, held_out=0.25)
    assert counts["questions"] == len(CODES) and counts["passages"] == len(rows)
    assert len(train) + len(held) == len(CODES) and len(held) == 2
    passage_ids = {(r["name"], k): ce.pairs.passage_ids([r["passage"]])[0] for k, r in enumerate(rows)}

    def name_of(pair) -> str:
        ids, types = pair
        segment = ids[types.index(1):-1]  # [CLS] question [SEP] | passage [SEP]
        found = {key[0] for key, p in passage_ids.items() if p[:len(segment)] == segment}
        assert len(found) == 1
        return found.pop()

    for group in train + held:
        assert len(group.pairs) == 4
        names = [name_of(pair) for pair in group.pairs]
        assert names[0] not in names[1:]
    # a second file of questions about the same passages (docstring_pairs --openings) pools with the first
    how = tmp_path / "pairs-openings.jsonl"
    how.write_text("\n".join(json.dumps({**r, "question": f"How do I {r['name']} the {WORDS[0]}?"})
                             for r in rows if r["question"]) + "\n", encoding="utf-8")
    train, held, counts = technical_groups([path, how], ce.pairs, negatives=3, lexical=2, held_out=0.25)
    assert counts["questions"] == 2 * len(CODES) and counts["passages"] == len(rows)
    for group in train + held:
        names = [name_of(pair) for pair in group.pairs]
        assert names[0] not in names[1:]


class _FixedEmbedder:
    """Stands in for the bundled encoder: each text's vector is given (unit length)."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed(self, texts, batch_size: int = 32):
        import numpy as np

        out = np.asarray([self.vectors[t] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_dense_near_misses_are_the_encoders_nearest_other_passages(bert_tokenizer, tmp_path, monkeypatch):
    """`--dense`: the near misses of a question are the passages the encoder puts nearest it (what hybrid search
    brings into the reranker's top hits), never its own passage or object."""
    import json

    from assistant.rerank_training import technical_groups

    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path / "cache"))
    ce = CrossEncoder.new(tiny_encoder(bert_tokenizer), CrossEncoderConfig(**TINY))
    n = len(CODES)
    rows, vectors = [], {}
    for i, code in enumerate(CODES):
        passage = f"## pkg.{code}\n\n{code} {WORDS[i]}"
        question = f"what does {code} do?"
        rows.append({"package": "pkg", "name": f"pkg.{code}", "passage": passage, "question": question})
        # passage i points along axis i; question i lies between its passage and passage i+1 (nearer its own),
        # so the encoder's nearest *other* passage is i+1
        passage_vec, question_vec = [0.0] * n, [0.0] * n
        passage_vec[i] = 1.0
        question_vec[i], question_vec[(i + 1) % n] = 1.0, 0.6
        vectors[passage], vectors[question] = passage_vec, question_vec
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    train, held, counts = technical_groups(path, ce.pairs, negatives=1, lexical=0, depth=1, held_out=0.0, dense=1,
                                           encoder=_FixedEmbedder(vectors))
    assert counts["dense"] == n and counts.get("random", 0) == 0
    ids = {r["name"]: ce.pairs.passage_ids([r["passage"]])[0] for r in rows}
    question_of = {tuple(ce.pairs.question_ids(r["question"])): i for i, r in enumerate(rows)}
    for group in train:
        first_ids, first_types = group.pairs[0]
        miss_ids, miss_types = group.pairs[1]
        question = tuple(first_ids[1:first_types.index(1) - 1])  # [CLS] question [SEP] | passage [SEP]
        i = question_of[question]
        miss = miss_ids[miss_types.index(1):-1]
        assert miss == ids[rows[(i + 1) % n]["name"]][:len(miss)]
    with pytest.raises(ValueError, match="encoder"):
        technical_groups(path, ce.pairs, negatives=1, lexical=0, dense=1)
