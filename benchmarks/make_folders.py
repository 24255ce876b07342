"""Build the benchmark document folders used by `open_questions.jsonl`.

    python benchmarks/make_folders.py           # (re)write benchmarks/folders/pydocs and benchmarks/folders/reports
    python benchmarks/make_folders.py --check   # verify open_questions.jsonl against the folders (writes nothing)

Two folders, two kinds of text:

* `folders/pydocs/` - technical documentation in docstring-style Markdown: one file per standard-library
  module, `# module`, a short module description, then per object `## name`, a fenced signature and the
  object's docstring, taken from the running interpreter (Python 3.11). Output is deterministic for a given
  Python version (memory addresses in default values are removed).
* `folders/reports/` - fictional technical reports as PDFs with tables, two-column pages, a running header
  and page numbers, rendered with reportlab from `folders/reports_src/*.json` (the reference text), plus a
  Markdown file with a pipe table and a CSV file built from the same sources. PDFs are written with
  `invariant=1`, so the bytes do not depend on the time of the run.

`--check` verifies that every concept string (every alternative) of every answerable question occurs
(case-insensitively, whitespace collapsed) in at least one of the question's source files - for PDFs in
the report's source text - and that both question files are well formed. It also prints a note for each
concept that pypdf's text extraction of the PDF does not show verbatim (informational: line breaks and the
two-column layout can split a phrase).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import io
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FOLDERS = HERE / "folders"
PYDOCS = FOLDERS / "pydocs"
REPORTS = FOLDERS / "reports"
REPORTS_SRC = FOLDERS / "reports_src"
QUESTIONS = HERE / "open_questions.jsonl"
KINDS_FILE = HERE / "question_kinds.jsonl"

# The pydocs folder is generated from this interpreter version's docstrings; others produce different text.
PYDOCS_PYTHON = (3, 11)

KINDS = ("factoid", "definition", "explanation", "list", "comparison", "summary", "procedure", "yesno", "count")
FOLDER_NAMES = ("corpus", "benchmarks/folders/pydocs", "benchmarks/folders/reports")

# ---------------------------------------------------------------------------------------------------------
# pydocs
# ---------------------------------------------------------------------------------------------------------

# module -> objects documented (dotted names are looked up on the module)
PYDOC_OBJECTS: dict[str, list[str]] = {
    "functools": ["lru_cache", "partial", "reduce", "wraps"],
    "itertools": ["groupby", "chain", "accumulate", "islice", "product"],
    "collections": ["Counter", "defaultdict", "deque", "namedtuple", "OrderedDict"],
    "heapq": ["heappush", "heappop", "nlargest", "merge"],
    "json": ["dumps", "loads"],
    "pathlib": ["Path.glob", "Path.mkdir", "Path.read_text", "Path.resolve"],
    "re": ["sub", "findall", "compile"],
    "textwrap": ["wrap", "dedent", "shorten"],
    "shutil": ["copytree", "rmtree", "which"],
    "contextlib": ["contextmanager", "suppress"],
    "dataclasses": ["dataclass", "field"],
    "statistics": ["mean", "median", "stdev"],
}

# Modules whose own docstring is missing or too thin get a description written for this folder.
MODULE_DESCRIPTIONS = {
    "functools": "Tools for working with functions and callable objects: caching decorators, partial "
                 "application, folding an iterable with reduce, and helpers for writing decorators.",
    "pathlib": "Object-oriented filesystem paths. A Path object represents a file or directory path and "
               "has methods to inspect, create, read and search the filesystem.",
    "dataclasses": "Generate special methods such as __init__() and __repr__() for classes that declare "
                   "their fields with type annotations.",
    "textwrap": "Text wrapping and filling: break paragraphs into lines of a given width, remove common "
                "indentation, and shorten text to fit a width.",
    "contextlib": "Utilities for with-statement contexts (see PEP 343): decorators and ready-made context "
                  "managers.",
}

# Number of leading paragraphs of the module docstring used as the description (default 1).
MODULE_PARAGRAPHS = {"heapq": 2, "json": 2}

# Signatures for builtins that inspect.signature() cannot read.
SIGNATURE_OVERRIDES = {
    "functools.partial": "partial(func, /, *args, **keywords)",
    "functools.reduce": "reduce(function, iterable[, initial])",
    "itertools.chain": "chain(*iterables)",
    "itertools.islice": "islice(iterable, stop)\nislice(iterable, start, stop[, step])",
    "itertools.product": "product(*iterables, repeat=1)",
    "collections.defaultdict": "defaultdict(default_factory=None, /, [...])",
    "collections.deque": "deque([iterable[, maxlen]])",
    "collections.OrderedDict": "OrderedDict([items])",
}

# Classes whose public methods are listed with the first line of their docstrings.
LIST_METHODS = {"collections.Counter", "collections.deque", "collections.OrderedDict"}

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _clean(text: str) -> str:
    text = _ADDRESS.sub("", text)
    return text.replace("<dataclasses._MISSING_TYPE object>", "MISSING")


def _signature(module: str, name: str, obj) -> str:
    key = f"{module}.{name}"
    short = name.split(".")[-1]
    if key in SIGNATURE_OVERRIDES:
        return SIGNATURE_OVERRIDES[key]
    sig = str(inspect.signature(obj))
    prefix = "class " if inspect.isclass(obj) else ""
    return _clean(f"{prefix}{short}{sig}")


def _module_description(module: str, mod) -> str:
    if module in MODULE_DESCRIPTIONS:
        return MODULE_DESCRIPTIONS[module]
    doc = inspect.cleandoc(mod.__doc__ or "")
    paragraphs = doc.split("\n\n")[:MODULE_PARAGRAPHS.get(module, 1)]
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def object_section(qual: str, signature: str, obj) -> list[str]:
    """Markdown lines of one documented object: `## qual`, its signature in a python fence, its docstring."""
    return [f"## {qual}", "", "```python", signature, "```", "", _clean(inspect.getdoc(obj) or "").rstrip(), ""]


def _method_lines(obj) -> list[str]:
    lines = []
    for attr in sorted(vars(obj)):
        if attr.startswith("_"):
            continue
        member = vars(obj)[attr]
        doc = inspect.getdoc(member) if callable(member) or isinstance(member, (classmethod, staticmethod)) else None
        if not doc:
            continue
        first = doc.strip().split("\n\n")[0]
        lines.append(f"- `{attr}`: {' '.join(first.split())}")
    return lines


def build_pydocs() -> dict[str, str]:
    if sys.version_info[:2] != PYDOCS_PYTHON:
        print(f"warning: pydocs are made from Python {PYDOCS_PYTHON[0]}.{PYDOCS_PYTHON[1]} docstrings; "
              f"this is Python {sys.version_info[0]}.{sys.version_info[1]}", file=sys.stderr)
    files = {}
    for module, names in PYDOC_OBJECTS.items():
        mod = importlib.import_module(module)
        out = [f"# {module}", "", _module_description(module, mod), ""]
        for name in names:
            obj = mod
            for part in name.split("."):
                obj = getattr(obj, part)
            qual = f"{module}.{name}"
            out += object_section(qual, _signature(module, name, obj), obj)
            if qual in LIST_METHODS:
                methods = _method_lines(obj)
                if methods:
                    out += [f"Methods of `{name}`:", ""] + [_clean(m) for m in methods] + [""]
        files[f"{module}.md"] = "\n".join(out).rstrip() + "\n"
    return files


# ---------------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------------

def _report_sources() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(REPORTS_SRC.glob("*.json"))}


def source_text(src: dict) -> str:
    """The reference text of one source: everything that is rendered, in order, tables cell by cell."""
    parts = [src.get("title", ""), src.get("subtitle", "")]
    for block in src.get("blocks", []):
        if block["type"] in ("heading", "para"):
            parts.append(block["text"])
        elif block["type"] == "bullets":
            parts += block["items"]
        elif block["type"] == "table":
            parts.append(block.get("caption", ""))
            parts += [" | ".join(row) for row in block["rows"]]
            parts.append(block.get("note", ""))
    if "rows" in src:  # csv / markdown sources
        parts += [" | ".join(row) for row in src["rows"]]
    parts += src.get("notes", [])
    return "\n".join(p for p in parts if p)


def _markup(text: str) -> str:
    """Escape text for a reportlab Paragraph, keeping **bold** as the only markup."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)


