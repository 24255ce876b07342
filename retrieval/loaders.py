"""Turn the files of a folder into plain-text `Document`s, and say why any file was skipped.

Supported: plain text (.txt, .log, ...), Markdown, reStructuredText, HTML, PDF (text layer in reading
order, with page numbers and headings: see `retrieval.pdf`), DOCX, CSV/TSV tables, source code, and (see
`retrieval.formats`) PPTX (slides as pages), XLSX/XLSM (sheets as tables), EPUB, ODT, EML and MBOX. Text
that is not UTF-8 is decoded with the encoding `charset-normalizer` detects. A file that cannot be read
never stops a scan: it becomes a `Skipped(path, reason)`.

Hidden files and folders (names starting with ".", such as .git) are ignored silently. Symbolic links are
never followed (that is how loops and escapes from the folder are avoided); each one is reported with a
reason instead.

Per-file limits (`LoadLimits`) keep one hostile or broken file from stalling or exhausting an indexing run:
bytes on disk, bytes a DOCX (a ZIP archive) expands to, PDF pages, characters of text, and parse time.
PDF, DOCX and HTML are parsed in a separate worker process (`ParserWorker`) that is killed and restarted
when a file takes longer than the time limit, so a file that makes its parser hang becomes a skip reason.
Text that is almost all valid UTF-8 (at least 98% of its bytes, no NUL byte) is read with U+FFFD in place
of the bad bytes, and the `Document` says so in `note`; binary files stay skipped.

Tables (HTML `<table>`, DOCX tables, CSV/TSV files) become Markdown pipe tables in the text, the form
described in retrieval.pipe_tables: a header line, a separator line, one line per row, a blank line before
and after. The header is the `<thead>` / `<th>` row of an HTML table, else (and for DOCX and CSV) the first
row. A table of one column is not a table: its rows stay lines of text, as does a CSV file that does not parse.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import logging
import os
import pickle
import re
import select
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024
MIB = 1024 * 1024

MARKDOWN_EXTENSIONS = {".md", ".markdown", ".mdown", ".mkd"}
RST_EXTENSIONS = {".rst", ".rest"}
HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}
TEXT_EXTENSIONS = {".txt", ".text", ".log", ".tex", ".org", ".adoc", ".srt"}
TABLE_EXTENSIONS = {".csv", ".tsv"}  # delimited rows: loaded as one pipe table (kind "table")
CODE_EXTENSIONS = {
    ".py", ".pyi", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".java", ".kt", ".kts", ".scala", ".c", ".h",
    ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".go", ".rs", ".rb", ".php", ".pl", ".pm", ".swift", ".m",
    ".lua", ".r", ".jl", ".hs", ".ml", ".ex", ".exs", ".erl", ".clj", ".dart", ".zig", ".nim", ".vue",
    ".svelte", ".sh", ".bash", ".zsh", ".fish", ".ps1", ".bat", ".sql", ".json", ".jsonl", ".yaml", ".yml",
    ".toml", ".ini", ".cfg", ".conf", ".xml", ".css", ".scss", ".less", ".proto", ".graphql", ".tf",
    ".cmake", ".gradle", ".mk", ".dockerfile", ".env.example",
}
CODE_FILENAMES = {"makefile", "dockerfile", "cmakelists.txt", "gemfile", "rakefile", "procfile", "jenkinsfile"}
# Names without an extension that are conventionally plain text.
TEXT_FILENAMES = {"readme", "license", "licence", "copying", "authors", "changelog", "notice", "todo", "install"}

PDF_EXTENSIONS = {".pdf"}
DOCX_EXTENSIONS = {".docx"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"}  # kind "image": OCR (retrieval.ocr)
# The version of each kind's extraction, stored with its chunks in the index: bump a kind's number when its
# text changes for the same bytes, and the next sync re-reads that kind's files (retrieval.sync). Kinds not
# listed are at 1, the version of every kind before versions were recorded.
# pdf 3: several gutters (three columns), columns read line by line on their own, footnote marks apart from
# their words, accents put back on their letters, tables with long cells / spanning cells / arrow columns,
# running headers alternating on odd and even pages.
PARSER_VERSIONS = {"pdf": 3, "html": 2, "docx": 2}


def parser_version(kind: str) -> int:
    """The current extraction version of a loader kind (see PARSER_VERSIONS)."""
    return PARSER_VERSIONS.get(kind, 1)


# Parsed by retrieval.formats (in the parser worker): extension -> kind.
FORMAT_EXTENSIONS = {".pptx": "pptx", ".xlsx": "xlsx", ".xlsm": "xlsx", ".epub": "epub", ".odt": "odt",
                     ".eml": "email", ".mbox": "email"}
FORMAT_KINDS = ("pptx", "xlsx", "epub", "odt", "email")

logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass
class Document:
    """One loaded file.

    `path` is relative to the indexed folder, with "/" separators. `text` is the plain text that chunks
    point into. `pages` holds (start, end, page_no) character spans for PDFs. `headings` holds
    (offset, level, title) for formats whose structure the loader sees and the text does not show
    (HTML, DOCX, PDF); Markdown and RST headings are found by the chunker in the text itself.
    """

    path: str
    text: str
    kind: str  # "text" | "markdown" | "rst" | "html" | "pdf" | "docx" | "code" | "table" (CSV/TSV) | FORMAT_KINDS
    sha256: str
    size: int
    mtime: float
    pages: list[tuple[int, int, int]] | None = None
    headings: list[tuple[int, int, str]] | None = None
    note: str = ""  # something the user should know, e.g. "read as UTF-8 with 3 invalid bytes replaced"
    parser_version: int = 1  # PARSER_VERSIONS of its kind when it was read
    incomplete: str = ""  # "ocr": pages were not read for want of tesseract (re-read once it is installed)


@dataclass
class LoadLimits:
    """Per-file limits. A file over any of them is skipped with a reason that names the limit."""

    max_bytes: int = DEFAULT_MAX_FILE_BYTES           # the file on disk
    max_unpacked_bytes: int = 256 * MIB               # what a DOCX (ZIP) archive's parts add up to unpacked
    max_compression_ratio: float = 200.0              # per ZIP part larger than 1 MiB unpacked
    max_zip_parts: int = 10_000
    max_pdf_pages: int = 2_000
    max_chars: int = 50_000_000                       # characters of extracted text
    parse_seconds: float | None = 120.0               # PDF/DOCX/HTML parse time; None: parse in-process
    parser_memory_bytes: int | None = 4096 * MIB      # address-space limit of the parser process

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Skipped:
    """A file that was not indexed, and why (in words a user understands)."""

    path: str
    reason: str


@dataclass
class FileEntry:
    """A candidate file found by `scan_folder`, not read yet."""

    path: str  # relative to the root, "/" separators
    abs_path: Path
    size: int
    mtime_ns: int
    kind: str


class SkipFile(Exception):
    """Raised by `load_file` when a file cannot be indexed; the message is the reason."""

    @property
    def reason(self) -> str:
        return str(self)


@dataclass
class ScanResult:
    files: list[FileEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def kind_for(path: str | Path) -> str | None:
    """The loader kind for a file name, or None when the type is not supported."""
    name = Path(path).name.lower()
    ext = Path(name).suffix
    if ext in MARKDOWN_EXTENSIONS:
        return "markdown"
    if ext in RST_EXTENSIONS:
        return "rst"
    if ext in HTML_EXTENSIONS:
        return "html"
    if ext in PDF_EXTENSIONS:
        return "pdf"
    if ext in DOCX_EXTENSIONS:
        return "docx"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in FORMAT_EXTENSIONS:
        return FORMAT_EXTENSIONS[ext]
    if name in CODE_FILENAMES or ext in CODE_EXTENSIONS:
        return "code"
    if ext in TABLE_EXTENSIONS:
        return "table"
    if ext in TEXT_EXTENSIONS:
        return "text"
    if not ext and name in TEXT_FILENAMES:
        return "text"
    return None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def scan_folder(root: str | Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> ScanResult:
    """Walk `root` and list the files that can be indexed and the ones that cannot (with reasons).

    Only cheap checks happen here (type, size, permissions, links); content checks happen in `load_file`.
    Results are sorted by path so runs are reproducible.
    """
    root = Path(root)
    try:
        root_real = root.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        from retrieval.errors import RetrievalError

        raise RetrievalError(f"cannot read the folder {root}: {exc}. Check the path.") from None
    if not root_real.is_dir():
        from retrieval.errors import RetrievalError

        raise RetrievalError(f"{root} is not a folder. Pass the folder that holds your documents.")
    result = ScanResult()
    stack = [root_real]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            rel = _rel(Path(folder), root_real)
            result.skipped.append(Skipped(rel + "/", f"unreadable folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            full = Path(entry.path)
            rel = _rel(full, root_real)
            try:
                if entry.is_symlink():
                    result.skipped.append(Skipped(rel, _symlink_reason(full, root_real)))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(full)
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                result.skipped.append(Skipped(rel, f"unreadable ({exc.strerror or exc})"))
                continue
            if not stat.S_ISREG(st.st_mode):
                result.skipped.append(Skipped(rel, "not a regular file"))
                continue
            kind = kind_for(full)
            if kind is None:
                ext = full.suffix.lower() or "(no extension)"
                result.skipped.append(Skipped(rel, f"unsupported file type {ext}"))
                continue
            if st.st_size == 0:
                result.skipped.append(Skipped(rel, "empty file"))
                continue
            if st.st_size > max_bytes:
                result.skipped.append(Skipped(
                    rel, f"too large ({size_vs_limit(st.st_size, max_bytes)}; raise it with --max-file-mb)"))
                continue
            if not os.access(full, os.R_OK):
                result.skipped.append(Skipped(rel, "unreadable (permission denied)"))
                continue
            result.files.append(FileEntry(rel, full, st.st_size, st.st_mtime_ns, kind))
    result.files.sort(key=lambda f: f.path)
    result.skipped.sort(key=lambda s: s.path)
    return result


def _size(n: int, decimals: int = 1) -> str:
    """Bytes for people: 900 B, 58.6 KB, 20.0 MB."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.{decimals}f} KB"
    if n < 1024 ** 3:
        return f"{n / 1024 / 1024:.{decimals}f} MB"
    return f"{n / 1024 ** 3:.{decimals}f} GB"


