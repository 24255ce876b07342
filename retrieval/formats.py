"""Office, e-book and mail formats for `retrieval.loaders`: PPTX, XLSX, EPUB, ODT, EML and MBOX.

Each parser turns a file's bytes into `(text, pages, headings, note)`, the shape `loaders.parse_bytes`
returns, and keeps the structure the chunker uses:

- PPTX: one "page" per slide (`pages` holds `(start, end, slide_no)`), the slide title as a heading (level 2
  under the presentation's title when it has one, else level 1; "Slide N" when the slide has no title), the
  other shapes' text in reading order (top to bottom, then left to right), tables as pipe tables, and the
  speaker notes after the slide's text under a "Notes" line.
- XLSX: one heading per non-empty sheet, its used range as one pipe table (the first non-empty row is the
  header); cached values of formulas; numbers written as Excel shows them for the common formats.
- EPUB: the chapters in spine order (container.xml -> OPF -> spine), read with `loaders.html_to_text` so that
  each chapter's headings are kept; the book title is the first heading and "Author: ..." the first line.
- ODT: `content.xml`: `text:h` headings with their outline level, paragraphs, lists and pipe tables.
- EML / MBOX (kind "email"): per message the subject as a heading, then a line
  "From: ...  Date: ...  To: ...", the text/plain body (else the HTML body as text) and the attachments by
  name. An MBOX (a file that starts with a "From " line) gives one such section per message.

Bad input never raises anything but `SkipFile`: ZIP-based formats pass `loaders._check_zip` first (ZIP bombs,
too many parts), encrypted files are named as such, and the text is capped by `LoadLimits.max_chars`. These
parsers run inside the `loaders.ParserWorker` process, under the same time and memory limits as PDF and DOCX.
"""

from __future__ import annotations

import datetime as _dt
import io
import posixpath
import re
import zipfile
from typing import Callable, Iterable, Iterator
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as ET

from retrieval.loaders import (MAX_TABLE_COLUMNS, LoadLimits, Parsed, SkipFile, _check_zip, _normalise,
                               decode_text_with_note, html_to_text, table_blocks)

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a compound file: encrypted OOXML, or legacy .ppt / .xls
MAX_REPEAT = 1_000  # ODT rows / columns repeated more often than this are cut (styled empty ranges)
MAX_MESSAGES = 100_000  # messages read from one MBOX


def parse_format(kind: str, raw: bytes, limits: LoadLimits) -> Parsed:
    """(text, pages, headings, note) of a PPTX, XLSX, EPUB, ODT or e-mail (EML/MBOX) file; raises SkipFile."""
    parser = _PARSERS.get(kind)
    if parser is None:
        raise SkipFile(f"unsupported file type ({kind})")
    return parser(raw, limits)


# ---------------------------------------------------------------- building the text

