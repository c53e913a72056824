"""Near-miss guard: the tokens that carry a prompt's meaning must agree before a semantic hit.

Why a guard at all: embeddings place "convert 100 USD to EUR" and "convert 250 USD to EUR"
almost on top of each other (cosine 0.94 with the local model), and averaged static embeddings
of long prompts sit close whatever they ask; serving one's answer for the other is the cache's
worst failure. Why *these* checks: a reworded question keeps what it asks about and changes how
it asks. The words that decide the answer are few and recognisable without a model —

- **numbers**, normalised first: "$5" = "5 dollars" = "5 USD", "five" = "5", "twenty-five" = "25",
  "5%" = "5 percent", "1,000" = "1000";
- **entities**: capitalised names (not sentence-initial common words), codes (USD, A320), code
  identifiers (``snake_case``, ``camelCase``, ``os.path``, ``f()``, back-quoted), quoted strings,
  URLs and e-mail addresses. An entity of one prompt must appear in the other (as an entity or,
  case-insensitively, as a word: "Paris" = "paris");
- **negation**: the count of not / no / never / n't / without / none / except …;
- **operators and comparison words**, by class: more = greater = larger = above = ">", fewer = less
  = below, max = largest = highest, min, before / after, increase / decrease, ascending /
  descending, plus = add = sum = "+", minus, times = product, divide, equal;
- **direction**: left / right / up / down / north … (phrasal "set up", "sign up" excluded), and
  which word follows *from* and *to* ("Celsius to Fahrenheit" ≠ "Fahrenheit to Celsius").

A mismatch in any of these is a miss even at cosine 0.99; agreement lets any rewording through
(politeness prefixes, synonyms, reordering, "How many" → "What number of", question ↔
imperative), which is what the seed's "edited wording" rule refused on long prompts (issue 18:
"Please solve: …", "$5" → "5 dollars" all missed). Two content checks remain, both because a
static embedding cannot see them: (1) the same sentence with one content word *substituted*
("weather in berlin" → "weather in madrid", lower-case so no entity check sees it; "sum" → "mean")
is a miss — insertions and deletions are allowed, they are how paraphrases reword; (2) prompts
longer than ``LONG_PROMPT`` content words must share at least ``MIN_SHARED`` of the shorter one's
content stems (a paraphrase of a word problem restates the problem; two different MMLU questions
of a subject share their topic words but not half of them — measured in ``bench/cache_quality``,
where the paraphrases of long prompts share 0.7–1.0 and the most similar different MMLU
questions mostly under 0.5). Words are compared by Porter2 stem (:mod:`.stem`), function words
unstemmed, so "this" and "does" are no longer mangled into content words.

Rule-based on purpose: cheap (µs, signatures cached per text), explainable (:class:`Mismatch`
names the check and the differing tokens), and it errs towards a miss, which costs one provider
call, not a wrong answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

from .stem import stem

_NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?%?|(?<![\w.])\.\d+%?")
_QUOTED = re.compile(r"\"([^\"]{1,80})\"|“([^”]{1,80})”|'([^']{2,80})'(?!\w)|`([^`]{1,80})`")
_URL = re.compile(r"https?://\S+|[\w.+-]+@[\w-]+\.[\w.]+")
_CODE = re.compile(
    r"\b[A-Za-z_]\w*_\w+\b|\b[a-z]+[A-Z]\w*\b|\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w+)+(?:\(\))?|\b\w+\(\)"
)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9&.'’-]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*|[\"“(]\s*)([A-Za-z][\w'’-]*)")
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nobody|nothing|neither|nor|without|cannot|except|excluding)\b"
    r"|n[’']t\b",
    re.I,
)
_STARTERS = """a an the this that these those what which who whom whose why how when where is
    are was were be do does did can could would should will shall may might must i i'm i've
    we you he she it they my our your his her its their please tell give show list write
    explain describe summarize summarise convert translate calculate compute find get make
    create generate help compare define name suggest recommend if in on at for from to of by
    with and or but so as about after before during since until while there here yes ok okay
    hi hello hey thanks thank let let's any some all each every one two three first second
    next then now also solve determine kindly briefly quickly quick question hey assume suppose
    consider imagine using use given based according answer identify evaluate estimate work
    figure state provide draft rewrite rephrase outline classify predict choose select pick
    check fix debug sort reverse count add subtract multiply divide book set track reset cancel
    update change install read display print return implement just sorry simple could would
    dear greetings tldr note okay sure need want looking wondering curious anyone"""
_COMMON_WORDS = frozenset(_STARTERS.split())
_MORE_FUNCTION_WORDS = """me us them am been being has have had having s t ll re ve d m into
    onto than too very just please kindly really actually way like want need know tell much
    many quick quickly briefly could would you your kind mind possible able go going"""
_FUNCTION_WORDS = _COMMON_WORDS | frozenset(_MORE_FUNCTION_WORDS.split())
_TOKEN = re.compile(r"[a-z0-9_%]+")

_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
_UNITS += " fifteen sixteen seventeen eighteen nineteen"
_UNIT_V = {w: i for i, w in enumerate(_UNITS.split())}
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_TENS_V = {w: 10 * (i + 2) for i, w in enumerate(_TENS)}
_SCALE_V = {"thousand": 1000, "million": 10**6, "billion": 10**9}
_NUM_WORD = "|".join(sorted([*_UNIT_V, *_TENS_V, "hundred", *_SCALE_V], key=len, reverse=True))
_SPELLED = re.compile(rf"\b(?:{_NUM_WORD})(?:(?:[\s-]+(?:and[\s-]+)?)(?:{_NUM_WORD}))*\b", re.I)
_CURRENCY_SIGN = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}
_SIGNED = re.compile(r"([$€£¥])\s?(\d[\d,]*(?:\.\d+)?)")
_CURRENCY_WORD = re.compile(
    r"(\d[\d,]*(?:\.\d+)?)\s*(dollars?|bucks|usd|euros?|eur|pounds sterling|gbp|yen|jpy)\b", re.I
)
_CURRENCY_CODE = {"dollar": "USD", "dollars": "USD", "bucks": "USD", "usd": "USD", "euro": "EUR",
                  "euros": "EUR", "eur": "EUR", "pounds sterling": "GBP", "gbp": "GBP",
                  "yen": "JPY", "jpy": "JPY"}  # fmt: skip
_PERCENT = re.compile(r"(\d)\s*(?:percent|per cent|pct)\b", re.I)
_PHRASES = (
    (re.compile(r"\bwhat(?: is|'s| was)? the (?:number|count|amount) of\b", re.I), "how many"),
    (re.compile(r"\bwhat number of\b", re.I), "how many"),
    (re.compile(r"\bhow much of\b", re.I), "how many"),
)
_ARITH = re.compile(r"(?<=[\d\s])([+×÷*/<>=]|>=|<=|\s-\s)(?=[\s\d])")
_SYMBOL_CLASS = {"+": "add", "×": "mul", "*": "mul", "÷": "div", "/": "div", ">": "gt",
                 "<": "lt", "=": "eq", ">=": "ge", "<=": "le", "-": "sub"}  # fmt: skip
_CLASSES = {
    "gt": "more greater larger bigger higher above exceed exceeds exceeding exceeded",
    "lt": "less fewer smaller lower below",
    "max": "max maximum most largest biggest highest greatest",
    "min": "min minimum least smallest lowest fewest",
    "before": "before earlier prior",
    "after": "after later",
    "inc": "increase increases increased increasing raise raises rise rises grow grows",
    "dec": "decrease decreases decreased decreasing reduce reduces reduced drop drops decline",
    "asc": "ascending",
    "desc": "descending",
    "add": "add adding plus sum",
    "sub": "subtract subtracting minus difference",
    "mul": "multiply multiplied times product",
    "div": "divide divided quotient",
    "eq": "equal equals",
    "first": "first earliest oldest",
    "last": "last latest newest",
}
_OPERATOR = {w: c for c, words in _CLASSES.items() for w in words.split()}
_DIRECTIONS = "left right up down north south east west forward backward"
_DIRECTION = frozenset(_DIRECTIONS.split())
_PHRASALS = """set sign look back pick follow make wake give show bring end come shut break slow
    write calm sum wrap clean log catch keep turn"""
_PHRASAL = frozenset(_PHRASALS.split())
_FROM_TO = {"from": "from", "to": "to", "into": "to", "towards": "to", "toward": "to"}

CLOSE_WORDING = 0.6
"""SequenceMatcher ratio of the content stems above which two prompts are "one sentence,
edited": there a substituted content word is a different question."""
LONG_PROMPT = 12
"""Content words beyond which the shared-content check applies (averaged embeddings of long
prompts are all close)."""
MIN_SHARED = 0.5
"""Share of the shorter long prompt's content stems the other must contain."""