def size_vs_limit(n: int, limit: int) -> str:
    """"20.04 MB > limit 20.00 MB": as many decimals as it takes for the two sizes to read differently."""
    for decimals in (1, 2, 3):
        a, b = _size(n, decimals), _size(limit, decimals)
        if a != b:
            return f"{a} > limit {b}"
    return f"{n:,} B > limit {limit:,} B"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _symlink_reason(link: Path, root: Path) -> str:
    """Why a symlink is not followed: loop, broken, outside the folder, or a duplicate of a path inside."""
    try:
        target = link.resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError as exc:
        if getattr(exc, "errno", None) == 40:  # ELOOP
            return "symlink loop"
        return "broken symlink"
    if target == root or root in target.parents:
        if target.is_dir() and (target == link.parent.resolve() or target in link.parent.resolve().parents):
            return "symlink loop (points to a folder that contains it)"
        return f"symlink to {target.relative_to(root).as_posix() or '.'} (indexed there, not twice)"
    return "symlink points outside the indexed folder (not followed)"


def load_file(entry: FileEntry | str | Path, root: str | Path | None = None,
              max_bytes: int = DEFAULT_MAX_FILE_BYTES, limits: LoadLimits | None = None,
              worker: "ParserWorker | None" = None) -> Document:
    """Read one file into a `Document`; raise `SkipFile(reason)` when it cannot be indexed.

    `limits` (default: `LoadLimits(max_bytes=max_bytes)`) bound the work one file may cause. PDF, DOCX
    and HTML are parsed by `worker` (default: a shared `ParserWorker`) when `limits.parse_seconds` is set.
    """
    limits = limits or LoadLimits(max_bytes=max_bytes)
    if not isinstance(entry, FileEntry):
        path = Path(entry)
        root_path = Path(root) if root is not None else path.parent
        kind = kind_for(path)
        if kind is None:
            raise SkipFile(f"unsupported file type {path.suffix.lower() or '(no extension)'}")
        try:
            st = path.stat()
        except OSError as exc:
            raise SkipFile(f"unreadable ({exc.strerror or exc})") from None
        entry = FileEntry(_rel(path.resolve(), root_path.resolve()), path, st.st_size, st.st_mtime_ns, kind)
    if entry.size > limits.max_bytes:
        raise SkipFile(f"too large ({size_vs_limit(entry.size, limits.max_bytes)})")
    try:
        with open(entry.abs_path, "rb") as fh:
            raw = fh.read(limits.max_bytes + 1)  # the file may have grown since it was listed
    except OSError as exc:
        raise SkipFile(f"unreadable ({exc.strerror or exc})") from None
    if not raw:
        raise SkipFile("empty file")
    if len(raw) > limits.max_bytes:
        raise SkipFile(f"too large (grew past the limit of {_size(limits.max_bytes, 2)} while being read)")
    sha = hashlib.sha256(raw).hexdigest()
    kind = entry.kind
    if kind in _WORKER_KINDS and limits.parse_seconds and os.name == "posix":  # (the worker needs select() on pipes)
        text, pages, headings, note = (worker or shared_worker()).parse(kind, raw, limits)
    else:
        text, pages, headings, note = parse_bytes(kind, raw, limits)
    from retrieval.ocr import needs_ocr

    return Document(entry.path, text, kind, sha, len(raw), entry.mtime_ns / 1e9, pages, headings, note,
                    parser_version(kind), "ocr" if needs_ocr(note) else "")


