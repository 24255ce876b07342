"""What kind of answer a question wants, decided by rules on its wording (measured on a labelled set,
`benchmarks/question_kinds.jsonl`; see `benchmarks/open_answers.py --kinds`).

    classify("Compare greedy decoding with beam search.")       -> "comparison"
    classify("What are the steps of a RAG indexing pipeline?")  -> "procedure"
    comparison_sides("What is the difference between BPE and WordPiece?")  -> ("BPE", "WordPiece")

Kinds (assistant.answer.QUESTION_KINDS) and what the pipeline does with each:
- factoid ("who / when / which / what port ..."): the reader's exact span, as before;
- count ("how many ..."): the reader's span (a number) with its sentence;
- yesno ("is / does / can ...?"): the sentence that decides it;
- definition ("what is X", "what does X mean", "define X"): the defining sentence(s) of X;
- explanation ("why", "how does X work", "explain"): the 2-3 sentences that explain it, in reading order;
- list ("list ...", "what are the X", "name the X", "advantages of"): bullets, one per item;
- procedure ("how do I", "what are the steps"): the steps as numbered bullets, in reading order;
- comparison ("X vs Y", "difference between X and Y", "compare X with Y"): each side in its own paragraph;
- summary ("summarize", "overview", "tl;dr", "what do the documents say about"): the most central sentences of
  the named document (or of the topic's passages), in reading order.

The rules are ordered: the first that matches decides. They look at the question's opening words first (that is
where English puts the question's intent) and only then at phrases anywhere in it.
"""

from __future__ import annotations

import re

_FLAGS = re.IGNORECASE

# A polite or conversational lead-in that says nothing about the kind: stripped before the rules run.
_LEAD_IN = re.compile(
    r"^\s*(?:(?:and|so|ok(?:ay)?|well|also|then|now|hi|hey|please|pls|quick question)[,:]?\s+)*"
    r"(?:(?:can|could|would|will) you(?: please)?\s+|i(?:'d| would) like (?:you )?to know\s+|"
    r"i want to know\s+|tell me\s+(?=(?:what|who|when|where|which|why|how|about|if|whether)\b)|"
    r"do you know\s+|please\s+|briefly\s+|quickly\s+)*", _FLAGS)

_SUMMARY = re.compile(
    r"^(?:summari[sz]e|sum up|recap|give (?:me )?(?:a |an )?(?:short |brief |quick )?(?:summary|overview|recap|"
    r"rundown|highlights)|(?:a |an )?(?:short |brief |quick )?(?:summary|overview) of|tl;?dr|overview of|"
    r"what(?:'s| is) the (?:gist|main message|main point|upshot|bottom line) of|(?:the )?highlights of|"
    r"what (?:do|does) (?:the|these|my|this|our) (?:documents?|docs?|files?|notes?|papers?|reports?|manual|text)"
    r" (?:say|tell|cover|explain)|what is (?:the (?:document|file|report|paper|manual)|this document) about|"
    r"what(?:'s| is) in (?:the|this) (?:document|file|report|paper)|describe (?:the|this) (?:document|file|"
    r"report|paper|manual))|\b(?:in (?:a )?(?:few|two|three) (?:sentences|lines)|main points of|key points of|"
    r"give (?:me )?the gist|an overview)\b", _FLAGS)
_COMPARISON = re.compile(
    r"^(?:compare|contrast)\b|\b(?:differences? between|difference of|distinguish(?:es)? between|compared? "
    r"(?:to|with)|versus|vs\.?|differ(?:s|ent)? from|distinguish(?:es)? .+ from|which is (?:\w+er|better|worse|"
    r"more \w+|less \w+)(?:,| ) ?.+ or |how (?:do|does|did|is|are|was|were) .+ "
    r"(?:differ|compare)|what sets .+ apart from|similarities between|(?:better|worse|faster|slower|larger|"
    r"smaller) than)\b", _FLAGS)
_PROCEDURE = re.compile(
    r"^(?:how (?:do|can|should|would) (?:i|we|you|one)\b|how to\b|what (?:are|were) the (?:\w+ )?(?:steps|stages|"
    r"phases)|what (?:do|should|can) (?:i|we|you) do (?:if|when|after|before|to)\b|what(?:'s| is) the (?:procedure|"
    r"process|recipe|way) (?:for|to)\b|how (?:should|must|do|does|can) .+ be (?:\w+ed|set up|built|done|run)\b|what steps|which steps|steps (?:to|for|of)|walk me through|what is the (?:procedure|process) (?:to|"
    r"for)|guide me|show me how|in what order)|\b(?:step by step|step-by-step|the steps (?:to|for|of|in)|what do "
    r"i (?:need to )?do to)\b", _FLAGS)
