"""Near-miss guard: numbers, named entities and negation must agree before a semantic hit.

Embeddings place "convert 100 USD to EUR" and "convert 250 USD to EUR" almost on top of each
other (cosine 0.94 with the local model); serving one's answer for the other is the cache's
worst failure. So on top of the cosine threshold the two prompts must carry the same numbers,
the same entity-like tokens (capitalised names, codes such as USD or A320, quoted strings,
URLs) and the same negation, and when the two are the same sentence edited, the edit may only
touch function words (see :func:`edited_content`). Rule-based on purpose: cheap (µs),
explainable, and it errs towards a miss, which costs one provider call, not a wrong answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?%?|(?<![\w.])\.\d+%?")
_QUOTED = re.compile(r"\"([^\"]{1,80})\"|“([^”]{1,80})”|'([^']{2,80})'(?!\w)")
_URL = re.compile(r"https?://\S+|[\w.+-]+@[\w-]+\.[\w.]+")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9&.'’-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)([A-Za-z][\w'’-]*)")
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nobody|nothing|neither|nor|without|cannot|except|excluding|"
    r"isn't|aren't|wasn't|weren't|don't|doesn't|didn't|won't|wouldn't|can't|couldn't|"
    r"shouldn't|haven't|hasn't|hadn't|isn’t|don’t|doesn’t|can’t|won’t)\b|n't\b",
    re.I,
)
_STARTERS = """a an the this that these those what which who whom whose why how when where is
    are was
    were be do does did can could would should will shall may might must i i'm i've we you he
    she it they my our your his her its their please tell give show list write explain describe
    summarize summarise convert translate calculate compute find get make create generate help
    compare define name suggest recommend if in on at for from to of by with and or but so as
    about after before during since until while is there here yes ok okay hi hello hey thanks
    thank let let's any some all each every one two three first second next then now also"""
_COMMON_STARTERS = frozenset(_STARTERS.split())
_MORE_FUNCTION_WORDS = """me us them am been being has have had having s t ll re ve d m into
    onto than too very just please kindly really actually way like want need know tell"""
_FUNCTION_WORDS = _COMMON_STARTERS | frozenset(_MORE_FUNCTION_WORDS.split())
_TOKEN = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")
_PUNCT = frozenset(".,?!;:'\"’“”-")
CLOSE_WORDING = 0.6
"""SequenceMatcher ratio above which two prompts are "the same sentence, edited"."""
LONG_PROMPT = 25
"""Tokens beyond which an averaged embedding hides what differs: such prompts only share an
answer when their wording is close and the edits touch function words only."""


@dataclass(frozen=True, slots=True)
class Signature:
    numbers: frozenset[str]
    entities: frozenset[str]
    negated: bool


def _num(s: str) -> str:
    s = s.replace(",", "")
    pct = s.endswith("%")
    s = s.rstrip("%").lstrip("+")
    try:
        v = float(s)
        out = repr(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
    except ValueError:
        out = s
    return out + ("%" if pct else "")


def _strip(w: str) -> str:
    w = w.rstrip(".'’-")
    for suffix in ("'s", "’s"):
        if w.lower().endswith(suffix):
            w = w[: -len(suffix)]
    return w


@lru_cache(maxsize=65_536)
def signature(text: str) -> Signature:
    numbers = frozenset(_num(m) for m in _NUMBER.findall(text))
    ents: set[str] = set()
    for groups in _QUOTED.findall(text):
        ents.add("q:" + next(g for g in groups if g).strip().lower())
    ents.update("u:" + u.lower() for u in _URL.findall(text))
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    for m in _WORD.finditer(_URL.sub(" ", text)):
        w = _strip(m.group(0))
        if len(w) < 2 or w in ("I", "I'm", "I've", "I'd", "I'll"):
            continue
        is_code = (w.isupper() and len(w) >= 2) or any(ch.isdigit() for ch in w)
        capital = w[0].isupper()
        if is_code or (capital and m.start() not in starts):
            ents.add(w.lower())
        elif capital and w.lower() not in _COMMON_STARTERS:
            ents.add(w.lower())  # sentence-initial but not a common opener: likely a name
    negated = len(_NEGATION.findall(text)) % 2 == 1
    return Signature(numbers, frozenset(ents), negated)


def _stem(t: str) -> str:
    """Plural/3rd-person -s only: "holes" and "hole" are the same content word."""
    if len(t) > 3 and t.endswith("s") and not t.endswith("ss"):
        return t[:-2] if t.endswith(("ches", "shes", "xes")) else t[:-1]
    return t


def _tokens(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(text.lower()) if t not in _PUNCT]


def edited_content(query: str, cached: str) -> str | None:
    """A content word or symbol changed in an otherwise identical prompt.

    Paraphrases reword a lot; near-misses ("sum" → "product", "Z_7" → "Z_11", "ascending" →
    "descending", "hotels" → "cheap hotels") keep the sentence and change one thing, which a
    static embedding barely sees. When the wording is close, any change beyond function words
    is treated as a different question.
    """
    a, b = _tokens(query), _tokens(cached)
    sm = SequenceMatcher(None, a, b, autojunk=False)
    if sm.ratio() < CLOSE_WORDING:
        if max(len(a), len(b)) > LONG_PROMPT:
            return "long prompts reworded"
        return None
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        changed = [t for t in a[i1:i2] + b[j1:j2] if t not in _FUNCTION_WORDS]
        if changed:
            return f"edited wording: {' '.join(changed[:4])!r}"
    return None


def mismatch(query: str, cached: str) -> str | None:
    """Why ``cached``'s answer must not serve ``query`` (``None`` when they agree)."""
    a, b = signature(query), signature(cached)
    if a.numbers != b.numbers:
        return "numbers differ"
    if a.entities != b.entities:
        return "entities differ"
    if a.negated != b.negated:
        return "negation differs"
    return edited_content(query, cached)