class _TextBuilder:
    """Blocks joined by blank lines, with the headings and page spans that point into the joined text.

    Raises SkipFile as soon as the text passes `max_chars`, so a huge file stops early.
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.pos = 0
        self.headings: list[tuple[int, int, str]] = []
        self.pages: list[tuple[int, int, int]] = []
        self._page: tuple[int, int] | None = None  # (start, page_no) of the open page

    def _space(self) -> None:
        if self.parts:
            self.parts.append("\n\n")
            self.pos += 2

    def add(self, text: str, level: int = 0) -> None:
        """One block (a heading when `level` > 0); blank blocks are dropped."""
        text = _normalise(text).strip()
        if not text:
            return
        if level:
            text = " ".join(text.split())
        self._space()
        if level:
            self.headings.append((self.pos, level, text))
        self.parts.append(text)
        self.pos += len(text)
        if self.pos > self.max_chars:
            raise SkipFile(f"too much text (over {self.max_chars:,} characters)")

    def add_text(self, text: str, headings: Iterable[tuple[int, int, str]], shift: int = 0) -> None:
        """A text that already has its headings (as `html_to_text` returns it); levels are raised by `shift`."""
        lead = len(text) - len(text.lstrip())
        text = text.strip()
        if not text:
            return
        self._space()
        base = self.pos - lead
        for offset, level, title in headings:
            if lead <= offset < lead + len(text):
                self.headings.append((base + offset, level + shift, title))
        self.parts.append(text)
        self.pos += len(text)
        if self.pos > self.max_chars:
            raise SkipFile(f"too much text (over {self.max_chars:,} characters)")

    def start_page(self, number: int) -> None:
        """The blocks added from now until `end_page` are page `number`."""
        self.end_page()
        self._page = (self.pos + (2 if self.parts else 0), number)

    def end_page(self) -> None:
        if self._page is not None:
            start, number = self._page
            if self.pos > start:
                self.pages.append((start, self.pos, number))
            self._page = None

    def result(self, note: str = "") -> Parsed:
        self.end_page()
        return "".join(self.parts), self.pages or None, self.headings or None, note


def _open_zip(raw: bytes, limits: LoadLimits, label: str) -> zipfile.ZipFile:
    """The archive after `_check_zip`; an OLE compound file (how Office stores an encrypted file) is named."""
    if raw.startswith(OLE_MAGIC):
        raise SkipFile(f"password-protected or old binary Office file (not a {label} ZIP archive); "
                       "remove the password or save it as a current Office file")
    _check_zip(raw, limits, label)
    try:
        return zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError) as exc:  # checked already; kept for safety
        raise SkipFile(f"corrupt {label} (not a ZIP archive: {str(exc)[:80]})") from None


def _read_part(archive: zipfile.ZipFile, name: str, label: str) -> bytes:
    """One archive member's bytes; SkipFile when it is missing or damaged."""
    try:
        return archive.read(name)
    except KeyError:
        raise SkipFile(f"corrupt {label} ({name} is missing)") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError,
            NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member ("File ... is encrypted, password required")
        if "encrypted" in str(exc):
            raise SkipFile(f"password-protected {label} (its parts are encrypted)") from None
        raise SkipFile(f"corrupt {label} ({name}: {type(exc).__name__}: {str(exc)[:80]})") from None


def _xml(data: bytes, label: str, name: str) -> ET.Element:
    """Parse one XML part; DTD entity declarations (entity expansion bombs) are refused."""
    if b"<!ENTITY" in data:
        raise SkipFile(f"refused {label}: {name} declares XML entities (an entity expansion bomb?)")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise SkipFile(f"corrupt {label} ({name} is not well-formed XML: {str(exc)[:80]})") from None


def _local(tag: object) -> str:
    """An element's tag without its namespace ("{ns}p" -> "p"); "" for comments and processing instructions."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


# ---------------------------------------------------------------- PPTX

def _pptx(raw: bytes, limits: LoadLimits) -> Parsed:
    """Slides as pages: title heading, body text in reading order, tables, then the speaker notes."""
    _open_zip(raw, limits, "PPTX").close()
    try:
        from pptx import Presentation

        presentation = Presentation(io.BytesIO(raw))
        title = (presentation.core_properties.title or "").strip()
        slides = list(presentation.slides)
    except SkipFile:
        raise
    except Exception as exc:
        raise SkipFile(f"corrupt PPTX ({type(exc).__name__}: {str(exc)[:100]})") from None
    if len(slides) > limits.max_pdf_pages:
        raise SkipFile(f"too many slides ({len(slides):,} > limit {limits.max_pdf_pages:,})")
    out = _TextBuilder(limits.max_chars)
    level = 1
    if title:
        out.add(title, 1)
        level = 2
    for number, slide in enumerate(slides, start=1):
        try:
            _pptx_slide(out, slide, number, level)
        except SkipFile:
            raise
        except Exception as exc:
            raise SkipFile(f"corrupt PPTX (slide {number}: {type(exc).__name__}: {str(exc)[:100]})") from None
    return out.result()


def _pptx_slide(out: _TextBuilder, slide, number: int, level: int) -> None:
    """One slide into `out`, as page `number`."""
    title_shape = slide.shapes.title
    title = _shape_text(title_shape).strip() if title_shape is not None else ""
    out.start_page(number)
    out.add(title or f"Slide {number}", level)
    skip = title_shape.shape_id if title_shape is not None else None
    for shape in _reading_order(slide.shapes):
        if skip is not None and getattr(shape, "shape_id", None) == skip:
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            grid = [[cell.text for cell in row.cells] for row in shape.table.rows]
            for block in table_blocks(grid[:1], grid[1:]):
                out.add(block)
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            out.add(_shape_text(shape))
    if slide.has_notes_slide:
        frame = slide.notes_slide.notes_text_frame
        notes = _normalise(frame.text).strip() if frame is not None else ""
        if notes:
            out.add("Notes\n" + notes)
    out.end_page()


def _shape_text(shape) -> str:
    """A text shape's paragraphs, one per line (empty ones dropped)."""
    if not getattr(shape, "has_text_frame", False) or not shape.has_text_frame:
        return ""
    lines = (p.text.replace("\x0b", "\n").strip() for p in shape.text_frame.paragraphs)
    return "\n".join(line for line in lines if line)


