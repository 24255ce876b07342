"""The Gradio chat (`assistant ui`): saved conversations, streamed answers with clickable citations and their
sources, a document library, uploads.

`build_app(assistant)` returns the Blocks (the HTTP server mounts it with `gradio.mount_gradio_app`; the
page's CSS and JavaScript travel inside the Blocks, so a mount needs no extra arguments; `APP_OPTIONS` has the
theme for `launch`/`mount_gradio_app` if wanted). The UI only talks to `assistant.pipeline.Assistant`,
`assistant.library.Library` and `assistant.conversations.ConversationStore`; it never touches models.

- Conversations: each browser keeps a random owner id in localStorage (#owner, filled on load); its chats are
  saved in `<index>.chats.sqlite3` after every answer and listed in the sidebar (new, rename, delete).
- The chat view (#chatbot) is HTML this module writes; every piece of text from a document or the model is
  escaped (`esc`), so a document holding `<script>` or `<img onerror=...>` shows as text. Its buttons
  (citation chips, copy, regenerate, example questions, open file) are handled by the page script: chips
  open a source in place; the others send a `select` event with {index: action, value: argument}.
- Enter sends, Shift+Enter adds a new line (the page script takes the key before Gradio's own handler).

Stable element ids (used by the browser tests): #chatbot, #question, #send, #stop, #new-chat, #chats,
#chat-title, #rename-chat, #delete-chat, #message, #owner, #models, #index-status, #source-file, #upload,
#upload-status, #library, #library-filter, #library-message, #resync, #resync-status, and the settings
#temperature, #top-k, #top-p, #min-p, #repetition-penalty, #max-new-tokens, #passages, #retrieval-mode.

(No `from __future__ import annotations` here: Gradio finds the `gr.Request` and `gr.SelectData`
parameters of a handler by their evaluated annotations.)
"""

import html
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assistant.answer import Answer, Source
from assistant.conversations import ConversationStore, default_path
from assistant.library import Library, LibraryEntry
from assistant.pipeline import Assistant
from assistant.settings import RETRIEVAL_MODES
from model.errors import UserError

log = logging.getLogger(__name__)

