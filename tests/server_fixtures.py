"""A live server for the HTTP tests: uvicorn in a thread on 127.0.0.1 (a free port), serving a tiny random
generator through the batch scheduler, an index of a few notes (HashingEncoder) and the Gradio UI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant_fakes import CORPUS


@dataclass
class LiveServer:
    url: str
    app: Any
    assistant: Any
    engine: Any
    running: Any

    def stop(self) -> None:
        self.running.stop()
        self.engine.close()


def start_server(app: Any, assistant: Any, engine: Any) -> LiveServer:
    from assistant.server import start_in_thread

    running = start_in_thread(app)
    return LiveServer(running.url, app, assistant, engine, running)


def tiny_generator(tokenizer: Any) -> Any:
    from model.config import DecoderConfig
    from model.decoder import Decoder
    from model.generate import Generator

    config = DecoderConfig.tiny(vocab_size=tokenizer.vocab_size, max_seq_len=1024)
    decoder = Decoder(config).init_weights(std=0.3, seed=0).eval()
    return Generator(decoder, tokenizer, identity="tiny", device="cpu")


def tiny_assistant(folder: Path, index: Path, tokenizer: Any) -> Any:
    from assistant.pipeline import Assistant
    from assistant.settings import Settings
    from retrieval.testing import HashingEncoder

    folder.mkdir(parents=True, exist_ok=True)
    for path, heading, text in CORPUS:
        (folder / path).write_text(f"# {heading}\n\n{text}\n")
    settings = Settings(refusal_threshold=-1.0, max_new_tokens=24, max_context_tokens=1024)
    return Assistant.from_folder(folder, index, settings=settings, generator=tiny_generator(tokenizer),
                                 encoder=HashingEncoder())


def serve_tiny(tmp: Path, tokenizer: Any, *, api_key: str | None = None, ui: bool = False, max_batch: int = 8,
               max_waiting: int = 64, **app_kw: Any) -> LiveServer:
    from assistant.server import create_app
    from model.scheduler import BatchScheduler

    assistant = tiny_assistant(tmp / "docs", tmp / "index", tokenizer)
    engine = BatchScheduler(assistant.generator, max_batch=max_batch, max_waiting=max_waiting, context_length=512)
    app = create_app(assistant, engine, assistant.settings, api_key=api_key, ui=ui, **app_kw)
    return start_server(app, assistant, engine)