def _reading_order(shapes) -> Iterator:
    """Shapes top to bottom, then left to right; a group's shapes in their own reading order, in its place.

    Shapes whose position is unknown keep their place in the slide's order (after the placed ones at y 0).
    """
    indexed = list(enumerate(shapes))

    def key(item) -> tuple[int, int, int]:
        index, shape = item
        try:
            top, left = shape.top, shape.left
        except Exception:  # noqa: BLE001 - a placeholder with no inherited position
            top = left = None
        return (int(top or 0), int(left or 0), index)

    for _, shape in sorted(indexed, key=key):
        if _local(getattr(getattr(shape, "_element", None), "tag", "")) == "grpSp":
            yield from _reading_order(shape.shapes)
        else:
            yield shape


# ---------------------------------------------------------------- XLSX

def _xlsx(raw: bytes, limits: LoadLimits) -> Parsed:
    """Each non-empty sheet: a heading with its name, then its used range as a pipe table."""
    _open_zip(raw, limits, "XLSX").close()
    try:
        import openpyxl

        book = openpyxl.load_workbook(io.BytesIO(raw), read_only=True, data_only=True, keep_links=False)
    except SkipFile:
        raise
    except Exception as exc:
        raise SkipFile(f"corrupt XLSX ({type(exc).__name__}: {str(exc)[:100]})") from None
    out = _TextBuilder(limits.max_chars)
    notes: list[str] = []
    try:
        title = (book.properties.title or "").strip() if book.properties is not None else ""
        level = 1
        if title:
            out.add(title, 1)
            level = 2
        for sheet in book.worksheets:
            if not hasattr(sheet, "iter_rows"):
                continue  # a chart sheet
            budget = limits.max_chars - out.pos - len(sheet.title) - 4  # the blank lines and the heading
            rows, truncated = _sheet_rows(sheet, budget)
            if not rows:
                if truncated:
                    notes.append(f"sheet {sheet.title!r} left out (text limit)")
                continue
            blocks = table_blocks(rows[:1], rows[1:])
            kept: list[str] = []
            for block in blocks:  # padding to the widest row can make the table longer than estimated
                room = budget - sum(len(b) + 2 for b in kept)
                if len(block) > room:
                    block = block[:block.rfind("\n", 0, room + 1)] if "\n" in block[:room + 1] else ""
                    if block.startswith("|") and block.count("\n") < 2:
                        block = ""  # a header and separator without any row
                    truncated = True
                if block:
                    kept.append(block)
                if truncated:
                    break
            if not kept:
                notes.append(f"sheet {sheet.title!r} left out (text limit)")
                continue
            out.add(sheet.title, level)
            for block in kept:
                out.add(block)
            if truncated:
                shown = sum(block.count("\n") + 1 for block in kept)
                notes.append(f"sheet {sheet.title!r} cut after {shown:,} lines (text limit)")
    except SkipFile:
        raise
    except Exception as exc:
        raise SkipFile(f"corrupt XLSX ({type(exc).__name__}: {str(exc)[:100]})") from None
    finally:
        book.close()
    return out.result("; ".join(notes))


