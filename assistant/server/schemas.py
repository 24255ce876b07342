"""Request and response models of the OpenAI-compatible API (pydantic).

Standard fields keep OpenAI's names and meaning; ours that OpenAI lacks (top_k, min_p, repetition_penalty,
k, retrieval_mode) are extra fields beside them, so a standard client never sees a difference. Unknown
fields are accepted and ignored, as OpenAI-compatible servers do (clients send logprobs, user, ...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class SamplingFields(_Lenient):
    """OpenAI's sampling fields and ours."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # ours
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)

    def sampling(self) -> dict[str, Any]:
        """Our SamplingParams fields that the request sets (None = the server's default)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        values = {
            "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
            "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
            "stop": tuple(stop) if stop else None,
        }
        return {k: v for k, v in values.items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (the text parts of a multi-part content)."""
        if isinstance(self.content, list):
            return "".join(p.get("text", "") for p in self.content if isinstance(p, dict) and p.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    # ours, for model "assistant"
    k: int | None = Field(None, ge=1, le=50)
    retrieval_mode: Literal["hybrid", "dense", "lexical"] | None = None
    answer_mode: Literal["guided", "generate", "extract"] | None = None


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str]
    echo: bool = False


class EmbeddingRequest(_Lenient):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(reason: str | None) -> str:
    """Ours ("eos", "stop", "length", "cancelled", "refused") -> OpenAI's ("stop" | "length")."""
    return "length" if reason == "length" else "stop"
