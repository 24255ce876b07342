"""What the routers share: the assistant, the engine, the encoder, the settings, and the model names."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from assistant.server.errors import APIError

ASSISTANT_MODEL = "assistant"   # answers from the indexed documents, with citations
GENERATOR_MODEL = "generator"   # the plain language model, no retrieval
EMBEDDING_MODEL = "encoder"     # the project's own sentence encoder


@dataclass
class ServerContext:
    assistant: Any | None
    engine: Any                    # model.scheduler.BatchScheduler (or a Generator: one request at a time)
    settings: Any
    encoder: Any | None = None
    started: float = 0.0
    encoder_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def generator(self) -> Any:
        return getattr(self.engine, "generator", self.engine)

    def chat_models(self) -> list[str]:
        return ([ASSISTANT_MODEL] if self.assistant is not None else []) + [GENERATOR_MODEL]

    def embedding_models(self) -> list[str]:
        if self.encoder is None:
            return []
        return [EMBEDDING_MODEL, str(getattr(self.encoder, "name", EMBEDDING_MODEL))]

    def check_model(self, name: str, allowed: list[str]) -> None:
        """404 (OpenAI's model_not_found) unless `name` is served; 400 when it exists but not for this route."""
        known = set(self.chat_models()) | set(self.embedding_models())
        if name not in known:
            raise APIError(404, f"The model '{name}' does not exist; this server offers {sorted(known)}",
                           param="model", code="model_not_found")
        if name not in allowed:
            raise APIError(400, f"model '{name}' is not served on this endpoint; use one of {allowed}", param="model")
