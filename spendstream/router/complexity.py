"""Complexity policies: how likely a prompt needs the strong model, and where to cut.

Two implementations share one shape (``score`` then ``threshold``):

* :class:`KeywordHeuristic` — the seed's rule of thumb (reasoning keywords and length), kept as
  the baseline the learned policy must beat.
* :class:`LearnedComplexity` — ridge regression over the prompt's local embedding and shape
  counts, trained offline on RouteLLM's MMLU correctness labels (``spendstream.router.train``);
  its weights are ``router/data/complexity.npz`` (a few kB). The cut is set by a *target
  quality* ("reach 95% of the strong model's accuracy"): the shipped calibration maps that
  target to the share of prompts to send strong (measured on subjects held out of training),
  and that share to a score threshold. Prompts far from the training domain (cosine to the
  training prompts' mean embedding below its 5th percentile) are judged by the heuristic.
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from typing import Protocol

import numpy as np

from ..cache.embedders import Embedder, local_embedder
from . import features as fx
from .train import Weights, share_for


class ComplexityPolicy(Protocol):
    name: str

    def score(self, text: str) -> float:
        """Higher means more likely to need the strong model."""
        ...

    def threshold(self, target_quality: float) -> float:
        """Scores above this go to the strong model."""
        ...

    def judge(self, text: str, target_quality: float) -> tuple[float, float, str]:
        """(score, threshold, name of the policy that judged)."""
        ...


_KEYWORDS = re.compile(
    r"\b(analy[sz]e|explain why|prove|derive|step[- ]by[- ]step|compare|evaluate|design|"
    r"optimi[sz]e|debug|calculate|reason(?:ing)?|implement|architecture|trade-?offs?|"
    r"complex|multi-step|justify|critique|theorem|algorithm)\b",
    re.I,
)


class KeywordHeuristic:
    """Seed baseline: 0.25 per reasoning keyword plus up to 0.5 for length (400+ words)."""

    name = "heuristic"

    def __init__(self, cut: float = 0.5) -> None:
        self.cut = cut

    def score(self, text: str) -> float:
        hits = len(_KEYWORDS.findall(text))
        words = len(text.split())
        return min(1.0, 0.25 * hits + min(0.5, words / 800))

    def threshold(self, target_quality: float) -> float:
        """The heuristic has no calibration: one fixed cut whatever the target."""
        return self.cut

    def judge(self, text: str, target_quality: float) -> tuple[float, float, str]:
        return self.score(text), self.cut, self.name


class LearnedComplexity:
    """Packaged ridge model; ``score`` is the predicted accuracy gain of the strong model."""

    name = "learned"

    def __init__(self, embedder: Embedder | None = None, path: str | None = None) -> None:
        if path is None:
            ref = resources.files("spendstream.router") / "data" / "complexity.npz"
            with resources.as_file(ref) as p, np.load(p) as d:
                data = {k: d[k] for k in d.files}
        else:
            with np.load(path) as d:
                data = {k: d[k] for k in d.files}
        self.weights = Weights(data["mean"], data["scale"], data["coef"], float(data["bias"][0]))
        self.calibration = [(float(q), float(s)) for q, s in data["calibration"]]
        self.quantiles = data["score_quantiles"]
        self.centroid = data["centroid"]
        self.domain_cut = float(data["domain_cut"][0])
        """5th percentile of the training prompts' cosine to their mean embedding."""
        self.fallback = KeywordHeuristic()
        self._embedder = embedder
        self._thresholds: dict[float, float] = {}

    @cached_property
    def embedder(self) -> Embedder:
        return self._embedder or local_embedder()

    def score(self, text: str) -> float:
        return float(self.weights.predict(fx.features([text], self.embedder))[0])

    def judge(self, text: str, target_quality: float) -> tuple[float, float, str]:
        """Learned score, or the heuristic's for a prompt unlike the training set.

        The shipped weights learned from MMLU questions; a chat turn ("hi, how are you?") is
        outside that domain and its score means little, so it is judged by the heuristic.
        """
        x = fx.features([text], self.embedder)
        if float(x[0, : self.centroid.shape[0]] @ self.centroid) < self.domain_cut:
            return self.fallback.judge(text, target_quality)
        return float(self.weights.predict(x)[0]), self.threshold(target_quality), self.name

    def strong_share(self, target_quality: float) -> float:
        return share_for(self.calibration, target_quality)

    def threshold(self, target_quality: float) -> float:
        cached = self._thresholds.get(target_quality)
        if cached is None:
            cached = self._thresholds[target_quality] = self._threshold(target_quality)
        return cached

    def _threshold(self, target_quality: float) -> float:
        share = self.strong_share(target_quality)
        if share <= 0:
            return float("inf")
        q = np.linspace(0, 1, len(self.quantiles))
        return float(np.interp(1 - share, q, self.quantiles))
