"""BEIR metrics against hand-computed values, and the evaluation loop end to end on a tiny fixture."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from retrieval.errors import RetrievalError
from retrieval.evaluate import evaluate_beir, format_results, mrr_at, ndcg_at, read_beir, recall_at, score_rankings
from retrieval.testing import HashingEncoder

BEIR = Path(__file__).parent / "fixtures" / "beir_tiny"

# Fixed rankings for the fixture's judged queries (q1: d1 rel 2, d3 rel 1; q2: d5; q3: d6, d4 judged 0).
RANKINGS = {
    "q1": ["d2", "d1", "d4", "d3"],
    "q2": ["d5", "d1"],
    "q3": [f"x{i}" for i in range(12)] + ["d6"],  # relevant only at rank 13: in recall@100, not @10
}
# By hand: q1 DCG = 2/log2(3) + 1/log2(5) = 1.2618595 + 0.4306766 = 1.6925361,
#          IDCG = 2/log2(2) + 1/log2(3) = 2.6309298, nDCG = 0.6433225; recall 1; MRR 1/2.
#          q2: nDCG 1, recall 1, MRR 1.   q3: nDCG@10 0, recall@10 0, recall@100 1, MRR@10 0.
EXPECTED = {
    "ndcg@10": (0.6433225 + 1 + 0) / 3,
    "recall@10": (1 + 1 + 0) / 3,
    "recall@100": 1.0,
    "mrr@10": (0.5 + 1 + 0) / 3,
}


@dataclass
class _Hit:
    path: str


class _FixedRetriever:
    def __init__(self, corpus):
        self.corpus = corpus
        self.queries = {text: qid for qid, text in read_beir(BEIR)[1].items()}

    def search(self, query, k=10, mode="hybrid"):
        return [_Hit(p) for p in RANKINGS.get(self.queries[query], [])][:k]


def test_single_query_metrics_by_hand():
    relevant = {"d1": 2, "d3": 1}
    assert ndcg_at(["d2", "d1", "d4", "d3"], relevant) == pytest.approx(
        (2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3)))
    assert ndcg_at(["d1", "d3"], relevant) == pytest.approx(1.0)
    assert ndcg_at(["d3", "d1"], relevant) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert recall_at(["d3", "x"], relevant, 10) == 0.5 and recall_at(["x"] * 10 + ["d1"], relevant, 10) == 0
    assert mrr_at(["x", "y", "d3"], relevant) == pytest.approx(1 / 3) and mrr_at(["x"], relevant) == 0


def test_read_beir_fixture():
    corpus, queries, qrels = read_beir(BEIR)
    assert len(corpus) == 6 and corpus["d1"]["title"] == "Volcanoes" and len(queries) == 4
    assert qrels == {"q1": {"d1": 2, "d3": 1}, "q2": {"d5": 1}, "q3": {"d6": 1, "d4": 0}}


def test_evaluate_beir_matches_hand_computed_values():
    results = evaluate_beir(BEIR, _FixedRetriever, modes=("hybrid",), k=100)
    metrics = results["hybrid"]
    assert metrics["queries"] == 3  # q4 has no judgements
    for name, value in EXPECTED.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert score_rankings(RANKINGS, read_beir(BEIR)[2])["ndcg@10"] == pytest.approx(EXPECTED["ndcg@10"], abs=1e-6)
    assert "ndcg@10" in format_results(results)


def test_evaluate_beir_end_to_end_with_an_index():
    results = evaluate_beir(BEIR, HashingEncoder(), modes=("lexical", "dense", "hybrid"), k=10)
    lexical = results["lexical"]
    # each query shares words only with its relevant documents, so BM25 finds all of them first
    assert lexical["recall@10"] == 1.0 and lexical["mrr@10"] == 1.0
    assert lexical["ndcg@10"] > 0.9
    assert results["hybrid"]["recall@10"] == 1.0


def test_bad_folder_is_a_user_error(tmp_path):
    with pytest.raises(RetrievalError, match="corpus.jsonl"):
        read_beir(tmp_path)


def test_cli_rejects_unknown_mode(capsys):
    from assistant.cli import main

    assert main(["eval-retrieval", str(BEIR), "--modes", "dense,fuzzy"]) == 1
    assert "unknown mode" in capsys.readouterr().err
