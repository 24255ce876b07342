"""A tiny deterministic stand-in for `model.Encoder`, for fast tests of code that only needs *an* encoder.

`HashingEncoder` tokenises roughly like BERT (lower-cased words and single punctuation marks), and embeds
a text as the normalised sum of one fixed pseudo-random vector per token. Texts that share words get
similar vectors, so search behaves sensibly in tests, and it embeds thousands of chunks per second.
It is not a language model; never use it outside tests and benchmarks of the plumbing.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class HashingEncoder:
    """Same surface as `model.Encoder`: embed, count_tokens, max_length, dim, name."""

    def __init__(self, dim: int = 64, max_length: int = 256, name: str | None = None) -> None:
        self.dim = dim
        self.max_length = max_length
        self.name = name or f"hashing-test-encoder-{dim}"
        self.device = "cpu"
        self.calls = 0          # how many embed() calls
        self.texts_embedded = 0  # how many texts went through embed()
        self._cache: dict[str, np.ndarray] = {}

    def tokens(self, text: str) -> list[str]:
        return [t.lower() for t in _TOKEN.findall(text)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Content tokens per text (no [CLS]/[SEP]), untruncated."""
        return [len(_TOKEN.findall(t)) for t in texts]

    def _token_vector(self, token: str) -> np.ndarray:
        vec = self._cache.get(token)
        if vec is None:
            seed = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            self._cache[token] = vec
        return vec

    def embed(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Unit vectors float32 [n, dim]; only the first max_length-2 tokens count, like the real one."""
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)  # [n, dim]
        for row, text in enumerate(texts):
            for token in self.tokens(text)[: self.max_length - 2]:
                out[row] += self._token_vector(token)
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
            else:
                out[row, 0] = 1.0
        return out


class DiesOnceEncoder(HashingEncoder):
    """A HashingEncoder whose process dies (as if killed) the first time it embeds, once per `marker` file:
    for tests that a Ray worker killed mid-job is restarted and its batch retried."""

    def __init__(self, marker: str, dim: int = 64) -> None:
        super().__init__(dim=dim, name=f"hashing-test-encoder-{dim}")
        self.marker = marker

    def embed(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        import os

        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().embed(texts, batch_size, show_progress)
        os.close(fd)
        os._exit(1)  # like kill -9: no cleanup, no exception for anyone to catch
