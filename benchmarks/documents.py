"""Real documents as people have them: extraction quality, answer accuracy and indexing speed, old vs new PDF path.

    python benchmarks/documents.py [--out results.json] [--limit N] [--speed-rounds N]

The folder is benchmarks/folders/documents/ (sources and licences in its SOURCES.md): real PDFs from Debian
packages (a specification, manuals, a technical note, a three-column reference card), one SYNTHETIC two-column
paper (benchmarks/documents_make.py writes it, with the slides and the spreadsheet), slides (.pptx) and a
spreadsheet (.xlsx). Every measurement is taken twice in the same run, each in its own subprocess:

- new: the current loader (retrieval/pdf.py on pypdfium2);
- old: the pypdf fallback (`import pypdfium2` made to fail: `sys.modules["pypdfium2"] = None` in the run, and
  a shadowing `pypdfium2` package on PYTHONPATH so that the parser worker process fails the import too).

1. Extraction: for each PDF, a hand-checked reference of one page (reference/*.txt; the synthetic paper's is
   its source text, all pages) in reading order, without running headers, footers and page numbers. "in order"
   = reference words recovered in order (difflib over word lists, benchmarks/pdf_extract.py `score`); "extra"
   = extracted words of that page that match nothing. Over the whole document: line-break hyphens joined
   (a "word-" at the end of a line in the old text, followed by the rest of the word, is one word in the new
   text) and running lines removed (lines at the top or bottom of the old text's pages, page numbers or
   repeated on other pages, that are absent from the new text's page).
2. Answers: benchmarks/documents_questions.jsonl through `Assistant.from_folder(..., answer_mode="extract")`
   with a fresh index per path. Correct = not refused and every concept found (assistant.open_eval
   `concept_found`); an unanswerable question is correct when refused. Also: table-cell questions, and the
   share of cited PDF passages whose Source.page is set.
   The product indexes a copy of the folder without reference/ and SOURCES.md.
3. Indexing: wall seconds of `from_folder` on an empty index (parse + chunk + embed every file; the encoder
   is loaded before the clock starts) per PDF page, and the parse alone per PDF page. With --speed-rounds N,
   N more index-only runs per path, alternating (old, new, new, old, ...), each in its own process: their
   medians are the speed ratio to quote on a shared machine (each run records the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

FOLDER = REPO / "benchmarks" / "folders" / "documents"
QUESTIONS = REPO / "benchmarks" / "documents_questions.jsonl"
# PDF -> [(reference file, page it covers; None = the whole document)]
REFERENCES = {
    "acm-sigconf-sample.pdf": [("acm-sigconf-sample.txt", 3)],
    "camlidl-manual.pdf": [("camlidl-manual.txt", 5)],
    "garden-rainwater-study.pdf": [("garden-rainwater-study.txt", None)],
    "glpk-cnfsat.pdf": [("glpk-cnfsat.txt", 1)],
    "libtasn1.pdf": [("libtasn1.txt", 7)],
    "mnras-guide.pdf": [("mnras-guide.txt", 3)],
    "pari-parallel.pdf": [("pari-parallel.txt", 6)],
    "pari-refcard.pdf": [("pari-refcard.txt", 4)],
    "revtex-aps-sample.pdf": [("revtex-aps-sample.txt", 2), ("revtex-aps-sample-p5.txt", 5)],
    "shared-mime-info-spec.pdf": [("shared-mime-info-spec.txt", 3)],
}
# the two-column papers (the target: >= 95% of reference words in order)
TWO_COLUMN = ("acm-sigconf-sample.pdf", "garden-rainwater-study.pdf", "mnras-guide.pdf", "revtex-aps-sample.pdf")
MODES = ("old", "new")


# ---------------------------------------------------------------- worker (one path, in its own process)

def _force_old_path(shim_dir: Path) -> None:
    """Make `import pypdfium2` fail here and in every child (the parser worker inherits PYTHONPATH)."""
    pkg = shim_dir / "pypdfium2"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('raise ImportError("pypdfium2 disabled by benchmarks/documents.py")\n')
    os.environ["PYTHONPATH"] = str(shim_dir) + (os.pathsep + os.environ["PYTHONPATH"]
                                               if os.environ.get("PYTHONPATH") else "")
    sys.modules["pypdfium2"] = None  # type: ignore[assignment]


def _pdf_pages(raw: bytes) -> int:
    from pypdf import PdfReader
    import io

    return len(PdfReader(io.BytesIO(raw), strict=False).pages)


def speed_worker(mode: str) -> dict:
    """Index the folder once on an empty index with one PDF path and time it (no questions)."""
    with tempfile.TemporaryDirectory(prefix=f"documents-speed-{mode}-") as tmp:
        if mode == "old":
            _force_old_path(Path(tmp) / "shim")
        from assistant.pipeline import Assistant, _load_encoder
        from assistant.settings import Settings

        settings = Settings.load().replace(answer_mode="extract")
        encoder = _load_encoder(settings)
        docs = Path(tmp) / "documents"
        docs.mkdir()
        for path in sorted(FOLDER.iterdir()):
            if path.is_file() and path.name != "SOURCES.md":
                shutil.copy2(path, docs / path.name)
        start = time.perf_counter()
        bot = Assistant.from_folder(docs, Path(tmp) / "index", settings=settings, encoder=encoder)
        seconds = time.perf_counter() - start
        chunks = None
        store = getattr(getattr(bot, "retriever", None), "store", None)
        if store is not None and hasattr(store, "stats"):
            chunks = store.stats().get("chunks")
        bot.close() if hasattr(bot, "close") else None
    return {"mode": mode, "index_s": seconds, "chunks": chunks, "load": os.getloadavg()[0]}


def worker(mode: str, limit: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"documents-{mode}-") as tmp:
        if mode == "old":
            _force_old_path(Path(tmp) / "shim")
        from retrieval.loaders import LoadLimits, SkipFile, parse_bytes

        try:
            import pypdfium2  # noqa: F401
            pdfium = True
        except ImportError:
            pdfium = False
        out: dict = {"mode": mode, "pypdfium2": pdfium, "pdfs": {}, "questions": []}
        pdfs = sorted(FOLDER.glob("*.pdf"))
        total_pages, parse_s = 0, 0.0
        for path in pdfs:
            raw = path.read_bytes()
            n = _pdf_pages(raw)
            total_pages += n
            start = time.perf_counter()
            try:
                text, pages, _, _ = parse_bytes("pdf", raw, LoadLimits())
            except SkipFile as exc:
                parse_s += time.perf_counter() - start
                out["pdfs"][path.name] = {"pages": n, "skipped": exc.reason}
                continue
            parse_s += time.perf_counter() - start
            out["pdfs"][path.name] = {"pages": n, "text": text, "spans": [list(p) for p in (pages or [])]}
        out["pdf_pages"] = total_pages
        out["parse_s"] = parse_s

        from assistant.open_eval import concept_found, load_open_questions
        from assistant.pipeline import Assistant, _load_encoder
        from assistant.settings import Settings

        settings = Settings.load().replace(answer_mode="extract")
        encoder = _load_encoder(settings)
        docs = Path(tmp) / "documents"  # the documents only: not reference/ nor SOURCES.md (they would answer too)
        docs.mkdir()
        for path in sorted(FOLDER.iterdir()):
            if path.is_file() and path.name != "SOURCES.md":
                shutil.copy2(path, docs / path.name)
        start = time.perf_counter()
        bot = Assistant.from_folder(docs, Path(tmp) / "index", settings=settings, encoder=encoder)
        out["index_s"] = time.perf_counter() - start
        report = getattr(bot, "sync_report", None)
        skipped = getattr(report, "skipped", None) or []
        out["skipped"] = [[str(getattr(s, "path", s)), str(getattr(s, "reason", ""))] for s in skipped]

        questions = load_open_questions(QUESTIONS)[: limit or None]
        splits = {r["id"]: r.get("split", "dev") for r in map(json.loads, QUESTIONS.read_text().splitlines()) if r}
        for q in questions:
            start = time.perf_counter()
            answer = bot.ask(q.question)
            seconds = time.perf_counter() - start
            text = answer.text if not answer.refused else ""
            found = [concept_found(text, alts) for alts in q.concepts]
            correct = bool(answer.refused) if not q.answerable else (not answer.refused and all(found))
            by_number = {s.number: s for s in answer.sources}
            cited = [by_number[n] for n in answer.citations if n in by_number]
            out["questions"].append({
                "id": q.id, "split": splits.get(q.id, "dev"), "question": q.question, "table": q.table, "answerable": q.answerable,
                "sources": q.sources, "answer": answer.text, "refused": bool(answer.refused), "correct": correct,
                "missed": [alts for alts, ok in zip(q.concepts, found) if not ok],
                "cited": [[s.path, s.page] for s in cited],
                "gold_cited": any(Path(s.path).name in q.sources for s in cited) if q.sources else None,
                "seconds": round(seconds, 3)})
        bot.close() if hasattr(bot, "close") else None
    return out


# ---------------------------------------------------------------- comparison (parent)

def page_text(doc: dict, page: int | None) -> str:
    if page is None:
        return doc["text"]
    return "\n".join(doc["text"][a:b] for a, b, p in doc["spans"] if p == page)


def _pages(doc: dict) -> dict[int, str]:
    return {p: doc["text"][a:b] for a, b, p in doc["spans"]}


_HYPHEN = re.compile(r"([A-Za-z]{2,})-\s*\n\s*([a-z]{2,})")


def hyphens_joined(old: str, new: str) -> int:
    new_words = set(re.findall(r"[A-Za-z]+", new.lower()))
    count = 0
    for a, b in _HYPHEN.findall(old):
        whole = (a + b).lower()
        if whole in new_words and f"{a}-{b}" not in new:
            count += 1
    return count


def _key(line: str) -> str:
    return re.sub(r"\d+", "#", " ".join(line.split())).lower()


def running_lines_removed(old: dict, new: dict) -> int:
    old_pages, new_pages = _pages(old), _pages(new)
    margins: dict[int, list[str]] = {}
    for p, text in old_pages.items():
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        margins[p] = lines[:2] + lines[-2:] if len(lines) > 4 else lines
    counts: dict[str, int] = {}
    for lines in margins.values():
        for key in {_key(ln) for ln in lines}:
            counts[key] = counts.get(key, 0) + 1
    removed = 0
    for p, lines in margins.items():
        new_text = " ".join(new_pages.get(p, "").split())
        for ln in dict.fromkeys(lines):
            running = re.fullmatch(r"(page\s*)?\d{1,4}", ln.lower()) or counts[_key(ln)] >= 2
            if not running:
                continue
            if re.fullmatch(r"(page\s*)?\d{1,4}", ln.lower()):
                gone = not re.search(rf"(^|\n)\s*{re.escape(ln)}\s*($|\n)", new_pages.get(p, ""))
            else:
                gone = " ".join(ln.split()) not in new_text
            removed += bool(gone)
    return removed


def extraction(results: dict[str, dict]) -> dict:
    """One row per reference page ("name p.N"), plus the document's hyphen/running-line counts on its first row."""
    from pdf_extract import score

    rows = {}
    for name, refs in REFERENCES.items():
        for k, (ref_name, page) in enumerate(refs):
            reference = (FOLDER / "reference" / ref_name).read_text()
            row = {"pdf": name, "reference_page": page if page is not None else "all",
                   "reference_words": len(re.findall(r"[a-z0-9]+", reference.lower())),
                   "two_column": name in TWO_COLUMN}
            for mode in MODES:
                doc = results[mode]["pdfs"].get(name)
                if not doc or "skipped" in doc:
                    row[mode] = None
                    continue
                in_order, extra = score(reference, page_text(doc, page))
                row[mode] = {"in_order": round(in_order, 1), "extra": round(extra, 1)}
            old, new = results["old"]["pdfs"].get(name), results["new"]["pdfs"].get(name)
            if k == 0 and old and new and "skipped" not in old and "skipped" not in new:
                row["hyphens_joined"] = hyphens_joined(old["text"], new["text"])
                row["running_lines_removed"] = running_lines_removed(old, new)
                row["pages"] = new["pages"]
            rows[f"{name} p.{row['reference_page']}"] = row
    return rows


