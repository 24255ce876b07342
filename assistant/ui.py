"""The Gradio chat (`assistant ui`): saved conversations, streamed answers with clickable citations and their
sources, a document library, uploads.

`build_app(assistant)` returns the Blocks (the HTTP server mounts it with `gradio.mount_gradio_app`; the
page's CSS and JavaScript travel inside the Blocks, so a mount needs no extra arguments; `APP_OPTIONS` has the
theme for `launch`/`mount_gradio_app` if wanted). The UI only talks to `assistant.pipeline.Assistant`,
`assistant.library.Library` and `assistant.conversations.ConversationStore`; it never touches models.

- Conversations: each browser keeps a random owner id in localStorage (#owner, filled on load); its chats are
  saved in `<index>.chats.sqlite3` after every answer and listed in the sidebar (new, rename, delete).
- The chat view (#chatbot) is HTML written by `assistant.ui_render` (with the page's CSS and script); every
  piece of text from a document or the model is escaped there, so a document holding `<script>` or
  `<img onerror=...>` shows as text. Its buttons (citation chips, copy, regenerate, example questions, open
  file) are handled by the page script: chips open a source in place, with the cited sentence's supporting
  words highlighted; "Open page N" (a paged source) asks the chat view's server function `open_page` for the
  page's whole text, shown under the source with the same words marked; the others send a `select` event
  with {index: action, value: argument}.
- Enter sends, Shift+Enter adds a new line (the page script takes the key before Gradio's own handler).

Stable element ids (used by the browser tests): #chatbot, #question, #send, #stop, #new-chat, #chats,
#chat-title, #rename-chat, #delete-chat, #message, #owner, #models, #index-status, #source-file, #upload,
#upload-status, #library, #library-filter, #library-message, #resync, #resync-status, #adapt, and the settings
#temperature, #top-k, #top-p, #min-p, #repetition-penalty, #max-new-tokens, #passages, #retrieval-mode.

(No `from __future__ import annotations` here: Gradio finds the `gr.Request` and `gr.SelectData`
parameters of a handler by their evaluated annotations.)
"""

import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assistant.answer import Answer, Draft, Revision
from assistant.conversations import ConversationStore, default_path
from assistant.library import Library
from assistant.pipeline import Assistant
from assistant.settings import RETRIEVAL_MODES
from assistant.ui_render import (CSS, PAGE_JS, esc, format_models, format_status, render_chat, render_library,
                                 render_page, render_upload_report, turn_from_answer)
from model.errors import UserError

log = logging.getLogger(__name__)

ENTER_HINT = "Enter to send · Shift+Enter for a new line"

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


