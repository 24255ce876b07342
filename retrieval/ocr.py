"""Text from pixels: OCR of scanned PDF pages and of image files, with Debian's `tesseract` command.

Tesseract (Apache-2.0) is run as a subprocess (`tesseract stdin stdout -l eng tsv`); no Python wrapper is
needed. Its TSV output gives every word with its block, paragraph and line, from which the text is rebuilt:
the lines of a paragraph joined by spaces (a line-break hyphen removed where the joined word is a word, as
for PDF text layers), paragraphs separated by a blank line.

- Scanned PDFs: the pages without a text layer are rendered with PDFium (`pypdfium2`) at `PDF_DPI` (less
  when the page is so large that the image would pass `MAX_OCR_PIXELS`) and read; they keep their page
  numbers, and a PDF with text pages and scanned pages gets both. `Document.note` names the OCR'd pages.
- Images (`retrieval.loaders.IMAGE_EXTENSIONS`, kind "image"): one page (a multi-page TIFF: one page per frame). An image larger
  than `MAX_OCR_PIXELS` is downscaled before OCR; one whose header claims more than `MAX_DECODE_PIXELS` is
  refused before it is decoded (except JPEG, which is decoded at 1/2, 1/4 or 1/8 size), so a 20,000 x 20,000
  PNG cannot exhaust memory.
- Without `tesseract` on PATH, an image or an all-scanned PDF is skipped with `MISSING_REASON`; a PDF with
  some text pages keeps them and its note says which pages were not read (`needs_ocr(note)` is true, so the
  index re-reads it once tesseract is installed: see `retrieval.sync`).
- Time: OCR runs inside the parse of one file (in the `ParserWorker` process, whose time limit is
  `LoadLimits.parse_seconds`). It stops itself a little before that limit with a reason that says so, and
  every tesseract run is killed when it passes the time left or when the worker process dies.

`ASSISTANT_OCR_LANG` picks the tesseract languages (default "eng"; e.g. "eng+deu", each one's
`tesseract-ocr-<lang>` package installed).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

TESSERACT = "tesseract"
INSTALL_COMMAND = "apt-get install tesseract-ocr"
MISSING_REASON = f"needs OCR: install tesseract ({INSTALL_COMMAND}) and re-sync"
LANG_ENV = "ASSISTANT_OCR_LANG"
DEFAULT_LANG = "eng"

PDF_DPI = 300                       # scanned PDF pages are rendered at this resolution ...
MAX_OCR_PIXELS = 16_000_000         # ... or less: no page image handed to tesseract is larger than this
MAX_DECODE_PIXELS = 120_000_000     # images whose header claims more are refused undecoded (JPEG: reduced)
MAX_FRAMES = 500                    # frames (pages) read from one multi-page TIFF
TIME_MARGIN = 0.05                  # OCR stops at this share of the parse time limit before it (min 1 s)

Pages = list[tuple[int, int, int]]
Headings = list[tuple[int, int, str]]


class OcrSkip(Exception):
    """The file cannot be read by OCR; the message is the reason (`retrieval.loaders` makes it `SkipFile`)."""


class OcrMissing(OcrSkip):
    """tesseract is not installed (or not on PATH)."""

    def __init__(self) -> None:
        super().__init__(MISSING_REASON)


def find_tesseract() -> str | None:
    """The path of the `tesseract` program, or None when it is not on PATH."""
    return shutil.which(TESSERACT)


def ocr_available() -> bool:
    """True when tesseract can be run (what `retrieval.sync` asks before re-reading files that needed it)."""
    return find_tesseract() is not None


def needs_ocr(note: str) -> bool:
    """True when a document's note says some of its pages were not read for want of tesseract."""
    return MISSING_REASON in note


# ---------------------------------------------------------------- running tesseract

