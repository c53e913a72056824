"""Offline training and evaluation of the learned complexity policy (numpy only).

Data: RouteLLM's MMLU set — per prompt, whether the cheap model (Mixtral-8x7B) and the strong
one (GPT-4) answered correctly. The label is the strong model's gain (+1 strong right, cheap
wrong, minus the reverse): the accuracy the strong model adds on that prompt. Ranking prompts by
its predicted value gives the most accuracy per strong call. (A logistic model of "strong wins"
alone was tried first: it ignores the 5% of prompts where the cheap model is right and the
strong one wrong, and needed more strong calls — README "Router".)

Evaluation holds whole subjects out (grouped k-fold), because a router meets topics it never
saw; thresholds are read off the training folds only, so the reported quality is what a
deployed threshold would reach. ``python -m spendstream.router.train --out DIR`` writes the
weights file the package ships.
"""

from __future__ import annotations

import argparse
import csv
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..cache.embedders import local_embedder
from . import features as fx

CHEAP_COL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_COL = "gpt-4-1106-preview"
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Dataset:
    prompts: list[str]
    subjects: list[str]
    cheap_ok: npt.NDArray[np.bool_]
    strong_ok: npt.NDArray[np.bool_]

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


# --- evaluation ---------------------------------------------------------------------------------
def subject_folds(subjects: Sequence[str], k: int) -> list[npt.NDArray[np.int64]]:
    """Grouped folds: every subject's prompts in one fold (assignment by a stable hash)."""
    names = sorted(set(subjects))
    order = sorted(names, key=lambda s: zlib.crc32(s.encode()))
    fold_of = {s: i % k for i, s in enumerate(order)}
    by = np.array([fold_of[s] for s in subjects])
    return [np.flatnonzero(by == f) for f in range(k)]


def routed_accuracy(
    scores: F32, threshold: float, cheap_ok: npt.NDArray[np.bool_], strong_ok: npt.NDArray[np.bool_]
) -> tuple[float, float]:
    """(strong-call share, accuracy) when prompts scoring above ``threshold`` go strong."""
    strong = scores > threshold
    acc = np.where(strong, strong_ok, cheap_ok).mean()
    return float(strong.mean()), float(acc)


def curve(
    scores: F32,
    cheap_ok: npt.NDArray[np.bool_],
    strong_ok: npt.NDArray[np.bool_],
    points: int = 101,
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


def calibration(scores: F32, ds: Dataset, points: int = 201) -> list[tuple[float, float]]:
    """(quality vs strong-only, strong share) pairs: the share of top-scored prompts to send
    strong to reach each quality; read from out-of-fold scores, so not optimistic."""
    strong_acc = float(ds.strong_ok.mean())
    return [
        (acc / strong_acc, share) for share, acc in curve(scores, ds.cheap_ok, ds.strong_ok, points)
    ]


def share_for(calib: Sequence[tuple[float, float]], target_quality: float) -> float:
    """Smallest strong share whose calibrated quality reaches ``target_quality``."""
    return share_at([(s, q) for q, s in calib], target_quality)


def cross_validated_scores(x: F32, ds: Dataset, k: int = 5) -> F32:
    """Out-of-fold scores: each subject scored by a model that never saw that subject."""
    oof = np.zeros(len(ds.prompts), np.float32)
    for rows in subject_folds(ds.subjects, k):
        train = np.setdiff1d(np.arange(len(ds.prompts)), rows)
        oof[rows] = fit(x[train], ds.gain[train]).predict(x[rows])
    return oof


def save(
    w: Weights,
    calib: list[tuple[float, float]],
    quantiles: F32,
    centroid: F32,
    domain_cut: float,
    out: Path,
    meta: dict[str, object],
) -> None:
    """``quantiles[i]`` is the i/1000 quantile of the training scores (share → threshold)."""
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out / "complexity.npz",
        mean=w.mean,
        scale=w.scale,
        coef=w.coef,
        bias=np.array([w.bias], np.float32),
        calibration=np.array(calib, np.float32),
        score_quantiles=quantiles,
        centroid=centroid,
        domain_cut=np.array([domain_cut], np.float32),
    )
    (out / "complexity.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the learned complexity policy's weights.")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/routellm-mmlu"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = ap.parse_args(argv)
    ds = load_mmlu(args.data)
    embedder = local_embedder()
    x = fx.features(ds.prompts, embedder)
    w = fit(x, ds.gain)
    # thresholds come from out-of-fold scores so the shipped calibration is not optimistic
    calib = calibration(cross_validated_scores(x, ds), ds)
    # a strong share becomes a score threshold through the final model's own score quantiles
    scores = np.sort(w.predict(x))
    meta = {
        "dataset": "routellm-mmlu (lm-sys/RouteLLM, Apache-2.0)",
        "prompts": len(ds.prompts),
        "label": "strong correct minus cheap correct (ridge, lambda=100)",
        "cheap_model": CHEAP_COL,
        "strong_model": STRONG_COL,
        "embedder": embedder.name,
        "shape_features": list(fx.SHAPE_NAMES),
        "calibration": "(quality vs strong-only, strong share), out-of-fold, 5 subject folds",
    }
    # domain check: prompts far from the training set's mean embedding fall back to the heuristic
    emb = x[:, : embedder.dim]
    centroid = emb.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    domain_cut = float(np.quantile(emb @ centroid, 0.05))
    quantiles = np.quantile(scores, np.linspace(0, 1, 1001)).astype(np.float32)
    save(w, calib, quantiles, centroid.astype(np.float32), domain_cut, args.out, meta)
    print(f"wrote {args.out}/complexity.npz ({len(ds.prompts)} prompts)")


if __name__ == "__main__":
    main()