def _sheet_rows(sheet, budget: int) -> tuple[list[list[str]], bool]:
    """The sheet's used range as rows of display strings, empty rows and outer empty columns dropped.

    Stops (second value True) once the rows' text would pass `budget` characters.
    """
    rows: list[list[str]] = []
    chars = 0
    truncated = False
    for cells in sheet.iter_rows(max_col=MAX_TABLE_COLUMNS):
        row = [cell_display(getattr(c, "value", None), getattr(c, "number_format", "General")) for c in cells]
        while row and not row[-1]:
            row.pop()
        if not row:
            continue
        chars += sum(len(v) + 3 for v in row) + 2
        if chars > budget:
            truncated = True
            break
        rows.append(row)
    if not rows:
        return [], truncated
    first = min(next(i for i, v in enumerate(r) if v) for r in rows)
    return [r[first:] for r in rows], truncated


_DECIMALS = re.compile(r"0\.(0+)")
_LITERAL = re.compile(r'"[^"]*"|\\.|\[[^\]]*\]|_.|\*.')


def cell_display(value: object, number_format: str | None = "General") -> str:
    """A cell's value as a spreadsheet shows it, for the common number formats; else `str(value)`.

    Handles General, fixed decimals ("0.00"), thousands separators ("#,##0"), percentages, currency signs
    ($ € £ ¥ next to the digits), dates and times (ISO form) and booleans (TRUE / FALSE).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, _dt.datetime):
        if value.time() == _dt.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return str(value)
    if not isinstance(value, (int, float)):
        return str(value)
    fmt = (number_format or "General").split(";")[0]
    if fmt == "General" or not any(ch in fmt for ch in "0#?"):
        if isinstance(value, float):
            if value.is_integer() and abs(value) < 1e15:
                return str(int(value))
            return f"{value:.10g}"
        return str(value)
    plain = _LITERAL.sub("", fmt)
    match = _DECIMALS.search(plain)
    decimals = len(match.group(1)) if match else 0
    number = float(value) * (100 if "%" in plain else 1)
    text = f"{number:,.{decimals}f}" if "," in plain else f"{number:.{decimals}f}"
    if "%" in plain:
        text += "%"
    for sign in ("$", "€", "£", "¥"):
        if sign in fmt:
            text = ("-" + sign + text[1:]) if text.startswith("-") else sign + text
            break
    return text


# ---------------------------------------------------------------- EPUB

_CONTAINER_NS = "urn:oasis:names:tc:opendocument:xmlns:container"
_DC = "http://purl.org/dc/elements/1.1/"
_HTML_TYPES = {"application/xhtml+xml", "text/html", "application/xml", "text/xml", ""}
_TITLE_TAG = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.I | re.S)
# The XML declaration, processing instructions and the DOCTYPE: html.parser would keep them as text.
_PROLOGUE = re.compile(r"<\?.*?\?>|<!DOCTYPE[^>]*>", re.I | re.S)


def _epub(raw: bytes, limits: LoadLimits) -> Parsed:
    """The chapters in spine order with their headings; title and author from the OPF metadata first."""
    archive = _open_zip(raw, limits, "EPUB")
    with archive:
        container = _xml(_read_part(archive, "META-INF/container.xml", "EPUB"), "EPUB", "container.xml")
        rootfile = next((el.get("full-path") for el in container.iter(f"{{{_CONTAINER_NS}}}rootfile")
                         if el.get("full-path")), None)
        if rootfile is None:
            rootfile = next((el.get("full-path") for el in container.iter() if _local(el.tag) == "rootfile"
                             and el.get("full-path")), None)
        if rootfile is None:
            raise SkipFile("corrupt EPUB (container.xml names no package document)")
        opf = _xml(_read_part(archive, rootfile, "EPUB"), "EPUB", rootfile)
        base = posixpath.dirname(rootfile)
        title, authors = _epub_metadata(opf)
        manifest = {el.get("id"): (el.get("href") or "", el.get("media-type") or "")
                    for el in opf.iter() if _local(el.tag) == "item" and el.get("id")}
        spine = [el.get("idref") for el in opf.iter() if _local(el.tag) == "itemref" and el.get("idref")]
        encrypted = _epub_encrypted(archive)
        out = _TextBuilder(limits.max_chars)
        shift = 0
        if title:
            out.add(title, 1)
            shift = 1
        if authors:
            out.add("Author: " + ", ".join(authors))
        names = set(archive.namelist())
        read = 0
        notes: list[str] = []
        for idref in spine:
            href, media = manifest.get(idref, ("", ""))
            if not href or media.lower() not in _HTML_TYPES:
                continue
            name = _resolve(base, href)
            if name in encrypted:
                raise SkipFile("DRM-protected EPUB (its chapters are encrypted)")
            if name not in names:
                notes.append(f"chapter {name[:60]} missing")
                continue
            data = _read_part(archive, name, "EPUB")
            if b"<!ENTITY" in data:
                raise SkipFile(f"refused EPUB: {name[:60]} declares XML entities (an entity expansion bomb?)")
            _epub_chapter(out, data, shift, title)
            read += 1
        if not read and not spine:
            raise SkipFile("corrupt EPUB (the package document has no spine)")
    return out.result("; ".join(notes[:5]))


def _epub_metadata(opf: ET.Element) -> tuple[str, list[str]]:
    """(title, authors) from the OPF's Dublin Core metadata."""
    title = next((" ".join((el.text or "").split()) for el in opf.iter(f"{{{_DC}}}title") if (el.text or "").strip()),
                 "")
    authors = [" ".join(el.text.split()) for el in opf.iter(f"{{{_DC}}}creator") if (el.text or "").strip()]
    return title, authors