# ---------------------------------------------------------------------- session helpers
def history_for_model(turns: list[dict]) -> list[dict]:
    """Earlier turns as plain chat messages for the pipeline."""
    history = []
    for turn in turns:
        if turn.get("answer") and not turn.get("pending"):
            history += [{"role": "user", "content": turn["question"]},
                        {"role": "assistant", "content": turn["answer"]}]
    return history


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
        self._download_dir: Path | None = None  # made on the first "Open file", removed with the app

    def _downloads(self) -> Path:
        """The temporary folder the copies "Open file" hands to the browser live in (one per app, removed when
        the app is garbage-collected or the process exits)."""
        if self._download_dir is None:
            self._download_dir = Path(tempfile.mkdtemp(prefix="assistant-open-"))
            weakref.finalize(self, shutil.rmtree, str(self._download_dir), ignore_errors=True)
        return self._download_dir

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
                                              drafts=True, **options):
                if isinstance(item, Answer):
                    turns[-1] = turn_from_answer(question, item, self._openable)
                elif isinstance(item, Revision):  # the checked wording of the draft: it replaces the draft
                    current["answer"], current["draft"] = item.text, False
                    yield turns, "", ""
                else:
                    if isinstance(item, Draft):  # the quoted evidence, shown while the wording is checked
                        current["draft"] = True
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
        target = Path(tempfile.mkdtemp(dir=self._downloads())) / found.name
        shutil.copyfile(found, target)
        return str(target)

    def open_page(self, request: Any) -> str:
        """The page panel (HTML) for the page JS's "Open page N": `request` is {path, page, passage, marks}, with
        `passage` the source's text as shown (its `data-text` when it holds a table) and `marks` its marked words
        ([start, end, sentence or None], offsets into `passage`). Only pages of files that "Open file" would open
        are shown."""
        path, page, passage, marks = _page_request(request)
        if not path or page is None:
            return render_page(None, path or "?", page or 0)
        try:
            view = self.library.page_view(path, page, passage, marks)
        except Exception:  # a page that cannot be read must not break the page
            log.exception("opening page %s of %s failed", page, path)
            view = None
        return render_page(view, path, page)

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

    def adapt(self, command: list[str] | None = None, poll_s: float = 2.0) -> Iterator[str]:
        """"Adapt to this folder": `assistant adapt` on this index in a child process at one torch thread (the chat
        keeps answering from the current vectors until the one-commit switch), yielding its progress lines; at the
        end the assistant loads the adapter the index now names. `command`: the child's argv (tests; "{status}" in
        it stands for the progress file)."""
        import json
        import subprocess
        import sys
        import time

        index = getattr(self.assistant, "index_path", None)
        if index is None:
            yield "⚠ This assistant has no on-disk index to adapt."
            return
        status_file = Path(tempfile.mkdtemp(prefix="assistant-adapt-")) / "status.json"
        if command:
            argv = [arg.replace("{status}", str(status_file)) for arg in command]
        else:
            argv = [sys.executable, "-m", "assistant.cli", "adapt", "--index", str(index), "--threads", "1",
                    "--quiet", "--status-file", str(status_file)]
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        try:
            child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            yield "Adapting the encoder to this folder (one CPU thread; answers keep coming meanwhile)…"
            last = ""
            while child.poll() is None:
                time.sleep(poll_s)
                try:
                    line = json.loads(status_file.read_text(encoding="utf-8")).get("line", "")
                except (OSError, ValueError):
                    continue
                if line and line != last:
                    last = line
                    yield line
            out, err = child.communicate()
        finally:  # also when the page goes away mid-run (the child goes on; its progress file goes)
            shutil.rmtree(status_file.parent, ignore_errors=True)
        if child.returncode != 0:
            why = (err or out).strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
            yield f"⚠ Adaptation stopped: {why[0]}. The index is unchanged; run it again to resume."
            return
        try:
            self.assistant.follow_index()
        except UserError as exc:
            yield f"⚠ {exc}"
            return
        name = getattr(getattr(self.assistant, "encoder", None), "name", "")
        summary = [ln for ln in out.strip().splitlines() if ln.startswith("total")]
        yield f"Adapted: the index now searches with {name}. " + (summary[0] if summary else "")

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


MAX_PASSAGE_CHARS = 100_000
MAX_MARKS = 200


def _page_request(request: Any) -> tuple[str, int | None, str, list[tuple[int, int, int | None]]]:
    """(path, page, passage, marks) from what the page JS sent, checked: anything malformed is dropped (a
    page that is not a positive int is None)."""
    if not isinstance(request, dict):
        return "", None, "", []
    path = request.get("path")
    path = path if isinstance(path, str) else ""
    try:
        page: int | None = int(request.get("page"))
    except (TypeError, ValueError):
        page = None
    if page is not None and page < 1:
        page = None
    passage = request.get("passage")
    passage = passage[:MAX_PASSAGE_CHARS] if isinstance(passage, str) else ""
    marks: list[tuple[int, int, int | None]] = []
    raw = request.get("marks")
    for item in raw[:MAX_MARKS] if isinstance(raw, list) else []:
        try:
            start, end, sentence = item
            marks.append((int(start), int(end), None if sentence is None else int(sentence)))
        except (TypeError, ValueError):
            continue
    return path, page, passage, marks


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

    def open_page(request: dict) -> str:
        """The page JS's "Open page N" (see `ChatApp.open_page`)."""
        return app.open_page(request)

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
                                            min_height=420, max_height="68vh", server_functions=[open_page])
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
                    adapt = gr.Button("Adapt to this folder", elem_id="adapt", scale=1, min_width=120)
                resync_status = gr.Markdown("", elem_id="resync-status")
                library_message = gr.Markdown("", elem_id="library-message")
                library = gr.HTML(app.library_view(), elem_id="library", js_on_load=PAGE_JS, padding=False,
                                  apply_default_css=False)
                upload = gr.File(label="Add documents (.md, .txt, .pdf, .docx, .pptx, .xlsx, .csv, .epub, .odt, "
                                       ".eml, .html, images, code)", file_count="multiple",
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

        def on_adapt():
            for line in app.adapt():
                yield line, app.status()

        adapt.click(on_adapt, None, [resync_status, status], concurrency_id="index")
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
