"""The Gradio chat (`assistant ui`): streaming answers with their sources, settings, uploads, index status.

The UI only talks to `assistant.pipeline.Assistant`; it never touches models or tensors. Each browser tab
has its own conversation (gr.State) and its own cancel event (keyed by the tab's session), and the
assistant's model lock gives every tab its own answer even when several ask at once.

Stable element ids (used by the browser tests): #chatbot, #question, #send, #stop, #clear, #message,
#upload, #upload-status, #index-status, and the settings #temperature, #top-k, #top-p, #min-p,
#repetition-penalty, #max-new-tokens, #passages, #retrieval-mode.

(No `from __future__ import annotations` here: Gradio finds the `gr.Request` parameter of a handler by
its evaluated annotation.)
"""

import html
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from assistant.answer import Answer, Source
from assistant.pipeline import Assistant
from assistant.settings import RETRIEVAL_MODES
from model.errors import UserError

log = logging.getLogger(__name__)

CSS = """
#message:empty, #upload-status:empty { display: none; }
#message { color: #b42318; }
"""


# ---------------------------------------------------------------------- rendering (pure, testable)
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)


def as_text(text: str) -> str:
    """Markdown whose raw HTML shows as text: `<`, `>` and `&` escaped outside code (code shows them as they are).
    Documents and model output pass through here, so HTML in them can neither run nor change the layout."""
    parts = _CODE.split(text or "")
    return "".join(part if i % 2 else html.escape(part, quote=False) for i, part in enumerate(parts))


def as_code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"`{text}`"


def source_title(source: Source) -> str:
    """The one-line header of a source box: number, file, heading/page, score, whether it is cited."""
    cos = "" if source.dense_score is None else f" · similarity {source.dense_score:.2f}"
    mark = " · cited" if source.cited else ""
    return f"[{source.number}] {source.location} · score {source.score:.3f}{cos}{mark}"


def render_messages(turns: list[dict]) -> list[dict]:
    """Chatbot messages for a conversation: question, answer, then one collapsible box per source
    (Gradio renders messages with a metadata title as expandable boxes)."""
    messages: list[dict] = []
    for turn in turns:
        messages.append({"role": "user", "content": as_text(turn["question"])})
        answer = as_text(turn.get("answer", ""))
        if turn.get("pending") and not answer:
            answer = "…"
        if turn.get("note"):
            answer = f"{answer}\n\n*{turn['note']}*" if answer else f"*{turn['note']}*"
        if turn.get("timing"):
            answer = f"{answer}\n\n<sub>{turn['timing']}</sub>"
        messages.append({"role": "assistant", "content": answer})
        sources = turn.get("sources") or []
        for source in sources:
            messages.append({
                "role": "assistant",
                "content": html.escape(source["snippet"]),
                "metadata": {"title": as_text(source["title"]), "status": "done"},
            })
    return messages


def _source_view(source: Source) -> dict:
    return {"title": source_title(source), "snippet": source.snippet, "path": source.path, "cited": source.cited}


def turn_from_answer(question: str, answer: Answer) -> dict:
    """A finished conversation turn: the answer's text, and its sources (all passages given; on a
    refusal the nearest passages, none cited)."""
    note = ""
    if answer.refused and answer.finish_reason == "refused":
        note = "No passage in your documents is close enough to this question; the nearest ones are below."
    elif answer.finish_reason == "cancelled":
        note = "(stopped)"
    sources = sorted(answer.sources, key=lambda s: (not s.cited, s.number))
    return {"question": question, "answer": answer.text, "sources": [_source_view(s) for s in sources],
            "note": note, "timing": format_timings(answer)}


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


def format_status(stats: dict, generator_name: str = "") -> str:
    """Markdown line about the open index."""
    files, chunks = stats.get("files", "?"), stats.get("chunks", "?")
    encoder = stats.get("encoder", "?")
    text = f"**Index:** {files} files, {chunks} passages · encoder `{encoder}`"
    if generator_name:
        text += f" · generator `{generator_name}`"
    return text