@dataclass(frozen=True, slots=True)
class Signature:
    numbers: tuple[str, ...]
    """Normalised numbers, sorted (a multiset: "5 more at $5" has two)."""
    entities: frozenset[str]
    negations: int
    operators: tuple[str, ...]
    directions: tuple[str, ...]
    bound: frozenset[tuple[str, str]]
    """(``from``/``to``, the content word after it)."""
    words: frozenset[str]
    """Every lower-case word of the text (entity presence, case-insensitive)."""
    content: tuple[str, ...]
    """Content stems in order (numbers included), for the substitution and shared checks."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Which guard check refused a candidate, and the tokens only one side has."""

    check: str
    query_only: tuple[str, ...]
    cached_only: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.check} mismatch: {list(self.query_only)} vs {list(self.cached_only)}"


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


def _spelled_value(run: str) -> str:
    """Digits for a run of number words; a unit after a unit starts a new number."""
    out: list[str] = []
    total = current = 0
    last = ""
    for w in re.split(r"[\s-]+", run.lower()):
        if w == "and":
            if last not in ("hundred", "scale"):
                out += [str(total + current), "and"]
                total = current = 0
                last = ""
            continue
        kind = "unit" if w in _UNIT_V else "ten" if w in _TENS_V else w
        tens_unit = last == "ten" and kind == "unit" and _UNIT_V[w] < 10  # "twenty-five"
        if kind in ("unit", "ten") and last in ("unit", "ten") and not tens_unit:
            out.append(str(total + current))
            total = current = 0
        if kind == "unit":
            current += _UNIT_V[w]
        elif kind == "ten":
            current += _TENS_V[w]
        elif kind == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * _SCALE_V[w]
            current = 0
            kind = "scale"
        last = kind
    out.append(str(total + current))
    return " ".join(out)