class Deadline:
    """When the OCR of one file must stop (monotonic clock); None: no limit."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        margin = max(1.0, TIME_MARGIN * seconds) if seconds else 0.0
        self.at = time.monotonic() + seconds - margin if seconds else None

    def left(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def check(self, done: int, total: int) -> None:
        """Raise OcrSkip when the time is up, saying how far the OCR got."""
        left = self.left()
        if left is not None and left <= 0:
            raise OcrSkip(f"OCR took longer than the parse time limit of {self.seconds:g} s (read {done} of "
                          f"{total} page{'s' if total != 1 else ''}); raise LoadLimits.parse_seconds to index it")


def _parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the tesseract child be killed when the process that started it (the parser
    worker) dies (Linux `prctl(PR_SET_PDEATHSIG)`), resolved here, before the fork; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_signal() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return set_signal


def run_tesseract(png: bytes, dpi: int | None, deadline: Deadline, done: int = 0, total: int = 1) -> str:
    """TSV of one PNG image from `tesseract stdin stdout -l LANG tsv`; raises OcrSkip / OcrMissing."""
    exe = find_tesseract()
    if exe is None:
        raise OcrMissing()
    lang = os.environ.get(LANG_ENV) or DEFAULT_LANG
    cmd = [exe, "stdin", "stdout", "-l", lang]
    if dpi:
        cmd += ["--dpi", str(int(dpi))]
    cmd.append("tsv")
    env = dict(os.environ)
    env.setdefault("OMP_THREAD_LIMIT", "1")  # one page at a time; threads only fight over the cores
    left = deadline.left()
    deadline.check(done, total)
    try:
        proc = subprocess.run(cmd, input=png, capture_output=True, timeout=left, env=env,
                              preexec_fn=_parent_death_signal())
    except subprocess.TimeoutExpired:
        raise OcrSkip(f"OCR took longer than the parse time limit of {deadline.seconds:g} s (read {done} of "
                      f"{total} page{'s' if total != 1 else ''}); raise LoadLimits.parse_seconds to index it") from None
    except OSError as exc:
        raise OcrSkip(f"cannot run tesseract ({exc.strerror or exc})") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = next((line for line in err if "error" in line.lower() or "fail" in line.lower()),
                      err[-1] if err else "")
        if "language" in detail.lower() or "traineddata" in detail.lower():
            raise OcrSkip(f"OCR language {lang!r} is not installed (apt-get install tesseract-ocr-{lang.split('+')[0]}"
                          f" or set {LANG_ENV})")
        raise OcrSkip(f"tesseract failed (exit code {proc.returncode}: {detail[:120]})")
    return proc.stdout.decode("utf-8", "replace")


def tsv_to_text(tsv: str, vocabulary: frozenset[str] | set[str] | None = None) -> str:
    """Tesseract TSV -> text: the words of a line joined by spaces, the lines of a paragraph joined (a
    line-break hyphen removed where the joined word is in `vocabulary` or elsewhere in the text),
    paragraphs separated by a blank line."""
    from retrieval.pdf import _core, join_hyphenated, normalise_word

    paragraphs: list[list[list[str]]] = []  # paragraph -> lines -> words
    keys: tuple | None = None
    line_key: tuple | None = None
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        word = normalise_word(cols[11])
        if not word:
            continue
        par = (cols[1], cols[2], cols[3])
        line = (*par, cols[4])
        if par != keys:
            paragraphs.append([])
            keys = line_key = par
        if line != line_key:
            paragraphs[-1].append([])
            line_key = line
        paragraphs[-1][-1].append(word)
    words = {c for p in paragraphs for ln in p for w in ln if not w.endswith("-")
             for c in (_core(part) for part in w.split("-")) if len(c) > 2 and c.isalpha()}
    known = words | set(vocabulary or ())
    out: list[str] = []
    for lines in paragraphs:
        text = ""
        for line in lines:
            piece = " ".join(line)
            if not text:
                text = piece
                continue
            last = text.rsplit(" ", 1)[-1]
            joined = join_hyphenated(last, line[0], known) if last.endswith("-") and len(last) > 1 else None
            if joined is not None:
                text = text[: len(text) - len(last)] + joined + piece[len(line[0]):]
            elif last.endswith("-") and len(last) > 1:
                text += piece  # "state-of-the-" + "art"
            else:
                text += " " + piece
        if text:
            out.append(text)
    return "\n\n".join(out)


def ocr_image(image, deadline: Deadline, dpi: int | None = None, done: int = 0, total: int = 1,
              vocabulary: frozenset[str] | None = None) -> str:
    """The text of one PIL image (any mode; downscaled to `MAX_OCR_PIXELS`); "" for a blank image."""
    from PIL import Image

    image = _grey(image)
    if image.width * image.height > MAX_OCR_PIXELS:
        factor = (MAX_OCR_PIXELS / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        dpi = int(dpi * factor) if dpi else None
    low, high = image.getextrema()
    if high - low < 16:  # one colour: nothing to read (a blank page)
        return ""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return tsv_to_text(run_tesseract(buf.getvalue(), dpi, deadline, done, total), vocabulary)


def _grey(image):
    """8-bit greyscale, transparency flattened onto white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image if image.mode == "L" else image.convert("L")


