"""Search an index: dense (FAISS), lexical (BM25) or hybrid (a fusion of both).

Hybrid fusion ("convex", the default): the union of the dense and the BM25 candidates, each scored by both (the
cosine from its stored vector, BM25 over the index's statistics), each score standardised over the candidates
(z-score), then DENSE_WEIGHT * dense + (1 - DENSE_WEIGHT) * BM25. "rrf", the reciprocal-rank fusion (k=60) of the
two lists, is what hybrid search did before 2026-12-04: the convex fusion ranks better on both development sets
and on six of seven reported ones (held-out SQuAD articles, technical docs, PDF reports, real documents; the ML
notes -0.005; docs/benchmarks.md, "Hybrid fusion"), as Bruch et al. ("An Analysis of Fusion Functions for Hybrid
Retrieval", 2023) found: ranks throw away how far apart scores are.

Every returned `Hit` carries `dense_score`, the cosine between the query and the chunk, whatever the mode:
the assistant uses it to decide that a question is not answered by the documents.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from retrieval.errors import IndexMismatchError, RetrievalError
from retrieval.chunking import embedding_text
from retrieval.store import IndexStore, lexical_tokens, rebuild_hint

RRF_K = 60
FUSIONS = ("convex", "rrf")
DENSE_WEIGHT = 0.75  # convex fusion's weight on the dense z-score; chosen on two dev sets (benchmarks/fusion.py)
RERANK_MODES = ("rrf", "replace")
MODES = ("hybrid", "dense", "lexical")

PathFilter = str | Iterable[str] | Callable[[str], bool] | None


@dataclass
class Hit:
    """One retrieved passage. `score` is the mode's own score (cosine, BM25, or the hybrid fusion's); `rank`
    starts at 1.

    `path` is relative to the indexed folder; `also_in` lists other files with the very same content.
    """

    chunk_id: int
    text: str
    path: str
    heading: str
    page: int | None
    start: int
    end: int
    score: float
    dense_score: float
    lexical_score: float | None
    rank: int
    also_in: tuple[str, ...] = ()
    rerank_score: float | None = None  # the cross-encoder's score when a rerank stage ordered this hit


def path_matcher(path_filter: PathFilter) -> Callable[[str], bool] | None:
    """Turn a path filter into a predicate on relative paths.

    A string is a glob pattern when it contains * ? or [ (matched against the whole relative path, e.g.
    "notes/*.md" or "*.pdf"), else a file path or folder prefix ("notes" matches "notes/a.md").
    A list of strings matches when any of them does; a callable is used as it is.
    """
    if path_filter is None:
        return None
    if callable(path_filter):
        return path_filter
    patterns = [path_filter] if isinstance(path_filter, str) else list(path_filter)

    def one(pattern: str) -> Callable[[str], bool]:
        pattern = pattern.replace("\\", "/").lstrip("./") if not pattern.startswith("@") else pattern
        if any(c in pattern for c in "*?["):
            return lambda p: fnmatch.fnmatchcase(p, pattern)
        prefix = pattern.rstrip("/") + "/"
        return lambda p: p == pattern or p.startswith(prefix)

    matchers = [one(p) for p in patterns]
    return lambda path: any(m(path) for m in matchers)


def rerank_order(scores: Sequence[float], mode: str = "rrf") -> list[int]:
    """The order (indices) of hits the retriever ranked 0, 1, 2, ... given the cross-encoder's `scores` of them.
    "replace": by score alone. "rrf": by 1 / (RRF_K + 1 + retriever rank) + 1 / (RRF_K + 1 + score rank), ties to
    the retriever's order; measured better than "replace" on every set (docs/benchmarks.md), since the
    cross-encoder alone loses to the retriever on text unlike its training data."""
    by_score = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if mode == "replace":
        return by_score
    score_rank = {i: r for r, i in enumerate(by_score)}
    return sorted(range(len(scores)), key=lambda i: (-(1 / (RRF_K + 1 + i) + 1 / (RRF_K + 1 + score_rank[i])), i))


def standardize(values: np.ndarray) -> np.ndarray:
    """(values - mean) / std; all zeros when the values do not vary (one candidate, or no lexical match)."""
    std = float(values.std()) if len(values) else 0.0
    return (values - values.mean()) / std if std > 1e-9 else np.zeros_like(values)


def convex_fusion(candidates: Sequence[int], dense: Sequence[float], lexical: Sequence[float],
                  dense_weight: float = DENSE_WEIGHT) -> list[tuple[int, float]]:
    """[(chunk id, fused score)] best first: dense_weight * z(dense) + (1 - dense_weight) * z(lexical), each score
    standardised over `candidates` (its dense cosines and BM25 scores, given in the same order); ties by id."""
    d = standardize(np.asarray(dense, dtype=np.float64))  # [n]
    lx = standardize(np.asarray(lexical, dtype=np.float64))  # [n]
    fused = dense_weight * d + (1.0 - dense_weight) * lx
    order = sorted(range(len(candidates)), key=lambda i: (-fused[i], candidates[i]))
    return [(int(candidates[i]), float(fused[i])) for i in order]


def score_candidates(store: IndexStore, query_vec: np.ndarray, dense: Sequence[tuple[int, float]],
                     lexical: Sequence[tuple[int, float]], lexical_score: Callable[[int, str], float] | None) \
        -> tuple[dict, list[int], list[float], list[float]]:
    """Both scores of every candidate of the dense and lexical lists ([(chunk id, score)], best first):
    (rows by id, candidate ids (dense list's order, then the lexical-only ones; ids no longer stored left out),
    their cosines (from the stored vectors), their BM25 scores (the lexical list's, else `lexical_score`, 0 with
    no lexical search))."""
    union = list(dict.fromkeys([cid for cid, _ in dense] + [cid for cid, _ in lexical]))
    rows = store.chunk_rows(union)
    ids = [cid for cid in union if cid in rows]
    bm25 = dict(lexical)
    lexical_of = [bm25[cid] if cid in bm25 else
                  float(lexical_score(cid, embedding_text(rows[cid].heading, rows[cid].text)))
                  if lexical_score is not None else 0.0 for cid in ids]
    return rows, ids, [float(np.dot(query_vec, rows[cid].vector)) for cid in ids], lexical_of


class Retriever:
    """Search one index with one encoder. Reloads by itself when another process updates the index."""

    def __init__(self, index: str | Path | IndexStore, encoder, reranker=None) -> None:
        self.store = index if isinstance(index, IndexStore) else IndexStore.open(index)
        self.encoder = encoder
        self.reranker = reranker  # anything with score(question, passages) -> list[float] (model.cross_encoder)
        self._check_encoder()
        self._reload_lock = threading.Lock()

    def _check_encoder(self) -> None:
        """IndexMismatchError unless the index's searched vectors came from this encoder (its name includes an
        adapter's fingerprint, see model.encoder.Encoder.set_adapter)."""
        settings = self.store.settings
        if settings.encoder != self.encoder.name or settings.dim != int(self.encoder.dim):
            adapted = "+adapt:" in settings.encoder or "+adapt:" in str(self.encoder.name)
            hint = ("The index was adapted or un-adapted meanwhile (`assistant adapt`): open it again, so that its "
                    "encoder adapter is loaded." if adapted else rebuild_hint(self.store.path))
            raise IndexMismatchError(
                f"the index at {self.store.path} holds vectors of encoder {settings.encoder} ({settings.dim}-d), "
                f"but the current encoder is {self.encoder.name} ({self.encoder.dim}-d). " + hint)

    def refresh(self) -> bool:
        """Pick up a newer generation written by another process (e.g. an upload). True if reloaded.
        IndexMismatchError when its vectors are now another encoder's (an adaptation switched them)."""
        if not self.store.changed_on_disk():
            return False
        with self._reload_lock:
            changed = self.store.reload()
        if changed:
            self._check_encoder()
        return changed

    def stats(self) -> dict:
        """files, chunks, encoder, dim and more (see `IndexStore.stats`)."""
        self.refresh()
        return self.store.stats()

    def term_weights(self, text: str) -> dict[str, float]:
        """The lexical terms of `text` (BM25's tokenisation) with their IDF over this index: how much finding
        each one in a passage says (a rare name says more than a common word)."""
        self.refresh()
        lexical = self.store.parts().lexical
        return {term: lexical.idf(term) for term in dict.fromkeys(lexical_tokens([text])[0])}

    def embed_query(self, query: str) -> np.ndarray:
        return np.asarray(self.encoder.embed([query], batch_size=1), dtype=np.float32)[0]  # [dim]

    def search(self, query: str, k: int = 5, mode: str = "hybrid", path_filter: PathFilter = None,
               mmr: bool = False, mmr_lambda: float = 0.7, candidates: int | None = None,
               rerank: int = 0, rerank_mode: str = "rrf", fusion: str = "convex") -> list[Hit]:
        """The `k` best passages for `query`.

        mode: "dense" (cosine, FAISS), "lexical" (BM25) or "hybrid": the top `candidates` of each (default
        max(50, 4k)) fused by `fusion`, "convex" (`convex_fusion` of both scores of every candidate) or "rrf"
        (reciprocal-rank fusion, k=60, of the two lists). `path_filter`: see `path_matcher`.
        `mmr=True` re-ranks the candidates by maximal marginal relevance
        (mmr_lambda * cos(q, d) - (1 - mmr_lambda) * max cos(d, already chosen)) to avoid near-duplicates.
        `rerank=N` (with a `reranker`): the top max(N, k) hits of the mode are rescored by the cross-encoder
        (`Hit.rerank_score`) and reordered (`rerank_order`: by `rerank_mode` "rrf", the reciprocal-rank fusion of
        its order and the retriever's, or "replace", its order alone); the rest keep their order after them.
        """
        if mode not in MODES:
            raise RetrievalError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
        if rerank_mode not in RERANK_MODES:
            raise RetrievalError(f"unknown rerank mode {rerank_mode!r}; use one of {', '.join(RERANK_MODES)}")
        if fusion not in FUSIONS:
            raise RetrievalError(f"unknown hybrid fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
        if k <= 0 or not query or not query.strip():
            return []
        self.refresh()
        store = self.store
        parts = store.parts()
        if parts.vectors.ntotal == 0:
            return []
        keep = path_matcher(path_filter)
        allowed = store.chunk_ids_for_paths(keep) if keep is not None else None
        if allowed is not None and len(allowed) == 0:
            return []
        n_cand = candidates or max(50, 4 * k)
        if mode != "hybrid" and not mmr:
            n_cand = candidates or k
        query_vec = self.embed_query(query)  # [dim]

        dense: list[tuple[int, float]] = []
        if mode in ("dense", "hybrid"):
            dense = parts.vectors.search(query_vec, n_cand, allowed)
        lexical: list[tuple[int, float]] = []
        lexical_score = None  # (chunk id, lexical text) -> BM25 score
        if mode in ("lexical", "hybrid") and parts.lexical.ntotal:
            tokens = lexical_tokens([query])[0]
            if tokens:
                lexical, lexical_score = parts.lexical.search(tokens, n_cand, allowed)

        rows: dict = {}
        known_lexical: dict[int, float] = {}  # BM25 of the candidates the convex fusion scored
        if mode == "dense":
            ranked = dense
        elif mode == "lexical":
            ranked = lexical
        elif fusion == "rrf":
            fused: dict[int, float] = {}
            for results in (dense, lexical):
                for rank, (chunk_id, _) in enumerate(results, start=1):
                    fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
            ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))
        else:
            # Every candidate of either list gets both scores: its exact cosine from the stored vector, its BM25
            # from the lexical index (0 when no query term occurs in it).
            rows, ids, cosines, bm25 = score_candidates(store, query_vec, dense, lexical, lexical_score)
            ranked = convex_fusion(ids, cosines, bm25)
            if lexical_score is not None:
                known_lexical = dict(zip(ids, bm25))
        if not ranked:
            return []
        depth = max(k, rerank) if rerank and self.reranker is not None else k
        pool = ranked if mmr else ranked[: depth + 5]  # a few spare in case some vanished meanwhile
        missing = [cid for cid, _ in pool if cid not in rows]
        if missing:
            rows.update(store.chunk_rows(missing))
        pool = [(cid, score) for cid, score in pool if cid in rows]
        if mmr:
            pool = _mmr(pool, rows, query_vec, depth, mmr_lambda)
        rerank_scores: dict[int, float] = {}
        if rerank and self.reranker is not None:
            top = pool[:depth]
            values = self.reranker.score(query, [embedding_text(rows[cid].heading, rows[cid].text) for cid, _ in top])
            rerank_scores = {cid: float(v) for (cid, _), v in zip(top, values)}
            pool = [top[i] for i in rerank_order([float(v) for v in values], rerank_mode)] + pool[depth:]
        hits = []
        for cid, score in pool[:k]:
            row = rows[cid]
            paths = [p for p in row.paths if keep is None or keep(p)] or list(row.paths)
            lex = known_lexical.get(cid)
            if lex is None and lexical_score is not None:
                lex = float(lexical_score(cid, embedding_text(row.heading, row.text)))
            hits.append(Hit(cid, row.text, paths[0], row.heading, row.page, row.start, row.end, float(score),
                            float(np.dot(query_vec, row.vector)), lex, len(hits) + 1, tuple(paths[1:]),
                            rerank_scores.get(cid)))
        return hits

    def has_tables(self) -> bool:
        """Whether the index holds any table (see IndexStore.has_tables)."""
        self.refresh()
        return self.store.has_tables()

    def paths(self) -> list[str]:
        """Every indexed document's path (relative to the folder), sorted."""
        self.refresh()
        return sorted(self.store.documents())

    def document_chunks(self, path: str, query: str | None = None, limit: int = 400) -> list[Hit]:
        """All chunks of one document in reading order (at most `limit`), as Hits; with `query`, each carries the
        chunk's cosine to it as `dense_score` (else 0). For answers that read a whole document (a summary)."""
        self.refresh()
        store = self.store
        ids = store.chunk_ids_for_paths(lambda p: p == path)
        rows = sorted(store.chunk_rows(ids[: max(limit, 0)]).values(), key=lambda r: r.ordinal)
        query_vec = self.embed_query(query) if query else None
        hits = []
        for row in rows:
            dense = float(np.dot(query_vec, row.vector)) if query_vec is not None else 0.0
            paths = [p for p in row.paths if p == path] or list(row.paths)
            hits.append(Hit(row.id, row.text, paths[0], row.heading, row.page, row.start, row.end, dense, dense,
                            None, len(hits) + 1))
        return hits


    def page_text(self, path: str, page: int) -> tuple[str, list[tuple[int, int, int]]]:
        """The whole text of page `page` of one paged document (a PDF), as the index holds it, and where each
        of its chunks stands in that text.

        The page's chunks are joined in reading order; text two neighbouring chunks share (their overlap) is
        given once. Returns (text, spans): spans lists (chunk id, start, end) per chunk, in reading order,
        with `text[start:end]` the chunk's own slice of the document (a chunk continuing a split table has
        its repeated header line in front of that slice in `Hit.text`; the header is not part of the page).
        ("", []) when the document is not indexed or has no such page (a Markdown file has no pages)."""
        self.refresh()
        store = self.store
        ids = store.chunk_ids_for_paths(lambda p: p == path)
        rows = [r for r in store.chunk_rows(ids).values() if r.page is not None and int(r.page) == int(page)]
        return join_chunk_slices([(r.id, r.text, r.start, r.end) for r in rows])


def join_chunk_slices(chunks: Iterable[tuple[int, str, int, int]]) -> tuple[str, list[tuple[int, int, int]]]:
    """One text from chunks that are slices of one document: (chunk id, text, start, end) each, `start`/`end`
    the slice's offsets in the document (`text` may carry a repeated table header in front of the slice).

    Chunks are put in document order; where one overlaps the text so far only its new part is added; where
    chunks leave a gap (the whitespace between them is not stored) a space stands for a one-character gap and
    a blank line for a longer one. Returns (text, [(chunk id, start, end)]) with `text[start:end]` each chunk's
    slice, in document order."""
    pieces: list[str] = []
    spans: list[tuple[int, int, int]] = []
    length = 0           # characters joined so far
    doc_end: int | None = None  # the document offset the joined text has reached
    ordered = sorted(chunks, key=lambda c: (c[2], -c[3], c[0]))
    for chunk_id, text, start, end in ordered:
        size = max(0, min(end - start, len(text)))
        body = text[len(text) - size:] if size else ""
        end = start + size
        if doc_end is None or start >= doc_end:
            gap = 0 if doc_end is None else start - doc_end
            joint = "" if gap == 0 else (" " if gap == 1 else "\n\n")
            pieces += [joint, body]
            at = length + len(joint)
            length = at + size
            doc_end = end
        else:  # it overlaps the text so far, which is contiguous from the last chunk that opened a piece
            at = length - (doc_end - start)
            if end > doc_end:
                pieces.append(body[doc_end - start:])
                length += end - doc_end
                doc_end = end
        spans.append((int(chunk_id), at, at + size))
    return "".join(pieces), spans


def _mmr(pool: list[tuple[int, float]], rows: dict, query_vec: np.ndarray, k: int, lam: float) \
        -> list[tuple[int, float]]:
    """Maximal marginal relevance over the candidate pool, using the chunks' stored vectors."""
    if not pool:
        return pool
    vectors = np.stack([rows[cid].vector for cid, _ in pool])  # [n, dim]
    relevance = vectors @ query_vec  # [n]
    similarity = vectors @ vectors.T  # [n, n]
    chosen: list[int] = []
    remaining = list(range(len(pool)))
    while remaining and len(chosen) < k:
        if chosen:
            redundancy = similarity[np.ix_(remaining, chosen)].max(axis=1)  # [len(remaining)]
        else:
            redundancy = np.zeros(len(remaining))
        values = lam * relevance[remaining] - (1 - lam) * redundancy
        best = remaining[int(np.argmax(values))]
        chosen.append(best)
        remaining.remove(best)
    return [pool[i] for i in chosen]