def _epub_encrypted(archive: zipfile.ZipFile) -> set[str]:
    """Archive names that META-INF/encryption.xml lists as encrypted (fonts are often; chapters mean DRM)."""
    try:
        data = archive.read("META-INF/encryption.xml")
    except KeyError:
        return set()
    except Exception:  # noqa: BLE001 - a damaged encryption.xml: treat as none
        return set()
    root = _xml(data, "EPUB", "encryption.xml")
    return {_resolve("", el.get("URI") or "") for el in root.iter() if _local(el.tag) == "CipherReference"}


def _resolve(base: str, href: str) -> str:
    """An href relative to the OPF's folder -> the archive member name (fragment dropped, %-escapes decoded)."""
    path = unquote(urlsplit(href).path)
    return posixpath.normpath(posixpath.join(base, path)).lstrip("/") if path else ""


def _epub_chapter(out: _TextBuilder, data: bytes, shift: int, book_title: str) -> None:
    """One XHTML chapter into `out`: its text and headings (raised by `shift`), its <title> when it has none."""
    html, _ = decode_text_with_note(data)
    match = _TITLE_TAG.search(html)
    chapter_title = " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split()) if match else ""
    html = _TITLE_TAG.sub("", html, count=1)  # html_to_text would make the (often repeated) <title> a heading
    html = _PROLOGUE.sub("", html)
    text, headings = html_to_text(html)
    if not headings and chapter_title and chapter_title != book_title and text.strip():
        out.add(chapter_title, 1 + shift)
    out.add_text(text, headings, shift)


# ---------------------------------------------------------------- ODT

_ODF_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_ODF_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_ODF_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
# Block containers read through; text:tracked-changes (deleted text) and text:*-decls are not.
_ODT_CONTAINERS = {"list", "list-item", "list-header", "section", "table-of-content", "index-body"}