_COUNT = re.compile(r"^(?:how many|what (?:is the )?(?:number|count) of|count the)\b", _FLAGS)
_LIST = re.compile(
    r"^(?:list|enumerate|name (?:the|all|some|three|two|four|five|every)|which (?:\w+ ){0,3}(?:are there|exist)|"
    r"what (?:kinds|types|sorts) of .+ (?:are there|exist)|which (?:[\w-]+ ){0,2}[\w-]+[^s\W]s (?:can|could|does|do|did|"
    r"are|were|should)\b|what are some\b|give (?:me )?the \w+s\b|"
    r"(?:what|which) (?:[\w-]+ ){0,2}[\w-]+s (?:are|were|does|do|did|is|can)\b.*\b(?:mention\w*|list\w*|use[sd]?|"
    r"support\w*|accept\w*|ha(?:ve|s)|include\w*|offer\w*|provide\w*|compar\w*|evaluat\w*|in the (?:report|"
    r"document|study|paper|manual))\b|"
    r"what (?:are|were) (?:all |some |the (?:main |key |different |various |common |typical |major )?)?"
    r"(?:\w+[ -]){0,4}?(?:types|kinds|families|methods|strategies|techniques|ways|options|steps|advantages|"
    r"disadvantages|benefits|drawbacks|limitations|features|parts|components|categories|uses|applications|"
    r"examples|properties|reasons|problems|risks|variants|flags|parameters|arguments|functions|classes|"
    r"settings|modes|stages|elements|factors|pros|cons)\b|give (?:me )?(?:a list|examples|some examples)|"
    r"what (?:\w+ ){0,3}(?:does|do|did) .+ (?:offer|provide|support|include|introduce|add)\b)|"
    r"\b(?:advantages|disadvantages|benefits|drawbacks|pros and cons|limitations) of\b|"
    r"\bwhat (?:are|were) the (?:\w+ ){0,3}(?:main|key) \w+", _FLAGS)
_EXPLANATION = re.compile(
    r"^(?:what (?:does|do|did) .+ (?:change|do|affect|improve|solve|fix|replace|control|cause|achieve|"
    r"prevent|allow|enable|mean for)\b|why|how (?:does|do|did|is|are|was|were|can|could|would|will) |how come|explain|describe|what (?:happens|"
    r"causes|makes|is the (?:purpose|reason|role|idea|point|effect|goal|motivation|intuition)|are the (?:purpose|"
    r"reasons?|effects?))|in what way|what is the use of|for what reason)|\b(?:explain|reason why|how come)\b",
    _FLAGS)
_DEFINITION = re.compile(
    r"^(?:(?:explain|describe) what (?:an? |the )?\S+(?: \S+){0,3} (?:is|are|means)\b|"
    r"what(?: exactly)?(?:'s| is| are)(?: exactly)? (?:an? |the )?(?!the (?:\w+ )?(?:name|year|date|number|port|size|default|value|"
    r"capital|first|last|largest|smallest|best|main)\b)|what(?:'s| is) meant by|what does .+ (?:mean|stand for|"
    r"refer to)(?:\s+in\b.*)?[?.!]*$|what do (?:you|we|they|people) mean by|define|definition of|meaning of|who or what is)",
    _FLAGS)
_YESNO = re.compile(
    r"^(?:is|are|was|were|does|do|did|can|could|should|will|would|has|have|had|may|might|must|shall|isn't|"
    r"aren't|doesn't|don't|didn't|can't|won't)\b", _FLAGS)
# "What is the default port?" is a factoid; "What is LoRA?" a definition. A definition names a term, short.
_FACTOID_NOUNS = re.compile(
    r"\b(?:name|year|date|number|port|size|default|value|capital|version|percentage|percent|score|accuracy|"
    r"price|cost|speed|rate|length|width|height|weight|temperature|dimension|limit|maximum|minimum|author|"
    r"title|called|named|unit|total|average|mean)\b", _FLAGS)


def _strip_lead_in(question: str) -> str:
    q = " ".join(question.strip().split())
    return _LEAD_IN.sub("", q, count=1) or q


def classify(question: str) -> str:
    """The kind of answer `question` wants: one of assistant.answer.QUESTION_KINDS."""
    q = _strip_lead_in(question)
    q_core = q.rstrip("?.! ")
    if _SUMMARY.search(q):
        return "summary"
    if _COMPARISON.search(q) and comparison_sides(question) is not None:
        return "comparison"
    if _COUNT.search(q):
        return "count"
    if _PROCEDURE.search(q):
        return "procedure"
    if _LIST.search(q):
        return "list"
    if _EXPLANATION.search(q):
        return "explanation"
    if _DEFINITION.search(q):
        words = q_core.split()
        indefinite = re.match(r"^what(?:'s| is| are) (?:an?|exactly an?) ", q_core, _FLAGS)
        if (len(words) <= 7 or indefinite) and not _FACTOID_NOUNS.search(q_core):
            return "definition"
        if re.search(r"\b(?:mean|stand for|refer to|meant by|define|definition|meaning)\b", q_core, _FLAGS):
            return "definition"
    if _YESNO.search(q):
        return "yesno"
    if _COMPARISON.search(q):
        return "comparison"
    return "factoid"


