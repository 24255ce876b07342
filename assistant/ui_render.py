"""The chat page's HTML, written from plain data: the answers, their sources with the supporting words marked,
the library table and the upload report, and the page's CSS and script that go with that HTML.

Everything here is pure (no Gradio, no models, no I/O), so it is tested directly. Every piece of text from a
document or the model goes through `esc`, so a document holding `<script>` or `<img onerror=...>` shows as
text; the only markup in the output is the markup these functions write.

A turn (what the chat shows of one question, saved as JSON with the conversation) is a dict:
  question, answer (the text with its [n] markers), sources (`source_view` dicts), note, timing, refused;
  since composed answers also layout ("text" | "bullets" | "sides" | "cell"), kind (the question's kind)
  and sentences: one dict per cited sentence (text, passage, start, end, role, group), in text order; the
  k-th citation chip belongs to sentence k, and its supporting words are `sources[passage].text[start:end]`.
A turn saved before composed answers has none of the three and renders as it always did.

Chips carry data-turn, data-n (the source) and, for a composed answer, data-s (the sentence); a passage's
marks carry data-s with the sentences they support. The page script (`PAGE_JS`) opens the chip's source and,
when the chip names a sentence, shows only that sentence's marks highlighted.

Pipe tables (`retrieval.pipe_tables`, the form every loader writes tables in) show as HTML tables in a source's
passage and in its page panel (`render_passage`): header line as <th>, a mark over table text marked in each cell
it covers, cells escaped like all text. Such a passage's HTML text is not the passage itself, so a paged one
carries it in data-text for the page panel, whose marks are offsets into it.
"""

from __future__ import annotations

import functools
import html
import json
import re
import time
from typing import Any

from assistant.answer import LAYOUTS, Answer, Source, page_label
from assistant.library import LibraryEntry, PageView
from retrieval.pipe_tables import PipeTableBlock, find_pipe_tables, split_row

