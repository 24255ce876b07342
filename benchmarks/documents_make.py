"""Write the made (not downloaded) files of benchmarks/folders/documents/.

    python benchmarks/documents_make.py          # rewrites the three files below, deterministically

- `garden-rainwater-study.pdf`: a SYNTHETIC two-column paper (reportlab): a full-width title block,
  two justified columns, a running header and a "Page N" footer on every page, a table. The prose is
  written for this benchmark (CC0); no real two-column paper with a redistributable licence was found in
  the Debian/PyPI packages reachable here. Its reference text (reference/garden-rainwater-study.txt) is
  written from the same source strings, so it is exact.
- `project-kickoff.pptx`: slides (python-pptx): titles, bullets, a table, speaker notes.
- `allotment-budget.xlsx`: a spreadsheet (openpyxl): two sheets of tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent / "folders" / "documents"

TITLE = "Rainwater Harvesting in Small Urban Gardens: A Two-Season Field Study"
AUTHORS = "M. Okafor and L. Brandt, Riverside Community Garden Trust"
HEADER = "Riverside Garden Notes, Volume 4 (synthetic benchmark document)"
ABSTRACT = (
    "We measured how much rainwater six small urban gardens collected from shed and greenhouse roofs "
    "over two growing seasons, and how much of it replaced mains water for irrigation. Gardens with a "
    "first-flush diverter and at least two linked butts kept their water clean for longer and met most of "
    "their summer demand. The median garden replaced 61 percent of its mains water use.")
SECTIONS = [
    ("1 Introduction", [
        "Allotment holders in dense neighbourhoods often pay for every litre of water they use, and hosepipe "
        "bans arrive in the driest weeks of the year, exactly when vegetables need water most. Collecting "
        "rain from the roofs of sheds and greenhouses is an old answer to this problem, but few gardeners "
        "know how much water a small roof can really provide.",
        "This study followed six gardens of the Riverside Community Garden Trust through the seasons of 2023 "
        "and 2024. Each garden kept a daily log of rainfall, of the water level in its butts, and of the "
        "mains water it drew from the standpipe.",
    ]),
    ("2 Methods", [
        "Every garden fitted a calibrated dipstick to each water butt and read it at nine in the morning. "
        "Rainfall was taken from a shared rain gauge mounted on the trust's tool store. Mains use was read "
        "from a small meter fitted to each standpipe tap.",
        "Roof areas were measured with a tape and ranged from 4.2 to 11.5 square metres. A roof collects "
        "roughly one litre for each millimetre of rain on each square metre, less losses to splashing, "
        "evaporation and overflow. We call the share of that ideal volume which actually reached the butts "
        "the capture efficiency.",
        "Three gardens installed a first-flush diverter, a short vertical pipe that fills with the first, "
        "dirtiest water from the roof before the rest flows into the butt. Water quality was judged by "
        "smell, colour and the growth of algae, scored weekly on a scale from one to five.",
    ]),
    ("3 Results", [
        "Table 1 lists the six gardens. Capture efficiency ranged from 58 to 83 percent. The lowest value "
        "belonged to the Elm Street garden, whose gutter overflowed in heavy storms because its single "
        "downpipe was too narrow.",
        "Linked butts helped most in late summer. When two or more butts were joined at the base, the "
        "gardens ran dry on fewer days, because a full butt could top up an empty one instead of "
        "overflowing. The Canal Road garden, with four linked butts, never ran dry in either season.",
        "The first-flush diverter kept water quality scores above four for an average of nine weeks, "
        "against four weeks without one. Gardeners reported that clean water also meant fewer blocked "
        "watering cans and drip lines.",
    ]),
    ("4 Discussion", [
        "The results suggest a simple rule for small gardens: store at least 40 litres for each square "
        "metre of roof, link the butts, and fit a diverter. A larger roof without enough storage wastes "
        "most of a summer storm, while storage without roof area simply stays empty.",
        "Our study has limits. Six gardens are few, both seasons were wetter than the long-term average, "
        "and the quality scores depend on the judgement of the gardeners who recorded them. A follow-up "
        "with laboratory water tests is planned for 2025.",
    ]),
    ("5 Conclusion", [
        "Small roofs collect more water than most gardeners expect. With linked storage and a first-flush "
        "diverter, a shed roof of about eight square metres can meet well over half of the summer "
        "irrigation needs of a standard allotment plot.",
    ]),
]
TABLE_CAPTION = "Table 1: The six gardens, 2023 and 2024 seasons combined."
TABLE = [
    ["Garden", "Roof m2", "Butts", "Diverter", "Efficiency %", "Mains saved %"],
    ["Canal Road", "11.5", "4", "yes", "83", "78"],
    ["Elm Street", "6.0", "1", "no", "58", "34"],
    ["Mill Lane", "8.1", "2", "yes", "76", "65"],
    ["Orchard Row", "4.2", "1", "no", "64", "41"],
    ["Quarry Hill", "9.3", "3", "yes", "80", "71"],
    ["Station Yard", "7.4", "2", "no", "69", "57"],
]


def source_text() -> str:
    """The paper's words in reading order (the reference): title block, sections, table rows."""
    parts = [TITLE, AUTHORS, "Abstract", ABSTRACT]
    for heading, paragraphs in SECTIONS:
        parts.append(heading)
        parts.extend(paragraphs)
        if heading.startswith("3"):
            parts.extend(" ".join(row) for row in TABLE)
            parts.append(TABLE_CAPTION)
    return "\n".join(parts) + "\n"


