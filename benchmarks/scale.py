"""Scale benchmarks (issue 12): Ray embedding throughput, vector index kinds at 1M chunks, one-file sync at 1M.

    OMP_NUM_THREADS=1 python benchmarks/scale.py embed  [--files 300]      # (a) local vs 1 vs 2 Ray workers
    OMP_NUM_THREADS=2 python benchmarks/scale.py search [--n 1000000] [--threads 2]  # (b) flat / IVF kinds / HNSW
    OMP_NUM_THREADS=1 python benchmarks/scale.py sync   [--n 1000000]      # (c) one-file edit on a 1M index

(a) and (c) run at one thread per process; (b) at --threads faiss threads (2: "on 2 cores"; a single IVF query
splits its lists over them). Results go to stdout as Markdown and to
`<cache>/bench/scale-<part>.json`.

How the 1M collection is made (b, c): the real vectors are all-MiniLM-L6-v2 embeddings of every SQuAD v1.1
training paragraph (`benchmarks/embed_squad.py --more`: 18,891 paragraphs). The rest, up to n, are drawn
from a Gaussian with the mean and full covariance of those real embeddings, then re-normalised to unit
length: new points spread the way real ones do, not copies of them (copies would sit in the same IVF lists
as their originals and inflate recall). Queries are the embeddings of 1,000 real SQuAD questions; recall@10
is measured against exact search over the whole collection.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _results(part: str, data: dict) -> None:
    from retrieval.store import cache_dir

    folder = cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"scale-{part}.json").write_text(json.dumps(data, indent=2))


def _ms(seconds: list[float]) -> tuple[float, float]:
    values = np.array(seconds) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


# ---------------------------------------------------------------- (a) embedding throughput

def bench_embed(args) -> None:
    import torch

    torch.set_num_threads(1)
    from embed_squad import read_squad

    from model.encoder import Encoder
    from retrieval.ray_sync import RayCluster
    from retrieval.sync import sync_folder

    paragraphs, _ = read_squad()
    work = Path(tempfile.mkdtemp(prefix="scale-embed-"))
    folder = work / "docs"
    folder.mkdir()
    for i, text in enumerate(paragraphs[:args.files]):
        (folder / f"p{i:05d}.txt").write_text(text)
    encoder = Encoder.load()
    rows = []

    def run(label: str, **kw) -> None:
        started = time.perf_counter()
        report = sync_folder(folder, work / f"index-{label}", encoder, progress=False, **kw)
        seconds = time.perf_counter() - started
        rows.append({"path": label, "files": len(report.added), "chunks": report.chunks_embedded,
                     "seconds": round(seconds, 1), "chunks_per_s": round(report.chunks_embedded / seconds, 2)})
        print(rows[-1], flush=True)

    run("local, 1 thread")
    torch.set_num_threads(2)
    run("local, 2 threads")
    torch.set_num_threads(1)
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    startup = time.perf_counter() - t0
    for workers in (1, 2):
        run(f"ray, {workers} worker{'s' * (workers > 1)}", ray=RayCluster("local", workers=workers))
    ray.shutdown()
    data = {"files": args.files, "ray_startup_s": round(startup, 1), "rows": rows}
    _results("embed", data)
    print(f"\nRay runtime start-up: {startup:.1f} s (not in the rows)\n")
    print("| path | files | chunks | seconds | chunks/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['files']} | {r['chunks']} | {r['seconds']} | {r['chunks_per_s']} |")


# ---------------------------------------------------------------- the 1M collection

def real_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(all real passage embeddings [m, 384], 1,000 question embeddings [1000, 384]) from embed_squad's cache."""
    from embed_squad import out_dir

    folder = out_dir()
    parts = [np.load(folder / "passages-5000.npy")]
    more = sorted(folder.glob("passages-after-5000-*.npy"))
    if more:
        parts.append(np.load(more[-1]))
    else:  # the run is not finished: its finished pieces of 500, in order
        pieces = sorted(folder.glob(".passages-after-5000-*.npy"), key=lambda p: int(p.name.split("-")[3]))
        parts += [np.load(p) for p in pieces]
    questions = np.load(sorted(folder.glob("questions-*.npy"))[-1])[:1000]
    return np.concatenate(parts).astype(np.float32), questions.astype(np.float32)