# ---------------------------------------------------------------------- theme
CSS = """
:root, .gradio-container { --accent: #2f5d8a; --accent-soft: #e8f0f8; --cited: #1f7a4d; --muted: #5f6b7a;
  --line: #d9dee5; --mark: #fff1a8; --danger: #b42318; }
.gradio-container { max-width: 1200px !important; margin: 0 auto !important;
  --color-accent: var(--accent); --color-accent-soft: var(--accent-soft);
  --button-primary-background-fill: var(--accent); --button-primary-background-fill-hover: #244a6f;
  --button-primary-border-color: var(--accent); --button-primary-text-color: white;
  --checkbox-background-color-selected: var(--accent); --checkbox-border-color-selected: var(--accent);
  --slider-color: var(--accent); --loader-color: var(--accent); --link-text-color: var(--accent); }
.gradio-container, .gradio-container * { box-sizing: border-box; }
#owner, .bridge { display: none !important; }
#message:empty, #upload-status:empty, #library-message:empty { display: none; }
#message { color: var(--danger); }
#hint { color: var(--muted); font-size: 0.8rem; margin-top: -6px; }
#models { color: var(--muted); font-size: 0.85rem; }
#models .model { font-family: ui-monospace, monospace; color: #1d2733; cursor: help;
  border-bottom: 1px dotted var(--muted); }
#sidebar { border-right: 1px solid var(--line); padding-right: 8px; }
#chats label { width: 100%; }
#chatbot { padding: 6px; overflow-x: hidden; }
.chat-empty { color: var(--muted); padding: 24px 8px; }
.chat-empty h3 { color: #1d2733; margin: 0 0 10px; font-size: 1.1rem; }
.examples { display: flex; flex-wrap: wrap; gap: 8px; }
.example { border: 1px solid var(--line); background: white; border-radius: 16px; padding: 6px 12px;
  cursor: pointer; color: var(--accent); font-size: 0.9rem; text-align: left; }
.example:hover { background: var(--accent-soft); }
.turn { margin-bottom: 18px; }
.q { background: var(--accent-soft); border-radius: 12px; padding: 8px 12px; margin: 0 0 8px auto;
  width: fit-content; max-width: 85%; white-space: pre-wrap; overflow-wrap: anywhere; }
.a { border: 1px solid var(--line); border-radius: 12px; padding: 10px 12px; background: white; }
.a .text { white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.5; }
.a .text.composed { white-space: normal; }
.a .text.composed p { white-space: pre-wrap; margin: 0 0 8px; }
.a .text.composed > :last-child { margin-bottom: 0; }
.a .text.composed ul, .a .text.composed ol { margin: 4px 0 8px; padding-left: 1.3rem; }
.a .text.composed li { white-space: pre-wrap; margin: 2px 0; }
.a .text.composed .side-label { font-weight: 700; }
.a .text.composed .table-wrap { overflow-x: auto; max-width: 100%; margin: 4px 0 8px; }
.a .text.composed table { border-collapse: collapse; font-size: 0.9rem; }
.a .text.composed th, .a .text.composed td { border: 1px solid var(--line); padding: 3px 8px; text-align: left;
  vertical-align: top; overflow-wrap: anywhere; }
.a .text.composed th { background: #f7f9fb; font-weight: 600; }
.a .note { color: var(--muted); font-style: italic; margin-top: 6px; }
.a .timing { color: var(--muted); font-size: 0.75rem; }
.actions { display: flex; gap: 6px; align-items: center; margin-top: 6px; flex-wrap: wrap; }
.actions button, .open-file, .open-page { border: 1px solid var(--line); background: white; border-radius: 6px;
  padding: 2px 8px; font-size: 0.78rem; cursor: pointer; color: #1d2733; }
.actions button:hover, .open-file:hover, .open-page:hover { background: var(--accent-soft); }
#chatbot button, #library button { font-family: inherit; line-height: 1.4; min-width: 0; box-shadow: none; }
.cite { display: inline-block !important; border: none !important; background: var(--accent) !important;
  color: white !important; border-radius: 8px !important; padding: 0 6px !important; margin: 0 2px !important;
  min-width: 1.3rem !important; height: auto !important; font-size: 0.72rem !important; font-weight: 600;
  line-height: 1.15rem !important; text-align: center; cursor: pointer; vertical-align: 1px; }
.cite:hover { filter: brightness(1.2); }
.sources { margin-top: 8px; border-top: 1px solid var(--line); padding-top: 6px; font-size: 0.85rem; }
.sources .title { color: var(--muted); font-size: 0.75rem; text-transform: uppercase; letter-spacing: .04em; }
details.source { border-radius: 6px; margin: 2px 0; }
details.source > summary { cursor: pointer; list-style: none; padding: 2px 4px; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
details.source > summary::-webkit-details-marker { display: none; }
details.source[open] { background: #f7f9fb; border: 1px solid var(--line); }
details.source.flash { outline: 2px solid var(--accent); }
.num { font-weight: 600; color: var(--accent); }
.badge { font-size: 0.7rem; border-radius: 8px; padding: 0 6px; margin-left: 4px; }
.badge.cited { background: #e3f4ea; color: var(--cited); }
.badge.uncited { background: #eef0f3; color: var(--muted); }
.passage { white-space: pre-wrap; overflow-wrap: anywhere; padding: 6px 8px; line-height: 1.45; }
.passage mark { background: var(--mark); padding: 0 1px; }
details.source[data-focus] .passage mark:not(.on) { background: transparent; padding: 0; }
.passage mark.on { box-shadow: 0 0 0 1px #e0c54a; }
.page-view { margin: 0 8px 8px; border-top: 1px dashed var(--line); padding-top: 6px; }
.page-head { color: var(--muted); font-size: 0.75rem; text-transform: uppercase; letter-spacing: .04em; }
.page-text { white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.45; max-height: 50vh; overflow-y: auto;
  background: white; border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; margin-top: 4px; }
.page-text mark { background: var(--mark); padding: 0 1px; }
details.source[data-focus] .page-text mark:not(.on) { background: transparent; padding: 0; }
.page-text mark.on { box-shadow: 0 0 0 1px #e0c54a; }
.page-missing { color: var(--danger); }
.passage .table-wrap, .page-text .table-wrap { overflow-x: auto; max-width: 100%; margin: 6px 0; }
.passage table, .page-text table { border-collapse: collapse; font-size: 0.85rem; background: white; }
.passage th, .passage td, .page-text th, .page-text td { border: 1px solid var(--line); padding: 2px 8px;
  text-align: left; vertical-align: top; white-space: pre-wrap; overflow-wrap: break-word; }
.passage th, .page-text th { background: #eef2f6; font-weight: 600; }
.passage .al-r, .page-text .al-r { text-align: right; }
.passage .al-c, .page-text .al-c { text-align: center; }
.source-meta { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; padding: 0 8px 6px;
  color: var(--muted); font-size: 0.78rem; }
details.scores > summary { cursor: pointer; }
#library table { width: 100%; border-collapse: collapse; table-layout: fixed; font-size: 0.85rem; }
#library th, #library td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left;
  overflow-wrap: anywhere; vertical-align: top; }
#library th { color: var(--muted); font-weight: 600; }
#library .state-indexed { color: var(--cited); }
#library .state-skipped, #library .state-excluded { color: var(--danger); }
#library button { border: 1px solid var(--line); background: white; border-radius: 6px; padding: 1px 8px;
  cursor: pointer; font-size: 0.78rem; }
.upload-result.ok { color: var(--cited); }
.upload-result.rejected { color: var(--danger); font-weight: 600; }
@media (max-width: 700px) {
  .gradio-container .row { flex-wrap: wrap !important; }
  .gradio-container .row > .column, .gradio-container .row > .block { min-width: 100% !important;
    max-width: 100% !important; }
  .gradio-container .column, .gradio-container .block, .gradio-container .form { min-width: 0 !important; }
  details.source > summary { white-space: normal; }
  .gradio-container .row > button { min-width: 40% !important; }
  #sidebar { border-right: none; padding-right: 0; }
  #models .model { overflow-wrap: anywhere; }
  .q { max-width: 100%; }
  #library th.col-date, #library td.col-date, #library th.col-size, #library td.col-size { display: none; }
  .gradio-container { padding: 4px !important; }
}
"""

