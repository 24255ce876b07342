"""benchmarks/documents.py: its question file and folder are consistent, and its comparison helpers count right."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import documents  # noqa: E402


def test_question_file_and_folder_agree():
    rows = [json.loads(line) for line in documents.QUESTIONS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 40 and sum(r["table"] for r in rows) >= 10
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        for source in r["sources"]:
            assert (documents.FOLDER / source).is_file(), source
    for pdf, refs in documents.REFERENCES.items():
        assert refs and (documents.FOLDER / pdf).is_file()
        for ref, _ in refs:
            assert (documents.FOLDER / "reference" / ref).is_file()
    assert set(documents.TWO_COLUMN) <= set(documents.REFERENCES)
    assert all(p.stat().st_size < 4 << 20 for p in documents.FOLDER.rglob("*") if p.is_file())


def test_hyphens_and_running_lines():
    assert documents.hyphens_joined("a repre-\nsentation and well-\nknown", "a representation and well-known") == 1
    old = {"text": "Header A\nbody one\n1\n\nHeader A\nbody two\n2",
           "spans": [[0, 19, 1], [21, 40, 2]]}
    new = {"text": "body one\n\nbody two", "spans": [[0, 8, 1], [10, 18, 2]]}
    assert documents.running_lines_removed(old, new) == 4


def test_two_column_share_weighs_pages_by_words():
    rows = {"a p.1": {"two_column": True, "reference_words": 300, "new": {"in_order": 100.0, "extra": 0.0}},
            "b p.2": {"two_column": True, "reference_words": 100, "new": {"in_order": 60.0, "extra": 0.0}},
            "c p.3": {"two_column": False, "reference_words": 900, "new": {"in_order": 0.0, "extra": 0.0}}}
    assert abs(documents.two_column_share(rows, "new") - 90.0) < 1e-9
    assert documents.two_column_share(rows, "old") is None
