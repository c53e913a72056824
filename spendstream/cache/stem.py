"""English (Porter2 / Snowball) stemmer, so the guard compares words by their stems.

No stemmer is installed in the project's environment (no ``snowballstemmer``, ``nltk`` or
``PyStemmer``), and the guard needs only this one algorithm, so it is written out here from the
published Snowball "english" definition: R1/R2 regions, steps 0–5, the exceptional forms. The
seed's ``_stem`` cut any final "s", turning "this" into "thi" and "does" into "doe", which the
guard then counted as edited content words; Porter2 keeps "this" (the vowel before the "s"
protects it) and the guard never stems function words, so "does" stays "does".
"""

from __future__ import annotations

from functools import lru_cache

_VOWELS = frozenset("aeiouy")
_DOUBLES = ("bb", "dd", "ff", "gg", "mm", "nn", "pp", "rr", "tt")
_LI_ENDING = frozenset("cdeghkmnrt")
_EXCEPTIONS = {
    "skis": "ski", "skies": "sky", "dying": "die", "lying": "lie", "tying": "tie",
    "idly": "idl", "gently": "gentl", "ugly": "ugli", "early": "earli", "only": "onli",
    "singly": "singl", "sky": "sky", "news": "news", "howe": "howe", "atlas": "atlas",
    "cosmos": "cosmos", "bias": "bias", "andes": "andes",
}  # fmt: skip
_AFTER_1A = frozenset(
    ["inning", "outing", "canning", "herring", "earring", "proceed", "exceed", "succeed"]
)
_STEP2 = (
    ("ization", "ize"), ("ational", "ate"), ("fulness", "ful"), ("ousness", "ous"),
    ("iveness", "ive"), ("tional", "tion"), ("biliti", "ble"), ("lessli", "less"),
    ("entli", "ent"), ("ation", "ate"), ("alism", "al"), ("aliti", "al"), ("ousli", "ous"),
    ("iviti", "ive"), ("fulli", "ful"), ("enci", "ence"), ("anci", "ance"), ("abli", "able"),
    ("izer", "ize"), ("ator", "ate"), ("alli", "al"), ("bli", "ble"), ("ogi", "og"), ("li", ""),
)  # fmt: skip
_STEP3 = (
    ("ational", "ate"), ("tional", "tion"), ("alize", "al"), ("icate", "ic"), ("iciti", "ic"),
    ("ative", ""), ("ical", "ic"), ("ness", ""), ("ful", ""),
)  # fmt: skip
_STEP4 = (
    "ement", "ance", "ence", "able", "ible", "ment", "ant", "ent", "ism", "ate", "iti", "ous",
    "ive", "ize", "ion", "al", "er", "ic",
)  # fmt: skip


def _is_vowel(w: str, i: int) -> bool:
    return w[i] in _VOWELS


def _region_after(w: str, start: int) -> int:
    """Index after the first non-vowel that follows a vowel, from ``start`` (R1/R2 rule)."""
    for i in range(start + 1, len(w)):
        if not _is_vowel(w, i) and _is_vowel(w, i - 1):
            return i + 1
    return len(w)


def _regions(w: str) -> tuple[int, int]:
    for prefix in ("gener", "commun", "arsen"):
        if w.startswith(prefix):
            r1 = len(prefix)
            break
    else:
        r1 = _region_after(w, 0)
    return r1, _region_after(w, r1)


def _short_syllable_end(w: str) -> bool:
    if len(w) == 2:
        return _is_vowel(w, 0) and not _is_vowel(w, 1)
    return (
        len(w) >= 3
        and not _is_vowel(w, len(w) - 3)
        and _is_vowel(w, len(w) - 2)
        and w[-1] not in _VOWELS
        and w[-1] not in "wxY"
    )


def _is_short(w: str, r1: int) -> bool:
    return r1 >= len(w) and _short_syllable_end(w)


def _step1a(w: str) -> str:
    if w.endswith("sses"):
        return w[:-2]
    if w.endswith(("ied", "ies")):
        return w[:-2] if len(w) > 4 else w[:-1]
    if w.endswith(("us", "ss")):
        return w
    if w.endswith("s") and any(c in _VOWELS for c in w[:-2]):
        return w[:-1]
    return w


def _step1b(w: str, r1: int) -> str:
    for suf in ("eedly", "eed"):
        if w.endswith(suf):
            return w[: -len(suf)] + "ee" if len(w) - len(suf) >= r1 else w
    for suf in ("ingly", "edly", "ing", "ed"):
        if w.endswith(suf):
            stem = w[: -len(suf)]
            if not any(c in _VOWELS for c in stem):
                return w
            if stem.endswith(("at", "bl", "iz")):
                return stem + "e"
            if stem.endswith(_DOUBLES):
                return stem[:-1]
            if _is_short(stem, r1):
                return stem + "e"
            return stem
    return w


def _step1c(w: str) -> str:
    if len(w) > 2 and w[-1] in "yY" and w[-2] not in _VOWELS:
        return w[:-1] + "i"
    return w


def _step2(w: str, r1: int) -> str:
    for suf, rep in _STEP2:
        if w.endswith(suf):
            if len(w) - len(suf) < r1:
                return w
            if suf == "ogi" and not w[: -len(suf)].endswith("l"):
                return w
            if suf == "li" and (len(w) < 3 or w[-3] not in _LI_ENDING):
                return w
            return w[: -len(suf)] + rep
    return w


def _step3(w: str, r1: int, r2: int) -> str:
    for suf, rep in _STEP3:
        if w.endswith(suf):
            if len(w) - len(suf) < r1 or (suf == "ative" and len(w) - len(suf) < r2):
                return w
            return w[: -len(suf)] + rep
    return w


def _step4(w: str, r2: int) -> str:
    for suf in _STEP4:
        if w.endswith(suf):
            if len(w) - len(suf) < r2:
                return w
            if suf == "ion" and (len(w) < 4 or w[-4] not in "st"):
                return w
            return w[: -len(suf)]
    return w


def _step5(w: str, r1: int, r2: int) -> str:
    if w.endswith("e"):
        base = w[:-1]
        if len(base) >= r2 or (len(base) >= r1 and not _short_syllable_end(base)):
            return base
    elif w.endswith("l") and len(w) - 1 >= r2 and w.endswith("ll"):
        return w[:-1]
    return w


@lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """The Porter2 stem of a lower-case English word ("running" → "run", "this" → "this")."""
    w = word.lower()
    if len(w) <= 2:
        return w
    if w in _EXCEPTIONS:
        return _EXCEPTIONS[w]
    w = w.lstrip("'")
    if w.startswith("y"):
        w = "Y" + w[1:]
    w = "".join("Y" if c == "y" and i and w[i - 1] in _VOWELS else c for i, c in enumerate(w))
    for suf in ("'s'", "'s", "'"):
        if w.endswith(suf):
            w = w[: -len(suf)]
            break
    r1, r2 = _regions(w)  # once: the steps only shorten the word (or swap its last letter)
    w = _step1a(w)
    if w in _AFTER_1A:
        return w
    w = _step1c(_step1b(w, r1))
    w = _step2(w, r1)
    w = _step3(w, r1, r2)
    w = _step4(w, r2)
    w = _step5(w, r1, r2)
    return w.replace("Y", "y")