_SIDES = [
    re.compile(r"\b(?:differences?|distinguish(?:es)?|similarities|compare|comparison) between (?P<a>.+?) and "
               r"(?P<b>.+?)(?:\s+in\b.*)?[?.!]*$", _FLAGS),
    re.compile(r"^(?:compare|contrast)\s+(?P<a>.+?)\s+(?:with|to|and|against|versus|vs\.?)\s+(?P<b>.+?)"
               r"(?:\s+in\b.*)?[?.!]*$", _FLAGS),
    re.compile(r"\bhow (?:do|does|is|are) (?P<a>.+?) (?:differ|compare)(?:s|d)? (?:from|to|with|against) "
               r"(?P<b>.+?)[?.!]*$", _FLAGS),
    re.compile(r"\bhow (?:do|does|is|are) (?P<a>.+?) and (?P<b>.+?) (?:differ|compare)\b", _FLAGS),
    re.compile(r"(?:^|\b(?:is|are|use|choose|prefer)\s+)(?P<a>[^,?]+?)\s+(?:versus|vs\.?|or)\s+(?P<b>[^,?]+?)"
               r"(?:\s*[,:]|\s+(?:for|in|when)\b.*)?[?.!]*$", _FLAGS),
    re.compile(r"\b(?P<a>[\w .+#-]+?)\s+(?:versus|vs\.?)\s+(?P<b>[\w .+#-]+?)[?.!]*$", _FLAGS),
    re.compile(r"\b(?:what sets|what distinguishes) (?P<a>.+?) (?:apart )?from (?P<b>.+?)[?.!]*$", _FLAGS),
    re.compile(r"\b(?:is|are|does|do) (?P<a>.+?) (?:differ|different) from (?P<b>.+?)[?.!]*$", _FLAGS),
    re.compile(r"^(?:what is|what's) (?P<a>.+?) compared (?:to|with) (?P<b>.+?)[?.!]*$", _FLAGS),
]
_ARTICLE = re.compile(r"^(?:the|a|an|using|use of)\s+", _FLAGS)


def comparison_sides(question: str) -> tuple[str, str] | None:
    """The two things a comparison question compares ("BPE", "WordPiece"), or None when they are not named."""
    q = _strip_lead_in(question)
    for pattern in _SIDES:
        match = pattern.search(q)
        if match:
            a, b = (_ARTICLE.sub("", match.group(g).strip(" ,;:")) for g in ("a", "b"))
            if a and b and a.lower() != b.lower() and len(a.split()) <= 8 and len(b.split()) <= 8:
                return a, b
    return None


_SUBJECT = re.compile(
    r"^(?:what (?:is|are|was|were|'s)(?: meant by)?|what does|what do (?:you|we|they|people) mean by|define|"
    r"definition of|meaning of|who or what is|explain|describe|how (?:does|do|is|are))\s+(?:an?\s+|the\s+)?"
    r"(?P<term>.+?)(?:\s+(?:mean|stand for|refer to|work|do|used for))?[?.!]*$", _FLAGS)


_OBJECT = re.compile(
    r"^(?:list|enumerate|name|give (?:me )?(?:a list of)?|what (?:are|were)|which (?:are|were))\s+(?:all\s+|some\s+)?"
    r"(?:of\s+)?(?:the\s+)?(?:(?:\d+|two|three|four|five|six|seven|eight|nine|ten|main|key|different|various|"
    r"common)\s+)*(?P<object>[\w-]+(?:\s+[\w-]+){0,2}?)(?:\s+(?:of|in|for|that|which|described|used|mentioned|"
    r"listed|covered|does|do|did|are|is|there)\b|[?.!]*$)", _FLAGS)
_COUNT_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}


_OBJECT_BEFORE_VERB = re.compile(r"^(?:what|which) (?P<object>[\w-]+(?: [\w-]+){0,2}?) (?:does|do|did|can|could|"
                                 r"are|were|is|has|have)\b", _FLAGS)


def list_object(question: str) -> str:
    """What a list question asks for ("decoding strategies" in "List the decoding strategies described in ...",
    "operating modes" in "What operating modes does the battery have?"), or ""."""
    q = _strip_lead_in(question)
    match = _OBJECT.match(q)
    if match and match.group("object").lower() not in ("are", "is", "the"):
        return match.group("object").strip()
    match = _OBJECT_BEFORE_VERB.match(q)
    return match.group("object").strip() if match else ""


def count_in(question: str) -> int | None:
    """The number of items a question asks for ("the three families" -> 3), or None."""
    for word in re.findall(r"[a-z0-9]+", question.lower()):
        if word.isdigit() and 1 < int(word) <= 12:
            return int(word)
        if word in _COUNT_WORDS:
            return _COUNT_WORDS[word]
    return None


def subject_of(question: str) -> str:
    """The term a definition / explanation question is about ("LoRA" for "What is LoRA?", "Counter" for "What is a
    Counter in the collections module?"), or ""."""
    match = _SUBJECT.match(_strip_lead_in(question))
    if not match:
        return ""
    term = match.group("term").strip()
    return re.split(r"\s+(?:in|of|from|within|inside|for) (?:the|a|an|this|these|my)\b", term, maxsplit=1)[0].strip()


__all__ = ["classify", "comparison_sides", "count_in", "list_object", "subject_of"]