def render_pdf(src: dict) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_JUSTIFY
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (BaseDocTemplate, Frame, KeepTogether, NextPageTemplate, PageBreak,
                                    PageTemplate, Paragraph, Spacer, Table, TableStyle)

    width, height = A4
    margin = 20 * mm
    gap = 8 * mm
    title = src["title"]
    buf = io.BytesIO()

    def decorate(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 8.5)
        canvas.drawString(margin, height - 12 * mm, title)
        canvas.drawRightString(width - margin, height - 12 * mm, src.get("header_right", ""))
        canvas.setLineWidth(0.4)
        canvas.line(margin, height - 13.5 * mm, width - margin, height - 13.5 * mm)
        canvas.drawCentredString(width / 2, 10 * mm, f"Page {doc.page}")
        canvas.restoreState()

    body_h = height - 2 * margin
    one = Frame(margin, margin, width - 2 * margin, body_h, id="one")
    col_w = (width - 2 * margin - gap) / 2
    left = Frame(margin, margin, col_w, body_h, id="left")
    right = Frame(margin + col_w + gap, margin, col_w, body_h, id="right")
    doc = BaseDocTemplate(buf, pagesize=A4, title=title, author=src.get("author", ""), subject="", creator="",
                          producer="", invariant=1, leftMargin=margin, rightMargin=margin, topMargin=margin,
                          bottomMargin=margin)
    doc.addPageTemplates([PageTemplate(id="one", frames=[one], onPage=decorate),
                          PageTemplate(id="two", frames=[left, right], onPage=decorate)])

    ss = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=ss["BodyText"], fontName="Helvetica", fontSize=10, leading=13.5,
                          alignment=TA_JUSTIFY, spaceAfter=6)
    h1 = ParagraphStyle("h1", parent=ss["Title"], fontName="Helvetica-Bold", fontSize=17, leading=21,
                        spaceAfter=4)
    sub = ParagraphStyle("sub", parent=body, fontSize=10.5, alignment=1, textColor=colors.HexColor("#333333"),
                         spaceAfter=14)
    h2 = ParagraphStyle("h2", parent=ss["Heading2"], fontName="Helvetica-Bold", fontSize=12, leading=15,
                        spaceBefore=8, spaceAfter=4, keepWithNext=1)
    cap = ParagraphStyle("cap", parent=body, fontName="Helvetica-Bold", fontSize=9, leading=11, spaceAfter=3,
                         alignment=0)
    note = ParagraphStyle("note", parent=body, fontSize=8, leading=10, alignment=0,
                          textColor=colors.HexColor("#444444"))
    cell = ParagraphStyle("cell", parent=body, fontSize=8.5, leading=10.5, alignment=0, spaceAfter=0)
    bullet = ParagraphStyle("bullet", parent=body, leftIndent=12, bulletIndent=2, spaceAfter=3, alignment=0)

    story = [Paragraph(_markup(title), h1)]
    if src.get("subtitle"):
        story.append(Paragraph(_markup(src["subtitle"]), sub))
    for block in src["blocks"]:
        kind = block["type"]
        if kind == "heading":
            story.append(Paragraph(_markup(block["text"]), h2))
        elif kind == "para":
            story.append(Paragraph(_markup(block["text"]), body))
        elif kind == "bullets":
            for item in block["items"]:
                story.append(Paragraph(_markup(item), bullet, bulletText="\u2022"))
        elif kind == "layout":  # switch column layout at a page break
            story += [NextPageTemplate(block["template"]), PageBreak()]
        elif kind == "table":
            rows = [[Paragraph(_markup(c), cell) for c in row] for row in block["rows"]]
            table = Table(rows, colWidths=block.get("col_widths") and [w * mm for w in block["col_widths"]],
                          repeatRows=1, hAlign="LEFT")
            table.setStyle(TableStyle([
                ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#888888")),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e4e8ee")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("TOPPADDING", (0, 0), (-1, -1), 2.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
            ]))
            items = [Paragraph(_markup(block["caption"]), cap), table]
            if block.get("note"):
                items.append(Paragraph(_markup(block["note"]), note))
            story += [Spacer(1, 4), KeepTogether(items), Spacer(1, 8)]
        else:
            raise ValueError(f"unknown block type {kind!r}")
    doc.build(story)
    return buf.getvalue()


