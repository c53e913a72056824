"""Training, calibration and evaluation of the learned complexity policy (numpy only).

Data: per prompt, whether the cheap and the strong model answered correctly — RouteLLM's MMLU
set (Mixtral-8x7B vs GPT-4) for the packaged model, or a user's own labels file
(``spendstream router train --labels FILE``). The label is the strong model's gain (+1 strong
right and cheap wrong, minus the reverse); ranking prompts by its ridge prediction gives the most
accuracy per strong call. (A logistic model of "strong wins" alone ignored the 5% of prompts
where only the cheap model is right, and needed more strong calls — README "Router".)

Honesty comes from three choices, each with a stated statistic:

* **Cross-fitting.** Every calibration number is read off out-of-fold scores: folds are whole
  groups (MMLU subjects; single prompts for ungrouped labels), so a score is what a model that
  never saw the prompt's topic says about it — the situation of a deployed router.
* **The cut for a target quality** ``t`` is the highest score cut whose quality passes a
  one-sided test on the out-of-fold scores: with ``z_i = routed_ok_i − t·strong_ok_i``, quality
  ≥ t ⇔ mean(z) ≥ 0, and the cut is accepted when the lower 95% confidence bound
  ``mean(z) − 1.645·se`` is ≥ 0, ``se`` cluster-robust over groups (prompts of one subject
  are correlated: a model is good or bad at a whole topic). Cuts are tested in a fixed sequence
  from "all strong" towards "all cheap" and the walk stops at the first failure (Learn-then-Test),
  so testing ~200 cuts needs no multiplicity correction. Stored per target on a 0.0025 grid; a
  requested target uses the next grid point up (conservative).

  Measured (MMLU, 5 splits holding out 20% of subjects, worst held-out quality at targets
  0.90/0.95/0.98, mean strong share): point-estimate cut 0.883 (misses 0.90) / 0.964 / 0.988 at
  shares 0.28/0.61/0.84; i.i.d. bound 0.904/0.968/0.995 at 0.32/0.64/0.87; cluster-robust bound
  (kept) 0.935/0.972/0.996 at 0.38/0.68/0.88. The i.i.d. bound happened to hold on these splits
  but with 0.004 to spare, and its assumption is the one that is false.
* **The domain test** is conformal: the similarity of a prompt to its nearest of 64 spherical
  k-means centroids of the training embeddings, computed out of fold; the cut is the 1% quantile,
  so a prompt from the training distribution (even an unseen subject) is called out of domain
  with probability ≈ 1%, and a chat turn or a foreign task is not judged by weights that never
  saw its kind. What happens then is the endpoint's ``fallback`` (default: strong).

The artefact (``complexity.npz``) holds the weights, centroids (float16), the domain cut and the
target → cut table: 36 kB for the packaged one, which ``python -m spendstream.router.train
--out DIR`` rebuilds from the MMLU folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..cache.embedders import Embedder, local_embedder
from . import features as fx

CHEAP_COL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_COL = "gpt-4-1106-preview"
F32 = npt.NDArray[np.float32]
BOOL = npt.NDArray[np.bool_]
TARGETS = np.round(np.arange(0.5, 1.00001, 0.0025), 4)
"""Target qualities the artefact stores a cut for."""
SHARES = np.linspace(1.0, 0.0, 201)
"""Candidate strong shares (cuts at these out-of-fold score quantiles), tested in this order."""
Z_ONE_SIDED_95 = 1.6449
DOMAIN_ALPHA = 0.01
CENTROIDS = 64


@dataclass(frozen=True)
class Dataset:
    prompts: list[str]
    subjects: list[str]
    """Group of each prompt (MMLU subject); folds never split a group."""
    cheap_ok: BOOL
    strong_ok: BOOL

    @property
    def gain(self) -> F32:
        """+1 strong right and cheap wrong, -1 the reverse, 0 when they agree."""
        return self.strong_ok.astype(np.float32) - self.cheap_ok.astype(np.float32)

    def subset(self, rows: npt.NDArray[np.int64]) -> Dataset:
        return Dataset(
            [self.prompts[i] for i in rows],
            [self.subjects[i] for i in rows],
            self.cheap_ok[rows],
            self.strong_ok[rows],
        )


def load_mmlu(folder: Path) -> Dataset:
    """Read every ``mmlu_<subject>.csv`` (subject = file name) in a stable order."""
    prompts: list[str] = []
    subjects: list[str] = []
    cheap: list[bool] = []
    strong: list[bool] = []
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise FileNotFoundError(f"no mmlu_*.csv files in {folder}")
    for f in files:
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                prompts.append(row["prompt"])
                subjects.append(f.stem.removeprefix("mmlu_"))
                cheap.append(row[CHEAP_COL] == "True")
                strong.append(row[STRONG_COL] == "True")
    return Dataset(prompts, subjects, np.array(cheap), np.array(strong))


_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


def _flag(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{where}: expected true/false or 1/0, got {value!r}")


def load_labels(path: Path) -> Dataset:
    """A user's labels: CSV or JSON Lines with ``prompt, cheap_correct, strong_correct`` and an
    optional ``group`` (conversation, customer, topic: folds keep a group together)."""
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    prompts, groups, cheap, strong = [], [], [], []
    for i, row in enumerate(rows, 1):
        where = f"{path.name} row {i}"
        if not isinstance(row, dict) or not str(row.get("prompt") or ""):
            raise ValueError(f"{where}: needs a non-empty prompt")
        prompts.append(str(row["prompt"]))
        groups.append(str(row.get("group") or f"row{i}"))
        cheap.append(_flag(row.get("cheap_correct"), where))
        strong.append(_flag(row.get("strong_correct"), where))
    if len(prompts) < 20:
        raise ValueError(f"{path.name}: {len(prompts)} labelled prompts; need at least 20")
    return Dataset(prompts, groups, np.array(cheap), np.array(strong))


@dataclass
class Weights:
    """Standardisation and ridge weights over :func:`features.features` columns."""

    mean: F32
    scale: F32
    coef: F32
    bias: float

    def standardise(self, x: F32) -> F32:
        """Clipped to ±4 sd: a prompt unlike the training set must not get an extreme score."""
        out: F32 = np.clip((x - self.mean) / self.scale, -4.0, 4.0).astype(np.float32)
        return out

    def predict(self, x: F32) -> F32:
        """Expected accuracy gain of the strong model over the cheap one, per prompt."""
        out: F32 = (self.standardise(x) @ self.coef + self.bias).astype(np.float32)
        return out


def fit(x: F32, y: F32, lam: float = 100.0) -> Weights:
    """Ridge regression in closed form (numpy only) on standardised features."""
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    scale = np.where(sd < 1e-3, 1.0, sd)  # a constant column must not blow up at serving time
    z = np.clip((x - mean) / scale, -4.0, 4.0).astype(np.float64)
    zb = np.hstack([z, np.ones((len(z), 1))])
    reg = lam * np.eye(zb.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    w = np.linalg.solve(zb.T @ zb + reg, zb.T @ y.astype(np.float64))
    return Weights(
        mean.astype(np.float32), scale.astype(np.float32), w[:-1].astype(np.float32), float(w[-1])
    )


def kmeans(emb: F32, k: int = CENTROIDS, seed: int = 0, iters: int = 15) -> F32:
    """Spherical k-means (unit centroids, cosine assignment): a compact stand-in for the
    training set in the nearest-neighbour domain test."""
    rng = np.random.default_rng(seed)
    k = min(k, len(emb))
    cent = emb[rng.choice(len(emb), k, replace=False)].astype(np.float32)
    for _ in range(iters):
        assign = np.argmax(emb @ cent.T, axis=1)
        for j in range(k):
            members = emb[assign == j]
            if len(members):
                cent[j] = members.sum(axis=0)
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-9)
    return cent


def nearest_similarity(emb: F32, centroids: F32) -> F32:
    out: F32 = (emb @ centroids.T.astype(np.float32)).max(axis=1).astype(np.float32)
    return out


# --- evaluation helpers -------------------------------------------------------------------------
def subject_folds(subjects: Sequence[str], k: int, seed: int = 0) -> list[npt.NDArray[np.int64]]:
    """Grouped folds: every group's prompts in one fold (assignment by a seeded stable hash)."""
    names = sorted(set(subjects))
    order = sorted(names, key=lambda s: zlib.crc32(f"{seed}:{s}".encode()))
    fold_of = {s: i % k for i, s in enumerate(order)}
    by = np.array([fold_of[s] for s in subjects])
    return [np.flatnonzero(by == f) for f in range(k)]


