"""Retrieval quality on any BEIR-format folder: nDCG@10, Recall@10, Recall@100, MRR@10 per search mode.

BEIR layout: `corpus.jsonl` ({"_id", "title", "text"}), `queries.jsonl` ({"_id", "text"}) and
`qrels/<split>.tsv` (query-id, corpus-id, score; a header line is allowed). Metrics follow trec_eval as
BEIR reports them: nDCG with linear gain (the qrel score) and log2 discount; a document counts as
relevant when its score is > 0; queries without relevant documents are left out of the average.

Each corpus document is indexed as one "file" (path = its id, heading = its title); long documents are
chunked like any other, and a document's rank is the rank of its best chunk.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from retrieval.errors import RetrievalError

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def read_beir(folder: str | Path, split: str = "test") -> tuple[dict[str, dict], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus {id: {"title", "text"}}, queries {id: text}, qrels {query id: {doc id: score}})."""
    folder = Path(folder)
    files = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    for name, path in files.items():
        if not path.is_file():
            raise RetrievalError(f"{path} not found: a BEIR folder needs corpus.jsonl, queries.jsonl and "
                                 f"qrels/{split}.tsv")
    corpus, queries, qrels = {}, {}, {}
    try:
        for line in files["corpus"].read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row.get("text") or ""}
        for line in files["queries"].read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                queries[str(row["_id"])] = row["text"]
    except (ValueError, KeyError) as exc:
        raise RetrievalError(f"bad BEIR jsonl in {folder}: {exc}") from None
    for number, line in enumerate(files["qrels"].read_text(encoding="utf-8").splitlines()):
        parts = line.strip().split("\t")
        if len(parts) < 3:
            continue
        try:
            score = int(float(parts[2]))
        except ValueError:
            if number == 0:
                continue  # header
            raise RetrievalError(f"bad qrels line {number + 1} in {files['qrels']}: {line!r}") from None
        qrels.setdefault(parts[0], {})[parts[1]] = score
    return corpus, queries, qrels


