"""Turn the files of a folder into plain-text `Document`s, and say why any file was skipped.

Supported: plain text (.txt, .csv, ...), Markdown, reStructuredText, HTML, PDF (text layer, with page
numbers), DOCX and source code. Text that is not UTF-8 is decoded with the encoding `charset-normalizer`
detects. A file that cannot be read never stops a scan: it becomes a `Skipped(path, reason)`.

Hidden files and folders (names starting with ".", such as .git) are ignored silently. Symbolic links are
never followed (that is how loops and escapes from the folder are avoided); each one is reported with a
reason instead.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024

MARKDOWN_EXTENSIONS = {".md", ".markdown", ".mdown", ".mkd"}
RST_EXTENSIONS = {".rst", ".rest"}
HTML_EXTENSIONS = {".html", ".htm", ".xhtml"}
TEXT_EXTENSIONS = {".txt", ".text", ".csv", ".tsv", ".log", ".tex", ".org", ".adoc", ".srt"}
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

logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass
class Document:
    """One loaded file.

    `path` is relative to the indexed folder, with "/" separators. `text` is the plain text that chunks
    point into. `pages` holds (start, end, page_no) character spans for PDFs. `headings` holds
    (offset, level, title) for formats whose structure the loader sees and the text does not show
    (HTML, DOCX); Markdown and RST headings are found by the chunker in the text itself.
    """

    path: str
    text: str
    kind: str  # "text" | "markdown" | "rst" | "html" | "pdf" | "docx" | "code"
    sha256: str
    size: int
    mtime: float
    pages: list[tuple[int, int, int]] | None = None
    headings: list[tuple[int, int, str]] | None = None


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
    if name in CODE_FILENAMES or ext in CODE_EXTENSIONS:
        return "code"
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
                    rel, f"too large ({_size(st.st_size)} > limit {_size(max_bytes)}; raise it with --max-file-mb)"))
                continue
            if not os.access(full, os.R_OK):
                result.skipped.append(Skipped(rel, "unreadable (permission denied)"))
                continue
            result.files.append(FileEntry(rel, full, st.st_size, st.st_mtime_ns, kind))
    result.files.sort(key=lambda f: f.path)
    result.skipped.sort(key=lambda s: s.path)
    return result


def _size(n: int) -> str:
    """Bytes for people: 900 B, 58.6 KB, 20.0 MB."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


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
              max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Document:
    """Read one file into a `Document`; raise `SkipFile(reason)` when it cannot be indexed."""
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
    if entry.size > max_bytes:
        raise SkipFile(f"too large ({_size(entry.size)} > limit {_size(max_bytes)})")
    try:
        raw = entry.abs_path.read_bytes()
    except OSError as exc:
        raise SkipFile(f"unreadable ({exc.strerror or exc})") from None
    if not raw:
        raise SkipFile("empty file")
    sha = hashlib.sha256(raw).hexdigest()
    pages = headings = None
    kind = entry.kind
    if kind == "pdf":
        text, pages = _pdf_text(raw)
    elif kind == "docx":
        text, headings = _docx_text(raw)
    elif kind == "html":
        text, headings = html_to_text(decode_text(raw))
    else:
        text = decode_text(raw)
    text = _normalise(text) if kind not in ("pdf", "html", "docx") else text
    if not text.strip():
        raise SkipFile("no text layer (scanned PDF? run OCR first)" if kind == "pdf" else "no text content")
    return Document(entry.path, text, kind, sha, len(raw), entry.mtime_ns / 1e9, pages, headings)


def _normalise(text: str) -> str:
    """Unify line endings and drop a byte-order mark; offsets refer to this normalised text."""
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


def decode_text(raw: bytes) -> str:
    """Bytes → str: UTF-8 (with or without BOM), UTF-16 with BOM, else the detected encoding.

    Raises SkipFile("binary ...") when the bytes do not look like text.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    head = raw[:8192]
    if b"\x00" in head:
        raise SkipFile("binary file (not text)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
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


# ---------------------------------------------------------------- PDF

def _pdf_text(raw: bytes) -> tuple[str, list[tuple[int, int, int]]]:
    """Text layer of each page, pages joined by a blank line; returns the text and the page spans."""
    try:
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(raw), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise SkipFile("encrypted PDF (needs a password)")
            except SkipFile:
                raise
            except Exception:
                raise SkipFile("encrypted PDF (needs a password)") from None
        page_texts = []
        for page in reader.pages:
            try:
                page_texts.append(_normalise(page.extract_text() or ""))
            except Exception:
                page_texts.append("")
    except SkipFile:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files
        raise SkipFile(f"corrupt PDF ({type(exc).__name__}: {str(exc)[:100]})") from None
    if not page_texts:
        raise SkipFile("corrupt PDF (no pages)")
    parts, pages, pos = [], [], 0
    for number, page_text in enumerate(page_texts, start=1):
        page_text = page_text.strip()
        if not page_text:
            continue
        if parts:
            parts.append("\n\n")
            pos += 2
        parts.append(page_text)
        pages.append((pos, pos + len(page_text), number))
        pos += len(page_text)
    if not pages:
        raise SkipFile("no text layer (scanned PDF? run OCR first)")
    return "".join(parts), pages


# ---------------------------------------------------------------- DOCX

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
                for row in table.rows:
                    cells = []
                    for cell in row.cells:
                        if cell.text not in cells:  # merged cells repeat
                            cells.append(cell.text)
                    blocks.append((" | ".join(c.strip() for c in cells), 0))
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
