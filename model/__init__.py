"""The project's own transformers: a BERT-family encoder and a Llama-family decoder, plus their loaders.

Smoke check (downloads the default generator on first use):

    >>> from model import chat
    >>> print(chat("What is the capital of France?"))
"""

from __future__ import annotations

from model.config import DecoderConfig, EncoderConfig
from model.errors import UserError

__all__ = ["DecoderConfig", "EncoderConfig", "UserError", "chat"]


def chat(prompt: str, max_new_tokens: int = 64, spec: str | None = None) -> str:
    """Answer `prompt` as a one-turn chat with the default generator, greedily. A smoke check of the stack."""
    from model.decoder import greedy_generate
    from model.sources import resolve_generator
    from model.weights import load_decoder

    loaded = load_decoder(resolve_generator(spec))
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = greedy_generate(loaded.model, tok.encode(text), max_new_tokens, eos_ids=tok.eos_token_ids)
    return tok.decode(ids, skip_special_tokens=True).strip()
