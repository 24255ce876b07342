"""`--ray`: the same sync with loading, chunking and embedding on Ray workers (a local Ray runtime here).

Marked `ray`; the runtime is started once for the module (2 CPUs, loopback only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest_retrieval import MAX_BYTES, PLANTED, make_mixed_folder
from retrieval.errors import RetrievalError
from retrieval.retriever import Retriever
from retrieval.store import IndexStore
from retrieval.sync import sync_folder
from retrieval.testing import DiesOnceEncoder, HashingEncoder

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]
QUERIES = [sentence for sentence, _ in PLANTED.values()] + ["gadget7 widget3", "notes follow", "a kazoo"]


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("PYTHONPATH", str(REPO))  # workers import this checkout
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _cluster(**kw):
    from retrieval.ray_sync import RayCluster

    return RayCluster("local", workers=2, files_per_task=3, **kw)


def _sync(folder, index, encoder, **kw):
    return sync_folder(folder, index, encoder, progress=False, max_file_bytes=MAX_BYTES, **kw)


def _folder(tmp_path: Path) -> Path:
    folder = make_mixed_folder(tmp_path)
    for i in range(12):
        (folder / f"extra{i:02d}.md").write_text(f"# Extra {i}\n\nGadget{i} meets widget{i % 4}.\n\n" * (1 + i % 3))
    shutil.copy(folder / "notes.txt", folder / "notes_copy.txt")  # a duplicate within one run
    return folder


def _contents(index: Path) -> dict:
    """{path: [(chunk id, text, vector)]} of an index, plus its documents' hashes."""
    store = IndexStore.open(index)
    try:
        out = {}
        for path, row in sorted(store.documents().items()):
            rows = store._conn.execute("SELECT id, text, vector FROM chunks WHERE content_id=? ORDER BY id",
                                       (row.content_id,)).fetchall()
            out[path] = (row.sha256, [(r[0], r[1], np.frombuffer(r[2], dtype=np.float32)) for r in rows])
        return out
    finally:
        store.close()


def _assert_same_index(a: Path, b: Path, encoder) -> None:
    left, right = _contents(a), _contents(b)
    assert left.keys() == right.keys()
    for path in left:
        (sha_l, rows_l), (sha_r, rows_r) = left[path], right[path]
        assert sha_l == sha_r, path
        assert [(i, t) for i, t, _ in rows_l] == [(i, t) for i, t, _ in rows_r], path  # same ids and texts
        for (_, _, v_l), (_, _, v_r) in zip(rows_l, rows_r):
            np.testing.assert_allclose(v_l, v_r, atol=1e-5)
    ra, rb = Retriever(a, encoder), Retriever(b, encoder)
    for query in QUERIES:
        for mode in ("dense", "hybrid"):
            assert [h.chunk_id for h in ra.search(query, k=10, mode=mode)] == \
                [h.chunk_id for h in rb.search(query, k=10, mode=mode)], (query, mode)


def _files(index: Path) -> dict[str, int]:
    """The index's part files and their mtimes (SQLite's -wal/-shm come and go with readers)."""
    # (.integrity-ok only caches that the database passed its check: refreshing it changes nothing indexed)
    return {p.name: p.stat().st_mtime_ns for p in index.iterdir()
            if not p.name.endswith(("-wal", "-shm")) and p.name != ".integrity-ok"}


def _summary(report) -> tuple:
    return (report.added, report.updated, report.removed, report.renamed, report.duplicates, report.skipped,
            report.chunks_embedded, report.total_files, report.total_chunks)


def test_ray_builds_the_same_index_and_resyncs_the_same(tmp_path, ray_runtime):
    folder = _folder(tmp_path)
    encoder = HashingEncoder()
    local = _sync(folder, tmp_path / "local", encoder)
    seen = []
    on_ray = _sync(folder, tmp_path / "ray", encoder, ray=_cluster(), on_progress=lambda d, t: seen.append((d, t)))
    assert _summary(on_ray) == _summary(local) and on_ray.chunks_embedded > 20
    assert seen[-1][0] == seen[-1][1] > 0
    _assert_same_index(tmp_path / "local", tmp_path / "ray", encoder)
    # edit, rename, delete, add a copy: the re-syncs match too
    (folder / "extra03.md").write_text("# Extra 3\n\nNow about a tangerine zeppelin.\n")
    (folder / "src" / "tool.py").rename(folder / "src" / "renamed_tool.py")
    (folder / "guide.md").unlink()
    shutil.copy(folder / "manual.rst", folder / "manual_copy.rst")
    local = _sync(folder, tmp_path / "local", encoder)
    on_ray = _sync(folder, tmp_path / "ray", encoder, ray=_cluster())
    assert _summary(on_ray) == _summary(local)
    assert on_ray.updated == ["extra03.md"] and on_ray.removed == ["guide.md"]
    assert on_ray.renamed == [("src/renamed_tool.py", "src/tool.py")]
    _assert_same_index(tmp_path / "local", tmp_path / "ray", encoder)
    # nothing changed: nothing handed to the workers
    assert _sync(folder, tmp_path / "ray", encoder, ray=_cluster()).chunks_embedded == 0


def test_a_killed_worker_is_restarted_and_its_batch_retried(tmp_path, ray_runtime):
    folder = _folder(tmp_path)
    marker = tmp_path / "died-once"
    _sync(folder, tmp_path / "local", HashingEncoder())
    report = _sync(folder, tmp_path / "ray", DiesOnceEncoder(str(marker)), ray=_cluster())
    assert marker.exists()  # a worker did die
    assert sorted(report.added) == sorted([*PLANTED, *(f"extra{i:02d}.md" for i in range(12))])
    _assert_same_index(tmp_path / "local", tmp_path / "ray", HashingEncoder())


def test_unreachable_address_is_a_clear_error_and_leaves_the_index(tmp_path, ray_runtime):
    folder = _folder(tmp_path)
    encoder = HashingEncoder()
    index = tmp_path / "index"
    _sync(folder, index, encoder)
    generation = IndexStore.open(index).generation
    before = _files(index)
    (folder / "new.txt").write_text("Something new that must not be indexed by a failed run.")
    with pytest.raises(RetrievalError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9.*ray start --head"):
        _sync(folder, index, encoder, ray="127.0.0.1:9")
    assert IndexStore.open(index).generation == generation
    assert _files(index) == before
    with pytest.raises(RetrievalError, match="not an address"):
        _sync(folder, index, encoder, ray="nonsense")


def test_without_ray_installed_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    with pytest.raises(RetrievalError, match=r'pip install -e "\.\[scale\]"'):
        _sync(folder, tmp_path / "index", HashingEncoder(), ray="local")
    assert not (tmp_path / "index").exists()
    from assistant.cli import main

    assert main(["index", str(folder), "--index", str(tmp_path / "index"), "--ray", "local", "--quiet"]) == 1


def test_the_default_path_does_not_import_ray(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from retrieval.sync import sync_folder
        from retrieval.retriever import Retriever
        from retrieval.testing import HashingEncoder
        from pathlib import Path
        folder = Path({str(tmp_path)!r}) / "docs"
        folder.mkdir()
        (folder / "a.txt").write_text("The plain path needs no cluster.")
        sync_folder(folder, folder.parent / "index", HashingEncoder(), progress=False)
        Retriever(folder.parent / "index", HashingEncoder()).search("cluster")
        import assistant.cli
        assistant.cli.build_parser()
        assert "ray" not in sys.modules, "ray was imported"
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