# ---------------------------------------------------------------------- the app
class ChatApp:
    """Event handlers around one Assistant (kept apart from the layout so they can be tested directly)."""

    def __init__(self, assistant: Assistant) -> None:
        self.assistant = assistant
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_lock = threading.Lock()

    def cancel_event(self, session: str | None) -> threading.Event:
        """The cancel event of one browser tab."""
        with self._cancel_lock:
            return self._cancel.setdefault(session or "default", threading.Event())

    def status(self) -> str:
        """Markdown index status."""
        try:
            stats = self.assistant.stats()
        except Exception as exc:  # status must never break the page
            log.exception("index status failed")
            return f"**Index:** unavailable ({exc})"
        name = getattr(self.assistant.generator, "identity", "") or ""
        return format_status(stats, name)

    def respond(self, question: str, turns: list[dict] | None, temperature: float, top_k: float, top_p: float,
                min_p: float, repetition_penalty: float, max_new_tokens: float, k: float, mode: str,
                session: str | None = None) -> Iterator[tuple[list[dict], str, list[dict], str]]:
        """Stream one answer. Yields (chatbot messages, question box, turns, error message)."""
        turns = list(turns or [])
        try:
            question = self.assistant.check_question(question or "")
        except UserError as exc:
            yield render_messages(turns), question or "", turns, f"⚠ {exc}"
            return
        cancel = self.cancel_event(session)
        cancel.clear()
        current = {"question": question, "answer": "", "sources": [], "pending": True}
        turns = turns + [current]
        yield render_messages(turns), "", turns, ""
        options = dict(
            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), min_p=float(min_p),
            repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
            k=int(k), retrieval_mode=mode,
        )
        try:
            for item in self.assistant.stream(question, history=history_for_model(turns[:-1]), cancel=cancel,
                                              **options):
                if isinstance(item, Answer):
                    turns[-1] = turn_from_answer(question, item)
                else:
                    current["answer"] += item
                    yield render_messages(turns), "", turns, ""
        except UserError as exc:
            turns = turns[:-1]
            yield render_messages(turns), question, turns, f"⚠ {exc}"
            return
        except Exception as exc:  # a bug must not leave the tab hanging; say what happened
            log.exception("answering %r failed", question)
            turns = turns[:-1]
            yield render_messages(turns), question, turns, f"⚠ Something went wrong while answering: {exc}"
            return
        yield render_messages(turns), "", turns, ""

    def stop(self, session: str | None = None) -> None:
        """Stop the tab's running generation."""
        self.cancel_event(session).set()

    def clear(self, session: str | None = None) -> tuple[list, list, str, str]:
        """Forget the tab's conversation (and stop a running answer)."""
        self.cancel_event(session).set()
        return [], [], "", ""

    def upload(self, files: Any, progress: Any = None) -> tuple[str, str]:
        """Index uploaded files into the current index. Returns (upload message, index status)."""
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
            return f"⚠ Could not index the upload: {exc}. The index is unchanged.", self.status()
        except Exception as exc:  # the index is written atomically, so it is still the old one
            log.exception("indexing %s failed", paths)
            return f"⚠ Could not index the upload ({exc}). The index is unchanged.", self.status()
        lines = []
        done = [*report.added, *report.updated, *[new for new, _ in report.renamed],
                *[new for new, _ in report.duplicates], *report.unchanged]
        if done:
            lines.append("Indexed: " + ", ".join(as_code(p) for p in done)
                         + f" ({report.chunks_embedded} passages embedded).")
        for path, note in getattr(report, "notes", []):
            lines.append(f"Note on {as_code(path)}: {as_text(note)}.")
        for path, reason in report.skipped:
            lines.append(f"⚠ Could not index {as_code(path)}: {as_text(reason)}. Nothing already indexed was changed.")
        return "\n\n".join(lines) or "Nothing to index.", self.status()


