"""PDF text extraction: which library gives text that reads like the page, and how fast.

    python benchmarks/pdf_extract.py [--pages 8] [--real /usr/share/doc/.../some.pdf ...] [--repeat 3]

1. Synthetic paper, written with reportlab, whose source text is known: a full-width title, authors and
   abstract, then two columns of justified prose with section headings, words hyphenated at line breaks
   (real words such as "mas-"/"sive" and compounds such as "state-of-the-"/"art"), a running header and a
   "Page N" footer on every page, a table drawn as aligned cells, and a References section. Lines are
   justified (drawn word by word), the right column's baselines sit 4 pt below the left one's, and the
   content stream holds the text row by row across both columns (not in reading order).
   Score: the source's words (letters and digits, lower-cased) against the extracted ones with difflib's
   SequenceMatcher: "in order %" = words of the matching blocks / source words (words out of reading
   order, split by a hyphen or glued together do not match); "extra %" = extracted words that match
   nothing / extracted words (running headers, page numbers, jumbled fragments).
2. Real PDFs found on the machine (no source text): seconds per page, and how many words each library
   finds, with agreement with pypdf's words as a rough cross-check.

Extractors: pypdf `extract_text` (the old path), pypdf layout mode, pdfminer.six `extract_text`,
pdfplumber `extract_text`, pypdfium2 `get_text_range` (raw PDFium order), and this project's
`retrieval.pdf.pdf_text` (PDFium characters + the layout rules). One missing library is reported, not fatal.
"""

from __future__ import annotations

import argparse
import difflib
import io
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("model data system method result analysis network training learning performance structure "
         "process value feature sample number signal measure layer weight output input error function "
         "approach problem context question answer document retrieval passage language token sequence "
         "attention memory vector matrix gradient parameter estimate variance baseline experiment "
         "evaluation benchmark accuracy precision recall distribution probability inference decoding "
         "representation architecture transformer encoder decoder embedding projection normalization "
         "regularization optimization convergence generalization interpretation implementation").split()
LONG_WORDS = ["massive", "representation", "information", "particularly", "significantly", "understanding",
              "performance", "experimental", "generalization", "computational"]
COMPOUNDS = ["state-of-the-art", "well-known", "large-scale", "data-driven", "fine-grained"]
_PLAIN_WORDS = set(WORDS) | set(LONG_WORDS)
HEADER = "Journal of Synthetic Results 12 (2026)"


def _sentence(rng: random.Random) -> str:
    n = rng.randint(8, 16)
    words = [rng.choice(WORDS) for _ in range(n)]
    words[rng.randrange(n)] = rng.choice(LONG_WORDS + COMPOUNDS)
    return " ".join(words).capitalize() + "."