def two_column_share(rows: dict, mode: str) -> float | None:
    """Reference words recovered in order over all two-column reference pages together (word-weighted)."""
    words = found = 0.0
    for row in rows.values():
        if row["two_column"] and row.get(mode):
            words += row["reference_words"]
            found += row["reference_words"] * row[mode]["in_order"] / 100.0
    return 100.0 * found / words if words else None


def answers(result: dict) -> dict:
    qs = result["questions"]

    def acc(items: list[dict]) -> tuple[int, int]:
        return sum(q["correct"] for q in items), len(items)

    pdf_cites = [c for q in qs for c in q["cited"] if c[0].lower().endswith(".pdf")]
    by_format: dict[str, tuple[int, int]] = {}
    for q in qs:
        fmt = Path(q["sources"][0]).suffix.lstrip(".") if q["sources"] else "none"
        ok, n = by_format.get(fmt, (0, 0))
        by_format[fmt] = (ok + q["correct"], n + 1)
    dev = [q for q in qs if q.get("split", "dev") != "heldout"]
    held = [q for q in qs if q.get("split") == "heldout"]
    return {"all": acc(qs), "table": acc([q for q in qs if q["table"]]),
            "dev_all": acc(dev), "dev_table": acc([q for q in dev if q["table"]]),
            "dev_non_table": acc([q for q in dev if not q["table"]]),
            "heldout_table": acc([q for q in held if q["table"]]),
            "table_pdf": acc([q for q in qs if q["table"] and q["sources"] and q["sources"][0].endswith(".pdf")]),
            "pdf_questions": acc([q for q in qs if q["sources"] and q["sources"][0].endswith(".pdf")]),
            "by_format": by_format,
            "pdf_citations_with_page": (sum(c[1] is not None for c in pdf_cites), len(pdf_cites)),
            "gold_cited": (sum(bool(q["gold_cited"]) for q in qs if q["gold_cited"] is not None),
                           sum(q["gold_cited"] is not None for q in qs))}