def make_paper(path: Path) -> None:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_JUSTIFY
    from reportlab.lib.pagesizes import letter
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.platypus import (BaseDocTemplate, Frame, FrameBreak, NextPageTemplate, PageTemplate,
                                    Paragraph, Spacer, Table, TableStyle)

    width, height = letter
    margin, gap = 54, 18
    col = (width - 2 * margin - gap) / 2
    body = ParagraphStyle("body", fontName="Times-Roman", fontSize=10, leading=12.5, alignment=TA_JUSTIFY,
                          spaceAfter=5)
    head = ParagraphStyle("head", fontName="Times-Bold", fontSize=11.5, leading=14, spaceBefore=6, spaceAfter=4)
    title = ParagraphStyle("title", fontName="Helvetica-Bold", fontSize=17, leading=21, alignment=1)
    authors = ParagraphStyle("authors", fontName="Helvetica", fontSize=10.5, leading=13, alignment=1)
    abstract = ParagraphStyle("abstract", parent=body, fontName="Times-Italic", leftIndent=36, rightIndent=36)

    def decorate(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 8.5)
        canvas.drawString(margin, height - 36, HEADER)
        canvas.drawCentredString(width / 2, 30, f"Page {doc.page}")
        canvas.restoreState()

    top_h = 190
    first = [Frame(margin, height - 54 - top_h, width - 2 * margin, top_h, id="top"),
             Frame(margin, 54, col, height - 108 - top_h, id="l1"),
             Frame(margin + col + gap, 54, col, height - 108 - top_h, id="r1")]
    later = [Frame(margin, 54, col, height - 108, id="l"), Frame(margin + col + gap, 54, col, height - 108, id="r")]
    doc = BaseDocTemplate(str(path), pagesize=letter, title=TITLE, author=AUTHORS,
                          invariant=1)  # same bytes on every run
    doc.addPageTemplates([PageTemplate("first", first, onPage=decorate),
                          PageTemplate("later", later, onPage=decorate)])
    story = [Paragraph(TITLE, title), Spacer(1, 8), Paragraph(AUTHORS, authors), Spacer(1, 10),
             Paragraph("<b>Abstract</b>", ParagraphStyle("ah", parent=authors, fontName="Helvetica-Bold")),
             Spacer(1, 4), Paragraph(ABSTRACT, abstract), NextPageTemplate("later"), FrameBreak()]
    for heading, paragraphs in SECTIONS:
        story.append(Paragraph(heading, head))
        story.extend(Paragraph(p, body) for p in paragraphs)
        if heading.startswith("3"):
            table = Table(TABLE, colWidths=[col * f for f in (0.22, 0.12, 0.10, 0.14, 0.20, 0.22)])
            table.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), "Helvetica", 7.2),
                                       ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 7.2),
                                       ("LINEABOVE", (0, 0), (-1, 0), 0.8, colors.black),
                                       ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                                       ("LINEBELOW", (0, -1), (-1, -1), 0.8, colors.black)]))
            story += [Spacer(1, 4), table, Paragraph(TABLE_CAPTION, ParagraphStyle("cap", parent=body, fontSize=8.5)),
                      Spacer(1, 4)]
    doc.build(story)