def routed_accuracy(
    scores: F32, threshold: float, cheap_ok: BOOL, strong_ok: BOOL
) -> tuple[float, float]:
    """(strong-call share, accuracy) when prompts scoring above ``threshold`` go strong."""
    strong = scores > threshold
    acc = np.where(strong, strong_ok, cheap_ok).mean()
    return float(strong.mean()), float(acc)


def curve(
    scores: F32, cheap_ok: BOOL, strong_ok: BOOL, points: int = 101
) -> list[tuple[float, float]]:
    """Strong share vs accuracy when the top-q share by score goes strong, q = 0..1.

    Ties are broken by position so the share is exactly q even for a coarse score.
    """
    order = np.argsort(-scores, kind="stable")
    gain = (strong_ok.astype(np.int64) - cheap_ok.astype(np.int64))[order]
    cum = np.concatenate([[0], np.cumsum(gain)])
    n = len(scores)
    base = cheap_ok.sum()
    out = []
    for i in range(points):
        k = round(n * i / (points - 1))
        out.append((k / n, float((base + cum[k]) / n)))
    return out


def share_at(curve_pts: list[tuple[float, float]], target_acc: float) -> float:
    """Smallest strong share whose accuracy reaches ``target_acc`` (linear between points)."""
    prev = curve_pts[0]
    if prev[1] >= target_acc:
        return prev[0]
    for pt in curve_pts[1:]:
        if pt[1] >= target_acc:
            (s0, a0), (s1, a1) = prev, pt
            return s0 + (s1 - s0) * (target_acc - a0) / (a1 - a0) if a1 > a0 else s1
        prev = pt
    return 1.0


