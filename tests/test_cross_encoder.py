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
    reranked = retriever.search("rivers and stones", k=3, mode="hybrid", rerank=8)
    assert reranker.calls == [8]
    assert reranked[0].path == "f6.txt" and reranked[0].rerank_score == 10.0
    assert [h.rank for h in reranked] == [1, 2, 3]
    scores = [h.rerank_score for h in reranked]
    assert scores == sorted(scores, reverse=True)
    assert Retriever(index, encoder).search("rivers and stones", k=3, rerank=8)[0].rerank_score is None