# ---------------------------------------------------------------- images

def image_text(raw: bytes, parse_seconds: float | None, max_pages: int) -> tuple[str, Pages, str]:
    """(text, page spans, note) of an image file's bytes; raises OcrSkip (OcrMissing without tesseract)."""
    try:
        from PIL import Image
    except ImportError:
        raise OcrSkip("reading images needs Pillow (pip install pillow)") from None
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check is replaced by MAX_DECODE_PIXELS (a clear reason)
    try:
        return _image_text(raw, parse_seconds, max_pages)
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _image_text(raw: bytes, parse_seconds: float | None, max_pages: int) -> tuple[str, Pages, str]:
    from PIL import Image, ImageSequence

    from retrieval.pdf import encoder_vocabulary

    deadline = Deadline(parse_seconds)
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format == "JPEG" and image.width * image.height > MAX_DECODE_PIXELS:
            factor = (MAX_OCR_PIXELS / (image.width * image.height)) ** 0.5  # decoded at 1/2, 1/4 or 1/8 size
            image.draft("L", (max(1, int(image.width * factor)), max(1, int(image.height * factor))))
        width, height = image.size
    except Image.UnidentifiedImageError:
        raise OcrSkip("corrupt image (not a readable image file)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on damaged files
        raise OcrSkip(f"corrupt image ({type(exc).__name__}: {str(exc)[:100]})") from None
    if width * height > MAX_DECODE_PIXELS:
        raise OcrSkip(f"image too large to read ({width:,} x {height:,} pixels = {width * height / 1e6:.0f} "
                      f"megapixels > limit {MAX_DECODE_PIXELS / 1e6:.0f})")
    if find_tesseract() is None:  # checked after the image is known to be readable
        raise OcrMissing()
    frames = getattr(image, "n_frames", 1) or 1
    limit = min(max_pages, MAX_FRAMES)
    if frames > limit:
        raise OcrSkip(f"too many pages ({frames:,} frames > limit {limit:,})")
    vocabulary = encoder_vocabulary()
    texts: list[str] = []
    for number, frame in enumerate(ImageSequence.Iterator(image), start=1):
        if frame.size[0] * frame.size[1] > MAX_DECODE_PIXELS:
            raise OcrSkip(f"image too large to read (page {number}: {frame.size[0]:,} x {frame.size[1]:,} pixels)")
        try:
            frame.load()
        except Exception as exc:  # noqa: BLE001 - a truncated or damaged image
            raise OcrSkip(f"corrupt image ({type(exc).__name__}: {str(exc)[:100]})") from None
        dpi = frame.info.get("dpi")
        dpi_value = int(round(float(dpi[0]))) if dpi and 30 <= float(dpi[0]) <= 2400 else None
        texts.append(ocr_image(frame, deadline, dpi_value, number - 1, frames, vocabulary))
    from retrieval.pdf import join_pages

    text, pages = join_pages([(n, t) for n, t in enumerate(texts, start=1) if t.strip()])
    if not pages:
        raise OcrSkip("no text found by OCR")
    return text, pages, "text read by OCR (tesseract): it may hold recognition errors"


def pdf_text_with_ocr(raw: bytes, max_pages: int, max_chars: int, parse_seconds: float | None
                      ) -> tuple[str, Pages, Headings, str]:
    """(text, page spans, headings, note) of a PDF: its text layer (`retrieval.pdf`), and OCR of the pages
    that have none. Raises `retrieval.pdf.PdfSkip` or OcrSkip with a reason."""
    from retrieval.pdf import PdfSkip, pdf_pages

    deadline = Deadline(parse_seconds)
    text, pages, headings, blank = pdf_pages(raw, max_pages, max_chars)
    if not blank:
        return text, pages, headings, ""
    try:
        found = ocr_pdf_pages(raw, blank, deadline)
    except OcrMissing:
        if not pages:
            raise OcrSkip(f"no text layer (scanned PDF): {MISSING_REASON}") from None
        return text, pages, headings, f"{_page_list(blank)} without a text layer not read: {MISSING_REASON}"
    found = {n: t for n, t in found.items() if t.strip()}
    if not found and not pages:
        raise PdfSkip("no text layer, and OCR found no text on its pages")
    text, pages, headings = merge_pages(text, pages, headings, found)
    if len(text) > max_chars:
        raise PdfSkip(f"too much text (over {max_chars:,} characters)")
    return text, pages, headings, f"{_page_list(sorted(found))} read by OCR (no text layer)" if found else ""


def _page_list(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:20]) + (", ..." if len(numbers) > 20 else "")
    return f"page{'s' if len(numbers) != 1 else ''} {shown}"