def cross_validated_scores(x: F32, ds: Dataset, k: int = 5, seed: int = 0) -> F32:
    """Out-of-fold scores: each group scored by a model that never saw that group."""
    oof = np.zeros(len(ds.prompts), np.float32)
    for rows in subject_folds(ds.subjects, k, seed):
        train = np.setdiff1d(np.arange(len(ds.prompts)), rows)
        oof[rows] = fit(x[train], ds.gain[train]).predict(x[rows])
    return oof


# --- calibration --------------------------------------------------------------------------------
def calibrate_cuts(
    scores: F32, cheap_ok: BOOL, strong_ok: BOOL, groups: Sequence[str], z: float = Z_ONE_SIDED_95
) -> F32:
    """Score cut per :data:`TARGETS`: the highest cut whose quality passes the one-sided test
    (module docstring), walking :data:`SHARES` from all-strong down; ``-inf`` = all strong."""
    cuts = np.full(len(TARGETS), -np.inf, np.float32)
    n = len(scores)
    if n == 0:
        return cuts
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(g.max()) + 1
    if n_groups < 2:
        return cuts  # no spread to estimate a bound from: stay with the strong model
    cand = np.quantile(scores, 1 - SHARES).astype(np.float64)
    cand[0], cand[-1] = -np.inf, np.inf
    size = np.bincount(g, minlength=n_groups).astype(np.float64)
    s = np.bincount(g, weights=strong_ok.astype(np.float64), minlength=n_groups)
    r = np.stack(
        [
            np.bincount(g, weights=np.where(scores > c, strong_ok, cheap_ok), minlength=n_groups)
            for c in cand
        ]
    )  # candidates × groups: correct answers when routed at that cut
    t = TARGETS[:, None].astype(np.float64)
    zbar = (r.sum(axis=1)[None] - t * s.sum()) / n
    sq = (r**2).sum(axis=1)[None] - 2 * t * (r @ s)[None] + t**2 * (s @ s)
    cross = (r @ size)[None] - t * (size @ s)
    dev = sq - 2 * zbar * cross + zbar**2 * (size @ size)
    se = np.sqrt(np.maximum(dev, 0.0) * n_groups / (n_groups - 1)) / n
    ok = zbar - z * se >= -1e-12
    ok[:, 0] = True  # all strong is the reference itself
    first_fail = np.where(ok.all(axis=1), len(cand), np.argmin(ok, axis=1))
    cuts[:] = cand[first_fail - 1]
    return cuts