def _odt(raw: bytes, limits: LoadLimits) -> Parsed:
    """content.xml: headings (text:h, outline level), paragraphs, lists and tables in document order."""
    archive = _open_zip(raw, limits, "ODT")
    with archive:
        if "META-INF/manifest.xml" in archive.namelist():
            manifest = _read_part(archive, "META-INF/manifest.xml", "ODT")
            if b"encryption-data" in manifest:
                raise SkipFile("password-protected ODT (its content is encrypted)")
        root = _xml(_read_part(archive, "content.xml", "ODT"), "ODT", "content.xml")
    body = root.find(f"{{{_ODF_OFFICE}}}body")
    text_root = body.find(f"{{{_ODF_OFFICE}}}text") if body is not None else None
    if text_root is None:
        raise SkipFile("corrupt ODT (content.xml has no office:text body; a spreadsheet or drawing?)")
    out = _TextBuilder(limits.max_chars)
    _odt_blocks(text_root, out)
    return out.result()


def _odt_blocks(node: ET.Element, out: _TextBuilder) -> None:
    """The block elements under `node`, in order."""
    for child in node:
        tag = _local(child.tag)
        if tag == "h":
            try:
                level = int(child.get(f"{{{_ODF_TEXT}}}outline-level") or 1)
            except ValueError:
                level = 1
            out.add(_odt_inline(child), min(max(level, 1), 10))
        elif tag == "p":
            out.add(_odt_inline(child))
        elif tag == "table" and child.tag == f"{{{_ODF_TABLE}}}table":
            rows = _odt_table(child)
            for block in table_blocks(rows[:1], rows[1:]):
                out.add(block)
        elif tag in _ODT_CONTAINERS or tag.endswith("-index") or tag.endswith("-index-body"):
            _odt_blocks(child, out)  # an index's text is in its index-body; its *-source holds templates