def ocr_pdf_pages(raw: bytes, numbers: Sequence[int], deadline: Deadline,
                  render: Callable | None = None) -> dict[int, str]:
    """{page number: OCR text} of these pages (1-based) of a PDF, rendered with PDFium."""
    import pypdfium2 as pdfium

    from retrieval.pdf import _PDFIUM_LOCK, encoder_vocabulary

    if find_tesseract() is None:
        raise OcrMissing()
    out: dict[int, str] = {}
    vocabulary = encoder_vocabulary()
    for done, number in enumerate(numbers):
        deadline.check(done, len(numbers))
        with _PDFIUM_LOCK:
            doc = pdfium.PdfDocument(raw)
            try:
                page = doc[number - 1]
                try:
                    width, height = page.get_size()
                    scale = PDF_DPI / 72
                    pixels = width * height * scale * scale
                    if pixels > MAX_OCR_PIXELS:
                        scale *= (MAX_OCR_PIXELS / pixels) ** 0.5
                    image = page.render(scale=scale, grayscale=True).to_pil()
                finally:
                    page.close()
            except Exception:  # noqa: BLE001 - a page that cannot be rendered is a page without text
                out[number] = ""
                continue
            finally:
                doc.close()
        out[number] = ocr_image(image, deadline, int(72 * scale), done, len(numbers), vocabulary)
    return out


def merge_pages(text: str, pages: Pages, headings: Headings, extra: dict[int, str]) -> tuple[str, Pages, Headings]:
    """Insert whole pages (`extra`: page number -> text) into a document's text, in page order; page spans
    and heading offsets are moved to match. Pages are separated by a blank line, as `retrieval.pdf` does."""
    items: list[tuple[int, str, Headings]] = []
    for start, end, number in pages:
        inside = [(off - start, level, title) for off, level, title in headings if start <= off < end]
        items.append((number, text[start:end], inside))
    items += [(number, page_text, []) for number, page_text in extra.items()]
    items.sort(key=lambda item: item[0])
    parts: list[str] = []
    new_pages: Pages = []
    new_headings: Headings = []
    pos = 0
    for number, page_text, inside in items:
        if parts:
            parts.append("\n\n")
            pos += 2
        parts.append(page_text)
        new_pages.append((pos, pos + len(page_text), number))
        new_headings += [(pos + off, level, title) for off, level, title in inside]
        pos += len(page_text)
    return "".join(parts), new_pages, new_headings