_WORKER_KINDS = ("pdf", "docx", "html", "image", *FORMAT_KINDS)

Parsed = tuple[str, "list[tuple[int, int, int]] | None", "list[tuple[int, int, str]] | None", str]


def parse_bytes(kind: str, raw: bytes, limits: LoadLimits | None = None) -> Parsed:
    """(text, pages, headings, note) of a file's bytes, in this process; raises SkipFile."""
    limits = limits or LoadLimits()
    pages = headings = None
    note = ""
    if kind == "pdf":
        text, pages, headings, note = _pdf_text(raw, limits)
        headings = headings or None
    elif kind == "image":
        text, pages, note = _image_text(raw, limits)
    elif kind in FORMAT_KINDS:
        from retrieval.formats import parse_format

        text, pages, headings, note = parse_format(kind, raw, limits)
    elif kind == "docx":
        _check_zip(raw, limits)
        text, headings = _docx_text(raw)
    elif kind == "html":
        html, note = decode_text_with_note(raw)
        text, headings = html_to_text(html)
    elif kind == "table":
        text, note = decode_text_with_note(raw)
        text = _delimited_text(_normalise(text), limits)
    else:
        text, note = decode_text_with_note(raw)
    text = _normalise(text) if kind not in ("pdf", "html", "docx", "image", *FORMAT_KINDS) else text
    if len(text) > limits.max_chars:
        raise SkipFile(f"too much text ({len(text):,} characters > limit {limits.max_chars:,})")
    if not text.strip():
        raise SkipFile("no text layer (scanned PDF? run OCR first)" if kind == "pdf" else "no text content")
    return text, pages, headings, note