SLIDES = [
    ("Community Orchard Project: Kickoff", ["Riverside Community Garden Trust", "Planning meeting, March 2025"],
     "Welcome everyone; the orchard will be planted on the old bowling green."),
    ("Goals for the first year", ["Plant 24 fruit trees on the former bowling green",
                                  "Recruit 15 regular volunteers", "Hold two grafting workshops",
                                  "Install a rainwater tank of 2,000 litres"],
     "The tank size follows the rule from the rainwater study: 40 litres per square metre of roof."),
    ("Tree order", None, "Heritage varieties were chosen for disease resistance."),
    ("Risks", ["Late frost in April can kill blossom", "Deer damage: fit tree guards to every trunk",
               "Volunteer turnover in summer"], "The deer risk is the one the council asked about."),
    ("Next steps", ["Order trees from Hillside Nursery by 15 April", "Site clearance day on 3 May",
                    "Next meeting: 12 June in the tool store"], ""),
]
TREE_TABLE = [["Fruit", "Variety", "Trees", "Rootstock"],
              ["Apple", "Egremont Russet", "8", "MM106"],
              ["Pear", "Concorde", "5", "Quince A"],
              ["Plum", "Victoria", "6", "St Julien A"],
              ["Cherry", "Stella", "5", "Gisela 5"]]


def make_slides(path: Path) -> None:
    from pptx import Presentation
    from pptx.util import Inches

    prs = Presentation()
    for number, (title, bullets, notes) in enumerate(SLIDES):
        layout = prs.slide_layouts[0 if number == 0 else (5 if bullets is None else 1)]
        slide = prs.slides.add_slide(layout)
        slide.shapes.title.text = title
        if bullets is None:
            rows, cols = len(TREE_TABLE), len(TREE_TABLE[0])
            shape = slide.shapes.add_table(rows, cols, Inches(0.8), Inches(1.8), Inches(8.4), Inches(3.0))
            for r, row in enumerate(TREE_TABLE):
                for c, value in enumerate(row):
                    shape.table.cell(r, c).text = value
        else:
            body = slide.placeholders[1].text_frame
            body.text = bullets[0]
            for line in bullets[1:]:
                body.add_paragraph().text = line
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    prs.core_properties.title = SLIDES[0][0]
    prs.save(str(path))


BUDGET = [["Item", "Category", "Quantity", "Unit cost (GBP)", "Total (GBP)"],
          ["Fruit trees", "Plants", 24, 18.5, None], ["Tree guards", "Materials", 24, 6.25, None],
          ["Rainwater tank 2000 l", "Water", 1, 420, None], ["First-flush diverter", "Water", 2, 24, None],
          ["Grafting knives", "Tools", 6, 12.75, None], ["Compost (bulk bag)", "Materials", 3, 55, None],
          ["Workshop tutor fee", "Education", 2, 90, None]]
VOLUNTEERS = [["Month", "Volunteer hours", "New volunteers", "Workshops"],
              ["March", 46, 4, 0], ["April", 88, 6, 1], ["May", 121, 3, 0], ["June", 97, 2, 1]]


def make_sheet(path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Budget"
    for r, row in enumerate(BUDGET, start=1):
        for c, value in enumerate(row, start=1):
            ws.cell(r, c, value)
        if r > 1:
            ws.cell(r, 5, f"=C{r}*D{r}")
    total_row = len(BUDGET) + 1
    ws.cell(total_row, 1, "Total")
    ws.cell(total_row, 5, f"=SUM(E2:E{total_row - 1})")
    ws2 = wb.create_sheet("Volunteers")
    for row in VOLUNTEERS:
        ws2.append(row)
    wb.properties.title = "Orchard budget 2025"
    wb.save(str(path))


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    make_paper(FOLDER / "garden-rainwater-study.pdf")
    (FOLDER / "reference").mkdir(exist_ok=True)
    (FOLDER / "reference" / "garden-rainwater-study.txt").write_text(source_text())
    make_slides(FOLDER / "project-kickoff.pptx")
    make_sheet(FOLDER / "allotment-budget.xlsx")
    print("wrote", *sorted(p.name for p in FOLDER.iterdir()), file=sys.stderr)


if __name__ == "__main__":
    main()
