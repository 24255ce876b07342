"""Follow-up questions: telling when a question leans on an earlier turn ("and how big is it?") and
rewriting it into a standalone search query from the conversation's earlier questions.

Deterministic on purpose: the default generator (135M parameters) rewrites queries unreliably.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from assistant.packing import _text_of

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-+.']*[A-Za-z0-9+]|[A-Za-z0-9]")
STOPWORDS = frozenset(
    """a an the and or but so of to in on at by for with about from into over under as is are was were be been
    being am do does did doing have has had having what which who whom whose when where why how much many
    more most less least can could would should will shall may might must this that these those it its it's
    they them their theirs he she him her his hers we us our you your i me my one ones there here then than
    also just only very too not no yes if else such some any all each other another same own both either
    neither please tell explain describe give show me something thing things kind sort way ways again
    use used uses using does doesn't don't isn't aren't big small good bad""".split()
)
PRONOUNS = frozenset("it its it's they them their theirs this that these those he she him her his one ones such".split())
FOLLOWUP_OPENERS = (
    "and ", "and,", "but ", "so ", "then ", "also ", "what about", "how about", "what of", "and what",
    "and how", "and why", "why?", "how?", "why not", "what else", "anything else", "more on", "tell me more",
    "same for", "compared to", "in comparison", "what if", "is it", "are they", "does it", "do they",
    "can it", "can they", "was it", "how big is it", "how does it", "how do they",
)


def content_words(text: str) -> list[str]:
    """The words of `text` that carry meaning for search (stopwords dropped), original case, in order."""
    seen: set[str] = set()
    out = []
    for word in _WORD.findall(text):
        low = word.lower().strip(".'")
        if low and low not in STOPWORDS and low not in seen:
            seen.add(low)
            out.append(word.strip(".'"))
    return out


def is_followup(question: str) -> bool:
    """True when a question leans on an earlier turn: an elliptic opener, a pronoun in a short question,
    or almost no content words ("and how big is it?", "what about BERT?", "why?")."""
    text = " ".join(question.lower().split())
    if text.startswith(FOLLOWUP_OPENERS):
        return True
    words = [w.lower() for w in _WORD.findall(text)]
    n_content = len(content_words(question))
    if n_content <= 1:
        return True
    return n_content <= 3 and any(w in PRONOUNS for w in words)


def standalone_query(question: str, history: Sequence[dict] | None = None, max_terms: int = 8) -> str:
    """The search query for `question`: the question itself, or, for a follow-up, the content words of the
    previous standalone query (resolved the same way, turn by turn) followed by the question.

    Deterministic on purpose: a 135M model rewrites queries unreliably.
    """
    previous = [_text_of(m) for m in history or () if m.get("role") == "user" and _text_of(m).strip()]
    query = ""
    for turn in [*previous, question]:
        if query and is_followup(turn):
            terms = [t for t in content_words(query) if t.lower() not in {w.lower() for w in content_words(turn)}]
            query = " ".join(terms[:max_terms] + [turn.strip()])
        else:
            query = turn.strip()
    return query
