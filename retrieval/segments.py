"""The searchable parts of one index generation: a base plus small delta segments, minus dead chunks.

A generation's vectors are a *base* FAISS file (written when the index is compacted) plus *delta* files,
one per commit (`delta-<gen>.npz`: the chunk ids and float32 vectors that commit added), minus the *dead*
chunk ids (removed since the base was written; listed in SQLite). The lexical side mirrors it: a base
bm25s folder plus the delta chunks' texts, indexed in memory when the generation is loaded.

So a commit writes in proportion to what it changed; the store folds the deltas and dead ids into a new
base when they grow past a fraction of it (see `IndexStore` and `CompactionPolicy`).

Base kinds: "flat" (exact inner product), "hnsw", "ivf" (IndexIVFFlat), "ivfsq" (IndexIVFScalarQuantizer, lists
of 8-bit scalar-quantised vectors: 4x smaller than flat lists, and faster to scan) and "ivfpq" (IndexIVFPQ), all
inner product over unit vectors. "auto" means flat below `IVF_AUTO_MIN` live chunks, "ivfsq" from there on.
A single query searches an IVF base's lists on all of faiss's threads (its `parallel_mode` 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq")
IVF_KINDS = ("ivf", "ivfsq", "ivfpq")
IVF_AUTO_MIN = 100_000      # "auto" builds IVF (8-bit lists) from this many live chunks on (flat below)
RECALL_TARGET = 0.95        # what the default nprobe aims at for real queries (recall@10 against exact search)
TUNE_TARGET = 0.98          # ... measured with stored vectors as queries, which are easier than real questions:
                            # on 5,000 SQuAD paragraphs, 64 lists, nprobe 8 gives 0.97 on stored vectors but
                            # 0.93 on the questions; nprobe 16 gives 0.99 and 0.97 (tests/test_ivf.py)
MIN_GAIN = 0.005            # ... or the smallest after which doubling nprobe gains less than this
RECALL_QUERIES = 200        # stored vectors used as queries when measuring recall@10
TRAIN_POINTS_PER_LIST = 40  # k-means training sample: this many vectors per list (faiss wants >= 39)
KMEANS_ITERATIONS = 12
RETRAIN_GROWTH = 2.0        # a compaction re-trains an IVF once the live chunks are this many times the trained ones
BM25_K1, BM25_B = 1.5, 0.75  # bm25s' defaults (method "lucene"); used to re-score across segments


def faiss_module():
    from retrieval.store import faiss_module as load

    return load()


def resolve_kind(kind: str, n: int) -> str:
    """The concrete base kind for a settings kind and a number of live chunks."""
    if kind == "auto":
        return "ivfsq" if n >= IVF_AUTO_MIN else "flat"
    return kind


def nlist_for(n: int) -> int:
    """Number of IVF lists for `n` vectors: the power of two nearest 2*sqrt(n), kept so that every list
    has at least ~TRAIN_POINTS_PER_LIST vectors to train on (16 <= nlist <= 65536)."""
    if n <= 0:
        return 16
    target = 2 ** round(math.log2(max(1.0, 2.0 * math.sqrt(n))))
    while target > 16 and target * TRAIN_POINTS_PER_LIST > n:
        target //= 2
    return int(min(65536, max(16, target)))


def pq_m_for(dim: int) -> int:
    """Sub-quantisers of IVFPQ: dim/8 (48 bytes a vector for 384-d), a divisor of dim."""
    m = max(1, dim // 8)
    while dim % m:
        m -= 1
    return m


@dataclass
class VectorInfo:
    """How the base vector index was built, and how good it measured (stored in the index metadata)."""

    kind: str = "flat"
    n: int = 0
    nlist: int = 0
    nprobe: int = 0
    trained_n: int = 0     # vectors the k-means saw (a sample)
    trained_for: int = 0   # size of the collection when it was trained (re-trained past RETRAIN_GROWTH times it)
    pq_m: int = 0
    recall_at_10: float | None = None
    recall_queries: int = 0
    build_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict | None) -> "VectorInfo":
        data = data or {}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        text = f"{self.kind}, {self.n} vectors"
        if self.kind in IVF_KINDS:
            text += (f", {self.nlist} lists, nprobe {self.nprobe}, trained on {self.trained_n} of "
                     f"{self.trained_for}")
            if self.kind == "ivfpq":
                text += f", PQ {self.pq_m}x8 bits"
            elif self.kind == "ivfsq":
                text += ", 8-bit lists"
        if self.recall_at_10 is not None:
            text += f", recall@10 {self.recall_at_10:.3f} (measured on {self.recall_queries} stored vectors)"
        return text


# ---------------------------------------------------------------- building a base

def _new_index(kind: str, dim: int, *, hnsw_m: int = 32, nlist: int = 0, pq_m: int = 0):
    faiss = faiss_module()
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        inner.hnsw.efSearch = 64
        return faiss.IndexIDMap2(inner)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivfsq":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT, False)  # no residuals: codes of x
    elif kind == "ivfpq":
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        from retrieval.errors import RetrievalError

        raise RetrievalError(f"unknown vector index kind {kind!r}; use one of {', '.join(KINDS)}")
    index.own_fields = True
    quantizer.this.disown()  # the IVF index frees it
    return index


def build_vector_index(kind: str, dim: int, ids: np.ndarray, vectors: np.ndarray, *, hnsw_m: int = 32,
                       nlist: int | None = None, nprobe: int | None = None, template=None,
                       template_info: VectorInfo | None = None, seed: int = 0):
    """A FAISS index of `vectors` [n, dim] with `ids` [n], and its `VectorInfo`.

    IVF kinds are trained on a random sample (TRAIN_POINTS_PER_LIST per list), unless `template` (an IVF index
    of the same kind and list count) is given and the collection has not grown RETRAIN_GROWTH times past
    what it was trained on: then its centroids are reused and the vectors are only added.
    `nprobe` None: the smallest power of two whose recall@10 on stored vectors reaches TUNE_TARGET.
    """
    faiss = faiss_module()
    started = time.perf_counter()
    n = len(ids)
    info = VectorInfo(kind=kind, n=n)
    if kind in ("flat", "hnsw"):
        index = _new_index(kind, dim, hnsw_m=hnsw_m)
    else:
        want_nlist = nlist or nlist_for(n)
        reuse = (template is not None and template_info is not None and template_info.kind == kind
                 and template_info.nlist == want_nlist
                 and n <= RETRAIN_GROWTH * max(1, template_info.trained_for))
        if reuse:
            index = faiss.clone_index(template)
            index.reset()  # keeps the trained centroids (and PQ codebooks)
            info.trained_n, info.trained_for = template_info.trained_n, template_info.trained_for
        else:
            info.pq_m = pq_m_for(dim) if kind == "ivfpq" else 0
            index = _new_index(kind, dim, nlist=want_nlist, pq_m=info.pq_m)
            index.cp.niter = KMEANS_ITERATIONS
            n_train = min(n, TRAIN_POINTS_PER_LIST * want_nlist if kind != "ivfpq"
                          else max(TRAIN_POINTS_PER_LIST * want_nlist, 256 * 40))
            sample = np.random.default_rng(seed).choice(n, size=n_train, replace=False) if n_train < n \
                else np.arange(n)
            index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
            info.trained_n, info.trained_for = int(n_train), n
        info.nlist = int(want_nlist)
        info.pq_m = info.pq_m or (template_info.pq_m if reuse else 0)
    for i in range(0, n, 50_000):
        index.add_with_ids(np.ascontiguousarray(vectors[i:i + 50_000]), np.ascontiguousarray(ids[i:i + 50_000]))
    if kind in IVF_KINDS and n:
        info.nprobe, info.recall_at_10, info.recall_queries = tune_nprobe(index, ids, vectors, nprobe, seed=seed)
        index.nprobe = info.nprobe
    info.build_seconds = round(time.perf_counter() - started, 3)
    return index, info


def exact_top_ids(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top-k ids [q, k] by inner product (brute force, in blocks)."""
    top = np.empty((len(queries), min(k, len(ids))), dtype=np.int64)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for i in range(0, len(vectors), 200_000):
        scores = queries @ vectors[i:i + 200_000].T  # [q, block]
        cand_scores = np.concatenate([best_scores, scores], axis=1)
        cand_ids = np.concatenate([best_ids, np.broadcast_to(ids[i:i + 200_000], scores.shape)], axis=1)
        keep = np.argpartition(-cand_scores, min(k, cand_scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(cand_scores, keep, axis=1)
        best_ids = np.take_along_axis(cand_ids, keep, axis=1)
    order = np.argsort(-best_scores, axis=1)
    top[:] = np.take_along_axis(best_ids, order, axis=1)[:, :top.shape[1]]
    return top


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k found in its returned top-k."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / max(1, truth.size)


def tune_nprobe(index, ids: np.ndarray, vectors: np.ndarray, nprobe: int | None, *, k: int = 10, seed: int = 0):
    """(nprobe, measured recall@k, number of queries) of an IVF `index` holding `vectors` [n, dim] with `ids`.

    Queries are RECALL_QUERIES stored vectors; each one's own match is left out of both result lists (a
    vector in the index trivially finds itself). nprobe None: the smallest power of two (from 8) whose
    recall reaches TUNE_TARGET."""
    picks = np.random.default_rng(seed + 1).choice(len(vectors), size=min(RECALL_QUERIES, len(vectors)),
                                                   replace=False)
    queries = np.ascontiguousarray(vectors[picks], dtype=np.float32)  # [q, dim]
    own = ids[picks]  # [q]
    truth = exact_top_ids(vectors, ids, queries, k + 1)  # [q, k+1]
    truth = np.array([[i for i in row if i != o][:k] for row, o in zip(truth, own)])

    def measure(p: int) -> float:
        index.nprobe = p
        _, found = index.search(queries, k + 1)  # [q, k+1]
        found = np.array([[i for i in row if i != o][:k] for row, o in zip(found, own)])
        return recall_at_k(found, truth)

    nlist = index.nlist
    if nprobe:
        return int(nprobe), round(measure(int(nprobe)), 4), len(queries)
    p, previous = min(nlist, 8), None
    while True:
        recall = measure(p)
        if previous is not None and recall - previous[1] < MIN_GAIN:
            return previous[0], round(previous[1], 4), len(queries)  # doubling no longer pays (e.g. PQ's ceiling)
        if recall >= TUNE_TARGET or p >= nlist:
            return p, round(recall, 4), len(queries)
        previous, p = (p, recall), min(nlist, p * 2)


def _ivf_ids(index) -> np.ndarray:
    faiss = faiss_module()
    lists = index.invlists
    out = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(index.nlist)
           if lists.list_size(i)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------- searching a generation

class VectorSegments:
    """Dense search over base + deltas - dead. `search` returns [(chunk id, cosine)] best first."""

    def __init__(self, base, info: VectorInfo, delta_ids: np.ndarray, delta_vectors: np.ndarray,
                 dead: np.ndarray, dim: int, nprobe: int | None = None) -> None:
        faiss = faiss_module()
        self.base = base
        self.info = info
        self.dim = dim
        self.nprobe = int(nprobe or info.nprobe or 0)
        dead = np.asarray(dead, dtype=np.int64)
        self.dead = dead
        keep = ~np.isin(delta_ids, dead) if len(dead) and len(delta_ids) else slice(None)
        self.delta_ids = np.ascontiguousarray(delta_ids[keep], dtype=np.int64)       # [m]
        self.delta_vectors = np.ascontiguousarray(delta_vectors[keep], dtype=np.float32)  # [m, dim]
        self._flat = None  # (vectors [n, dim] view, ids [n], alive mask [n] or None) of a flat base
        inner = faiss.downcast_index(base.index) if base is not None and hasattr(base, "index") else None
        if inner is not None and isinstance(inner, faiss.IndexFlat):
            vectors = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)
            ids = faiss.vector_to_array(base.id_map)
            alive = ~np.isin(ids, dead) if len(dead) else None
            self._flat = (vectors, ids, alive)
        self._hnsw = inner is not None and isinstance(inner, faiss.IndexHNSW)
        ivf = faiss.try_extract_index_ivf(base) if base is not None and self._flat is None and not self._hnsw \
            else None
        if ivf is not None:
            # One query at a time (the retriever's case): split its nprobe lists over faiss's threads, instead
            # of the default of one thread per query (measured at 1M: 2 threads, p50 18.0 -> 9.4 ms).
            ivf.parallel_mode = 1
        base_dead = int(np.isin(dead, self._base_ids()).sum()) if len(dead) and base is not None else 0
        self.ntotal = (base.ntotal if base is not None else 0) - base_dead + len(self.delta_ids)
        self._dead_selector = None
        if len(dead):
            batch = faiss.IDSelectorBatch(dead)
            self._dead_selector = (batch, faiss.IDSelectorNot(batch))  # keep the inner one alive

    def _base_ids(self) -> np.ndarray:
        faiss = faiss_module()
        if self._flat is not None:
            return self._flat[1]
        if hasattr(self.base, "id_map"):
            return faiss.vector_to_array(self.base.id_map)
        return _ivf_ids(self.base)

    def search(self, query: np.ndarray, n: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        results = self._search_base(query, n, allowed) + self._search_delta(query, n, allowed)
        results.sort(key=lambda item: (-item[1], item[0]))
        return results[:n]

    def _search_delta(self, query, n, allowed):
        if not len(self.delta_ids):
            return []
        scores = self.delta_vectors @ query  # [m]
        if allowed is not None:
            scores = np.where(np.isin(self.delta_ids, allowed), scores, -np.inf)
        return _top(scores, self.delta_ids, n)

    def _search_base(self, query, n, allowed):
        faiss = faiss_module()
        base = self.base
        if base is None or base.ntotal == 0:
            return []
        if self._flat is not None:
            # Exact search, one query: a BLAS matrix-vector product is ~2x faster here than faiss's
            # single-query kernel (memory-bound either way: it reads every vector once).
            vectors, ids, alive = self._flat
            scores = vectors @ query  # [n_base]
            if allowed is not None:
                scores = np.where(np.isin(ids, allowed), scores, -np.inf)
            elif alive is not None:
                scores = np.where(alive, scores, -np.inf)
            return _top(scores, ids, n)
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
            n = min(n, len(allowed))
        elif self._dead_selector is not None:
            selector = self._dead_selector[1]
        n = min(n, base.ntotal)
        if self._hnsw:
            params = faiss.SearchParametersHNSW(efSearch=max(64, n))
        else:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe or 1)
        if selector is not None:
            params.sel = selector
        scores, ids = base.search(np.ascontiguousarray(query[None, :], dtype=np.float32), n, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def _top(scores: np.ndarray, ids: np.ndarray, n: int) -> list[tuple[int, float]]:
    n = min(n, len(scores))
    if n <= 0:
        return []
    top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
    top = top[np.lexsort((ids[top], -scores[top]))]
    return [(int(ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]


class LexicalSegments:
    """BM25 over base + delta - dead.

    With no delta, the base's own bm25s scores are used (as an unsegmented index would). With a delta,
    each segment proposes its top candidates and all are re-scored with BM25 over the statistics of the
    whole (documents, document frequencies and lengths of base + delta): what one index over all of them
    would give, except that the base's dead chunks still count in those statistics until a compaction.
    """

    def __init__(self, base, base_ids: np.ndarray, base_stats: dict | None, delta_ids: Sequence[int],
                 delta_texts: Sequence[str], dead: np.ndarray,
                 texts_of: Callable[[Sequence[int]], dict[int, str]]) -> None:
        from retrieval.store import build_bm25, lexical_tokens

        self.base, self.base_ids = base, np.asarray(base_ids, dtype=np.int64)
        self.texts_of = texts_of
        self.dead_mask = np.isin(self.base_ids, dead) if len(dead) and len(self.base_ids) else None
        self.delta_ids = np.asarray(delta_ids, dtype=np.int64)
        self.delta = build_bm25(list(delta_texts)) if len(delta_texts) else None
        self.ntotal = len(self.base_ids) + len(self.delta_ids)
        tokens = lexical_tokens(list(delta_texts)) if self.delta is not None else []
        self.delta_df: dict[str, int] = {}
        for doc in tokens:
            for term in set(doc):
                self.delta_df[term] = self.delta_df.get(term, 0) + 1
        stats = base_stats or {"n_docs": len(self.base_ids), "total_tokens": 0}
        self.n_docs = stats["n_docs"] + len(tokens)
        self.avg_len = (stats["total_tokens"] + sum(len(t) for t in tokens)) / max(1, self.n_docs)

    @property
    def segmented(self) -> bool:
        return self.delta is not None

    def search(self, tokens: list[str], n: int, allowed: np.ndarray | None):
        """([(chunk id, score)] best first, score_of(chunk id, lexical text) -> float)."""
        if not self.segmented:
            return self._search_one(self.base, self.base_ids, self.dead_mask, tokens, n, allowed)
        candidates: set[int] = set()
        for model, ids, dead in ((self.base, self.base_ids, self.dead_mask), (self.delta, self.delta_ids, None)):
            found, _ = self._search_one(model, ids, dead, tokens, n, allowed)
            candidates.update(cid for cid, _ in found)
        texts = self.texts_of(sorted(candidates))
        rescored = [(cid, self.rescore(tokens, text)) for cid, text in texts.items()]
        rescored = [item for item in rescored if item[1] > 0]
        rescored.sort(key=lambda item: (-item[1], item[0]))
        return rescored[:n], lambda cid, text: self.rescore(tokens, text)

    @staticmethod
    def _search_one(model, ids, dead, tokens, n, allowed):
        if model is None or not len(ids):
            return [], lambda cid, text: 0.0
        scores = np.asarray(model.get_scores(tokens), dtype=np.float32)  # [n_docs]
        masked = scores
        if allowed is not None:
            masked = np.where(np.isin(ids, allowed), scores, 0.0)
        elif dead is not None:
            masked = np.where(dead, 0.0, scores)
        n = min(n, int(np.count_nonzero(masked > 0)))

        def score_of(cid: int, text: str) -> float:
            pos = int(np.searchsorted(ids, cid))
            return float(scores[pos]) if pos < len(ids) and ids[pos] == cid else 0.0

        if n == 0:
            return [], score_of
        top = np.argpartition(-masked, n - 1)[:n]
        top = top[np.lexsort((ids[top], -masked[top]))]
        return [(int(ids[i]), float(masked[i])) for i in top], score_of

    def _df(self, term: str) -> int:
        df = self.delta_df.get(term, 0)
        if self.base is not None:
            idx = self.base.vocab_dict.get(term)
            if idx is not None:
                indptr = self.base.scores["indptr"]
                df += int(indptr[idx + 1] - indptr[idx])
        return df

    def idf(self, term: str) -> float:
        """BM25's inverse document frequency of `term` over all segments (rare terms weigh more)."""
        df = self._df(term)
        return math.log(1 + (self.n_docs - df + 0.5) / (df + 0.5))

    def rescore(self, query_tokens: list[str], text: str) -> float:
        """BM25 (Lucene's variant, as bm25s computes it) of one text over the statistics of all segments."""
        from retrieval.store import lexical_tokens

        doc = lexical_tokens([text])[0]
        counts: dict[str, int] = {}
        for term in doc:
            counts[term] = counts.get(term, 0) + 1
        norm = BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / max(self.avg_len, 1e-9))
        score = 0.0
        for term in query_tokens:
            tf = counts.get(term, 0)
            if tf:
                score += self.idf(term) * tf / (tf + norm)
        return score