def _normalise(text: str) -> str:
    """Unify line endings and drop a byte-order mark; offsets refer to this normalised text."""
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


MOSTLY_TEXT = 0.98  # share of bytes that must be valid UTF-8 for a file with bad bytes to count as text
_ESCAPED = re.compile("[\udc80-\udcff]")
_MULTIBYTE = re.compile("[\u0080-\udc7f\udd00-\U0010ffff]")


def decode_text(raw: bytes) -> str:
    """Bytes → str: UTF-8 (with or without BOM), UTF-16 with BOM, else the detected encoding.

    Raises SkipFile("binary ...") when the bytes do not look like text. See `decode_text_with_note`.
    """
    return decode_text_with_note(raw)[0]


def decode_text_with_note(raw: bytes) -> tuple[str, str]:
    """(text, note). Almost-UTF-8 (>= 98% of the bytes valid, no NUL byte) is read as UTF-8 with U+FFFD
    for each bad byte, and the note says how many; otherwise the note is empty."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), ""
        except UnicodeDecodeError:
            pass
    if b"\x00" in raw[:8192]:
        raise SkipFile("binary file (not text)")
    try:
        return raw.decode("utf-8-sig"), ""
    except UnicodeDecodeError:
        pass
    lenient = _mostly_utf8(raw)
    # Valid multi-byte sequences around the bad bytes say "UTF-8 with damage", not a legacy code page.
    if lenient is not None and lenient[2]:
        return lenient[0], lenient[1]
    try:
        return _decode_detected(raw), ""
    except SkipFile:
        if lenient is not None:
            return lenient[0], lenient[1]
        raise


def _mostly_utf8(raw: bytes) -> tuple[str, str, bool] | None:
    """(text with U+FFFD for bad bytes, note, has valid multi-byte sequences), or None when under 98%."""
    if b"\x00" in raw:
        return None
    text = raw.decode("utf-8", errors="surrogateescape")
    bad = len(_ESCAPED.findall(text))
    if bad > (1 - MOSTLY_TEXT) * len(raw):
        return None
    multibyte = _MULTIBYTE.search(text) is not None
    text = _ESCAPED.sub("\ufffd", text).lstrip("\ufeff")
    note = f"not valid UTF-8: {bad:,} bad byte{'s' if bad != 1 else ''} shown as \ufffd"
    return text, note, multibyte


def _decode_detected(raw: bytes) -> str:
    from charset_normalizer import from_bytes

    matches = [m for m in from_bytes(raw[:1_000_000]) if m.encoding]
    if not matches:
        raise SkipFile("binary file or unknown text encoding")
    best = matches[0]
    # Short Western-European texts fit several code pages equally well; prefer the most common one.
    tied = [m.encoding for m in matches
            if m.chaos <= best.chaos + 0.01 and m.coherence >= best.coherence - 0.01]
    for preferred in ("cp1252", "latin_1", "iso8859_15"):
        if preferred in tied:
            best = next(m for m in matches if m.encoding == preferred)
            break
    try:
        text = raw.decode(best.encoding)
    except (UnicodeDecodeError, LookupError):
        raise SkipFile(f"cannot decode text (detected {best.encoding})") from None
    controls = sum(1 for ch in text[:10000] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > 0.05 * min(len(text), 10000):
        raise SkipFile("binary file (not text)")
    return text


# ---------------------------------------------------------------- tables (HTML, DOCX, CSV/TSV)

MAX_TABLE_COLUMNS = 1_000  # cells past this many in a row are dropped (a crafted file, not a table to read)


def table_blocks(header_rows: list[list[str]], body_rows: list[list[str]]) -> list[str]:
    """Text blocks for one table: a pipe table (`format_pipe_table`), or lines of text when it is no table.

    Several header rows are merged column by column. Rows whose cells are all empty are dropped. A table
    whose widest row has fewer than two cells, or that has a single row, becomes one "a | b" line per row (its
    old form); one with nothing in it gives no block.
    """
    from retrieval.pipe_tables import clean_cell, format_pipe_table

    header = _merge_header_rows([[clean_cell(c) for c in row[:MAX_TABLE_COLUMNS]] for row in header_rows])
    body = [cells for cells in ([clean_cell(c) for c in row[:MAX_TABLE_COLUMNS]] for row in body_rows)
            if any(cells)]
    if not any(header) and not body:
        return []
    if not any(header):  # an empty header row: the first row with text is the header
        header, body = body[0], body[1:]
    if max([len(header), *(len(r) for r in body)]) < 2 or not body:  # one column, or one row: no table
        return [line for line in (" | ".join(c for c in row if c) for row in [header, *body]) if line]
    return [format_pipe_table(header, body, clean=False)]


def _merge_header_rows(rows: list[list[str]]) -> list[str]:
    """One header from several header rows: per column, the distinct non-empty texts joined by a space."""
    if len(rows) <= 1:
        return rows[0] if rows else []
    width = max(len(r) for r in rows)
    merged = []
    for col in range(width):
        parts: list[str] = []
        for row in rows:
            if col < len(row) and row[col] and row[col] not in parts:
                parts.append(row[col])
        merged.append(" ".join(parts))
    return merged


_DELIMITERS = ",\t;|"
_SPACES = re.compile(r"\s+")
SNIFF_CHARS = 4096  # csv.Sniffer's regexes are quadratic on some inputs: ~0.2 s at worst on this much text


def _sniff_delimiter(sample: str) -> tuple[str, "object | None"]:
    """(delimiter, csv dialect or None) for the first lines of a delimited file; ("", None) when none fits."""
    import csv

    lines = [line for line in sample.split("\n")[:50] if line.strip()]
    tabs = {line.count("\t") for line in lines}
    if len(lines) > 1 and len(tabs) == 1 and min(tabs) > 0:  # as many tabs on every line: TSV (not ",")
        return "\t", None
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=_DELIMITERS)
        if dialect.delimiter in _DELIMITERS:
            return dialect.delimiter, dialect
    except csv.Error:
        pass
    # The sniffer gives up on ragged or quoted samples: take the delimiter found most often in every line.
    best, best_n = "", 0
    for delimiter in _DELIMITERS:
        counts = [line.count(delimiter) for line in lines]
        if counts and min(counts) > 0 and min(counts) > best_n:
            best, best_n = delimiter, min(counts)
    return best, None


def _delimited_text(text: str, limits: LoadLimits) -> str:
    """A CSV/TSV file's text as one pipe table (first row = header), or the text unchanged when it does not
    parse as rows of two or more cells (it is then indexed as plain text). Raises SkipFile when the table's
    text would pass `limits.max_chars`."""
    import csv

    sample = text[:SNIFF_CHARS]
    if len(text) > len(sample) and "\n" in sample:
        sample = sample[:sample.rindex("\n")]
    delimiter, dialect = _sniff_delimiter(sample)
    if not delimiter:
        return text
    options: dict = {"delimiter": delimiter, "strict": False}
    if dialect is not None:
        options.update(quotechar=getattr(dialect, "quotechar", '"') or '"',
                       doublequote=bool(getattr(dialect, "doublequote", True)),
                       skipinitialspace=bool(getattr(dialect, "skipinitialspace", False)))
    # Rows are cleaned as whole lines (cells joined by NUL, which the csv module never lets into a cell):
    # one regex pass per row instead of one call per cell keeps a million-row file to seconds.
    lines: list[str] = []
    widths: list[int] = []
    chars = 0
    try:
        for row in csv.reader(io.StringIO(text), **options):
            row = row[:MAX_TABLE_COLUMNS]
            line = _SPACES.sub(" ", "\0".join(row).replace("|", "/")).strip(" ")
            line = line.replace(" \0", "\0").replace("\0 ", "\0")
            if not line.replace("\0", ""):
                continue
            lines.append(line)
            widths.append(len(row))
            chars += len(line) + 2 * len(row) + 3
            if chars > limits.max_chars:
                raise SkipFile(f"too much text (over {limits.max_chars:,} characters)")
    except csv.Error:  # a field over the csv module's size limit, a NUL byte: not a table
        return text
    width = max(widths, default=0)
    if width < 2:
        return text
    out = []
    for i, (line, n) in enumerate(zip(lines, widths)):
        out.append("| " + (line + "\0" * (width - n)).replace("\0", " | ") + " |")
        if i == 0:
            out.append("|" + "|".join("---" for _ in range(width)) + "|")
    return "\n".join(out)


# ---------------------------------------------------------------- PDF

def _pdf_text(raw: bytes, limits: LoadLimits | None = None
              ) -> tuple[str, list[tuple[int, int, int]], list[tuple[int, int, str]], str]:
    """Text of a PDF in reading order (see `retrieval.pdf`), pages without a text layer read by OCR
    (`retrieval.ocr`): the text, its page spans, its headings and a note (which pages were OCR'd)."""
    from retrieval.ocr import OcrSkip, pdf_text_with_ocr
    from retrieval.pdf import PdfSkip

    limits = limits or LoadLimits()
    try:
        return pdf_text_with_ocr(raw, limits.max_pdf_pages, limits.max_chars, limits.parse_seconds)
    except (PdfSkip, OcrSkip) as exc:
        raise SkipFile(str(exc)) from None


def _image_text(raw: bytes, limits: LoadLimits) -> tuple[str, list[tuple[int, int, int]], str]:
    """OCR text of an image file (`retrieval.ocr`): the text, its page spans (one per frame) and a note."""
    from retrieval.ocr import OcrSkip, image_text

    try:
        return image_text(raw, limits.parse_seconds, limits.max_pdf_pages)
    except OcrSkip as exc:
        raise SkipFile(str(exc)) from None


# ---------------------------------------------------------------- DOCX

def _check_zip(raw: bytes, limits: LoadLimits, label: str = "DOCX") -> None:
    """Refuse a ZIP archive (DOCX) that would unpack to too much, before any part is unpacked.

    Python's zipfile never unpacks more than a part's declared size, so the declared sizes bound the work."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError) as exc:
        raise SkipFile(f"corrupt {label} (not a ZIP archive: {str(exc)[:80]})") from None
    parts = archive.infolist()
    if len(parts) > limits.max_zip_parts:
        raise SkipFile(f"too many parts in the {label} archive ({len(parts):,} > limit {limits.max_zip_parts:,})")
    total = sum(p.file_size for p in parts)
    if total > limits.max_unpacked_bytes:
        raise SkipFile(f"unpacks to too much ({size_vs_limit(total, limits.max_unpacked_bytes)}; a ZIP bomb?)")
    for part in parts:
        if part.file_size > MIB and part.file_size > limits.max_compression_ratio * max(part.compress_size, 1):
            raise SkipFile(f"suspicious compression in {part.filename[:60]!r} ({_size(part.compress_size)} unpacks "
                           f"to {_size(part.file_size)}, over {limits.max_compression_ratio:g}x; a ZIP bomb?)")


def _docx_text(raw: bytes) -> tuple[str, list[tuple[int, int, str]]]:
    """Paragraphs and tables of a .docx in document order; "Heading N" / "Title" styles become headings."""
    try:
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph

        document = docx.Document(io.BytesIO(raw))
        blocks: list[tuple[str, int]] = []  # (text, heading level or 0)
        body = document.element.body
        for child in body.iterchildren():
            tag = child.tag.rsplit("}", 1)[-1]
            if tag == "p":
                para = Paragraph(child, document)
                blocks.append((para.text, _docx_heading_level(para)))
            elif tag == "tbl":
                table = Table(child, document)
                # A merged cell appears in every grid column (and row) it spans: alignment is kept.
                grid = [[cell.text for cell in row.cells] for row in table.rows]
                blocks.extend((block, 0) for block in table_blocks(grid[:1], grid[1:]))
    except Exception as exc:
        raise SkipFile(f"corrupt DOCX ({type(exc).__name__}: {str(exc)[:100]})") from None
    cleaned = [(text, level) for text, level in ((_normalise(t).strip(), lv) for t, lv in blocks) if text]
    return _join_blocks(cleaned)


def _docx_heading_level(para) -> int:
    name = (para.style.name if para.style is not None else "") or ""
    if name == "Title":
        return 1
    match = re.match(r"Heading (\d)", name)
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------- HTML

_BLOCK_TAGS = {
    "p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "li", "ul", "ol", "dl",
    "dt", "dd", "table", "tr", "blockquote", "pre", "figure", "figcaption", "form", "br", "hr", "h1", "h2",
    "h3", "h4", "h5", "h6", "title", "td", "th", "details", "summary", "address",
}
_DROP_TAGS = {"script", "style", "noscript", "template", "svg", "iframe", "head"}


def html_to_text(html: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Visible text of an HTML page with blocks on their own lines; h1-h6 become headings."""
    from bs4 import BeautifulSoup, Comment, NavigableString, Tag

    soup = BeautifulSoup(html, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    blocks: list[tuple[str, int]] = []
    current: list[str] = []

    def flush() -> None:
        text = re.sub(r"\s+", " ", "".join(current)).strip()
        current.clear()
        if text:
            blocks.append((text, 0))

    def walk(node) -> None:
        for child in node.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                current.append(str(child))
            elif isinstance(child, Tag):
                name = child.name.lower()
                if name in ("h1", "h2", "h3", "h4", "h5", "h6"):
                    flush()
                    text = child.get_text(" ", strip=True)
                    if text:
                        blocks.append((re.sub(r"\s+", " ", text), int(name[1])))
                elif name == "table" and (table := _html_table(child)) is not None:
                    flush()
                    blocks.extend((block, 0) for block in table)
                elif name == "pre":
                    flush()
                    text = child.get_text()
                    if text.strip():
                        blocks.append((text.strip("\n"), 0))
                elif name in _BLOCK_TAGS:
                    flush()
                    walk(child)
                    flush()
                else:
                    walk(child)

    walk(soup)
    flush()
    if title and not any(level for _, level in blocks[:1]):
        blocks.insert(0, (title, 1))
    return _join_blocks(blocks)


_LAYOUT_TAGS = ("table", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "ul", "ol")
MAX_SPAN = 100  # colspan / rowspan values are clamped to this


def _html_table(table) -> list[str] | None:
    """Blocks for a data `<table>`: its caption (if any) and a pipe table (see `table_blocks`).

    None for a layout table (one holding another table, headings, lists or preformatted text, or a single
    column), which is read like any other block element. The header is the `<thead>` rows, else a first row
    of `<th>` cells only, else the first row. colspan / rowspan repeat a cell's text in every column / row
    it spans.
    """
    if table.find(_LAYOUT_TAGS) is not None:
        return None
    rows, in_head, pending = [], [], {}  # pending: column -> [text, rows left] of a rowspan
    for tr in table.find_all("tr"):
        cells, col = [], 0
        for cell in tr.find_all(("td", "th"), recursive=False):
            while col in pending:
                col = _take_pending(pending, col, cells)
            text = cell.get_text(" ", strip=True)
            colspan, rowspan = _span(cell.get("colspan")), _span(cell.get("rowspan"))
            for _ in range(colspan):
                cells.append(text)
                if rowspan > 1:
                    pending[col] = [text, rowspan - 1]
                col += 1
            if col >= MAX_TABLE_COLUMNS:
                break
        for later in sorted(c for c in pending if c >= col):  # rowspans right of a short row's last cell
            cells.extend([""] * (later - col))
            col = _take_pending(pending, later, cells)
        if not cells:
            continue
        is_th = all(c.name == "th" for c in tr.find_all(("td", "th"), recursive=False))
        rows.append(cells)
        in_head.append(tr.find_parent("thead") is not None or (is_th and len(rows) == 1))
    if not rows or max(len(r) for r in rows) < 2:
        return None
    n_head = 0
    if any(in_head):
        while n_head < len(rows) and in_head[n_head]:
            n_head += 1
    n_head = max(n_head, 1)
    blocks = table_blocks(rows[:n_head], rows[n_head:])
    if not blocks:
        return []
    caption = table.find("caption")
    caption_text = re.sub(r"\s+", " ", caption.get_text(" ", strip=True)) if caption is not None else ""
    return [caption_text, *blocks] if caption_text else blocks


def _take_pending(pending: dict[int, list], col: int, cells: list[str]) -> int:
    """Put the text of a rowspan that covers `col` into `cells`; the next column."""
    entry = pending[col]
    cells.append(entry[0])
    entry[1] -= 1
    if entry[1] <= 0:
        del pending[col]
    return col + 1


def _span(value: object) -> int:
    try:
        return min(max(int(str(value).strip()), 1), MAX_SPAN)
    except (TypeError, ValueError):
        return 1


def _join_blocks(blocks: list[tuple[str, int]]) -> tuple[str, list[tuple[int, int, str]]]:
    """Join (text, heading level or 0) blocks with blank lines -> (text, [(offset, level, heading text)])."""
    parts, headings, pos = [], [], 0
    for text, level in blocks:
        if parts:
            parts.append("\n\n")
            pos += 2
        if level:
            headings.append((pos, level, text))
        parts.append(text)
        pos += len(text)
    return "".join(parts), headings


# ---------------------------------------------------------------- the parser worker process

# Tests make the worker hang on files whose bytes contain this marker (a stand-in for a parser that never
# returns on a crafted file). Read from the parent's environment at each request.
HANG_MARKER_ENV = "ASSISTANT_TEST_PARSER_HANG"
WORKER_START_SECONDS = 120.0
_HEADER = struct.Struct("<Q")


class ParserWorker:
    """A child process that parses files (PDF, DOCX, HTML and the `FORMAT_KINDS`) one at a time.

    `parse` waits at most `limits.parse_seconds`; a parse that takes longer gets the worker killed (it is
    restarted for the next file) and becomes `SkipFile("parsing took longer than ...")`. A worker that dies
    (a crash in a C library, the memory limit) is also restarted. Thread-safe: requests are serialised.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.restarts = 0  # how many times a worker was killed or found dead (for tests and logs)

    def _start(self, limits: LoadLimits) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        memory = limits.parser_memory_bytes or 0
        code = f"from retrieval.loaders import _worker_loop; _worker_loop({int(memory)})"
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, close_fds=True)

    def parse(self, kind: str, raw: bytes, limits: LoadLimits) -> Parsed:
        """Like `parse_bytes`, in the worker, within `limits.parse_seconds`."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                self._proc = self._start(limits)
                try:  # its start-up (importing the parsers) does not count against a file's time limit
                    self._read(self._proc, time.monotonic() + WORKER_START_SECONDS, limits)
                except (TimeoutError, OSError, EOFError):
                    self._kill()
                    raise SkipFile("the parser process did not start (see retrieval.loaders.ParserWorker)") from None
            proc = self._proc
            request = pickle.dumps((kind, raw, limits.to_dict(), os.environ.get(HANG_MARKER_ENV, "")),
                                   protocol=pickle.HIGHEST_PROTOCOL)
            deadline = time.monotonic() + float(limits.parse_seconds or 0)
            try:
                proc.stdin.write(_HEADER.pack(len(request)) + request)
                proc.stdin.flush()
                status, value = pickle.loads(self._read(proc, deadline, limits))
            except TimeoutError:
                self._kill()
                raise SkipFile(f"parsing took longer than {limits.parse_seconds:g} s (stopped; the file may be "
                               "crafted to hang its parser)") from None
            except (OSError, EOFError, pickle.UnpicklingError, ValueError):
                code = proc.poll()
                self._kill()
                raise SkipFile(f"the {kind.upper()} parser crashed on this file (exit code {code}); "
                               "the file may be damaged or need too much memory") from None
        if status == "ok":
            return value
        raise SkipFile(value)

    @staticmethod
    def _read(proc: subprocess.Popen, deadline: float, limits: LoadLimits) -> bytes:
        fd = proc.stdout.fileno()
        buf = bytearray()
        need = _HEADER.size
        header_done = False
        while True:
            while len(buf) < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                ready, _, _ = select.select([fd], [], [], left)
                if not ready:
                    raise TimeoutError
                piece = os.read(fd, max(need - len(buf), 1 << 16))
                if not piece:
                    raise EOFError("parser process exited")
                buf += piece
            if header_done:
                return bytes(buf[_HEADER.size:])
            header_done = True
            need = _HEADER.size + _HEADER.unpack(bytes(buf[:_HEADER.size]))[0]

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self.restarts += 1
        try:
            proc.kill()
        except OSError:
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Stop the worker (a later `parse` starts a new one)."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            try:
                proc.stdin.close()  # EOF: the worker exits by itself
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            finally:
                proc.stdout.close()


_shared: ParserWorker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> ParserWorker:
    """The process-wide parser worker (started at first use, stopped at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ParserWorker()
            atexit.register(_shared.close)
        return _shared


def _worker_loop(memory_limit: int = 0) -> None:
    """The worker's main loop: read a request from stdin, parse, write the reply to stdout."""
    if memory_limit:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (ImportError, ValueError, OSError):
            pass
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a library that prints must not corrupt the replies
    # imported before the first file's clock starts
    for module in ("pypdf", "pypdfium2", "retrieval.pdf", "docx", "bs4", "retrieval.formats", "pptx", "openpyxl"):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - the parse itself reports a missing parser
            pass
    stdout.write(_HEADER.pack(0))  # ready
    stdout.flush()
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        kind, raw, limits, hang_marker = pickle.loads(stdin.read(_HEADER.unpack(header)[0]))
        if hang_marker and hang_marker.encode() in raw:
            while True:  # test hook: behave like a parser stuck in an endless loop
                time.sleep(3600)
        try:
            reply = ("ok", parse_bytes(kind, raw, LoadLimits(**limits)))
        except SkipFile as exc:
            reply = ("skip", exc.reason)
        except MemoryError:
            reply = ("skip", "needs too much memory to parse "
                             f"(over the parser's limit of {_size(limits['parser_memory_bytes'] or 0)})")
        except RecursionError:
            reply = ("skip", f"too deeply nested to parse ({kind.upper()})")
        except Exception as exc:  # a parser bug must not take the worker down
            reply = ("skip", f"cannot parse ({type(exc).__name__}: {str(exc)[:100]})")
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()