ENTER_HINT = "Enter to send · Shift+Enter for a new line"

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
.a .note { color: var(--muted); font-style: italic; margin-top: 6px; }
.a .timing { color: var(--muted); font-size: 0.75rem; }
.actions { display: flex; gap: 6px; align-items: center; margin-top: 6px; flex-wrap: wrap; }
.actions button, .open-file { border: 1px solid var(--line); background: white; border-radius: 6px;
  padding: 2px 8px; font-size: 0.78rem; cursor: pointer; color: #1d2733; }
.actions button:hover, .open-file:hover { background: var(--accent-soft); }
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
element.addEventListener('click', (e) => {
  const chip = e.target.closest('.cite');
  if (chip) {
    e.preventDefault();
    const src = element.querySelector('#src-' + chip.dataset.turn + '-' + chip.dataset.n);
    if (src) {
      src.open = true;
      src.classList.add('flash');
      setTimeout(() => src.classList.remove('flash'), 1500);
      src.scrollIntoView({block: 'nearest'});
    }
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
function fallbackCopy(text) {
  const area = document.createElement('textarea');
  area.value = text; document.body.appendChild(area); area.select();
  try { document.execCommand('copy'); } catch (err) {}
  area.remove();
}
"""

# Runs in the browser on page load: this browser's owner id for saved chats (kept in localStorage).
OWNER_JS = """
(owner) => {
  let id = null;
  try { id = localStorage.getItem('assistant-owner'); } catch (e) {}
  if (!id) {
    const bytes = new Uint8Array(16);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    id = Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
    try { localStorage.setItem('assistant-owner', id); } catch (e) {}
  }
  return id;
}
"""

APP_OPTIONS: dict[str, Any] = {}  # extra launch()/mount_gradio_app() arguments; the theme lives in CSS


# ---------------------------------------------------------------------- rendering (pure, testable)
def esc(text: Any) -> str:
    """Text as inert HTML: markup escaped, and the characters of gr.HTML's template syntax too."""
    out = html.escape(str(text if text is not None else ""), quote=True)
    return out.replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;").replace("`", "&#96;")


_MARKER = re.compile(r"\[(\d{1,3})\]")


def render_answer_text(text: str, turn: int, numbers: set[int]) -> str:
    """The answer as HTML: escaped, with each [n] naming a source turned into a clickable chip."""
    out, last = [], 0
    for match in _MARKER.finditer(text):
        n = int(match.group(1))
        if n not in numbers:
            continue
        out.append(esc(text[last:match.start()]))
        out.append(f'<button class="cite" data-turn="{turn}" data-n="{n}" title="open source [{n}]">{n}</button>')
        last = match.end()
    out.append(esc(text[last:]))
    return "".join(out)


def render_passage(text: str, highlights: list | None = None) -> str:
    """A passage as HTML, the character spans in `highlights` ([(start, end)] offsets into `text`) marked."""
    spans = sorted((max(0, int(s)), min(len(text), int(e))) for s, e in (highlights or []) if int(e) > int(s))
    out, pos = [], 0
    for start, end in spans:
        if start < pos:  # overlapping spans: mark the rest of this one only
            start = pos
        if start >= end:
            continue
        out += [esc(text[pos:start]), "<mark>", esc(text[start:end]), "</mark>"]
        pos = end
    out.append(esc(text[pos:]))
    return "".join(out)


def source_label(view: dict) -> str:
    """`file › heading, page n` for a stored source view."""
    label = str(view.get("path", ""))
    if view.get("heading"):
        label += f" › {view['heading']}"
    if view.get("page"):
        label += f", page {view['page']}"
    return label


def render_source(turn: int, view: dict) -> str:
    """One source: a one-line summary that opens to the whole passage, its place, scores behind a toggle."""
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
    page = f" · page {esc(view['page'])}" if view.get("page") else ""
    heading = f" · {esc(view['heading'])}" if view.get("heading") else ""
    return (
        f'<details class="source{" cited" if cited else ""}" id="src-{turn}-{n}" data-n="{n}">'
        f'<summary><span class="num">[{n}]</span> {esc(source_label(view))} {badge}</summary>'
        f'<div class="passage">{render_passage(view.get("text") or view.get("snippet", ""), view.get("highlights"))}</div>'
        f'<div class="source-meta"><span>{esc(view.get("path", ""))}{heading}{page}</span>{opener}'
        f'<details class="scores"><summary>details</summary>{" · ".join(scores)}</details></div>'
        "</details>"
    )


def render_turn(index: int, turn: dict) -> str:
    """A question, its answer (chips, copy and regenerate buttons, timings) and its sources."""
    sources = sorted(turn.get("sources") or [], key=lambda s: int(s["number"]))
    numbers = {int(s["number"]) for s in sources}
    answer = turn.get("answer", "")
    body = render_answer_text(answer, index, numbers) if answer else ("…" if turn.get("pending") else "")
    parts = [f'<div class="turn" id="turn-{index}"><div class="q">{esc(turn.get("question", ""))}</div>',
             f'<div class="a"><div class="text" id="answer-{index}">{body}</div>']
    if turn.get("note"):
        parts.append(f'<div class="note">{esc(turn["note"])}</div>')
    if not turn.get("pending"):
        parts.append(
            '<div class="actions">'
            f'<button class="copy" data-text="{esc(answer)}" title="copy the answer">Copy</button>'
            f'<button class="regenerate" data-action="regenerate" data-arg="{index}" '
            'title="ask again for a new answer">Regenerate</button>'
            f'<span class="timing">{esc(turn.get("timing", ""))}</span></div>')
    if sources:
        title = "Nearest passages (not used)" if turn.get("refused") else "Sources"
        parts.append(f'<div class="sources"><div class="title">{title}</div>'
                     + "".join(render_source(index, s) for s in sources) + "</div>")
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


def turn_from_answer(question: str, answer: Answer, openable: Any = None) -> dict:
    """A finished conversation turn: the answer's text and all its sources (on a refusal the nearest
    passages, none cited). `openable(path) -> bool` says whether a source's file may be opened."""
    note = ""
    if answer.refused and answer.finish_reason == "refused":
        note = "No passage in your documents is close enough to this question; the nearest ones are below."
    elif answer.finish_reason == "cancelled":
        note = "(stopped)"
    marks = evidence_highlights(answer)
    sources = [source_view(s, marks.get(s.number), bool(openable and openable(s.path)))
               for s in sorted(answer.sources, key=lambda s: s.number)]
    return {"question": question, "answer": answer.text, "sources": sources, "note": note,
            "timing": format_timings(answer), "refused": bool(answer.refused and answer.finish_reason == "refused")}


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


def history_for_model(turns: list[dict]) -> list[dict]:
    """Earlier turns as plain chat messages for the pipeline."""
    history = []
    for turn in turns:
        if turn.get("answer") and not turn.get("pending"):
            history += [{"role": "user", "content": turn["question"]},
                        {"role": "assistant", "content": turn["answer"]}]
    return history


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


# ---------------------------------------------------------------------- the app
class ChatApp:
    """Event handlers around one Assistant (kept apart from the layout so they can be tested directly)."""

    def __init__(self, assistant: Assistant, conversations: ConversationStore | None = None) -> None:
        self.assistant = assistant
        self.library = Library(assistant)
        self.conversations = conversations or ConversationStore(default_path(getattr(assistant, "index_path", None)))
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_lock = threading.Lock()
        self._examples: list[str] | None = None
        self._download_dir = Path(tempfile.mkdtemp(prefix="assistant-open-"))

    def cancel_event(self, session: str | None) -> threading.Event:
        """The cancel event of one browser tab."""
        with self._cancel_lock:
            return self._cancel.setdefault(session or "default", threading.Event())

    # ------------------------------------------------------------------ status
    def status(self) -> str:
        """HTML index status."""
        try:
            stats = self.assistant.stats()
        except Exception as exc:  # status must never break the page
            log.exception("index status failed")
            return f"<b>Index:</b> unavailable ({esc(exc)})"
        name = getattr(self.assistant.generator, "identity", "") or ""
        text = format_status(stats, name)
        skipped = self.library.counts()["skipped"] if getattr(self.assistant, "index_path", None) else 0
        if skipped:
            text += f" · {skipped} file{'s' if skipped != 1 else ''} skipped (see Library)"
        return text

    def examples(self, refresh: bool = False) -> list[str]:
        if self._examples is None or refresh:
            try:
                self._examples = self.library.example_questions()
            except Exception:  # examples are a nicety; never break the page
                log.exception("example questions failed")
                self._examples = []
        return self._examples

    def render(self, turns: list[dict]) -> str:
        return render_chat(turns, self.examples())

    # ------------------------------------------------------------------ answering
    def respond(self, question: str, turns: list[dict] | None, temperature: float, top_k: float, top_p: float,
                min_p: float, repetition_penalty: float, max_new_tokens: float, k: float, mode: str,
                session: str | None = None) -> Iterator[tuple[list[dict], str, str]]:
        """Stream one answer. Yields (turns, question box, error message); the last turn is the answer."""
        turns = list(turns or [])
        try:
            question = self.assistant.check_question(question or "")
        except UserError as exc:
            yield turns, question or "", f"⚠ {exc}"
            return
        cancel = self.cancel_event(session)
        cancel.clear()
        current = {"question": question, "answer": "", "sources": [], "pending": True}
        turns = turns + [current]
        yield turns, "", ""
        options = dict(
            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), min_p=float(min_p),
            repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
            k=int(k), retrieval_mode=mode,
        )
        try:
            for item in self.assistant.stream(question, history=history_for_model(turns[:-1]), cancel=cancel,
                                              **options):
                if isinstance(item, Answer):
                    turns[-1] = turn_from_answer(question, item, self._openable)
                else:
                    current["answer"] += item
                    yield turns, "", ""
        except UserError as exc:
            yield turns[:-1], question, f"⚠ {exc}"
            return
        except Exception as exc:  # a bug must not leave the tab hanging; say what happened
            log.exception("answering %r failed", question)
            yield turns[:-1], question, f"⚠ Something went wrong while answering: {exc}"
            return
        yield turns, "", ""

    def _openable(self, path: str) -> bool:
        try:
            return self.library.resolve_file(path) is not None
        except Exception:
            return False

    def ask(self, owner: str, chat_id: str, question: str, turns: list[dict] | None, options: list,
            session: str | None = None) -> Iterator[tuple[list[dict], str, str, str]]:
        """`respond`, saving the finished turn into the owner's chat (created at the first question).
        Yields (turns, question box, error, chat id)."""
        last = None
        for turns_now, box, error in self.respond(question, turns, *options, session=session):
            last = (turns_now, box, error)
            yield turns_now, box, error, chat_id
        if last is None or last[2] or not owner:
            return
        finished = last[0]
        try:
            if not chat_id or self.conversations.get(owner, chat_id) is None:
                chat_id = self.conversations.create(owner)
            self.conversations.save(owner, chat_id, finished)
        except UserError as exc:
            yield finished, "", f"⚠ The chat could not be saved: {exc}", chat_id
            return
        yield finished, "", "", chat_id

    def stop(self, session: str | None = None) -> None:
        """Stop the tab's running generation."""
        self.cancel_event(session).set()

    # ------------------------------------------------------------------ conversations
    def chat_choices(self, owner: str) -> list[tuple[str, str]]:
        if not owner:
            return []
        return [(c.title, c.id) for c in self.conversations.list(owner)]

    def open_chat(self, owner: str, chat_id: str | None) -> tuple[str, list[dict], str]:
        """(chat id, turns, title) of one of the owner's chats; the newest when chat_id is None; empty if none."""
        if not owner:
            return "", [], ""
        if chat_id is None:
            chats = self.conversations.list(owner)
            chat_id = chats[0].id if chats else ""
        chat = self.conversations.get(owner, chat_id) if chat_id else None
        return (chat.id, chat.turns, chat.title) if chat else ("", [], "")

    def rename_chat(self, owner: str, chat_id: str, title: str) -> str:
        if not chat_id:
            return "⚠ Ask a question first; a chat is saved with its first answer."
        return "" if self.conversations.rename(owner, chat_id, title) else "⚠ Type a new name for the chat."

    def delete_chat(self, owner: str, chat_id: str) -> None:
        if owner and chat_id:
            self.conversations.delete(owner, chat_id)

    # ------------------------------------------------------------------ files
    def open_file(self, path: str) -> str | None:
        """A copy of a source's file for the browser to open or download; None if it is not inside the
        indexed folder or the uploads (or not indexed)."""
        found = self.library.resolve_file(path)
        if found is None:
            return None
        target = Path(tempfile.mkdtemp(dir=self._download_dir)) / found.name
        shutil.copyfile(found, target)
        return str(target)

    # ------------------------------------------------------------------ library
    def library_view(self, contains: str = "") -> str:
        try:
            entries = self.library.entries(contains)
        except Exception as exc:
            log.exception("library listing failed")
            return f"<p>The library could not be read ({esc(exc)}).</p>"
        return render_library(entries)

    def library_action(self, action: str, path: str) -> str:
        """Remove or restore a file; returns the message to show."""
        try:
            if action == "remove":
                message = self.library.remove(path)
            elif action == "restore":
                message = self.library.restore(path)
            else:
                return f"⚠ unknown action {action!r}"
        except UserError as exc:
            return f"⚠ {exc}"
        self.examples(refresh=True)
        return message

    def resync(self, progress: Any = None) -> str:
        def on_progress(done: int, total: int) -> None:
            if progress is not None and total:
                progress((done, total), desc="Embedding passages", unit="passages")

        if progress is not None:
            progress(0.0, desc="Reading the folder")
        try:
            report = self.library.resync(on_progress)
        except UserError as exc:
            return f"⚠ {exc}"
        self.examples(refresh=True)
        return (f"Re-synced: {len(report.added)} added, {len(report.updated)} updated, {len(report.removed)} "
                f"removed, {len(report.unchanged)} unchanged, {len(report.skipped)} skipped, "
                f"{len(report.excluded)} excluded; {report.chunks_embedded} passages embedded in "
                f"{report.seconds:.1f} s.")

    def upload(self, files: Any, progress: Any = None) -> tuple[str, str]:
        """Index uploaded files into the current index. Returns (per-file report as HTML, index status)."""
        paths = [_file_path(f) for f in (files if isinstance(files, list) else [files]) if f]
        if not paths:
            return "", self.status()

        def on_progress(done: int, total: int) -> None:
            if progress is not None:
                progress((done, total), desc="Embedding passages", unit="passages")

        if progress is not None:
            progress(0.0, desc=f"Indexing {len(paths)} file(s)")
        try:
            report = self.assistant.add_files(paths, on_progress=on_progress)
        except UserError as exc:
            return (f'<div class="upload-result rejected">⚠ Could not index the upload: {esc(exc)}. '
                    "The index is unchanged.</div>"), self.status()
        except Exception as exc:  # the index is written atomically, so it is still the old one
            log.exception("indexing %s failed", paths)
            return (f'<div class="upload-result rejected">⚠ Could not index the upload ({esc(exc)}). '
                    "The index is unchanged.</div>"), self.status()
        self.examples(refresh=True)
        return render_upload_report(report), self.status()


def _file_path(item: Any) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict):
        return str(item.get("path") or item.get("name"))
    return str(getattr(item, "path", None) or getattr(item, "name"))


def build_app(assistant: Assistant, conversations: ConversationStore | None = None) -> Any:
    """The Gradio Blocks app for an assistant (CSS and page script included)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    app = ChatApp(assistant, conversations)
    s = assistant.settings
    folder = f" about <code>{esc(assistant.folder.name)}</code>" if assistant.folder else ""
    generator_id = getattr(assistant.generator, "identity", "") or ""

    with gr.Blocks(title="Assistant", analytics_enabled=False) as demo:
        gr.HTML(f"<style>{CSS}</style>", padding=False, elem_classes=["bridge"])
        owner = gr.Textbox("", elem_id="owner", visible="hidden", show_label=False, container=False)
        chat_id = gr.State("")
        turns = gr.State([])
        with gr.Row(equal_height=False):
            gr.HTML(f"<h2 style='margin:0'>Ask your documents{folder}</h2>", padding=False)
            gr.HTML(format_models(getattr(assistant.encoder, "name", "") or "", generator_id),
                    elem_id="models", padding=False)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat-tab"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=200, elem_id="sidebar"):
                        new_chat = gr.Button("+ New chat", elem_id="new-chat", size="sm", variant="primary")
                        chats = gr.Radio([], label="Chats", elem_id="chats", container=False)
                        with gr.Accordion("Rename or delete", open=False):
                            chat_title = gr.Textbox(label="Name", elem_id="chat-title", max_lines=1)
                            with gr.Row():
                                rename = gr.Button("Rename", elem_id="rename-chat", size="sm")
                                delete = gr.Button("Delete", elem_id="delete-chat", size="sm", variant="stop")
                    with gr.Column(scale=4, min_width=300):
                        chat_view = gr.HTML(app.render([]), elem_id="chatbot", js_on_load=PAGE_JS,
                                            autoscroll=True, padding=False, apply_default_css=False,
                                            min_height=420, max_height="68vh")
                        source_file = gr.File(label="Source file", elem_id="source-file", visible=False,
                                              interactive=False)
                        message = gr.Markdown("", elem_id="message")
                        question = gr.Textbox(elem_id="question", placeholder="Ask a question about your documents…",
                                              show_label=False, lines=2, max_lines=8, autofocus=True)
                        gr.HTML(f'<div id="hint">{ENTER_HINT}</div>', padding=False)
                        with gr.Row():
                            send = gr.Button("Send", variant="primary", elem_id="send", min_width=80)
                            stop = gr.Button("Stop", elem_id="stop", min_width=80)
                        with gr.Accordion("Settings", open=False):
                            temperature = gr.Slider(0.0, 2.0, value=s.temperature, step=0.05,
                                                    label="Temperature (0 = greedy)", elem_id="temperature")
                            top_k = gr.Slider(0, 200, value=s.top_k, step=1, label="Top-k (0 = off)", elem_id="top-k")
                            top_p = gr.Slider(0.05, 1.0, value=s.top_p, step=0.05, label="Top-p", elem_id="top-p")
                            min_p = gr.Slider(0.0, 0.5, value=s.min_p, step=0.01, label="Min-p", elem_id="min-p")
                            repetition_penalty = gr.Slider(1.0, 2.0, value=s.repetition_penalty, step=0.05,
                                                           label="Repetition penalty", elem_id="repetition-penalty")
                            max_new_tokens = gr.Slider(16, 1024, value=s.max_new_tokens, step=16,
                                                       label="Max new tokens", elem_id="max-new-tokens")
                            passages = gr.Slider(1, 10, value=s.k, step=1, label="Passages (k)", elem_id="passages")
                            mode = gr.Radio(list(RETRIEVAL_MODES), value=s.retrieval_mode, label="Retrieval",
                                            elem_id="retrieval-mode")
            with gr.Tab("Library", id="library-tab"):
                status = gr.HTML(app.status(), elem_id="index-status", padding=False)
                with gr.Row(equal_height=False):
                    library_filter = gr.Textbox(placeholder="Filter by name…", show_label=False,
                                                elem_id="library-filter", scale=3, min_width=160)
                    resync = gr.Button("Re-sync folder", elem_id="resync", scale=1, min_width=120)
                resync_status = gr.Markdown("", elem_id="resync-status")
                library_message = gr.Markdown("", elem_id="library-message")
                library = gr.HTML(app.library_view(), elem_id="library", js_on_load=PAGE_JS, padding=False,
                                  apply_default_css=False)
                upload = gr.File(label="Add documents (.md, .txt, .pdf, .docx, .html, code)", file_count="multiple",
                                 elem_id="upload")
                upload_status = gr.HTML("", elem_id="upload-status", padding=False)

        settings = [temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens, passages, mode]

        def chats_update(owner_id, selected):
            return gr.Radio(choices=app.chat_choices(owner_id), value=selected or None)

        def answer(owner_id, current_id, q, t, temp, tk, tp, mp, rp, mnt, k, m, request: gr.Request):
            options = [temp, tk, tp, mp, rp, mnt, k, m]
            for turns_now, box, error, new_id in app.ask(owner_id, current_id, q, t, options, _session(request)):
                yield (app.render(turns_now), box, turns_now, error, new_id, chats_update(owner_id, new_id),
                       gr.File(visible=False))

        chat_outputs = [chat_view, question, turns, message, chat_id, chats, source_file]

        def on_chat_action(owner_id, current_id, t, temp, tk, tp, mp, rp, mnt, k, m, evt: gr.SelectData,
                           request: gr.Request):
            action, arg = str(evt.index), str(evt.value or "")
            rest = (temp, tk, tp, mp, rp, mnt, k, m)
            if action == "ask":
                yield from answer(owner_id, current_id, arg, t, *rest, request)
            elif action == "regenerate":
                upto = int(arg) if arg.isdigit() else len(t) - 1
                if 0 <= upto < len(t):
                    yield from answer(owner_id, current_id, t[upto]["question"], t[:upto], *rest, request)
            elif action == "open":
                found = app.open_file(arg)
                if found is None:
                    yield (gr.update(), gr.update(), t, f"⚠ {arg} can only be opened if it is an indexed file inside "
                           "the documents folder or the uploads.", current_id, gr.update(), gr.File(visible=False))
                else:
                    yield gr.update(), gr.update(), t, "", current_id, gr.update(), gr.File(found, visible=True)

        def on_load(owner_id):
            current, loaded, title = app.open_chat(owner_id, None)
            return (app.render(loaded), loaded, current, chats_update(owner_id, current), title, app.status(),
                    app.library_view())

        def on_select_chat(owner_id, selected):
            current, loaded, title = app.open_chat(owner_id, selected)
            return app.render(loaded), loaded, current, title, "", gr.File(visible=False)

        def on_new_chat():
            return app.render([]), [], "", gr.Radio(value=None), "", "", gr.File(visible=False)

        def on_rename(owner_id, current_id, title):
            error = app.rename_chat(owner_id, current_id, title)
            return chats_update(owner_id, current_id), error

        def on_delete(owner_id, current_id):
            app.delete_chat(owner_id, current_id)
            return on_load(owner_id)[:5]

        def on_stop(request: gr.Request):
            app.stop(_session(request))

        def on_upload(files, contains, progress=gr.Progress()):
            report, status_html = app.upload(files, progress)
            return report, status_html, app.library_view(contains), None

        def on_library_action(contains, evt: gr.SelectData):
            text = app.library_action(str(evt.index), str(evt.value or ""))
            return text, app.library_view(contains), app.status()

        def on_resync(contains, progress=gr.Progress()):
            text = app.resync(progress)
            return text, app.library_view(contains), app.status()

        send.click(answer, [owner, chat_id, question, turns, *settings], chat_outputs, concurrency_id="answer")
        chat_view.select(on_chat_action, [owner, chat_id, turns, *settings], chat_outputs, concurrency_id="answer")
        stop.click(on_stop, None, None, queue=False)
        chats.input(on_select_chat, [owner, chats], [chat_view, turns, chat_id, chat_title, message, source_file],
                    queue=False)
        new_chat.click(on_new_chat, None, [chat_view, turns, chat_id, chats, chat_title, message, source_file],
                       queue=False)
        rename.click(on_rename, [owner, chat_id, chat_title], [chats, message], queue=False)
        delete.click(on_delete, [owner, chat_id], [chat_view, turns, chat_id, chats, chat_title], queue=False)
        upload.upload(on_upload, [upload, library_filter], [upload_status, status, library, upload],
                      concurrency_id="index")
        library.select(on_library_action, [library_filter], [library_message, library, status], concurrency_id="index")
        library_filter.change(app.library_view, [library_filter], [library], queue=False)
        resync.click(on_resync, [library_filter], [resync_status, library, status], concurrency_id="index")
        demo.load(on_load, [owner], [chat_view, turns, chat_id, chats, chat_title, status, library], js=OWNER_JS,
                  queue=False).then(lambda owner_id: owner_id, [owner], [owner], js=OWNER_JS, queue=False)
    demo.queue(default_concurrency_limit=1)
    return demo


def _session(request: Any) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def serve(assistant: Assistant, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Start the web server; "serving on" is printed once the port is bound (blocking unless `block=False`)."""
    demo = build_app(assistant)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                prevent_thread_lock=True, ssr_mode=False, quiet=True, **APP_OPTIONS)
    print(f"serving on http://{host}:{port}", flush=True)
    if block:
        demo.block_thread()
    return demo