def _frac(pair: tuple[int, int]) -> str:
    ok, n = pair
    return f"{ok}/{n} ({100.0 * ok / n:.0f}%)" if n else "-"


def format_table(summary: dict) -> str:
    lines = ["| measure | old (pypdf) | new (pypdfium2 + layout) |", "|---|---|---|"]
    for name, row in summary["extraction"].items():
        cells = []
        for mode in MODES:
            r = row.get(mode)
            cells.append("skipped" if r is None else f"{r['in_order']:.1f}% in order, {r['extra']:.1f}% extra")
        lines.append(f"| {name} ({row['reference_words']} ref. words{', two columns' if row['two_column'] else ''}) "
                     f"| {cells[0]} | {cells[1]} |")
    shares = [two_column_share(summary["extraction"], mode) for mode in MODES]
    lines.append("| two-column pages together, words in order | "
                 + " | ".join("-" if v is None else f"{v:.1f}%" for v in shares) + " |")
    hy = sum(r.get("hyphens_joined", 0) for r in summary["extraction"].values())
    rl = sum(r.get("running_lines_removed", 0) for r in summary["extraction"].values())
    per = ", ".join(f"{r['pdf'].split('.')[0]} {r.get('hyphens_joined', 0)}/{r.get('running_lines_removed', 0)}"
                    for r in summary["extraction"].values() if "pages" in r)
    lines.append(f"| line-break hyphens joined / running lines removed (all pages) | - | {hy} / {rl} ({per}) |")
    a = {m: summary["answers"][m] for m in MODES}
    for key, label in (("all", "answers correct (all questions)"),
                       ("dev_table", "table-cell answers correct (original set)"),
                       ("dev_non_table", "non-table answers correct (original set)"),
                       ("heldout_table", "table-cell answers correct (held-out set)"), ("pdf_questions", "answers correct (PDF questions)"),
                       ("table", "table-cell answers correct (all)"), ("table_pdf", "table-cell answers correct (PDF)"),
                       ("pdf_citations_with_page", "cited PDF passages naming their page"),
                       ("gold_cited", "answers citing the right file")):
        lines.append(f"| {label} | {_frac(a['old'][key])} | {_frac(a['new'][key])} |")
    for fmt in sorted(a["new"]["by_format"]):
        lines.append(f"| answers correct, {fmt} questions | {_frac(a['old']['by_format'].get(fmt, (0, 0)))} | "
                     f"{_frac(a['new']['by_format'][fmt])} |")
    s = summary["speed"]
    lines.append(f"| index folder, s per PDF page ({s['pdf_pages']} pages) | {s['old']['index_s_per_page']:.4f} | "
                 f"{s['new']['index_s_per_page']:.4f} |")
    lines.append(f"| parse only, s per PDF page | {s['old']['parse_s_per_page']:.4f} | {s['new']['parse_s_per_page']:.4f} |")
    if "rounds" in s:
        cells = []
        for m in MODES:
            per = ", ".join(f"{r['s_per_page']:.3f} (load {r['load']:.1f})" for r in s["rounds"][m])
            cells.append(f"{s[m]['index_s_per_page_median']:.4f} median of {per}")
        lines.append(f"| index folder, s per PDF page, interleaved rounds | {cells[0]} | {cells[1]} |")
    skipped = summary.get("skipped_new") or []
    if skipped:
        lines.append("")
        lines.append("Files the product skipped (new path): " + "; ".join(f"{p}: {r}" for p, r in skipped))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--limit", type=int, default=None, help="ask only the first N questions")
    parser.add_argument("--speed-rounds", type=int, default=0,
                        help="then index the folder this many more times per path, alternating old/new/new/old, and "
                             "report the median seconds per PDF page of each (a fair speed ratio on a busy machine)")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--speed-worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker or args.speed_worker:
        result = worker(args.worker, args.limit) if args.worker else speed_worker(args.speed_worker)
        Path(args.worker_out).write_text(json.dumps(result))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="documents-bench-") as tmp:
        for mode in MODES:
            target = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--worker-out", str(target)]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            print(f"[{mode}] indexing and asking ...", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
            results[mode] = json.loads(target.read_text())
        rounds: dict[str, list[dict]] = {m: [] for m in MODES}
        for r in range(args.speed_rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                target = Path(tmp) / f"speed-{mode}-{r}.json"
                print(f"[speed {r + 1}/{args.speed_rounds}, {mode}] indexing ...", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, str(Path(__file__).resolve()), "--speed-worker", mode,
                                "--worker-out", str(target)], check=True)
                rounds[mode].append(json.loads(target.read_text()))
    if results["old"]["pypdfium2"] or not results["new"]["pypdfium2"]:
        print("warning: the two runs did not use different PDF paths "
              f"(old pypdfium2={results['old']['pypdfium2']}, new pypdfium2={results['new']['pypdfium2']})",
              file=sys.stderr)
    pages = results["new"]["pdf_pages"]
    summary = {
        "extraction": extraction(results),
        "answers": {m: answers(results[m]) for m in MODES},
        "speed": {"pdf_pages": pages, **{m: {"index_s": results[m]["index_s"], "parse_s": results[m]["parse_s"],
                                               "index_s_per_page": results[m]["index_s"] / pages,
                                               "parse_s_per_page": results[m]["parse_s"] / pages} for m in MODES}},
        "skipped_new": results["new"]["skipped"], "skipped_old": results["old"]["skipped"],
    }
    if args.speed_rounds:
        summary["speed"]["rounds"] = {m: [{**r, "s_per_page": r["index_s"] / pages} for r in rounds[m]]
                                      for m in MODES}
        for m in MODES:
            values = sorted(r["index_s"] / pages for r in rounds[m])
            middle = len(values) // 2
            summary["speed"][m]["index_s_per_page_median"] = (
                values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2)
    table = format_table(summary)
    print(table)
    if args.out:
        summary["questions"] = {m: results[m]["questions"] for m in MODES}
        summary["table"] = table
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
