"""The GPU proof script's code paths, on CPU (`--dry-run`: tiny sizes, a tiny random decoder)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry-run"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    expected = {"decoder_parity", "encoder_parity", "decode_speed", "prefill_speed", "encoder_speed", "server"}
    assert set(report["sections"]) == expected
    for name, section in report["sections"].items():
        assert section.get("ok") is True, (name, section.get("error"), section.get("traceback"))
    assert report["sections"]["decoder_parity"]["pass"] and report["sections"]["encoder_parity"]["pass"]
    assert report["sections"]["server"]["completion_tokens"] > 0