def _wrap(text: str, width: float, font: str, size: float) -> list[str]:
    """Greedy wrap; a word that does not fit is hyphenated when its first part fits (source keeps it whole)."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    lines, cur = [], ""
    for word in text.split():
        trial = f"{cur} {word}".strip()
        if stringWidth(trial, font, size) <= width:
            cur = trial
            continue
        split = None
        if "-" in word:  # a compound breaks after one of its own hyphens
            parts = word.split("-")
            for k in range(len(parts) - 1, 0, -1):
                head = "-".join(parts[:k]) + "-"
                if stringWidth(f"{cur} {head}".strip(), font, size) <= width:
                    split = (head, "-".join(parts[k:]))
                    break
        elif len(word) >= 7:
            for k in range(len(word) - 3, 2, -1):
                head = word[:k] + "-"
                if stringWidth(f"{cur} {head}".strip(), font, size) <= width:
                    split = (head, word[k:])
                    break
        if split:
            lines.append(f"{cur} {split[0]}".strip())
            cur = split[1]
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    return lines


def make_paper(pages: int = 8, seed: int = 0, row_major: bool = True) -> tuple[bytes, str]:
    """(PDF bytes, source text in reading order without headers/footers) of a two-column paper.

    `row_major`: the page's text is written to the content stream line by line across both columns (top to
    bottom, left to right), as some generators do, so that content order is not reading order.
    """
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    rng = random.Random(seed)
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    width, height = A4
    margin, gutter, size, leading = 56.0, 20.0, 9.5, 11.5
    col_w = (width - 2 * margin - gutter) / 2
    source: list[str] = []
    section = 0
    ops: list[tuple[float, float, str, float, str]] = []
    font = ["Times-Roman", size]

    def set_font(name: str, pt: float) -> None:
        font[:] = [name, pt]

    def draw(x: float, y: float, text: str) -> None:
        ops.append((y, x, font[0], font[1], text))

    def centre(x: float, y: float, text: str) -> None:
        from reportlab.pdfbase.pdfmetrics import stringWidth

        draw(x - stringWidth(text, font[0], font[1]) / 2, y, text)

    def justify(x: float, y: float, line: str, width: float) -> None:
        """Draw a line word by word, stretched to `width` (as justified text is typeset)."""
        from reportlab.pdfbase.pdfmetrics import stringWidth

        words = line.split()
        if len(words) < 2:
            draw(x, y, line)
            return
        natural = sum(stringWidth(w, font[0], font[1]) for w in words)
        space = (width - natural) / (len(words) - 1)
        for word in words:
            draw(x, y, word)
            x += stringWidth(word, font[0], font[1]) + space

    def show_page() -> None:
        for y, x, name, pt, text in (sorted(ops, key=lambda op: (-op[0], op[1])) if row_major else ops):
            c.setFont(name, pt)
            c.drawString(x, y, text)
        ops.clear()
        c.showPage()

    for page in range(1, pages + 1):
        set_font("Helvetica", 8)
        draw(margin, height - 34, HEADER)
        centre(width / 2, 30, f"Page {page}")
        y = height - 70
        if page == 1:
            set_font("Helvetica-Bold", 17)
            title = "Reading Order in Synthetic Two Column Papers"
            centre(width / 2, y, title)
            source.append(title)
            y -= 24
            set_font("Times-Roman", 10)
            authors = "Ada Lovelace and Alan Turing"
            centre(width / 2, y, authors)
            source.append(authors)
            y -= 22
            set_font("Times-Bold", 10)
            draw(margin, y, "Abstract")
            source.append("Abstract")
            y -= leading + 2
            set_font("Times-Roman", size)
            abstract = " ".join(_sentence(rng) for _ in range(5))
            for line in _wrap(abstract, width - 2 * margin, "Times-Roman", size):
                draw(margin, y, line)
                y -= leading
            source.append(abstract)
            y -= 10
        if page == 3:  # a full-width table between the header and the columns
            header = ["Model", "Params", "Accuracy", "Latency"]
            rows = [header] + [[f"Variant {k}", f"{rng.randint(10, 900)}M", f"{rng.uniform(50, 99):.1f}",
                                f"{rng.randint(5, 80)} ms"] for k in range(1, 6)]
            xs = [margin + k * (width - 2 * margin) / 4 for k in range(4)]
            set_font("Times-Bold", size)
            for r, row in enumerate(rows):
                set_font("Times-Bold" if r == 0 else "Times-Roman", size)
                for x, cell in zip(xs, row):
                    draw(x + 4, y, cell)
                c.line(margin, y - 4, width - margin, y - 4)
                y -= leading + 4
            source.append(" ".join(" ".join(row) for row in rows))
            y -= 12
        top = y
        for col in range(2):
            x = margin + col * (col_w + gutter)
            y = top - 4.0 * col  # the columns' baselines do not line up
            while y > 70:
                if rng.random() < 0.3 and y > 120:
                    section += 1
                    last = page == pages and col == 1
                    heading = "References" if last else f"{section} {rng.choice(WORDS).capitalize()} " \
                                                          f"{rng.choice(WORDS).capitalize()}"
                    set_font("Times-Bold", 11.5)
                    draw(x, y, heading)
                    source.append(heading)
                    y -= leading + 4
                para = " ".join(_sentence(rng) for _ in range(rng.randint(2, 4)))
                lines = _wrap(para, col_w, "Times-Roman", size)
                room = int((y - 70) // leading)
                if room <= 1:
                    break
                lines = lines[:room]
                # the source is what is drawn: re-join the drawn lines the way a reader would
                drawn = []
                set_font("Times-Roman", size)
                for k, line in enumerate(lines):
                    if k < len(lines) - 1:
                        justify(x, y, line, col_w)
                    else:
                        draw(x, y, line)
                    y -= leading
                    drawn.append(line)
                source.append(_unhyphenate(drawn))
                y -= 6
        show_page()
    c.save()
    return buf.getvalue(), "\n".join(source)


def _unhyphenate(lines: list[str]) -> str:
    """Drawn lines -> the source text: a word split by _wrap is whole again, a compound keeps its hyphen."""
    out = lines[0]
    for line in lines[1:]:
        last = out.rsplit(" ", 1)[-1]
        first = line.split(" ", 1)[0]
        if last.endswith("-"):
            whole = last[:-1] + first
            whole_core = whole.strip(".,")
            if whole_core.lower() in _PLAIN_WORDS:
                out = out[: len(out) - len(last)] + whole + line[len(first):]
            else:
                out += line
        else:
            out += " " + line
    return out


_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def score(source: str, extracted: str) -> tuple[float, float]:
    """(in-order %, extra %) of the extracted text's words against the source's."""
    a, b = tokens(source), tokens(extracted)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return 100.0 * matched / max(len(a), 1), 100.0 * (len(b) - matched) / max(len(b), 1)


# ---------------------------------------------------------------- extractors

def ex_pypdf(raw: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(raw)).pages)


def ex_pypdf_layout(raw: bytes) -> str:
    from pypdf import PdfReader

    return "\n".join(p.extract_text(extraction_mode="layout") or "" for p in PdfReader(io.BytesIO(raw)).pages)


def ex_pdfminer(raw: bytes) -> str:
    from pdfminer.high_level import extract_text

    return extract_text(io.BytesIO(raw))


def ex_pdfplumber(raw: bytes) -> str:
    import pdfplumber

    with pdfplumber.open(io.BytesIO(raw)) as pdf:
        return "\n".join(p.extract_text() or "" for p in pdf.pages)


def ex_pdfium_raw(raw: bytes) -> str:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(raw)
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def ex_project(raw: bytes) -> str:
    from retrieval.pdf import pdf_text

    return pdf_text(raw, 100_000, 10 ** 9)[0]


EXTRACTORS: dict[str, Callable[[bytes], str]] = {
    "pypdf extract_text (old path)": ex_pypdf,
    "pypdf layout mode": ex_pypdf_layout,
    "pdfminer.six extract_text": ex_pdfminer,
    "pdfplumber extract_text": ex_pdfplumber,
    "pypdfium2 get_text_range": ex_pdfium_raw,
    "retrieval.pdf (pypdfium2 + layout)": ex_project,
}


def run_all(raw: bytes, repeat: int) -> dict[str, tuple[str, float] | Exception]:
    """Every extractor on `raw`, `repeat` interleaved rounds (fair on a shared, noisy machine): best time."""
    results: dict[str, tuple[str, float] | Exception] = {}
    for _ in range(repeat):
        for name, fn in EXTRACTORS.items():
            if isinstance(results.get(name), Exception):
                continue
            t = time.perf_counter()
            try:
                text = fn(raw)
            except Exception as exc:  # noqa: BLE001 - a missing library is a row, not a crash
                results[name] = exc
                continue
            secs = time.perf_counter() - t
            best = results.get(name)
            results[name] = (text, min(secs, best[1]) if isinstance(best, tuple) else secs)
    return results


def page_count(raw: bytes) -> int:
    from pypdf import PdfReader

    return len(PdfReader(io.BytesIO(raw)).pages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--real", nargs="*", default=None,
                        help="real PDFs to time (default: a few found under /usr/share/doc)")
    args = parser.parse_args(argv)

    raw, source = make_paper(args.pages)
    n = page_count(raw)
    old = "pypdf extract_text (old path)"
    print(f"synthetic two-column paper: {n} pages, {len(tokens(source))} source words "
          f"(best of {args.repeat} interleaved rounds)\n")
    print(f"| {'library':38} | words in order % | extra words % | s/page | x old path |")
    print(f"|{'-' * 40}|-----------------|---------------|--------|------------|")
    results = run_all(raw, args.repeat)
    base = results[old][1] if isinstance(results.get(old), tuple) else None
    for name, result in results.items():
        if isinstance(result, Exception):
            print(f"| {name:38} | (failed: {type(result).__name__}: {str(result)[:40]}) |")
            continue
        text, secs = result
        in_order, extra = score(source, text)
        ratio = f"{secs / base:10.2f}" if base else "         -"
        print(f"| {name:38} | {in_order:15.1f} | {extra:13.1f} | {secs / n:.4f} | {ratio} |")

    real = args.real
    if real is None:
        real = [str(p) for p in sorted(Path("/usr/share/doc").rglob("*.pdf")) if p.stat().st_size > 20_000][:3]
    for path in real:
        data = Path(path).read_bytes()
        try:
            n = page_count(data)
        except Exception as exc:  # noqa: BLE001
            print(f"\n{path}: unreadable ({exc})")
            continue
        print(f"\n{path}: {n} pages")
        print(f"| {'library':38} | words | agreement with pypdf % | s/page | x old path |")
        print(f"|{'-' * 40}|-------|------------------------|--------|------------|")
        results = run_all(data, args.repeat)
        ref = results[old][0] if isinstance(results.get(old), tuple) else None
        base = results[old][1] if isinstance(results.get(old), tuple) else None
        for name, result in results.items():
            if isinstance(result, Exception):
                print(f"| {name:38} | (failed: {type(result).__name__}) |")
                continue
            text, secs = result
            agree = score(ref, text)[0] if ref is not None else float("nan")
            ratio = f"{secs / base:10.2f}" if base else "         -"
            print(f"| {name:38} | {len(tokens(text)):5d} | {agree:22.1f} | {secs / n:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