# Runs once when the chat view mounts: clicks inside the chat and the library, and the Enter key.
PAGE_JS = r"""
const root = document;
if (!window.__assistantPage) {
  window.__assistantPage = true;
  root.addEventListener('keydown', (e) => {
    const box = e.target;
    if (e.key !== 'Enter' || !box || !box.closest || !box.closest('#question')) return;
    if (e.isComposing) return;
    e.stopPropagation();                 // Gradio's own handler would send on Shift+Enter
    if (e.shiftKey) return;              // Shift+Enter: the browser adds the new line
    e.preventDefault();
    const send = document.querySelector('#send');
    if (send) setTimeout(() => send.click(), 0);
  }, true);
  root.addEventListener('keypress', (e) => {  // Gradio submits on Shift+Enter in keypress: keep it away
    if (e.key === 'Enter' && e.target && e.target.closest && e.target.closest('#question')) e.stopPropagation();
  }, true);
}
// A chip naming a sentence (data-s) shows only that sentence's supporting words highlighted in its source;
// a chip without one (an answer saved before composed answers) shows every mark.
function focusSentence(src, sentence) {
  const marks = src.querySelectorAll('.passage mark, .page-text mark');
  let first = null;
  if (sentence === undefined || sentence === '') {
    delete src.dataset.focus;
    marks.forEach((m) => m.classList.remove('on'));
    return null;
  }
  src.dataset.focus = sentence;
  marks.forEach((m) => {
    const on = (m.dataset.s || '').split(' ').includes(sentence);
    m.classList.toggle('on', on);
    if (on && !first) first = m;
  });
  return first;
}
element.addEventListener('click', (e) => {
  const chip = e.target.closest('.cite');
  if (chip) {
    e.preventDefault();
    const src = element.querySelector('#src-' + chip.dataset.turn + '-' + chip.dataset.n);
    if (src) {
      const mark = focusSentence(src, chip.dataset.s);
      src.open = true;
      src.classList.add('flash');
      setTimeout(() => src.classList.remove('flash'), 1500);
      src.scrollIntoView({block: 'nearest'});
      if (mark) mark.scrollIntoView({block: 'nearest'});
    }
    return;
  }
  const pageButton = e.target.closest('.open-page');
  if (pageButton) {
    e.preventDefault();
    openPage(pageButton);
    return;
  }
  const copy = e.target.closest('.copy');
  if (copy) {
    const text = copy.dataset.text || '';
    const done = () => { copy.textContent = 'Copied ✓'; setTimeout(() => copy.textContent = 'Copy', 2000); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => { fallbackCopy(text); done(); });
    } else { fallbackCopy(text); done(); }
    return;
  }
  const action = e.target.closest('[data-action]');
  if (action) {
    e.preventDefault();
    trigger('select', {index: action.dataset.action, value: action.dataset.arg || ''});
  }
});
// "Open page N": the page's whole text from the server (`server.open_page`, HTML the server escaped), shown
// under the source with the source's marked words marked; a second click hides it.
async function openPage(button) {
  const src = button.closest('details.source');
  const panel = src && src.querySelector('.page-view');
  if (!panel) return;
  const label = 'page ' + button.dataset.page;
  if (panel.dataset.open === '1') {
    panel.dataset.open = '';
    panel.hidden = true;
    button.textContent = 'Open ' + label;
    return;
  }
  if (typeof server === 'undefined' || !server || typeof server.open_page !== 'function') return;
  let marks = [];
  try { marks = JSON.parse(button.dataset.marks || '[]'); } catch (err) { marks = []; }
  const passage = src.querySelector('.passage');
  panel.dataset.open = '1';
  panel.hidden = false;
  panel.textContent = 'Opening ' + label + '…';
  button.textContent = 'Hide ' + label;
  let html = null;
  try {
    html = await server.open_page({path: button.dataset.path || '', page: Number(button.dataset.page),
                                   passage: passage ? (passage.dataset.text ?? passage.textContent) : '',
                                   marks: marks});
  } catch (err) { html = null; }
  if (panel.dataset.open !== '1') return;
  if (typeof html === 'string') panel.innerHTML = html;
  else panel.textContent = 'The page could not be opened.';
  focusSentence(src, src.dataset.focus);
  const mark = panel.querySelector('mark.on') || panel.querySelector('mark');
  if (mark) mark.scrollIntoView({block: 'nearest'});
}
function fallbackCopy(text) {
  const area = document.createElement('textarea');
  area.value = text; document.body.appendChild(area); area.select();
  try { document.execCommand('copy'); } catch (err) {}
  area.remove();
}
"""


