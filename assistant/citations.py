"""Citation markers in answers: keep `[n]` markers that name a passage the prompt gave, drop the rest,
both on a finished text (`clean_citations`) and on a stream of text deltas (`CitationFilter`).
"""

from __future__ import annotations

import re

_CITATION = re.compile(r"(\s*)\[(\s*\d+\s*(?:[,;]\s*\d+\s*)*)\]")
_PARTIAL_CITATION = re.compile(r"\[[\d\s,;]*$")


def clean_citations(text: str, n_passages: int) -> tuple[str, list[int]]:
    """Keep only citation markers that name a given passage (1..n_passages).

    `[2]`, `[1, 2]`, `[1][2]` are understood. A group with no valid number is removed with the space before
    it; a group with some valid numbers keeps those. Returns (clean text, cited numbers in first-use order).
    """
    cited: list[int] = []

    def fix(match: re.Match) -> str:
        space, body = match.group(1), match.group(2)
        numbers = [int(x) for x in re.findall(r"\d+", body)]
        valid = [x for x in numbers if 1 <= x <= n_passages]
        for x in valid:
            if x not in cited:
                cited.append(x)
        if not valid:
            return ""
        if valid == numbers:
            return match.group(0)
        return f"{space}[{', '.join(str(x) for x in dict.fromkeys(valid))}]"

    return _CITATION.sub(fix, text), cited


class CitationFilter:
    """Streams text deltas with invalid citation markers removed as they arrive.

    Holds back trailing whitespace and a possibly unfinished `[12` until the next delta shows what it is,
    so the concatenated output equals `clean_citations(raw)` (up to trailing whitespace).
    """

    def __init__(self, n_passages: int) -> None:
        self.n_passages = n_passages
        self.raw = ""
        self._emitted = ""

    def feed(self, delta: str) -> str:
        """Add a raw delta; return the clean text that is now safe to show."""
        self.raw += delta
        safe = self.raw.rstrip()
        partial = _PARTIAL_CITATION.search(safe)
        if partial and len(safe) - partial.start() <= 24:
            safe = safe[: partial.start()].rstrip()
        return self._advance(clean_citations(safe, self.n_passages)[0])

    def flush(self) -> str:
        """The rest of the clean text, once the stream has ended."""
        return self._advance(clean_citations(self.raw, self.n_passages)[0].rstrip())

    def _advance(self, clean: str) -> str:
        if not clean.startswith(self._emitted):  # cannot happen with the hold-back rule; stay consistent
            return ""
        out = clean[len(self._emitted):]
        self._emitted = clean
        return out