def canonical(text: str) -> str:
    """The text with numbers, currencies, percentages and a few set phrases in one spelling."""
    t = _SPELLED.sub(lambda m: _spelled_value(m.group(0)), text)
    t = _SIGNED.sub(lambda m: f"{m.group(2)} {_CURRENCY_SIGN[m.group(1)]}", t)
    t = _CURRENCY_WORD.sub(lambda m: f"{m.group(1)} {_CURRENCY_CODE[m.group(2).lower()]}", t)
    t = _PERCENT.sub(r"\1%", t)
    for pattern, repl in _PHRASES:
        t = pattern.sub(repl, t)
    return t


def _strip(w: str) -> str:
    w = w.rstrip(".'’-")
    for suffix in ("'s", "’s"):
        if w.lower().endswith(suffix):
            w = w[: -len(suffix)]
    return w


def _entities(text: str) -> set[str]:
    ents: set[str] = set()
    for groups in _QUOTED.findall(text):
        ents.add("q:" + next(g for g in groups if g).strip().lower())
    ents.update("u:" + u.lower() for u in _URL.findall(text))
    bare = _URL.sub(" ", text)
    ents.update(c.lower() for c in _CODE.findall(bare))
    starts = {m.start(1) for m in _SENTENCE_START.finditer(bare)}
    for m in _WORD.finditer(bare):
        w = _strip(m.group(0))
        if len(w) < 2 or w in ("I", "I'm", "I've", "I'd", "I'll"):
            continue
        is_code = (w.isupper() and len(w) >= 2) or any(ch.isdigit() for ch in w)
        if is_code or (w[0].isupper() and m.start() not in starts):
            ents.add(w.lower())
        elif w[0].isupper() and w.lower() not in _COMMON_WORDS:
            ents.add(w.lower())  # sentence-initial but not a common opener: likely a name
    return ents


def _words_signals(lower: str) -> tuple[list[str], list[str], set[tuple[str, str]], list[str]]:
    """Operators, directions, from/to bindings and content stems of lower-cased text."""
    words = _TOKEN.findall(lower)
    ops: list[str] = [_SYMBOL_CLASS[s.strip()] for s in _ARITH.findall(lower)]
    dirs: list[str] = []
    bound: set[tuple[str, str]] = set()
    content: list[str] = []
    for i, w in enumerate(words):
        if w in _OPERATOR:
            ops.append(_OPERATOR[w])
        elif w in _DIRECTION and not (w in ("up", "down") and i and words[i - 1] in _PHRASAL):
            dirs.append(w)
        if w in _FROM_TO:
            nxt = next((x for x in words[i + 1 : i + 4] if x not in _FUNCTION_WORDS), None)
            if nxt is not None:
                bound.add((_FROM_TO[w], stem(nxt)))
        if w not in _FUNCTION_WORDS:
            content.append(stem(w))
    return ops, dirs, bound, content