def _odt_inline(node: ET.Element) -> str:
    """The text of a paragraph or heading: spans, links, spaces (text:s), tabs, line breaks, footnotes."""
    parts: list[str] = [node.text or ""]
    for child in node:
        tag = _local(child.tag)
        if tag == "s":
            try:
                parts.append(" " * min(int(child.get(f"{{{_ODF_TEXT}}}c") or 1), 100))
            except ValueError:
                parts.append(" ")
        elif tag == "tab":
            parts.append("\t")
        elif tag == "line-break":
            parts.append("\n")
        elif tag == "note":
            body = next((c for c in child if _local(c.tag) == "note-body"), None)
            if body is not None:
                note = " ".join(_odt_inline(p) for p in body.iter() if _local(p.tag) == "p").strip()
                if note:
                    parts.append(f" [{note}]")
        elif tag in ("annotation", "bookmark", "bookmark-start", "bookmark-end", "soft-page-break",
                     "reference-mark", "change-start", "change-end"):
            pass
        else:
            parts.append(_odt_inline(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _odt_table(table: ET.Element) -> list[list[str]]:
    """A table:table's rows (header rows first) as cell texts; repeated rows / columns expanded, capped."""
    rows: list[list[str]] = []

    def walk(node: ET.Element) -> None:
        for child in node:
            tag = _local(child.tag)
            if tag == "table-row":
                row: list[str] = []
                for cell in child:
                    if _local(cell.tag) not in ("table-cell", "covered-table-cell"):
                        continue
                    text = "\n".join(_odt_inline(p) for p in cell.iter() if _local(p.tag) in ("p", "h"))
                    repeat = _repeat(cell.get(f"{{{_ODF_TABLE}}}number-columns-repeated"))
                    row.extend([text] * min(repeat, MAX_TABLE_COLUMNS - len(row)))
                    if len(row) >= MAX_TABLE_COLUMNS:
                        break
                while row and not row[-1].strip():
                    row.pop()
                if row:
                    rows.extend([row] * _repeat(child.get(f"{{{_ODF_TABLE}}}number-rows-repeated")))
            elif tag in ("table-header-rows", "table-rows", "table-row-group"):
                walk(child)

    walk(table)
    return rows


def _repeat(value: str | None) -> int:
    try:
        return min(max(int(value or 1), 1), MAX_REPEAT)
    except ValueError:
        return 1


# ---------------------------------------------------------------- EML / MBOX

def _email(raw: bytes, limits: LoadLimits) -> Parsed:
    """One e-mail (EML), or every message of an MBOX (a file starting with a "From " line)."""
    import email
    from email import policy

    out = _TextBuilder(limits.max_chars)
    if raw.startswith(b"From "):
        count = 0
        for message_bytes in _mbox_messages(raw):
            count += 1
            if count > MAX_MESSAGES:
                raise SkipFile(f"too many messages in the mailbox (over {MAX_MESSAGES:,})")
            message = email.message_from_bytes(message_bytes, policy=policy.default)
            if _has_headers(message) or message_bytes.strip():
                _email_section(out, message)
        if not out.parts:
            raise SkipFile("corrupt MBOX (no readable messages)")
        return out.result()
    if b"\x00" in raw[:8192]:
        raise SkipFile("binary file (not an e-mail message)")
    message = email.message_from_bytes(raw, policy=policy.default)
    if not _has_headers(message):
        raise SkipFile("corrupt e-mail (no From, To, Subject or Date header)")
    _email_section(out, message)
    return out.result()


def _has_headers(message) -> bool:
    """Whether a parsed message has any of the headers every e-mail has (else it is not one)."""
    return any(_header(message, h) for h in ("From", "To", "Subject", "Date", "Message-ID"))


def _mbox_messages(raw: bytes) -> Iterator[bytes]:
    """The messages of an mbox file, read with the standard library's `mailbox.mbox` (from a temporary file)."""
    import mailbox
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="assistant-mbox-") as folder:
        path = os.path.join(folder, "mail.mbox")
        with open(path, "wb") as fh:
            fh.write(raw)
        box = mailbox.mbox(path, create=False)
        try:
            for key in box.iterkeys():
                yield box.get_bytes(key)
        finally:
            box.close()


def _header(message, name: str) -> str:
    """A header's text on one line ("" when absent or undecodable)."""
    try:
        value = message.get(name)
    except Exception:  # noqa: BLE001 - a header the parser cannot fold
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def _email_section(out: _TextBuilder, message) -> None:
    """One message: subject heading, "From: ...  Date: ...  To: ..." line, body, attachment names."""
    out.add(_header(message, "Subject") or "(no subject)", 1)
    fields = [f"{name}: {value}" for name in ("From", "Date", "To", "Cc")
              if (value := _header(message, name))]
    if fields:
        out.add("  ".join(fields))
    body, body_headings = _email_body(message)
    out.add_text(body, body_headings, 1)
    names = _attachment_names(message)
    if names:
        out.add("Attachments: " + ", ".join(names))


def _email_body(message) -> tuple[str, list[tuple[int, int, str]]]:
    """(text, headings) of the text/plain body, else of the HTML body."""
    try:
        part = message.get_body(preferencelist=("plain", "html"))
    except Exception:  # noqa: BLE001 - a malformed MIME tree
        part = None
    if part is None:
        return "", []
    content = _part_text(part)
    if part.get_content_subtype() == "html":
        return html_to_text(content)
    return _normalise(content), []


def _part_text(part) -> str:
    """A text part decoded by its charset; bytes that do not decode become U+FFFD."""
    try:
        content = part.get_content()
        if isinstance(content, str):
            return content
    except Exception:  # noqa: BLE001 - an unknown charset or a broken transfer encoding
        pass
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _attachment_names(message) -> list[str]:
    """The file names of a message's attachments (a forwarded message: its subject)."""
    names: list[str] = []
    try:
        parts = list(message.iter_attachments()) if message.is_multipart() else []
    except Exception:  # noqa: BLE001
        parts = []
    for part in parts:
        name = part.get_filename()
        if not name and part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            name = _header(inner, "Subject") + ".eml" if hasattr(inner, "get") else ""
        names.append(" ".join(str(name).split()) if name else f"(unnamed {part.get_content_type()})")
    return names


_PARSERS: dict[str, Callable[[bytes, LoadLimits], Parsed]] = {
    "pptx": _pptx,
    "xlsx": _xlsx,
    "epub": _epub,
    "odt": _odt,
    "email": _email,
}