@dataclass
class Artefact:
    """What the Router loads: weights, domain test, target → cut table."""

    weights: Weights
    centroids: F32
    domain_cut: float
    cuts: F32
    """Score cut for each of :data:`TARGETS` (strong when score > cut)."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def cut_for(self, target_quality: float) -> float:
        """Cut of the smallest stored target ≥ the requested one (conservative)."""
        i = int(np.searchsorted(TARGETS, target_quality - 1e-9, side="left"))
        return float(self.cuts[i]) if i < len(self.cuts) else float("-inf")

    def score(self, x: F32) -> tuple[F32, F32]:
        """(learned score, nearest-centroid similarity) per feature row."""
        return self.weights.predict(x), nearest_similarity(x[:, : self.dim], self.centroids)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        w = self.weights
        with path.open("wb") as fh:
            np.savez_compressed(
                fh,
                mean=w.mean,
                scale=w.scale,
                coef=w.coef,
                bias=np.array([w.bias], np.float32),
                centroids=self.centroids.astype(np.float16),
                domain_cut=np.array([self.domain_cut], np.float32),
                targets=TARGETS.astype(np.float32),
                cuts=self.cuts,
                meta=np.array(json.dumps(self.meta, sort_keys=True)),
            )

    @classmethod
    def load(cls, source: Any) -> Artefact:
        """From a path or an open binary file (the packaged one is read via importlib)."""
        with np.load(source) as d:
            if "cuts" not in d.files:
                raise ValueError(
                    "not a router model file (retrain with `spendstream router train`)"
                )
            if not np.allclose(d["targets"], TARGETS.astype(np.float32)):
                raise ValueError("router model file has another target grid; retrain it")
            w = Weights(d["mean"], d["scale"], d["coef"], float(d["bias"][0]))
            cent = d["centroids"].astype(np.float32)
            meta = json.loads(str(d["meta"]))
            return cls(w, cent, float(d["domain_cut"][0]), d["cuts"].astype(np.float32), meta)


def train_artefact(
    ds: Dataset, x: F32, dim: int, k: int = 5, seed: int = 0, alpha: float = DOMAIN_ALPHA
) -> Artefact:
    """Cross-fit scores and domain similarities, calibrate on them, then fit on everything."""
    n = len(ds.prompts)
    emb = x[:, :dim]
    oof = np.zeros(n, np.float32)
    sims = np.zeros(n, np.float32)
    for rows in subject_folds(ds.subjects, min(k, len(set(ds.subjects))), seed):
        if len(rows) == 0:
            continue
        train = np.setdiff1d(np.arange(n), rows)
        oof[rows] = fit(x[train], ds.gain[train]).predict(x[rows])
        sims[rows] = nearest_similarity(emb[rows], kmeans(emb[train], seed=seed))
    domain_cut = float(np.quantile(sims, alpha, method="lower"))
    inside = sims >= domain_cut
    groups = [ds.subjects[i] for i in np.flatnonzero(inside)]
    cuts = calibrate_cuts(oof[inside], ds.cheap_ok[inside], ds.strong_ok[inside], groups)
    meta = {
        "prompts": n,
        "groups": len(set(ds.subjects)),
        "folds": k,
        "seed": seed,
        "domain_alpha": alpha,
        "label": "strong correct minus cheap correct (ridge, lambda=100)",
        "calibration": "fixed-sequence, cluster-robust one-sided 95% bound on out-of-fold scores",
        "shape_features": list(fx.SHAPE_NAMES),
    }
    return Artefact(fit(x, ds.gain), kmeans(emb, seed=seed), domain_cut, cuts, meta)


@dataclass(frozen=True)
class EvalRow:
    target: float
    quality: float
    """Accuracy of the routed answers / accuracy of always-strong, on held-out folds."""
    strong_share: float
    out_of_domain: float


def evaluate(
    ds: Dataset, x: F32, dim: int, targets: Sequence[float], k: int = 5, seed: int = 0
) -> list[EvalRow]:
    """Nested cross-validation: each held-out fold is routed by an artefact trained and
    calibrated without it (fallback strong for prompts out of its domain)."""
    n = len(ds.prompts)
    strong = np.zeros((len(targets), n), bool)
    outside = np.zeros(n, bool)
    for rows in subject_folds(ds.subjects, min(k, len(set(ds.subjects))), seed):
        if len(rows) == 0:
            continue
        train = np.setdiff1d(np.arange(n), rows)
        art = train_artefact(ds.subset(train), x[train], dim, k, seed)
        scores, sims = art.score(x[rows])
        outside[rows] = sims < art.domain_cut
        for i, t in enumerate(targets):
            strong[i, rows] = outside[rows] | (scores > art.cut_for(t))
    strong_acc = max(float(ds.strong_ok.mean()), 1e-12)
    out = []
    for i, t in enumerate(targets):
        acc = float(np.where(strong[i], ds.strong_ok, ds.cheap_ok).mean())
        out.append(EvalRow(t, acc / strong_acc, float(strong[i].mean()), float(outside.mean())))
    return out


def featurise(ds: Dataset, embedder: Embedder | None = None) -> tuple[F32, int, str]:
    emb = embedder or local_embedder()
    return fx.features(ds.prompts, emb), emb.dim, emb.name


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the packaged learned complexity policy.")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/routellm-mmlu"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args(argv)
    ds = load_mmlu(args.data)
    x, dim, name = featurise(ds)
    art = train_artefact(ds, x, dim)
    art.meta.update(
        dataset="routellm-mmlu (lm-sys/RouteLLM, Apache-2.0)",
        cheap_model=CHEAP_COL,
        strong_model=STRONG_COL,
        embedder=name,
    )
    art.save(args.out / "complexity.npz")
    (args.out / "complexity.json").write_text(json.dumps(art.meta, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}/complexity.npz ({len(ds.prompts)} prompts)")


if __name__ == "__main__":
    main()