@lru_cache(maxsize=65_536)
def signature(text: str) -> Signature:
    t = canonical(text)
    lower = t.lower()
    ops, dirs, bound, content = _words_signals(lower)
    return Signature(
        numbers=tuple(sorted(_num(m) for m in _NUMBER.findall(t))),
        entities=frozenset(_entities(t)),
        negations=len(_NEGATION.findall(t)),
        operators=tuple(sorted(ops)),
        directions=tuple(sorted(dirs)),
        bound=frozenset(bound),
        words=frozenset(_TOKEN.findall(lower)) | frozenset(re.findall(r"\S+", lower)),
        content=tuple(content),
    )


def _present(entity: str, other: Signature) -> bool:
    if entity in other.entities:
        return True
    body = entity.split(":", 1)[1] if entity[:2] in ("q:", "u:") else entity
    return all(w in other.words for w in _TOKEN.findall(body)) and bool(_TOKEN.findall(body))


def _multiset_diff(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    ca, cb = Counter(a), Counter(b)
    return tuple(sorted((ca - cb).elements())), tuple(sorted((cb - ca).elements()))


def _binding_conflict(a: Signature, b: Signature) -> Mismatch | None:
    role_a = {w: r for r, w in a.bound}
    role_b = {w: r for r, w in b.bound}
    swapped = sorted(w for w in role_a.keys() & role_b.keys() if role_a[w] != role_b[w])
    if swapped:
        return Mismatch("direction", tuple(f"{role_a[w]} {w}" for w in swapped),
                        tuple(f"{role_b[w]} {w}" for w in swapped))  # fmt: skip
    for role in ("from", "to"):
        wa = {w for r, w in a.bound if r == role}
        wb = {w for r, w in b.bound if r == role}
        if wa and wb and not wa & wb:
            return Mismatch("direction", tuple(sorted(wa)), tuple(sorted(wb)))
    return None


def _substituted(a: Signature, b: Signature) -> Mismatch | None:
    sm = SequenceMatcher(None, a.content, b.content, autojunk=False)
    if sm.ratio() >= CLOSE_WORDING:
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag == "replace":
                return Mismatch("substituted content words", a.content[i1:i2], b.content[j1:j2])
    short, long_ = sorted((set(a.content), set(b.content)), key=len)
    if len(long_) > LONG_PROMPT and len(short & long_) < MIN_SHARED * len(short):
        return Mismatch(
            "shared content", tuple(sorted(set(a.content) - set(b.content)))[:8],
            tuple(sorted(set(b.content) - set(a.content)))[:8],
        )  # fmt: skip
    return None


def check(query: str, cached: str) -> Mismatch | None:
    """The first guard check that refuses ``cached``'s answer for ``query`` (``None``: agree)."""
    a, b = signature(query), signature(cached)
    if a.numbers != b.numbers:
        return Mismatch("numbers", *_multiset_diff(a.numbers, b.numbers))
    qa = tuple(sorted(e for e in a.entities if not _present(e, b)))
    cb = tuple(sorted(e for e in b.entities if not _present(e, a)))
    if qa or cb:
        return Mismatch("entities", qa, cb)
    if a.negations != b.negations:
        return Mismatch("negation", (f"{a.negations} negations",), (f"{b.negations} negations",))
    if a.operators != b.operators:
        return Mismatch("operators", *_multiset_diff(a.operators, b.operators))
    if a.directions != b.directions:
        return Mismatch("direction", *_multiset_diff(a.directions, b.directions))
    return _binding_conflict(a, b) or _substituted(a, b)


def mismatch(query: str, cached: str) -> str | None:
    """Why ``cached``'s answer must not serve ``query`` as text (``None`` when they agree)."""
    got = check(query, cached)
    return None if got is None else str(got)


def _tokens(text: str) -> list[str]:
    """Content stems of a text (the bench uses it to spot MMLU's repeated questions)."""
    return list(signature(text).content)