def collection(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(vectors [n, 384] float32 unit, queries [1000, 384], number of real vectors at the front)."""
    real, queries = real_embeddings()
    mean = real.mean(axis=0)
    cov = np.cov(real, rowvar=False)  # [384, 384]
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(cov.shape[0]))
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    m = min(len(real), n)
    out[:m] = real[:m]
    for i in range(m, n, 100_000):
        j = min(n, i + 100_000)
        block = mean + rng.standard_normal((j - i, real.shape[1])) @ chol.T  # [b, 384]
        out[i:j] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out, queries, m


# ---------------------------------------------------------------- (b) index kinds at 1M

def bench_search(args) -> None:
    import faiss

    from retrieval.segments import IVF_KINDS, VectorSegments, build_vector_index, exact_top_ids, recall_at_k
    from retrieval.store import faiss_module

    faiss_module()
    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    vectors, queries, n_real = collection(args.n)
    print(f"collection: {len(vectors)} vectors ({n_real} real), {len(queries)} queries, "
          f"made in {time.perf_counter() - t0:.0f} s", flush=True)
    ids = np.arange(len(vectors), dtype=np.int64)
    dim = vectors.shape[1]
    empty = (np.zeros(0, np.int64), np.zeros((0, dim), np.float32), np.zeros(0, np.int64))
    kinds = args.kinds.split(",")
    rows = []
    k = 10
    t0 = time.perf_counter()
    truth = exact_top_ids(vectors, ids, queries, k)  # [q, k], brute force in blocks
    print(f"exact top-{k} of {len(queries)} queries in {time.perf_counter() - t0:.0f} s", flush=True)

    def measure(kind, index, info, build, size, nprobe=None) -> dict:
        search = VectorSegments(index, info, *empty, dim, nprobe=nprobe)
        single, single_cpu = [], []
        found = np.zeros((len(queries), k), dtype=np.int64)
        for i, q in enumerate(queries):
            t, c = time.perf_counter(), time.process_time()
            hits = search.search(q, k)
            single.append(time.perf_counter() - t)
            single_cpu.append(time.process_time() - c)  # this process's CPU time: what an idle core would take
            found[i, :len(hits)] = [cid for cid, _ in hits]
        if kind in IVF_KINDS:
            index.nprobe = search.nprobe
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = 64
        batch = []
        for i in range(0, min(len(queries), 320), 32):
            block = np.ascontiguousarray(queries[i:i + 32])
            t = time.perf_counter()
            index.search(block, k)
            batch.append(time.perf_counter() - t)
        p50, p95 = _ms(single)
        c50, c95 = _ms(single_cpu)
        b50, b95 = _ms(batch)
        return {"kind": kind, "n": len(vectors), "build_s": round(build, 1), "file_mb": round(size / 1e6, 1),
                "bytes_per_vector": round(size / len(vectors), 1), "single_p50_ms": round(p50, 2),
                "single_p95_ms": round(p95, 2), "single_cpu_p50_ms": round(c50, 2), "single_cpu_p95_ms": round(c95, 2),
                "batch32_p50_ms": round(b50, 1), "batch32_p95_ms": round(b95, 1),
                "found": found, "nlist": info.nlist, "nprobe": search.nprobe if kind in IVF_KINDS else 0,
                "default_nprobe": info.nprobe, "stored_vector_recall": info.recall_at_10}

    for kind in kinds:
        started = time.perf_counter()
        index, info = build_vector_index(kind, dim, ids, vectors)
        build = time.perf_counter() - started
        with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
            faiss.write_index(index, fh.name)
            size = os.path.getsize(fh.name)
        sweep = [None]
        if kind in IVF_KINDS:
            sweep = sorted({p for p in (16, 32, 64, 128, 256, 384) if p < info.nprobe}) + [None]
        for nprobe in sweep:
            row = measure(kind, index, info, build, size, nprobe)
            found = row.pop("found")
            row["recall_at_10"] = round(recall_at_k(found, truth), 4)
            rows.append(row)
            print(row, flush=True)
            _results(f"search-{args.kinds.replace(',', '-')}",
                     {"n": len(vectors), "n_real": n_real, "queries": len(queries), "rows": rows})
        del index

    print("\n| index | build s | file MB | bytes/vector | single p50 / p95 ms | batch-32 p50 / p95 ms | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        label = r["kind"] + (f" (nlist {r['nlist']}, nprobe {r['nprobe']}"
                             f"{', default' if r['nprobe'] == r['default_nprobe'] else ''})" if r["nlist"] else "")
        print(f"| {label} | {r['build_s']} | {r['file_mb']} | {r['bytes_per_vector']} | {r['single_p50_ms']} / "
              f"{r['single_p95_ms']} | {r['batch32_p50_ms']} / {r['batch32_p95_ms']} | {r['recall_at_10']} |")


# ---------------------------------------------------------------- (c) one-file sync at 1M

def bench_sync(args) -> None:
    import faiss

    from retrieval import store as store_module
    from retrieval.chunking import ChunkerSettings
    from retrieval.retriever import Retriever
    from retrieval.store import IndexStore
    from retrieval.sync import index_settings, sync_folder
    from retrieval.testing import HashingEncoder

    store_module.faiss_module()
    faiss.omp_set_num_threads(1)
    vectors, queries, _ = collection(args.n)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scale-sync-"))
    folder, index = work / "docs", work / "index"
    folder.mkdir(parents=True, exist_ok=True)
    encoder = HashingEncoder(dim=vectors.shape[1])
    per_file = 100
    n_files = args.n // per_file
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    t0 = time.perf_counter()
    settings = index_settings(encoder, ChunkerSettings.for_encoder(encoder))
    reuse = IndexStore.exists(index)  # built by an earlier run with the same --workdir
    index.mkdir(parents=True, exist_ok=True)
    if not reuse:
        _build_synthetic_index(index, folder, settings, vectors, per_file, n_files, words, t0)
    built = time.perf_counter() - t0
    del vectors

    print(f"index of {args.n} chunks: built in {built:.0f} s{' (earlier run)' if reuse else ''}", flush=True)
    reader = Retriever(index, encoder)
    t = time.perf_counter()
    reader.search("alpha beta token5x5", k=10)
    first_load = time.perf_counter() - t
    print(IndexStore.open(index).stats(), flush=True)

    timings = []
    for attempt in range(3):
        edited = folder / f"file{17 + attempt:05d}.txt"
        word = ["quartz", "walnut", "cobalt"][attempt]
        edited.write_text(f"An edited file: the {word} albatross sings. " * 20)
        disk_before = _bytes_written()
        t = time.perf_counter()
        report = sync_folder(folder, index, encoder, progress=False)
        seconds = time.perf_counter() - t
        written = _bytes_written() - disk_before
        t = time.perf_counter()
        hits = reader.search(f"{word} albatross", k=3)
        refresh = time.perf_counter() - t
        assert hits and hits[0].path == edited.name, hits
        timings.append({"sync_s": round(seconds, 2), "reader_refresh_and_search_s": round(refresh, 2),
                        "bytes_written_mb": None if written is None else round(written / 1e6, 1),
                        "updated": report.updated, "chunks_embedded": report.chunks_embedded})
        print(timings[-1], flush=True)
    stats = IndexStore.open(index).stats()
    data = {"n": args.n, "files": n_files, "build_s": round(built, 1), "first_search_load_s": round(first_load, 1),
            "bytes_on_disk_gb": round(stats["bytes_on_disk"] / 1e9, 2), "vectors": stats["vectors"],
            "edits": timings}
    _results("sync", data)
    print(json.dumps(data, indent=2))


def _build_synthetic_index(index: Path, folder: Path, settings, vectors: np.ndarray, per_file: int, n_files: int,
                           words: list[str], t0: float) -> None:
    """n_files small files, each standing for `per_file` stored chunks with the collection's vectors."""
    import hashlib

    from retrieval.chunking import Chunk
    from retrieval.store import DocumentRow, IndexStore, WriterLock

    with WriterLock(index):
        store = IndexStore.create(index, settings)
        with store.writer(lock_held=True) as writer:
            for f in range(n_files):
                path = folder / f"file{f:05d}.txt"
                text = f"File {f}. " + " ".join(words[(f + j) % len(words)] for j in range(40)) + "\n"
                path.write_text(text)
                sha = hashlib.sha256(text.encode()).hexdigest()
                chunks = [Chunk(f"file {f} part {c}: {words[(f * 7 + c) % len(words)]} "
                                f"{words[(f + c * 3) % len(words)]} token{f}x{c}", path.name, "", None, 0, 1, c)
                          for c in range(per_file)]
                content = writer.stage_content(sha, "text", chunks, vectors[f * per_file:(f + 1) * per_file])
                st = path.stat()
                writer.set_document(DocumentRow(path.name, content, sha, st.st_size, st.st_mtime_ns, "text"))
                if f % 1000 == 999:
                    print(f"staged {f + 1} files in {time.perf_counter() - t0:.0f} s", flush=True)
            print(f"staged in {time.perf_counter() - t0:.0f} s; writing the base", flush=True)
            writer.commit()
        store.close()


def _bytes_written() -> int | None:
    """Bytes this process has written to storage so far (Linux /proc/self/io), or None."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("embed")
    p.add_argument("--files", type=int, default=300)
    p = sub.add_parser("search")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--kinds", default="flat,ivf,ivfsq,ivfpq,hnsw")
    p.add_argument("--threads", type=int, default=2, help="faiss threads (a single IVF query uses them all)")
    p = sub.add_parser("sync")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--workdir")
    args = parser.parse_args()
    {"embed": bench_embed, "search": bench_search, "sync": bench_sync}[args.part](args)


if __name__ == "__main__":
    main()