def ndcg_at(ranking: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gain: sum(rel_i / log2(i + 1)) / the same for the ideal order."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranking: Sequence[str], relevant: dict[str, int], k: int) -> float:
    wanted = {d for d, g in relevant.items() if g > 0}
    return len(wanted & set(ranking[:k])) / len(wanted) if wanted else 0.0


def mrr_at(ranking: Sequence[str], relevant: dict[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranking[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def score_rankings(rankings: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Average the four metrics over the queries that have at least one relevant document."""
    totals = dict.fromkeys(METRICS, 0.0)
    n = 0
    for qid, relevant in qrels.items():
        if not any(g > 0 for g in relevant.values()):
            continue
        ranking = list(rankings.get(qid, []))
        totals["ndcg@10"] += ndcg_at(ranking, relevant, 10)
        totals["recall@10"] += recall_at(ranking, relevant, 10)
        totals["recall@100"] += recall_at(ranking, relevant, 100)
        totals["mrr@10"] += mrr_at(ranking, relevant, 10)
        n += 1
    out = {m: (v / n if n else 0.0) for m, v in totals.items()}
    out["queries"] = n
    return out


SearchFn = Callable[[str, int, str], Sequence]  # (query, k, mode) -> hits with .path


def build_beir_index(corpus: dict[str, dict], index_path: str | Path, encoder, progress: bool = False):
    """Index a BEIR corpus (one document per entry) and return a `Retriever` on it."""
    from retrieval.chunking import ChunkerSettings, chunk_document
    from retrieval.loaders import Document
    from retrieval.retriever import Retriever
    from retrieval.store import DocumentRow, IndexStore
    from retrieval.sync import _bar, index_settings

    import hashlib

    settings = index_settings(encoder)
    store = IndexStore.open(index_path, expected=settings) if IndexStore.exists(index_path) \
        else IndexStore.create(index_path, settings)
    chunker = ChunkerSettings(**settings.chunker)
    with store.writer() as writer:
        known = store.documents()
        todo = []
        for doc_id, row in corpus.items():
            text = row["text"].strip() or row["title"].strip()
            sha = hashlib.sha256(f"{row['title']}\x00{text}".encode()).hexdigest()
            if doc_id in known and known[doc_id].sha256 == sha:
                continue
            headings = [(0, 1, row["title"])] if row["title"] else None
            body = f"{row['title']}\n\n{text}" if row["title"] else text
            todo.append(Document(doc_id, body, "beir", sha, len(body), 0.0, headings=headings))
        bar = _bar(len(todo), "embedding", "doc", progress)
        for start in range(0, len(todo), 64):
            group = todo[start:start + 64]
            chunk_lists = [chunk_document(d, encoder.count_tokens, chunker) for d in group]
            texts = [c.embedding_text() for chunks in chunk_lists for c in chunks]
            vectors = encoder.embed(texts) if texts else None
            row = 0
            for doc, chunks in zip(group, chunk_lists):
                if not chunks:
                    continue
                cid = writer.stage_content(doc.sha256, doc.kind, chunks, vectors[row:row + len(chunks)])
                row += len(chunks)
                writer.set_document(DocumentRow(doc.path, cid, doc.sha256, doc.size, 0, doc.kind))
            bar.update(len(group))
        bar.close()
        for doc_id in set(known) - set(corpus):
            writer.remove_document(doc_id)
        writer.commit()
    return Retriever(store, encoder)


def evaluate_beir(folder: str | Path, retriever_factory: Callable[[dict[str, dict]], object] | object,
                  modes: Iterable[str] = ("dense", "lexical", "hybrid"), k: int = 100, split: str = "test",
                  progress: bool = False) -> dict[str, dict[str, float]]:
    """Metrics per mode: {mode: {"ndcg@10", "recall@10", "recall@100", "mrr@10", "queries", "ms_per_query"}}.

    `retriever_factory(corpus) -> retriever` builds something with `search(query, k, mode)` whose hits have
    `.path` = the document id; an encoder may be passed instead, and a temporary index is built with it.
    """
    corpus, queries, qrels = read_beir(folder, split)
    qrels = {q: rel for q, rel in qrels.items() if q in queries}
    if not qrels:
        raise RetrievalError(f"no query in {folder}/queries.jsonl has judgements in qrels/{split}.tsv")
    tmp = None
    if hasattr(retriever_factory, "embed"):  # an encoder
        tmp = tempfile.TemporaryDirectory(prefix="beir-index-")
        retriever = build_beir_index(corpus, Path(tmp.name) / "index", retriever_factory, progress=progress)
    else:
        retriever = retriever_factory(corpus)
    try:
        results = {}
        for mode in modes:
            rankings, started = {}, time.perf_counter()
            for qid in qrels:
                hits = retriever.search(queries[qid], k=k * 3, mode=mode)
                ranking: list[str] = []
                for hit in hits:  # best chunk per document
                    if hit.path not in ranking:
                        ranking.append(hit.path)
                rankings[qid] = ranking[:k]
            elapsed = time.perf_counter() - started
            results[mode] = score_rankings(rankings, qrels)
            results[mode]["ms_per_query"] = 1000 * elapsed / max(1, len(qrels))
        return results
    finally:
        if tmp is not None:
            store = getattr(retriever, "store", None)
            if store is not None:
                store.close()
            tmp.cleanup()


def format_results(results: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per mode."""
    header = f"{'mode':<8} " + " ".join(f"{m:>10}" for m in METRICS) + f" {'queries':>8} {'ms/query':>9}"
    lines = [header]
    for mode, m in results.items():
        lines.append(f"{mode:<8} " + " ".join(f"{m[name]:>10.4f}" for name in METRICS)
                     + f" {int(m['queries']):>8} {m['ms_per_query']:>9.1f}")
    return "\n".join(lines)
