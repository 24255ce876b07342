"""Tables in a cited passage and in the page panel: a Markdown pipe table (the form every loader writes tables in,
`retrieval.pipe_tables`) shows as an HTML table, its header line as <th> cells, with the evidence and sentence
marks inside the cells they cover, and every cell escaped. Text outside tables renders as it always did.
The browser side is tests/test_browser_tables.py."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.library import PageView
from assistant.ui_render import esc, has_table, render_page, render_passage, render_source

TABLE = "| Model | Params | Score |\n|---|---|---|\n| Base | 110M | 81.2 |\n| Large | 340M | 84.6 |"
PASSAGE = f"Results of the comparison follow.\n\n{TABLE}\n\nThe large model wins by a clear margin."
PAYLOAD = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>${alert(1)}"
ALLOWED = {"div": {"class"}, "table": set(), "thead": set(), "tbody": set(), "tr": set(), "th": {"class"},
           "td": {"class"}, "mark": {"data-s"}}


class _Tree(HTMLParser):
    """The tags and attributes of an HTML fragment, checked to be balanced; the text of each cell and mark."""

    def __init__(self, fragment: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[tuple[str, str]] = []      # (th | td, text)
        self.marks: list[tuple[str | None, str, bool]] = []  # (data-s, text, inside a cell)
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._mark: list[str] | None = None
        self._mark_s: str | None = None
        self.feed(fragment)
        self.close()
        assert not self.stack, f"unclosed {self.stack}"

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        self.tags.append((tag, dict(attrs)))
        if tag in ("th", "td"):
            self._cell = []
        if tag == "mark":
            self._mark, self._mark_s = [], dict(attrs).get("data-s")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack}"
        self.stack.pop()
        if tag in ("th", "td"):
            self.cells.append((tag, "".join(self._cell)))
            self._cell = None
        if tag == "mark":
            self.marks.append((self._mark_s, "".join(self._mark), self._cell is not None))
            self._mark = None

    def handle_data(self, data):
        self.text.append(data)
        for sink in (self._cell, self._mark):
            if sink is not None:
                sink.append(data)


def _only_our_markup(fragment: str) -> _Tree:
    tree = _Tree(fragment)
    for tag, attrs in tree.tags:
        assert tag in ALLOWED and set(attrs) <= ALLOWED[tag], (tag, attrs)
    return tree


def test_a_pipe_table_becomes_a_table_with_its_header_row_as_th():
    out = render_passage(PASSAGE)
    tree = _only_our_markup(out)
    assert out.count("<table>") == 1 and "|" not in out and "---" not in out
    assert [c for c in tree.cells if c[0] == "th"] == [("th", "Model"), ("th", "Params"), ("th", "Score")]
    assert [t for _, t in tree.cells if _ == "td"] == ["Base", "110M", "81.2", "Large", "340M", "84.6"]
    assert out.count("<tr>") == 3 and out.index("<thead>") < out.index("<th>") < out.index("<tbody>")
    # the prose on either side shows as before; the blank lines around the table give way to its margins
    assert out.startswith("Results of the comparison follow.<div class=\"table-wrap\"><table>")
    assert out.endswith("</table></div>The large model wins by a clear margin.")


def test_a_highlight_inside_a_cell_is_marked_in_that_cell():
    start = PASSAGE.index("340M")
    out = render_passage(PASSAGE, [(start, start + 4)])
    assert "<td><mark>340M</mark></td>" in out
    assert _only_our_markup(out).marks == [(None, "340M", True)]
    part = PASSAGE.index("Large") + 2                              # part of a cell: the rest stays unmarked
    out = render_passage(PASSAGE, None, [(part, part + 3, 4)])
    assert '<td>La<mark data-s="4">rge</mark></td>' in out


def test_a_span_across_text_and_table_is_marked_in_the_text_and_each_cell_it_covers():
    start, end = PASSAGE.index("follow"), PASSAGE.index("110M") + 4
    tree = _only_our_markup(render_passage(PASSAGE, None, [(start, end, 0), (PASSAGE.index("Base"), end, 1)]))
    assert tree.marks == [("0", "follow.", False), ("0", "Model", True), ("0", "Params", True),
                          ("0", "Score", True), ("0 1", "Base", True), ("0 1", "110M", True)]
    start = PASSAGE.index("84.6")                                  # from the last cell into the prose after it
    tree = _only_our_markup(render_passage(PASSAGE, [(start, PASSAGE.index(" wins"))]))
    assert tree.marks == [(None, "84.6", True), (None, "The large model", False)]


def test_hostile_cells_stay_text():
    table = f"| <b>Name</b> | {PAYLOAD} |\n|---|---|\n| {PAYLOAD} | <svg onload=alert(1)> `x` |"
    text = f"Before {PAYLOAD}\n\n{table}\n\nAfter {PAYLOAD}"
    start = text.index("<img", text.index("|---|"))
    out = render_passage(text, [(start, start + 20)], [(0, text.index("\n"), 0)])
    for bad in ("<img", "<script", "<svg", "<b>", "${", "`"):
        assert bad not in out, bad
    tree = _only_our_markup(out)
    assert out.count("<table>") == 1
    assert [t for _, t in tree.cells] == ["<b>Name</b>", PAYLOAD, PAYLOAD, "<svg onload=alert(1)> `x`"]
    assert tree.marks == [("0", f"Before {PAYLOAD}", False), (None, "<img src=x onerror=w", True)]


def test_text_without_a_table_renders_exactly_as_before():
    for text in ("a | b in prose", "| a | b |\n| c | d |", "| a | b |\n|---|---|---|\n| 1 | 2 |",
                 "```\n| a | b |\n|---|---|\n| 1 | 2 |\n```", "x <b>|</b> -"):
        assert not has_table(text)
        assert render_passage(text) == esc(text)
        assert render_passage(text, [(0, 3)]) == f"<mark>{esc(text[:3])}</mark>{esc(text[3:])}"


def test_several_tables_short_rows_alignment_and_escaped_pipes():
    text = ("| k | v |\n|:-:|--:|\n| a \\| b | 1 |\n| only |\n\nbetween\n"
            "  | x | y |\n  |---|---|\n  | 3 | 4 |\nafter")
    out = render_passage(text)
    tree = _only_our_markup(out)
    assert out.count("<table>") == 2
    assert '<th class="al-c">k</th><th class="al-r">v</th>' in out
    assert "<td class=\"al-c\">a | b</td>" in out                  # an escaped pipe is a pipe in its cell
    assert "<tr><td class=\"al-c\">only</td><td></td></tr>" in out  # a short row is padded
    assert "".join(tree.text).replace("\n", "/") == "kva | b1onlybetweenxy34after"   # blocks: no line breaks needed
    continued = "| Model | Score |\n|---|---|\n| Tiny | 72.0 |"   # a row group that repeats its table's header
    assert "<th>Model</th><th>Score</th>" in render_passage(continued)


def test_the_page_panel_shows_the_pages_tables_with_the_marks_in_their_cells():
    page_text = f"Page heading\n\n{TABLE}\n\nClosing words."
    start = page_text.index("84.6")
    view = PageView("results.pdf", 3, page_text, [(start, start + 4, 0), (0, 4, None)])
    panel = render_page(view, "results.pdf", 3)
    assert panel.startswith('<div class="page-head">results.pdf, p. 3</div><div class="page-text"><mark>Page</mark>'
                            ' heading<div class="table-wrap"><table>')
    assert '<td><mark data-s="0">84.6</mark></td>' in panel and "<mark>Page</mark>" in panel
    assert "<th>Model</th>" in panel and "|" not in panel


def test_a_paged_source_with_a_table_carries_its_text_for_the_page_panel():
    view = {"number": 2, "path": "results.pdf", "page": 3, "text": PASSAGE + " " + PAYLOAD, "cited": True,
            "score": 0.5, "highlights": [], "openable": True}
    out = render_source(0, view)
    attribute = out.split('<div class="passage" data-text="', 1)[1].split('"', 1)[0]
    assert html.unescape(attribute) == view["text"]                  # the text the marks' offsets are into
    assert "<img" not in out and "<script" not in out and "<table>" in out
    assert json.loads(html.unescape(out.split('data-marks="', 1)[1].split('"', 1)[0])) == []
    plain = {**view, "text": "No table here."}
    assert '<div class="passage">No table here.</div>' in render_source(0, plain)   # nothing extra without one
    unopenable = {**view, "openable": False}
    assert '<div class="passage"><table' not in render_source(0, unopenable)
    assert "data-text" not in render_source(0, unopenable)           # no page button: no page panel to feed


_PIECES = st.sampled_from(["|", "| ", " |", "---", ":--", "--:", "\n", "\n\n", "a", "bc ", "\\|", "```\n",
                           "<b>", "&amp;", "${x}", "`", "<img src=x onerror=alert(1)>", " "])


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(_PIECES, max_size=40).map("".join), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80),
                                                                       st.one_of(st.none(), st.integers(0, 3))),
                                                             max_size=4))
def test_any_text_and_marks_give_balanced_markup_of_ours_only(text, marks):
    highlights = [(a, b) for a, b, k in marks if k is None]
    sentences = [(a, b, k) for a, b, k in marks if k is not None]
    out = render_passage(text, highlights, sentences)
    tree = _only_our_markup(out)
    shown = "".join(tree.text)
    if not has_table(text):
        assert shown == text.replace("\r\n", "\n")
    for words in ("<b>", "<img", "${x}"):                # what is in the text is shown as text, once each
        assert shown.count(words) == text.count(words)