def _file_path(item: Any) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict):
        return str(item.get("path") or item.get("name"))
    return str(getattr(item, "path", None) or getattr(item, "name"))


def build_app(assistant: Assistant) -> Any:
    """The Gradio Blocks app for an assistant."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    app = ChatApp(assistant)
    s = assistant.settings
    folder = f" about `{assistant.folder}`" if assistant.folder else ""

    with gr.Blocks(title="Assistant", analytics_enabled=False) as demo:
        gr.Markdown(f"### Ask your documents{folder}\nAnswers cite passages as [n]; open a source below an "
                    "answer to see the passage.")
        turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="chatbot", height=520, label="Chat", buttons=["copy_all"],
                                     feedback_options=None, group_consecutive_messages=False)
                message = gr.Markdown("", elem_id="message")
                question = gr.Textbox(elem_id="question", placeholder="Ask a question about your documents…",
                                      show_label=False, lines=2, max_lines=8, autofocus=True)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
            with gr.Column(scale=1):
                status = gr.Markdown(app.status(), elem_id="index-status")
                with gr.Accordion("Add documents", open=True):
                    upload = gr.File(label="Upload files (.md, .txt, .pdf, .docx, .html)", file_count="multiple",
                                     elem_id="upload")
                    upload_status = gr.Markdown("", elem_id="upload-status")
                with gr.Accordion("Settings", open=False):
                    temperature = gr.Slider(0.0, 2.0, value=s.temperature, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_k = gr.Slider(0, 200, value=s.top_k, step=1, label="Top-k (0 = off)", elem_id="top-k")
                    top_p = gr.Slider(0.05, 1.0, value=s.top_p, step=0.05, label="Top-p", elem_id="top-p")
                    min_p = gr.Slider(0.0, 0.5, value=s.min_p, step=0.01, label="Min-p", elem_id="min-p")
                    repetition_penalty = gr.Slider(1.0, 2.0, value=s.repetition_penalty, step=0.05,
                                                   label="Repetition penalty", elem_id="repetition-penalty")
                    max_new_tokens = gr.Slider(16, 1024, value=s.max_new_tokens, step=16, label="Max new tokens",
                                               elem_id="max-new-tokens")
                    passages = gr.Slider(1, 10, value=s.k, step=1, label="Passages (k)", elem_id="passages")
                    mode = gr.Radio(list(RETRIEVAL_MODES), value=s.retrieval_mode, label="Retrieval",
                                    elem_id="retrieval-mode")

        def respond(q, t, temp, tk, tp, mp, rp, mnt, k, m, request: gr.Request):
            yield from app.respond(q, t, temp, tk, tp, mp, rp, mnt, k, m, session=_session(request))

        def on_stop(request: gr.Request):
            app.stop(_session(request))

        def on_clear(request: gr.Request):
            return app.clear(_session(request))

        def on_upload(files, progress=gr.Progress()):
            return app.upload(files, progress)

        inputs = [question, turns, temperature, top_k, top_p, min_p, repetition_penalty, max_new_tokens,
                  passages, mode]
        outputs = [chatbot, question, turns, message]
        send.click(respond, inputs, outputs, concurrency_id="answer")
        question.submit(respond, inputs, outputs, concurrency_id="answer")
        stop.click(on_stop, None, None, queue=False)
        clear.click(on_clear, None, [chatbot, turns, question, message], queue=False)
        chatbot.clear(on_clear, None, [chatbot, turns, question, message], queue=False)
        upload.upload(on_upload, upload, [upload_status, status], concurrency_id="index")
        demo.load(app.status, None, status, queue=False)
    demo.queue(default_concurrency_limit=1)
    return demo


def _session(request: Any) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def serve(assistant: Assistant, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Start the web server (blocking unless `block=False`)."""
    demo = build_app(assistant)
    print(f"serving on http://{host}:{port}", flush=True)
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=True,
                prevent_thread_lock=not block, ssr_mode=False, quiet=True, css=CSS)
    return demo