# ---------------------------------------------------------------------- rendering (pure, testable)
def esc(text: Any) -> str:
    """Text as inert HTML: markup escaped, and the characters of gr.HTML's template syntax too."""
    out = html.escape(str(text if text is not None else ""), quote=True)
    return out.replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;").replace("`", "&#96;")


_MARKER = re.compile(r"\[(\d{1,3})\]")


class _Chips:
    """Turns the [n] markers of an answer into citation chips, counting them across the blocks of the answer
    so the k-th chip is tied to sentence k (when that sentence cites the same n)."""

    def __init__(self, turn: int, numbers: set[int], sentences: list[dict] | None = None) -> None:
        self.turn = turn
        self.numbers = numbers
        self.sentences = sentences or []
        self.count = 0

    def inline(self, text: str) -> str:
        """`text` escaped, each marker naming a source a chip."""
        out, last = [], 0
        for match in _MARKER.finditer(text):
            n = int(match.group(1))
            if n not in self.numbers:
                continue
            k = self.count
            self.count += 1
            tie = ""
            if k < len(self.sentences) and self.sentences[k]["passage"] == n:
                tie = f' data-s="{k}"'
            out.append(esc(text[last:match.start()]))
            out.append(f'<button class="cite" data-turn="{self.turn}" data-n="{n}"{tie} '
                       f'title="open source [{n}]">{n}</button>')
            last = match.end()
        out.append(esc(text[last:]))
        return "".join(out)


def render_answer_text(text: str, turn: int, numbers: set[int], sentences: list[dict] | None = None) -> str:
    """The answer as HTML: escaped, with each [n] naming a source turned into a clickable chip (tied to its
    sentence by data-s when `sentences`, the turn's sentence dicts, are given)."""
    return _Chips(turn, numbers, sentences).inline(text)


_SEPARATOR_CELL = re.compile(r":?-+:?")
_BULLET = re.compile(r"^\s*[-*•]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*(\d{1,3})[.)]\s+(.*)$")
_SIDE_LABEL = re.compile(r"^\*\*([^*\n]{1,120}?)\*\*[ \t]*")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _table_row(line: str) -> list[str]:
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(body)]


def _is_table_start(lines: list[str], i: int) -> bool:
    """Whether line i starts a pipe table: a `| a | b |` row followed by a `|---|:---:|` separator row."""
    if not lines[i].lstrip().startswith("|") or i + 1 >= len(lines) or "-" not in lines[i + 1]:
        return False
    return all(_SEPARATOR_CELL.fullmatch(cell) for cell in _table_row(lines[i + 1]))


def _render_table(rows: list[str], chips: _Chips) -> str:
    header, body = _table_row(rows[0]), [_table_row(r) for r in rows[2:]]
    head = "".join(f"<th>{chips.inline(cell)}</th>" for cell in header)
    lines = "".join("<tr>" + "".join(f"<td>{chips.inline(cell)}</td>" for cell in row) + "</tr>" for row in body)
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table></div>'


def _render_paragraph(lines: list[str], chips: _Chips) -> str:
    text = "\n".join(lines)
    label = _SIDE_LABEL.match(text)
    if label:
        rest = text[label.end():]
        return (f'<p class="side"><strong class="side-label">{esc(label.group(1))}</strong> '
                f"{chips.inline(rest)}</p>")
    return f"<p>{chips.inline(text)}</p>"


def is_structured(text: str, layout: str) -> bool:
    """Whether an answer renders as blocks (a list, labelled sides, a table) rather than as plain text."""
    if layout in ("bullets", "sides"):
        return True
    lines = text.split("\n")
    return any(_is_table_start(lines, i) for i in range(len(lines)))


def render_answer_blocks(text: str, turn: int, numbers: set[int], sentences: list[dict] | None = None,
                         layout: str = "bullets") -> str:
    """A composed answer as HTML blocks: `- item` lines as a <ul> (and in a bullets answer `1. step` lines as
    an <ol>), `**Label:** ...` paragraphs as labelled sides, Markdown pipe tables as a <table>, other lines as
    paragraphs. Everything escaped; the markers are chips, counted in text order so chip k is tied to
    sentence k."""
    chips = _Chips(turn, numbers, sentences)
    lines = text.split("\n")
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    list_tag = "ul"
    list_start = 1

    def flush() -> None:
        if paragraph:
            out.append(_render_paragraph(paragraph, chips))
            paragraph.clear()
        if items:
            start = f' start="{list_start}"' if list_tag == "ol" and list_start != 1 else ""
            out.append(f"<{list_tag}{start}>" + "".join(f"<li>{chips.inline(item)}</li>" for item in items)
                       + f"</{list_tag}>")
            items.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        bullet = _BULLET.match(line)
        numbered = _NUMBERED.match(line) if layout == "bullets" and not bullet else None
        if not line.strip():
            flush()
            i += 1
        elif _is_table_start(lines, i):
            flush()
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            out.append(_render_table(lines[i:j], chips))
            i = j
        elif bullet or numbered:
            tag = "ul" if bullet else "ol"
            if paragraph or (items and tag != list_tag):
                flush()
            if not items:
                list_tag, list_start = tag, int(numbered.group(1)) if numbered else 1
            items.append(bullet.group(1) if bullet else numbered.group(2))
            i += 1
        else:
            if items:
                flush()
            paragraph.append(line)
            i += 1
    flush()
    return "".join(out)


def _spans(highlights: list | None, sentence_spans: list | None, length: int) -> list[tuple[int, int, int | None]]:
    spans = []
    for s, e in highlights or []:
        spans.append((int(s), int(e), None))
    for s, e, k in sentence_spans or []:
        spans.append((int(s), int(e), int(k)))
    return [(max(0, s), min(length, e), k) for s, e, k in spans if min(length, e) > max(0, s)]


def _marked(text: str, spans: list[tuple[int, int, int | None]], start: int, end: int, cell: bool = False) -> str:
    """`text[start:end]` escaped, the parts of it that `spans` cover (offsets into the whole `text`) as marks;
    a stretch covered by sentence spans names them all (data-s="0 2"). `cell`: a table cell's text, whose
    escaped pipes (`\\|`) show as `|`."""

    def piece(a: int, b: int) -> str:
        raw = text[a:b]
        return esc(raw.replace("\\|", "|") if cell else raw)

    inside = [(max(s, start), min(e, end), k) for s, e, k in spans if min(e, end) > max(s, start)] if spans else []
    if not inside:
        return piece(start, end)
    cuts = sorted({start, end, *(s for s, _, _ in inside), *(e for _, e, _ in inside)})
    out: list[str] = []
    pending_key: tuple[bool, tuple[int, ...]] | None = None
    pending_start = start

    def emit(a: int, b: int, key: tuple[bool, tuple[int, ...]] | None) -> None:
        if a >= b:
            return
        if key is None:
            out.append(piece(a, b))
            return
        tag = f' data-s="{" ".join(str(k) for k in key[1])}"' if key[1] else ""
        out.append(f"<mark{tag}>{piece(a, b)}</mark>")

    for a, b in zip(cuts, cuts[1:]):
        covering = [k for s, e, k in inside if s <= a and b <= e]
        key = (True, tuple(sorted({k for k in covering if k is not None}))) if covering else None
        if key != pending_key:
            emit(pending_start, a, pending_key)
            pending_key, pending_start = key, a
    emit(pending_start, end, pending_key)
    return "".join(out)


def _alignments(text: str, block: PipeTableBlock) -> list[str]:
    """Each column's alignment class from the separator line (`:--` left, `:-:` centre, `--:` right), "" for
    the default."""
    out = []
    for a, b in split_row(text, *block.separator):
        cell = text[a:b]
        right, left = cell.endswith(":"), cell.startswith(":")
        out.append(' class="al-c"' if left and right else ' class="al-r"' if right else "")
    return out


def _passage_table(text: str, block: PipeTableBlock, spans: list[tuple[int, int, int | None]]) -> str:
    """One pipe table of a passage as an HTML table: the header line's cells as <th>, one <tr> of <td> per body
    line (a short row padded with empty cells), each cell's marked words marked in that cell."""
    header = split_row(text, *block.header)
    align = _alignments(text, block)
    width = len(header)

    def cells(row: list[tuple[int, int]], tag: str) -> str:
        parts = [f"<{tag}{align[i] if i < len(align) else ''}>{_marked(text, spans, a, b, cell=True)}</{tag}>"
                 for i, (a, b) in enumerate(row)]
        parts.extend(f"<{tag}></{tag}>" for _ in range(width - len(row)))
        return "<tr>" + "".join(parts) + "</tr>"

    body = "".join(cells(split_row(text, a, b), "td") for a, b in block.rows)
    return (f'<div class="table-wrap"><table><thead>{cells(header, "th")}</thead>'
            f"<tbody>{body}</tbody></table></div>")


def _table_edges(text: str, start: int, end: int) -> tuple[int, int]:
    """The stretch of `text` a table at [start, end) takes over with the blank lines around it: back over the
    whitespace before it (when that holds a line break) and on over the whitespace after it up to its last line
    break, so the prose on either side keeps its own indentation and the table's margins replace the blank
    lines."""
    before = start
    while before > 0 and text[before - 1] in " \t\r\n":
        before -= 1
    if "\n" not in text[before:start]:
        before = start
    after = end
    while after < len(text) and text[after] in " \t\r\n":
        after += 1
    if after < len(text):
        after = text.rfind("\n", end, after) + 1 or end
    return before, after


def render_passage(text: str, highlights: list | None = None, sentence_spans: list | None = None) -> str:
    """A passage (or a page's text) as HTML with spans marked: `highlights` are [(start, end)] offsets into
    `text`; each of `sentence_spans` [(start, end, k)] is the supporting words of sentence k, its mark tagged
    data-s="k" (a stretch supporting several sentences names them all: data-s="0 2").

    Markdown pipe tables in the text (`retrieval.pipe_tables.find_pipe_tables`) show as HTML tables, their
    header line as <th> cells; a span over table cells is marked in each cell it covers (a span from prose
    into a table is marked in both). The rest of the text shows as written (the page's CSS keeps its line
    breaks), minus the blank lines on either side of a table."""
    spans = _spans(highlights, sentence_spans, len(text))
    if "|" not in text:
        return _marked(text, spans, 0, len(text))
    return _render_with_tables(text, tuple(spans))


@functools.lru_cache(maxsize=256)
def _render_with_tables(text: str, spans: tuple[tuple[int, int, int | None], ...]) -> str:
    """`render_passage` of a text that may hold tables; cached, as the chat is rendered again on every update
    with the same passages (a 60-row table takes a few ms)."""
    tables = find_pipe_tables(text)
    if not tables:
        return _marked(text, list(spans), 0, len(text))
    out: list[str] = []
    pos = 0
    for block in tables:
        before, after = _table_edges(text, block.start, block.end)
        out.append(_marked(text, list(spans), pos, max(pos, before)))
        inside = [(a, b, k) for a, b, k in spans if a < block.end and b > block.start]
        out.append(_passage_table(text, block, inside))
        pos = after
    out.append(_marked(text, list(spans), pos, len(text)))
    return "".join(out)


def has_table(text: str) -> bool:
    """Whether `render_passage` shows part of `text` as a table (so the HTML's text is not `text` itself)."""
    return "|" in text and bool(find_pipe_tables(text))


def source_label(view: dict) -> str:
    """`file › heading, p. n` for a stored source view."""
    label = str(view.get("path", ""))
    if view.get("heading"):
        label += f" › {view['heading']}"
    page = view_page(view)
    if page:
        label += f", {page_label(page)}"
    return label


def view_page(view: dict) -> int | None:
    """The page of a stored source view as a positive int, or None (no page, or a damaged save)."""
    try:
        page = int(view.get("page") or 0)
    except (TypeError, ValueError):
        return None
    return page if page > 0 else None


def _page_marks(view: dict, sentence_spans: list | None) -> list[list[int | None]]:
    """The marks a source shows, as [start, end, sentence] (sentence None for an evidence highlight), for the
    page panel to place in the page's text."""
    if sentence_spans:
        return [[int(s), int(e), int(k)] for s, e, k in sentence_spans]
    out: list[list[int | None]] = []
    for item in view.get("highlights") or []:
        try:
            out.append([int(item[0]), int(item[1]), None])
        except (TypeError, ValueError, IndexError):
            continue
    return out


def render_source(turn: int, view: dict, sentence_spans: list | None = None) -> str:
    """One source: a one-line summary that opens to the whole passage, its place, scores behind a toggle.

    With `sentence_spans` ([(start, end, k)] for the composed answer's sentences citing this source) the
    passage marks those, tagged by sentence; otherwise it marks the view's own `highlights` (the evidence)."""
    n = int(view["number"])
    cited = bool(view.get("cited"))
    badge = '<span class="badge cited">cited</span>' if cited else '<span class="badge uncited">not cited</span>'
    scores = [f"retrieval score {float(view.get('score', 0.0)):.3f}"]
    if view.get("dense_score") is not None:
        scores.append(f"similarity {float(view['dense_score']):.2f}")
    opener = ""
    if view.get("openable"):
        opener = (f'<button class="open-file" data-action="open" data-arg="{esc(view["path"])}">'
                  "Open file</button>")
    page_no = view_page(view)
    page = f" · {page_label(page_no)}" if page_no else ""
    page_button = panel = ""
    if page_no and view.get("openable"):
        marks = json.dumps(_page_marks(view, sentence_spans), separators=(",", ":"))
        page_button = (f'<button class="open-page" data-path="{esc(view["path"])}" data-page="{page_no}" '
                       f'data-marks="{esc(marks)}" title="show the whole page">Open page {page_no}</button>')
        panel = '<div class="page-view" hidden></div>'

    heading = f" · {esc(view['heading'])}" if view.get("heading") else ""
    text = view.get("text") or view.get("snippet", "")
    passage = (render_passage(text, None, sentence_spans) if sentence_spans
               else render_passage(text, view.get("highlights")))
    # The page panel places the marks by the passage's own text; a table shows without its pipes, so a passage
    # with a table carries its text for the page script (`openPage`).
    raw = f' data-text="{esc(text)}"' if page_button and has_table(text) else ""
    return (
        f'<details class="source{" cited" if cited else ""}" id="src-{turn}-{n}" data-n="{n}">'
        f'<summary><span class="num">[{n}]</span> {esc(source_label(view))} {badge}</summary>'
        f'<div class="passage"{raw}>{passage}</div>'
        f'<div class="source-meta"><span>{esc(view.get("path", ""))}{heading}{page}</span>{opener}{page_button}'
        f'<details class="scores"><summary>details</summary>{" · ".join(scores)}</details></div>'
        f"{panel}</details>"
    )


def render_page(view: PageView | None, path: str, page: int) -> str:
    """The page panel of a source: page `page` of `path` with the source's marked words marked in it (each
    mark tagged with its sentence, as in the passage), or a message when the page cannot be shown."""
    if view is None:
        return (f'<div class="page-missing">⚠ Page {int(page)} of {esc(path)} cannot be shown: pages are shown only '
                "for indexed files inside the documents folder or the uploads, and only pages the index holds.</div>")
    highlights = [(s, e) for s, e, k in view.marks if k is None]
    sentence_spans = [(s, e, k) for s, e, k in view.marks if k is not None]
    return (f'<div class="page-head">{esc(view.path)}, {page_label(view.page)}</div>'
            f'<div class="page-text">{render_passage(view.text, highlights, sentence_spans)}</div>')


def turn_sentences(turn: dict) -> list[dict]:
    """The turn's sentence dicts, checked: each with an int passage, start and end (a malformed entry, from a
    hand-edited or damaged save, becomes one without supporting words, so chip k still meets sentence k).
    Empty for a turn saved before composed answers."""
    out = []
    for item in turn.get("sentences") or []:
        try:
            passage = int(item["passage"])
        except (TypeError, KeyError, ValueError):
            passage = -1
        try:
            start, end = int(item.get("start", 0)), int(item.get("end", 0))
        except (TypeError, AttributeError, ValueError):
            start = end = 0
        text = item.get("text", "") if isinstance(item, dict) else ""
        out.append({"passage": passage, "start": start, "end": end, "text": str(text or "")})
    return out


def render_turn(index: int, turn: dict) -> str:
    """A question, its answer (chips, copy and regenerate buttons, timings) and its sources."""
    sources = sorted(turn.get("sources") or [], key=lambda s: int(s["number"]))
    numbers = {int(s["number"]) for s in sources}
    answer = turn.get("answer", "")
    sentences = turn_sentences(turn)
    layout = str(turn.get("layout") or "text")
    structured = bool(answer) and "layout" in turn and not turn.get("pending") and is_structured(answer, layout)
    if not answer:
        body = "…" if turn.get("pending") else ""
    elif structured:
        body = render_answer_blocks(answer, index, numbers, sentences, layout)
    else:
        body = render_answer_text(answer, index, numbers, sentences)
    css = "text composed" if structured else "text"
    parts = [f'<div class="turn" id="turn-{index}"><div class="q">{esc(turn.get("question", ""))}</div>',
             f'<div class="a"><div class="{css}" id="answer-{index}" data-layout="{esc(layout)}">{body}</div>']
    if turn.get("note"):
        parts.append(f'<div class="note">{esc(turn["note"])}</div>')
    if turn.get("pending") and turn.get("draft"):
        parts.append('<div class="note draft">Quoted from the source; checking a fuller wording…</div>')
    if not turn.get("pending"):
        parts.append(
            '<div class="actions">'
            f'<button class="copy" data-text="{esc(answer)}" title="copy the answer">Copy</button>'
            f'<button class="regenerate" data-action="regenerate" data-arg="{index}" '
            'title="ask again for a new answer">Regenerate</button>'
            f'<span class="timing">{esc(turn.get("timing", ""))}</span></div>')
    if sources:
        marks: dict[int, list[tuple[int, int, int]]] = {}
        for k, sentence in enumerate(sentences):
            if sentence["end"] > sentence["start"]:
                marks.setdefault(sentence["passage"], []).append((sentence["start"], sentence["end"], k))
        title = "Nearest passages (not used)" if turn.get("refused") else "Sources"
        parts.append(f'<div class="sources"><div class="title">{title}</div>'
                     + "".join(render_source(index, s, marks.get(int(s["number"]))) for s in sources) + "</div>")
    parts.append("</div></div>")
    return "".join(parts)


def render_chat(turns: list[dict], examples: list[str] | None = None) -> str:
    """The whole chat view; an empty chat offers example questions."""
    if not turns:
        buttons = "".join(f'<button class="example" data-action="ask" data-arg="{esc(q)}">{esc(q)}</button>'
                          for q in examples or [])
        intro = "Try one of these, drawn from your documents:" if examples else ""
        return (f'<div class="chat-empty"><h3>Ask a question about your documents</h3><p>{intro}</p>'
                f'<div class="examples">{buttons}</div></div>')
    return "".join(render_turn(i, t) for i, t in enumerate(turns))


def evidence_highlights(answer: Any) -> dict[int, list[tuple[int, int]]]:
    """{passage number: [(start, end)]}: where the answer's evidence (assistant.evidence.Evidence) stands in
    each source's text, for the highlight."""
    out: dict[int, list[tuple[int, int]]] = {}
    for item in getattr(answer, "evidence", None) or []:
        # An answer built on the whole sentence ("why" questions, a lone-letter span) highlights the sentence.
        bounds = (item.sentence_start, item.sentence_end) if item.kind == "sentence" else (item.start, item.end)
        out.setdefault(int(item.passage), []).append((int(bounds[0]), int(bounds[1])))
    return out


def source_view(source: Source, highlights: list | None = None, openable: bool = False) -> dict:
    """What a turn keeps of a source (JSON-friendly, saved with the conversation)."""
    return {"number": source.number, "path": source.path, "heading": source.heading, "page": source.page,
            "text": source.text or source.snippet, "score": source.score, "dense_score": source.dense_score,
            "cited": source.cited, "highlights": [list(h) for h in highlights or []], "openable": openable}


def sentence_views(answer: Answer) -> list[dict]:
    """What a turn keeps of a composed answer's sentences (JSON-friendly): each sentence's text, the passage it
    cites and the offsets of its supporting words in that passage, its role and its comparison side."""
    return [{"text": s.text, "passage": int(s.passage), "start": int(s.start), "end": int(s.end),
             "role": s.role, "group": s.group} for s in getattr(answer, "sentences", None) or []]


def turn_from_answer(question: str, answer: Answer, openable: Any = None) -> dict:
    """A finished conversation turn: the answer's text and all its sources (on a refusal the nearest
    passages, none cited), and for a composed answer its layout, kind and sentences (each with its supporting
    words). `openable(path) -> bool` says whether a source's file may be opened."""
    note = ""
    if answer.refused and answer.finish_reason == "refused":
        note = "No passage in your documents is close enough to this question; the nearest ones are below."
    elif answer.finish_reason == "cancelled":
        note = "(stopped)"
    marks = evidence_highlights(answer)
    sources = [source_view(s, marks.get(s.number), bool(openable and openable(s.path)))
               for s in sorted(answer.sources, key=lambda s: s.number)]
    layout = answer.layout if answer.layout in LAYOUTS else "text"
    return {"question": question, "answer": answer.text, "sources": sources, "note": note,
            "timing": format_timings(answer), "refused": bool(answer.refused and answer.finish_reason == "refused"),
            "layout": layout, "kind": answer.kind, "sentences": sentence_views(answer)}


def format_timings(answer: Answer) -> str:
    """`retrieval 31 ms · first token 4.2 s · 9.8 tokens/s · total 8.1 s` (parts that apply)."""
    t = answer.timings
    parts = [f"retrieval {t.retrieval_ms:.0f} ms"]
    if answer.finish_reason != "refused" and t.time_to_first_token_ms is not None:
        parts.append(f"first token {t.time_to_first_token_ms / 1000:.1f} s")
    if t.tokens_per_s:
        parts.append(f"{t.tokens_per_s:.1f} tokens/s")
    parts.append(f"total {t.total_ms / 1000:.1f} s")
    return " · ".join(parts)


def short_model_name(identity: str) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf@sha256:b179…+adapter:adapter+int4` -> `SmolLM2-135M-Instruct.Q4_1`,
    `sentence-transformers/all-MiniLM-L6-v2` -> `all-MiniLM-L6-v2`."""
    name = re.split(r"[@+]", identity or "?", maxsplit=1)[0].rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"\.(gguf|safetensors)$", "", name, flags=re.IGNORECASE) or identity


def format_models(encoder: str, generator: str) -> str:
    """The models line: short names, the full ids on hover."""
    items = []
    for role, full in (("generator", generator), ("encoder", encoder)):
        if full:
            items.append(f'{role} <span class="model" title="{esc(full)}">{esc(short_model_name(full))}</span>')
    return " · ".join(items)


def format_status(stats: dict, generator_name: str = "") -> str:
    """HTML line about the open index (short model names, full ids on hover)."""
    files, chunks = stats.get("files", "?"), stats.get("chunks", "?")
    return (f"<b>Index:</b> {esc(files)} files, {esc(chunks)} passages · "
            + format_models(str(stats.get("encoder", "?")), generator_name))


def render_library(entries: list[LibraryEntry]) -> str:
    """The library table: state, passages, date, size, and a remove/restore button per file."""
    if not entries:
        return "<p>No files match.</p>"
    rows = []
    for e in entries:
        if e.state == "indexed":
            state = f"indexed · {e.chunks} passage{'s' if e.chunks != 1 else ''}"
            button = f'<button data-action="remove" data-arg="{esc(e.path)}">Remove</button>'
        elif e.state == "excluded":
            state = "excluded (removed by hand)"
            button = f'<button data-action="restore" data-arg="{esc(e.path)}">Restore</button>'
        else:
            state = f"skipped: {e.reason}"
            button = ""
        date = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified)) if e.modified else ""
        size = _size(e.size) if e.size else ""
        rows.append(f'<tr data-path="{esc(e.path)}" class="row-{e.state}"><td>{esc(e.path)}</td>'
                    f'<td class="state-{e.state}">{esc(state)}</td><td class="col-date">{date}</td>'
                    f'<td class="col-size">{size}</td><td>{button}</td></tr>')
    return ('<table><colgroup><col style="width:38%"><col style="width:27%"><col class="col-date" style="width:15%">'
            '<col class="col-size" style="width:9%"><col style="width:11%"></colgroup>'
            '<thead><tr><th>File</th><th>State</th><th class="col-date">Modified</th><th class="col-size">Size</th>'
            "<th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def render_upload_report(report: Any) -> str:
    """One line per uploaded file: indexed, or rejected with the reason."""
    lines = []
    done = [*report.added, *report.updated, *[new for new, _ in report.renamed],
            *[new for new, _ in report.duplicates], *report.unchanged]
    notes = dict(getattr(report, "notes", None) or ())
    for path in done:
        note = f" ({esc(notes[path])})" if path in notes else ""
        lines.append(f'<div class="upload-result ok">✓ {esc(path)}: indexed{note}</div>')
    for path, reason in report.skipped:
        lines.append(f'<div class="upload-result rejected">✗ {esc(path)}: rejected, {esc(reason)} '
                     "(nothing already indexed was changed)</div>")
    return "".join(lines) or "Nothing to index."
