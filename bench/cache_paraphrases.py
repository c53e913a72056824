"""Generated paraphrase and near-miss pairs for ``bench/cache_quality.py``.

Templates, not a fixed list, so the guard is not fitted to the examples: each *family* is a kind
of request (word problems, conversions, travel, code, support, comparisons, orders, …) with
random slots (names, cities, numbers, languages), written in several ways. A *paraphrase* is
the same request with the same slots reworded by one of these kinds:

- ``politeness``: a prefix or suffix ("Please solve: …", "Hi! Quick question: …", "… Thanks!");
- ``synonyms``: the family's alternative wording (buys → purchases, quickest → fastest);
- ``reorder``: clauses in another order;
- ``how_many``: "How many" → "What number of";
- ``spelling``: numbers and units spelled differently ("$5" → "5 dollars", "7" → "seven",
  "15%" → "15 percent");
- ``imperative``: question ↔ imperative ("What is …?" → "Tell me …").

A *near miss* is the same wording (sometimes also reworded) with one meaning-carrying slot
changed: ``number``, ``entity``, ``negation``, ``direction``, ``comparison``. A cached answer is
right for a paraphrase and wrong for a near miss. Families are ``short`` (one sentence) or
``long`` (a paragraph, > 25 tokens). Every pair is generated from ``random.Random(seed)``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ["Maria", "Lucas", "Aisha", "Kenji", "Olga", "Tomas", "Priya", "Diego", "Fatima", "Noah"]
CITIES = ["Paris", "Berlin", "Madrid", "Lisbon", "Vienna", "Prague", "Oslo", "Dublin", "Rome"]
LANGS = ["Python", "Java", "Rust", "Go", "JavaScript", "Ruby", "Kotlin"]
ITEMS = ["apples", "books", "tickets", "pencils", "stamps", "marbles", "cookies", "cards"]
SPELL = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
         9: "nine", 10: "ten", 11: "eleven", 12: "twelve", 15: "fifteen", 20: "twenty"}  # fmt: skip
PREFIXES = ["Please solve: ", "Hi! Quick question: ", "Could you help me with this? ",
            "Can you please answer this: ", "I need help. "]  # fmt: skip
SUFFIXES = [" Thanks!", " Thank you in advance.", " Please be brief."]


@dataclass(frozen=True)
class Pair:
    stored: str
    query: str
    kind: str
    size: str
    """``short`` or ``long``."""
    family: str


def spell(n: int) -> str:
    return SPELL.get(n, str(n))


def _other(rng: random.Random, pool: list[str], not_: str) -> str:
    return rng.choice([p for p in pool if p != not_])


Slots = dict[str, object]
Family = Callable[[random.Random], tuple[str, list[tuple[str, str]], list[tuple[str, str]]]]
"""rng → (stored prompt, [(kind, paraphrase)], [(kind, near miss)])."""


def word_problem(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    n, a, b, p = rng.choice(NAMES), rng.randint(3, 20), rng.randint(2, 12), rng.randint(2, 9)
    it = rng.choice(ITEMS)
    base = (f"{n} has {a} {it}. {n} buys {b} more {it} at ${p} each. How many {it} does {n} "
            f"have now, and how much money did {n} spend in total?")  # fmt: skip
    para = [
        ("how_many", base.replace("How many", "What number of")),
        ("spelling", base.replace(f"${p}", f"{p} dollars").replace(f"s {b}", f"s {spell(b)}")),
        ("synonyms", base.replace("buys", "purchases").replace("in total", "altogether")),
        ("reorder", f"{n} buys {b} more {it} at ${p} each, having {a} {it} already. How many {it} "
                    f"does {n} have now, and how much money did {n} spend in total?"),
        ("imperative", f"{n} has {a} {it}. {n} buys {b} more {it} at ${p} each. Work out how many "
                       f"{it} {n} has now and how much money {n} spent in total."),
    ]  # fmt: skip
    b2 = b + rng.randint(1, 5)
    near = [
        ("number", base.replace(f"buys {b} more", f"buys {b2} more")),
        ("number", base.replace(f"${p}", f"${p + 1}")),
        ("entity", base.replace(n, _other(rng, NAMES, n))),
    ]
    return base, para, near


def train(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    c1, h, v1, v2 = rng.choice(CITIES), rng.randint(1, 6), rng.randint(4, 9) * 10, 0
    v2 = v1 + rng.randint(1, 4) * 10
    c2 = _other(rng, CITIES, c1)
    base = (f"A train leaves {c1} at {h} pm travelling at {v1} km per hour towards {c2}. A second "
            f"train leaves {c1} one hour later at {v2} km per hour on the same track. At what time "
            f"does the second train catch up with the first one?")  # fmt: skip
    para = [
        ("politeness", rng.choice(PREFIXES) + base),
        ("politeness", base + rng.choice(SUFFIXES)),
        ("spelling", base.replace(f"at {h} pm", f"at {spell(h)} pm")),
        ("synonyms", base.replace("catch up with", "reach").replace("travelling", "moving")),
        ("imperative", base.replace("At what time does the second train catch up with the first "
                                    "one?", "Find the time when the second train catches up with "
                                    "the first one.")),
    ]  # fmt: skip
    near = [
        ("number", base.replace(f"at {v2} km", f"at {v2 + 10} km")),
        ("entity", base.replace(f"towards {c2}", f"towards {_other(rng, CITIES, c2)}")),
        ("negation", base.replace("on the same track", "not on the same track")),
    ]
    return base, para, near


def convert(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    units = [("Celsius", "Fahrenheit"), ("miles", "kilometres"), ("pounds", "kilograms"),
             ("inches", "centimetres"), ("litres", "gallons")]  # fmt: skip
    u1, u2 = rng.choice(units)
    if rng.random() < 0.5:
        u1, u2 = u2, u1
    a = rng.randint(2, 300)
    base = f"Convert {a} {u1} to {u2}."
    para = [
        ("politeness", f"Could you convert {a} {u1} to {u2} for me?"),
        ("imperative", f"How much is {a} {u1} in {u2}?"),
        ("synonyms", f"Change {a} {u1} into {u2}."),
        ("reorder", f"Into {u2}, convert {a} {u1}."),
    ]
    near = [
        ("number", f"Convert {a + rng.randint(1, 9)} {u1} to {u2}."),
        ("direction", f"Convert {a} {u2} to {u1}."),
    ]
    return base, para, near


def percent(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    p, a = rng.choice([5, 10, 12, 15, 20, 25, 30, 40]), rng.randint(2, 90) * 10
    base = f"What is {p}% of {a}?"
    para = [
        ("spelling", f"What is {p} percent of {a}?"),
        ("imperative", f"Calculate {p}% of {a}."),
        ("politeness", f"Hey, what is {p}% of {a}? Thanks"),
    ]
    near = [("number", f"What is {p + 5}% of {a}?"), ("number", f"What is {p}% of {a + 10}?")]
    return base, para, near


def travel(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    c1 = rng.choice(CITIES)
    c2 = _other(rng, CITIES, c1)
    base = f"What is the fastest way to get from {c1} to {c2} by train?"
    para = [
        ("synonyms", f"What is the quickest way to get from {c1} to {c2} by train?"),
        ("reorder", f"By train, what is the fastest way to get from {c1} to {c2}?"),
        ("imperative", f"Tell me the fastest way to get from {c1} to {c2} by train."),
        (
            "politeness",
            f"Hello! What is the fastest way to get from {c1} to {c2} by train, please?",
        ),
    ]
    near = [
        ("direction", f"What is the fastest way to get from {c2} to {c1} by train?"),
        ("entity", f"What is the fastest way to get from {c1} to {_other(rng, CITIES, c2)} by "
                   "train?"),
        ("comparison", f"What is the slowest but cheapest way to get from {c1} to {c2} by train?"),
    ]  # fmt: skip
    return base, para, near


def code(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    lang = rng.choice(LANGS)
    task = rng.choice([("sort", "a list of numbers in ascending order"),
                       ("sort", "a list of strings in ascending order")])  # fmt: skip
    base = f"How do I {task[0]} {task[1]} in {lang}?"
    para = [
        ("synonyms", f"What is the way to {task[0]} {task[1]} in {lang}?"),
        ("imperative", f"Show me how to {task[0]} {task[1]} in {lang}."),
        ("reorder", f"In {lang}, how do I {task[0]} {task[1]}?"),
        ("politeness", f"Hi, could you tell me how I can {task[0]} {task[1]} in {lang}?"),
    ]
    near = [
        ("entity", f"How do I {task[0]} {task[1]} in {_other(rng, LANGS, lang)}?"),
        ("comparison", base.replace("ascending", "descending")),
    ]
    return base, para, near


def support(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    n, m = rng.randint(3, 12), 0
    m = rng.randint(1, n - 1)
    it = rng.choice(ITEMS)
    order = rng.randint(10_000, 99_999)
    base = (f"I ordered {n} {it} from your store last week and only {m} arrived. My order number "
            f"is {order}. What should I do to get the rest of my order?")  # fmt: skip
    para = [
        ("politeness", "Hello, " + base[0].lower() + base[1:] + " Thanks."),
        ("synonyms", base.replace("arrived", "were delivered").replace("get the rest of",
                                                                        "receive the rest of")),
        ("spelling", base.replace(f"ordered {n}", f"ordered {spell(n)}")
         .replace(f"only {m}", f"only {spell(m)}")),
        ("imperative", base.replace("What should I do to get the rest of my order?",
                                    "Tell me what to do to get the rest of my order.")),
    ]  # fmt: skip
    near = [
        ("number", base.replace(f"is {order}", f"is {order + rng.randint(1, 50)}")),
        ("negation", base.replace(f"only {m} arrived", "none arrived")),
        ("number", base.replace(f"only {m} arrived", f"only {m - 1 if m > 1 else m + 1} arrived")),
    ]
    return base, para, near


def compare(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    base = f"Is {a} squared greater than {b} times 40?"
    para = [
        ("synonyms", f"Is {a} squared larger than {b} times 40?"),
        ("spelling", f"Is {a} squared greater than {b} × 40?"),
        ("politeness", f"Quick question: is {a} squared greater than {b} times 40?"),
    ]
    near = [
        ("comparison", f"Is {a} squared less than {b} times 40?"),
        ("number", f"Is {a} squared greater than {b} times 50?"),
        ("negation", f"Is {a} squared not greater than {b} times 40?"),
    ]
    return base, para, near


def directions(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    k = rng.randint(2, 8)
    side = rng.choice(["left", "right"])
    flip = "right" if side == "left" else "left"
    base = f"Walk {k} blocks north and turn {side} at the bank. Where does that take me?"
    para = [
        ("spelling", base.replace(f"Walk {k}", f"Walk {spell(k)}")),
        ("politeness", "Sorry to bother you. " + base),
        ("synonyms", base.replace("Walk", "Go").replace("take me", "lead me")),
    ]
    near = [
        ("direction", base.replace(f"turn {side}", f"turn {flip}")),
        ("direction", base.replace("north", "south")),
        ("number", base.replace(f"Walk {k}", f"Walk {k + 1}")),
    ]
    return base, para, near


def schedule(rng: random.Random) -> tuple[str, list[tuple[str, str]], list[tuple[str, str]]]:
    n, day = rng.choice(NAMES), rng.choice(["Monday", "Tuesday", "Friday", "Sunday"])
    h = rng.randint(7, 11)
    base = f"Can I book a meeting with {n} before {h} am on {day}?"
    para = [
        ("synonyms", f"Can I schedule a meeting with {n} before {h} am on {day}?"),
        ("reorder", f"On {day}, can I book a meeting with {n} before {h} am?"),
        ("spelling", f"Can I book a meeting with {n} before {spell(h)} am on {day}?"),
        ("imperative", f"Book a meeting with {n} before {h} am on {day}, if possible."),
    ]
    near = [
        ("comparison", f"Can I book a meeting with {n} after {h} am on {day}?"),
        ("entity", f"Can I book a meeting with {_other(rng, NAMES, n)} before {h} am on {day}?"),
        ("negation", f"Can I not book a meeting with {n} before {h} am on {day}?"),
    ]
    return base, para, near


FAMILIES: dict[str, tuple[Family, str]] = {
    "word_problem": (word_problem, "long"),
    "train": (train, "long"),
    "support": (support, "long"),
    "convert": (convert, "short"),
    "percent": (percent, "short"),
    "travel": (travel, "short"),
    "code": (code, "short"),
    "compare": (compare, "short"),
    "directions": (directions, "short"),
    "schedule": (schedule, "short"),
}


def generate(seed: int, per_family: int) -> tuple[list[Pair], list[Pair]]:
    """(paraphrases, near misses) of ``per_family`` instances of every family."""
    rng = random.Random(seed)
    para: list[Pair] = []
    near: list[Pair] = []
    seen: set[str] = set()
    for fam, (make, size) in FAMILIES.items():
        made = 0
        while made < per_family:
            base, ps, ns = make(rng)
            if base in seen:
                continue
            seen.add(base)
            made += 1
            para += [Pair(base, q, k, size, fam) for k, q in ps if q != base]
            near += [Pair(base, q, k, size, fam) for k, q in ns if q != base]
    return para, near


def words(text: str) -> int:
    return len(re.findall(r"\w+", text))
