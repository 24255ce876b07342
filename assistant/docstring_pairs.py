"""Technical-text training pairs for the reranker: installed packages' docstrings, questions by the question writer.

    python -m assistant.docstring_pairs --limit 1500 --threads 2      # resumable: run it again to continue

SQuAD is Wikipedia prose; people also point the assistant at API docs, READMEs and manuals, where the reranker
trained on SQuAD alone lowers hybrid search (docs/benchmarks.md). This module makes (question, passage) pairs from
text of that kind without labels: each passage is one documented object of an installed third-party package
(numpy, pandas, scipy, requests, ...) rendered the way a Markdown API page is chunked (`## module.name`, its
signature, its docstring's first paragraphs), and its question is written by the shipped question writer
(assistant/data/question_writer). `assistant.rerank_training --technical FILE` mixes them into training as
listwise groups (the passage first, BM25 near misses among the other passages after it).

No Python standard-library module is used: the technical benchmark folders (benchmarks/folders/pydocs,
benchmarks/folders/techdocs) are made of standard-library docstrings, and they must stay unseen.

Output: JSON lines {"package", "name", "passage", "question"} under ~/.cache/assistant/docstring-pairs/.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

# packages whose public objects are documented in prose (none of them from the standard library)
PACKAGES = ("numpy", "pandas", "scipy.stats", "scipy.optimize", "scipy.signal", "scipy.sparse", "requests",
            "click", "jinja2", "yaml", "networkx", "sklearn.model_selection", "sklearn.linear_model",
            "sklearn.metrics", "sklearn.preprocessing", "sklearn.cluster", "httpx", "pydantic", "starlette.routing",
            "fastapi", "openpyxl", "docx", "pptx", "pypdf", "reportlab.platypus", "dateutil.parser",
            "dateutil.relativedelta", "pytz", "attr", "rich.console", "rich.table", "pygments", "lxml.etree",
            "bs4", "joblib", "tqdm", "filelock", "psutil", "cryptography.fernet", "markdown_it", "tomlkit",
            "jsonschema", "sympy", "safetensors.torch", "tokenizers", "faiss", "torch.nn", "torch.optim",
            "torch.utils.data", "pyarrow", "typer", "msgpack", "sortedcontainers", "networkx.algorithms")
MAX_CHARS = 1200
MIN_DOC_CHARS = 120


def out_dir() -> Path:
    from model.sources import cache_dir

    return cache_dir() / "docstring-pairs"


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def render(module: str, name: str, obj: object) -> str | None:
    """One object's passage: a Markdown heading, its signature in a code fence, then the docstring's leading
    paragraphs up to MAX_CHARS (None when the docstring is missing or too short to ask about)."""
    doc = inspect.getdoc(obj) or ""
    doc = re.sub(r"0x[0-9a-f]{6,}", "0x...", doc).strip()
    if len(doc) < MIN_DOC_CHARS:
        return None
    kept, size = [], 0
    for para in re.split(r"\n\s*\n", doc):
        if kept and size + len(para) > MAX_CHARS:
            break
        kept.append(para[:MAX_CHARS])
        size += len(para)
    head = f"## {module}.{name}\n\n```python\n{name}{_signature(obj)}\n```\n\n"
    return head + "\n\n".join(kept)


def passages(packages: Sequence[str] = PACKAGES) -> Iterator[tuple[str, str, str]]:
    """(package, dotted name, passage) for every documented public function/class of `packages` that imports;
    objects re-exported from elsewhere are taken once (by their docstring)."""
    seen: set[str] = set()
    for package in packages:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(package)
        except Exception as exc:  # noqa: BLE001 - an optional package that does not import is skipped
            print(f"skip {package}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            try:
                obj = getattr(mod, name)
            except Exception:  # noqa: BLE001 - lazy attributes can fail to load
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)
                    or type(obj).__name__ in ("ufunc", "_ArrayFunctionDispatcher")):
                continue
            owner = getattr(obj, "__module__", "") or ""
            if owner.split(".")[0] in sys.stdlib_module_names:
                continue
            text = render(package, name, obj)
            if text is None:
                continue
            key = text.split("```", 2)[-1]
            if key in seen:
                continue
            seen.add(key)
            yield package, f"{package}.{name}", text


def read_pairs(path: Path) -> list[dict]:
    """The pairs written so far (a cut last line from a killed run is ignored)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=1500, help="passages to write questions for (a random sample)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", default=None,
                        help="JSONL file (default ~/.cache/assistant/docstring-pairs/pairs.jsonl, or "
                             "pairs-openings.jsonl with --openings)")
    parser.add_argument("--openings", default=None,
                        help="comma-separated question openings, one picked per passage (e.g. 'How do I,How can I'): "
                             "how-to questions as people ask documentation, instead of the writer's SQuAD style")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from assistant.question_writer import QuestionWriter
    from assistant.adapt import usable_question

    choices = [o.strip() for o in args.openings.split(",") if o.strip()] if args.openings else []
    path = Path(args.out) if args.out else out_dir() / ("pairs-openings.jsonl" if choices else "pairs.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    found = list(passages())
    random.Random(0).shuffle(found)
    found = found[: args.limit]
    done = {row["name"] for row in read_pairs(path)}
    todo = [p for p in found if p[1] not in done]
    print(f"{len(found)} passages from {len({p[0] for p in found})} packages; {len(todo)} to write", flush=True)
    writer = QuestionWriter.load()
    started = time.perf_counter()
    for start in range(0, len(todo), args.batch * 4):
        group = todo[start:start + args.batch * 4]
        openings = [random.Random(p[1]).choice(choices) for p in group] if choices else None
        written = writer.write([p[2] for p in group], batch_size=args.batch, openings=openings)
        with path.open("a", encoding="utf-8") as f:
            for (package, name, text), questions in zip(group, written):
                question = questions[0] if questions else ""
                row = {"package": package, "name": name, "passage": text, "question": None}
                if question and usable_question(question, text):
                    row["question"] = question
                f.write(json.dumps(row) + "\n")  # one without a question is remembered as done
        n = start + len(group)
        rate = n / (time.perf_counter() - started)
        print(f"{n}/{len(todo)} passages, {rate:.2f}/s, ETA {(len(todo) - n) / rate / 60:.1f} min", flush=True)
    rows = [r for r in read_pairs(path) if r.get("question")]
    print(f"{len(rows)} usable pairs in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
