"""Features of a prompt for the learned complexity policy: its embedding plus shape counts.

The embedding (the package's local model, see :mod:`spendstream.cache.embedders`) carries what
the prompt is about and how it is phrased; the shape counts (length, digits, maths symbols,
answer options, code) carry how hard it looks in ways that transfer to subjects the model never
saw — which is what the subject-held-out evaluation measures. Hashed word features were tried
first and did no better than random routing on held-out subjects (README "Router").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from ..cache.embedders import Embedder

SHAPE_NAMES: Final = (
    "log_chars",
    "log_words",
    "digit_share",
    "math_symbols",
    "has_equation",
    "option_lines",
    "question_marks",
    "long_words_share",
    "code_like",
)

_WORD = re.compile(r"[A-Za-z]+|[0-9]+(?:\.[0-9]+)?")
_MATH = re.compile(r"[=+*/^<>%√∑∫πθλμσ]|\\[a-z]+")
_OPTION = re.compile(r"^\s*[A-D][.)]\s", re.M)
_CODE = re.compile(r"[{};]|def |return |print\(|\bint\b|==")


def shape(text: str) -> list[float]:
    words = _WORD.findall(text)
    n_chars = len(text)
    n_words = max(len(words), 1)
    return [
        math.log1p(n_chars),
        math.log1p(n_words),
        sum(ch.isdigit() for ch in text) / max(n_chars, 1),
        float(min(len(_MATH.findall(text)), 40)),
        1.0 if "=" in text else 0.0,
        float(len(_OPTION.findall(text))),
        float(min(text.count("?"), 5)),
        sum(len(w) > 8 for w in words) / n_words,
        float(min(len(_CODE.findall(text)), 20)),
    ]


def features(texts: Sequence[str], embedder: Embedder) -> npt.NDArray[np.float32]:
    """One row per prompt: embedding (unit length) then the shape counts (unscaled)."""
    emb = embedder.embed(texts)
    shapes = np.array([shape(t) for t in texts], dtype=np.float32).reshape(len(texts), -1)
    return np.hstack([emb, shapes]).astype(np.float32)
