"""Sync on a Ray cluster: workers load, chunk and embed batches of changed files; the driver is the one writer.

    sync_folder(folder, index, encoder, ray="local")        # or "auto", or a cluster address

Each worker is an actor that builds the encoder once (`FileBatchWorker.__init__`, on a GPU when Ray gave it
one) and then takes batches of files (`FileBatchWorker.__call__`: load + chunk + embed, the same functions
as the embedded path). The driver keeps everything else exactly as in `retrieval.sync`: it decides which
files changed, hands those out in order, and stages the results in that same order as they come back, so
chunk ids, renames and duplicates come out as a local sync would make them, and a killed run resumes
from what was staged (flushed every ~2 s). Actors are restarted and their batch retried when a worker dies.

Ray is an optional extra (`pip install -e ".[scale]"`); only this module imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import time
from typing import Callable, Sequence

import numpy as np

from retrieval.chunking import ChunkerSettings
from retrieval.errors import RetrievalError
from retrieval.loaders import FileEntry

INSTALL_HINT = ('Ray is not installed; `--ray` needs the optional extra: pip install -e ".[scale]" '
                '(or pip install "ray[data]>=2.9")')
FILES_PER_TASK = 16     # files per batch handed to a worker
WORKER_RETRIES = 3      # restarts of a dead worker, and retries of its batch


def import_ray():
    try:
        import ray
    except ImportError:
        raise RetrievalError(INSTALL_HINT) from None
    return ray


def _default_encoder_name() -> str:
    return "sentence-transformers/all-MiniLM-L6-v2"


def _load_project_encoder(spec: str | None):
    from model.encoder import Encoder

    return Encoder.load(spec)  # device None: the worker's GPU when it has one, else CPU


def _same(encoder):
    return encoder


def encoder_recipe(encoder) -> Callable[[], object]:
    """A picklable way to build `encoder` on a worker: the project's Encoder is loaded from its spec there
    (weights come from the worker's own install, not over the network); anything else (test encoders) is
    shipped as it is."""
    if type(encoder).__module__ == "model.encoder" and type(encoder).__name__ == "Encoder":
        spec = None if encoder.name == _default_encoder_name() else encoder.name
        return functools.partial(_load_project_encoder, spec)
    return functools.partial(_same, encoder)


class FileBatchWorker:
    """Load + chunk + embed batches of files with an encoder built once. Runs as a Ray actor, or in-process."""

    def __init__(self, make_encoder: Callable[[], object], chunker: dict, max_file_bytes: int,
                 batch_size: int = 32) -> None:
        self.encoder = make_encoder()
        self.chunker = ChunkerSettings(**chunker)
        self.max_file_bytes = max_file_bytes
        self.batch_size = batch_size

    def __call__(self, entries: Sequence[FileEntry], known: frozenset) -> list:
        from retrieval.sync import _embedder, _token_ids_of, load_and_chunk

        def is_known(sha: str, kind: str) -> bool:
            return (sha, kind) in known

        token_ids = _token_ids_of(self.encoder)
        loaded = [load_and_chunk(e, self.max_file_bytes, self.encoder.count_tokens, self.chunker, is_known,
                                 token_ids=token_ids) for e in entries]
        texts = [c.embedding_text() for item in loaded if item.chunks for c in item.chunks]
        ids = ([row for item in loaded if item.chunks for row in item.token_ids] if token_ids is not None
               else None)
        vectors = (np.asarray(_embedder(self.encoder, self.batch_size)(texts, ids), dtype=np.float32)
                   if texts else None)  # [n_chunks, dim]
        row = 0
        for item in loaded:
            if item.doc is not None:
                item.doc = dataclasses.replace(item.doc, text="")  # the driver needs its hash, not its text
            if item.chunks:
                item.vectors, row = vectors[row:row + len(item.chunks)], row + len(item.chunks)
        return loaded

    def run(self, entries: Sequence[FileEntry], known: frozenset) -> list:
        return self(entries, known)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when nothing listens at a cluster address (host:port or ray://...)."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RetrievalError(f"--ray {address!r} is not an address; use auto, local, HOST:PORT (the head node's "
                             "GCS port, 6379 by default) or ray://HOST:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RetrievalError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}). Start it with `ray start --head` "
            "on the head node (and `ray start --address HEAD:6379` on each worker), or use --ray local. "
            "Nothing was changed in the index.") from None


class RayCluster:
    """Where `--ray` runs the workers: "auto" (a running cluster if there is one, else a local runtime),
    "local" (a Ray runtime on this machine) or an address (HOST:PORT or ray://HOST:PORT)."""

    def __init__(self, address: str = "auto", *, workers: int | None = None, files_per_task: int = FILES_PER_TASK,
                 cpus_per_worker: float = 1.0, gpus_per_worker: float | None = None, num_cpus: int | None = None,
                 batch_size: int = 32) -> None:
        self.address = address or "auto"
        self.workers = workers
        self.files_per_task = files_per_task
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.num_cpus = num_cpus
        self.batch_size = batch_size
        self._started_here = False

    def connect(self):
        """Join or start the Ray runtime. Raises RetrievalError (install hint, unreachable address)."""
        ray = import_ray()
        if self.address not in ("auto", "local"):
            _check_reachable(self.address)
        if ray.is_initialized():
            return ray
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address == "local":
            ray.init(num_cpus=self.num_cpus, **kw)
            self._started_here = True
        elif self.address == "auto":
            if os.environ.get("RAY_ADDRESS"):
                ray.init(address="auto", **kw)
            else:
                try:
                    ray.init(address="auto", **kw)
                except (ConnectionError, RuntimeError, ValueError):
                    ray.init(num_cpus=self.num_cpus, **kw)
                    self._started_here = True
        else:
            try:
                ray.init(address=self.address, **kw)
            except Exception as exc:  # noqa: BLE001 - ray raises many kinds here
                raise RetrievalError(f"could not join the Ray cluster at {self.address}: {exc}") from None
        return ray

    def close(self) -> None:
        if self._started_here:
            import ray

            ray.shutdown()
            self._started_here = False

    def _worker_count(self, ray) -> int:
        if self.workers:
            return self.workers
        cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // max(self.cpus_per_worker, 1e-3)))

    def process(self, to_read: list[FileEntry], classify, stage, writer, report, *, progress: bool,
                on_progress, max_file_bytes: int, chunker: ChunkerSettings, encoder) -> None:
        """Hand `to_read` to the workers in batches; stage the results in order as they arrive."""
        ray = self.connect()
        from ray.util import ActorPool

        from retrieval.sync import _bar

        if not to_read:
            return
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        worker_class = ray.remote(FileBatchWorker).options(
            num_cpus=self.cpus_per_worker, num_gpus=gpus, max_restarts=WORKER_RETRIES,
            max_task_retries=WORKER_RETRIES)
        batches = [to_read[i:i + self.files_per_task] for i in range(0, len(to_read), self.files_per_task)]
        n_workers = min(self._worker_count(ray), len(batches))
        from retrieval.loaders import parser_version

        known = frozenset((sha, kind) for sha, kind, version in writer.conn.execute(  # read by today's parsers
            "SELECT sha256, kind, parser_version FROM contents WHERE incomplete=''") if version == parser_version(kind))
        known_ref = ray.put(known)
        actors = [worker_class.remote(encoder_recipe(encoder), chunker.to_dict(), max_file_bytes, self.batch_size)
                  for _ in range(n_workers)]
        bar = _bar(len(to_read), "ray: load+chunk+embed", "file", progress)
        started, files, chunks = time.perf_counter(), 0, 0
        if on_progress:
            on_progress(0, len(to_read))
        try:
            pool = ActorPool(actors)
            results = pool.map(lambda actor, batch: actor.run.remote(batch, known_ref), batches)
            for loaded in results:  # in the order of `batches`
                for item in loaded:
                    pending = classify(item)
                    if pending is not None:
                        stage([pending], lambda texts, _ids: encoder.embed(texts, batch_size=self.batch_size))
                        chunks += len(pending.chunks)
                files += len(loaded)
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{files / elapsed:.1f} files/s, {chunks / elapsed:.1f} chunks/s "
                                    f"on {n_workers} workers")
                bar.update(len(loaded))
                if on_progress:
                    on_progress(files, len(to_read))
        except ray.exceptions.RayError as exc:
            raise RetrievalError(f"the Ray workers failed: {exc}. What was embedded is kept; run the same "
                                 "command again to go on.") from None
        finally:
            bar.close()
            for actor in actors:
                ray.kill(actor)
            report.embed_seconds += time.perf_counter() - started