def render_markdown_table(src: dict) -> str:
    out = [f"# {src['title']}", ""]
    for para in src.get("intro", []):
        out += [para, ""]
    header, *rows = src["rows"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" for _ in header) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out.append("")
    for para in src.get("notes", []):
        out += [para, ""]
    return "\n".join(out).rstrip() + "\n"


def render_csv(src: dict) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(src["rows"])
    return buf.getvalue()


def build_reports() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for stem, src in _report_sources().items():
        fmt = src.get("format", "pdf")
        if fmt == "pdf":
            files[f"{stem}.pdf"] = render_pdf(src)
        elif fmt == "md":
            files[f"{stem}.md"] = render_markdown_table(src).encode("utf-8")
        elif fmt == "csv":
            files[f"{stem}.csv"] = render_csv(src).encode("utf-8")
        else:
            raise ValueError(f"{stem}: unknown format {fmt!r}")
    return files


def write_folders() -> None:
    PYDOCS.mkdir(parents=True, exist_ok=True)
    REPORTS.mkdir(parents=True, exist_ok=True)
    pydocs = build_pydocs()
    for old in PYDOCS.glob("*.md"):
        if old.name not in pydocs:
            old.unlink()
    for name, text in pydocs.items():
        (PYDOCS / name).write_text(text, encoding="utf-8", newline="\n")
    reports = build_reports()
    for old in REPORTS.iterdir():
        if old.is_file() and old.name not in reports:
            old.unlink()
    for name, data in reports.items():
        (REPORTS / name).write_bytes(data)
    size = sum(p.stat().st_size for p in PYDOCS.iterdir())
    print(f"pydocs: {len(pydocs)} files, {size:,} bytes; reports: {len(reports)} files")


# ---------------------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------------------

def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def reference_text(folder: str, name: str) -> str:
    if folder == "benchmarks/folders/reports":
        src = REPORTS_SRC / (Path(name).stem + ".json")
        return source_text(json.loads(src.read_text(encoding="utf-8")))
    return (REPO / folder / name).read_text(encoding="utf-8")


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def check() -> int:
    errors: list[str] = []
    notes: list[str] = []
    questions = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [q["id"] for q in questions]
    if len(ids) != len(set(ids)):
        errors.append("duplicate ids")
    pdf_cache: dict[str, str] = {}
    for q in questions:
        qid = q["id"]
        for key in ("folder", "question", "kind", "concepts", "sources", "answerable", "table"):
            if key not in q:
                errors.append(f"{qid}: missing {key}")
        if q["kind"] not in KINDS:
            errors.append(f"{qid}: unknown kind {q['kind']}")
        if q["folder"] not in FOLDER_NAMES:
            errors.append(f"{qid}: unknown folder {q['folder']}")
            continue
        if not q["answerable"]:
            if q["concepts"] or q["sources"]:
                errors.append(f"{qid}: unanswerable question with concepts or sources")
            continue
        if not q["sources"] or not q["concepts"]:
            errors.append(f"{qid}: answerable question without sources or concepts")
        if q["kind"] in ("factoid", "count", "yesno") and len(q["concepts"]) != 1:
            errors.append(f"{qid}: {q['kind']} should have exactly one concept")
        if q["table"] and len(q["concepts"]) != 1:
            errors.append(f"{qid}: table question should have exactly one concept")
        texts = {}
        for name in q["sources"]:
            path = REPO / q["folder"] / name
            if not path.exists():
                errors.append(f"{qid}: source {q['folder']}/{name} does not exist")
                continue
            texts[name] = _norm(reference_text(q["folder"], name))
            if path.suffix == ".pdf":
                pdf_cache.setdefault(name, _norm(_pdf_text(path)))
        for group in q["concepts"]:
            if not group:
                errors.append(f"{qid}: empty concept group")
            for alt in group:
                if not any(_norm(alt) in t for t in texts.values()):
                    errors.append(f"{qid}: concept string {alt!r} not found in {q['sources']}")
            pdfs = [pdf_cache[n] for n in q["sources"] if n in pdf_cache]
            if pdfs and not any(_norm(alt) in t for alt in group for t in pdfs):
                notes.append(f"{qid}: concept {group} not verbatim in pypdf text")
    counts: dict[tuple[str, str], int] = {}
    for q in questions:
        counts[(q["kind"], q["folder"])] = counts.get((q["kind"], q["folder"]), 0) + 1
    for kind in KINDS:
        total = sum(v for (k, _), v in counts.items() if k == kind)
        if total < 6:
            errors.append(f"kind {kind}: only {total} questions")
    if KINDS_FILE.exists():
        for i, line in enumerate(KINDS_FILE.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                item = json.loads(line)
                if item.get("kind") not in KINDS or not item.get("question"):
                    errors.append(f"question_kinds.jsonl line {i}: bad item")
    # the committed folders must be what this script writes (pydocs only on the Python version that made them)
    stale = [f"pydocs/{n}" for n, t in build_pydocs().items()
             if not (PYDOCS / n).exists() or (PYDOCS / n).read_text(encoding="utf-8") != t]
    stale += [f"reports/{n}" for n, b in build_reports().items()
              if not (REPORTS / n).exists() or (REPORTS / n).read_bytes() != b]
    for name in stale:
        msg = f"{name} differs from what make_folders.py writes (run it without --check)"
        if name.startswith("pydocs/") and sys.version_info[:2] != PYDOCS_PYTHON:
            notes.append(msg + f"; expected on Python {sys.version_info[0]}.{sys.version_info[1]}")
        else:
            errors.append(msg)
    print(f"{len(questions)} questions checked")
    for n in notes:
        print("note:", n)
    for e in errors:
        print("ERROR:", e)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify open_questions.jsonl; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    write_folders()
    return 0


if __name__ == "__main__":
    sys.exit(main())
