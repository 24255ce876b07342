"""Helpers for the retrieval tests: a folder with every supported file type plus broken ones.

Each readable file holds one planted sentence made of words found nowhere else, so a search for it must
return that file first.
"""

from __future__ import annotations

import os
from pathlib import Path

# file -> (planted sentence, kind)
PLANTED = {
    "notes.txt": ("The amber walrus repaired seventeen lanterns before breakfast.", "text"),
    "guide.md": ("Quokkas negotiate turquoise mortgages under velvet moonlight.", "markdown"),
    "manual.rst": ("A saffron pelican calibrates the brass heliograph every equinox.", "rst"),
    "page.html": ("The obsidian tortoise composes limericks about glaciers.", "html"),
    "legacy.htm": ("Crimson otters smuggle cardamom through the lighthouse tunnel.", "html"),
    "report.pdf": ("Emerald flamingos audit the volcanic pretzel factory.", "pdf"),
    "memo.docx": ("Lavender badgers translate sonnets into semaphore flags.", "docx"),
    "src/tool.py": ("Cobalt hedgehogs juggle fourteen porcelain teacups.", "code"),
    "src/app.js": ("Vermilion ferrets knit scarves for migrating albatrosses.", "code"),
    "config.yaml": ("Ivory lemurs orchestrate a kazoo symphony in Reykjavik.", "code"),
    "latin1.txt": ("Café crème: the ochre marmot embroiders tapestries of Zürich.", "text"),
}

# file -> substring expected in its skip reason
BROKEN = {
    "corrupt.pdf": "corrupt PDF",
    "scanned.pdf": "no text layer",
    "binary.txt": "binary",
    "empty.txt": "empty",
    "huge.txt": "too large",
    "image.png": "corrupt image",
    "loop": "symlink loop",
}

MAX_BYTES = 60_000


def _pdf(path: Path, pages: list[str]) -> None:
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path))
    for text in pages:
        y = 800
        for line in text.split("\n"):
            if line:
                c.drawString(72, y, line)
            y -= 16
        c.showPage()
    c.save()


def make_mixed_folder(root: Path) -> Path:
    """Create `root/docs` with every supported type (one planted sentence each) plus broken files."""
    docs = root / "docs"
    (docs / "src").mkdir(parents=True)
    p = PLANTED
    (docs / "notes.txt").write_text(f"Some notes.\n\n{p['notes.txt'][0]}\n\nMore notes follow here.\n")
    (docs / "guide.md").write_text(
        "# User guide\n\nWelcome to the guide.\n\n## Installation\n\nRun the installer.\n\n"
        f"## Finance\n\n### Mortgages\n\n{p['guide.md'][0]}\n\n```\n# not a heading\n```\n")
    (docs / "manual.rst").write_text(
        f"Manual\n======\n\nIntro text.\n\nCalibration\n-----------\n\n{p['manual.rst'][0]}\n")
    (docs / "page.html").write_text(
        "<html><head><title>Poems</title><style>body{color:red}</style><script>var secret='jsword';</script>"
        f"</head><body><h1>Poetry</h1><p>Intro.</p><h2>Tortoises</h2><p>{p['page.html'][0]}</p></body></html>")
    (docs / "legacy.htm").write_text(f"<p>{p['legacy.htm'][0]}</p>", encoding="utf-8")
    _pdf(docs / "report.pdf", ["First page about nothing in particular.", p["report.pdf"][0]])
    import docx

    d = docx.Document()
    d.add_heading("Memo", level=1)
    d.add_paragraph("Opening remarks.")
    d.add_heading("Semaphore", level=2)
    d.add_paragraph(p["memo.docx"][0])
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "cell one"
    table.rows[0].cells[1].text = "cell two"
    d.save(str(docs / "memo.docx"))
    (docs / "src" / "tool.py").write_text(f'def tool():\n    """{p["src/tool.py"][0]}"""\n    return 1\n')
    (docs / "src" / "app.js").write_text(f"// {p['src/app.js'][0]}\nfunction app() {{ return 2; }}\n")
    (docs / "config.yaml").write_text(f"description: {p['config.yaml'][0]}\nvalue: 3\n")
    (docs / "latin1.txt").write_bytes(
        (p["latin1.txt"][0] + "\nÀ bientôt, garçon. Ça coûte très cher à Genève.\n").encode("latin-1"))
    # broken ones
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\nthis is not a pdf\x00\x01")
    _pdf(docs / "scanned.pdf", [""])  # one page, no text
    (docs / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (docs / "empty.txt").write_bytes(b"")
    (docs / "huge.txt").write_text("big file line\n" * (MAX_BYTES // 10))
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    os.symlink(".", docs / "loop")
    # hidden: ignored silently
    (docs / ".git").mkdir()
    (docs / ".git" / "config").write_text("hidden")
    (docs / ".secret.txt").write_text("hidden")
    return docs
