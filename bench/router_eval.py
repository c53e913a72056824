"""Router honesty on MMLU with subjects held out: the deployed ``Router.decide`` path at
targets 0.90/0.95/0.98, plus the cost–quality curve of learned vs keyword heuristic vs random.

    python bench/router_eval.py [DATA_DIR] [SPLITS]   (default ../shared/datasets/routellm-mmlu, 5)

**Deployed path.** For each of SPLITS seeds, 20% of the 57 subjects are held out; a router
model is trained and calibrated on the rest exactly as ``spendstream router train`` does
(:func:`spendstream.router.train.train_artefact`), saved to a file, loaded by a ``Router``, and
every held-out prompt goes through ``Router.decide`` (embedding, domain test, calibrated cut,
fallback strong). Quality = accuracy of the chosen model's answers / accuracy of always-strong,
on the held-out prompts. Goal: ≥ target on held-out subjects; the worst split and the mean are
reported (the calibration promises the population quality with 95% confidence; a finite
held-out split of ~11 subjects scatters around it).

**Curve.** Every prompt scored by a model trained without its subject (5 subject folds); the
top-q share by score goes strong. The figure is the strong-call share needed to reach 95% of
GPT-4's accuracy; random routing is the same-run baseline.

Last line: ``router_quality_at_95_worst=<worst held-out quality at target 0.95>`` (was
``router_strong_share_at_95``, which measured the curve, not the deployed path).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import machine, result

from spendstream.cache.embedders import local_embedder
from spendstream.router import Router, RouterConfig, RouteRequest
from spendstream.router import train as T
from spendstream.router.complexity import KeywordHeuristic
from spendstream.router.features import SHAPE_NAMES, features

TARGETS = (0.90, 0.95, 0.98)
MODELS = {
    "cheap": {"provider": "openai", "model": "gpt-4o-mini"},
    "strong": {"provider": "openai", "model": "gpt-4o"},
}


def curves(x: np.ndarray, ds: T.Dataset, target_acc: float) -> dict[str, float]:
    """Strong share at 95% for learned (out-of-fold), heuristic and random; prints the curve."""
    n = len(ds.prompts)
    learned = T.cross_validated_scores(x, ds)
    rng = np.random.default_rng(7)
    heur = np.array([KeywordHeuristic().score(p) for p in ds.prompts], np.float32)
    heur = heur + rng.random(n).astype(np.float32) * 1e-4  # random order among equal scores
    cv = {
        "learned": T.curve(learned, ds.cheap_ok, ds.strong_ok),
        "heuristic": T.curve(heur, ds.cheap_ok, ds.strong_ok),
    }
    rand_shares, rand_curve = [], np.zeros((101, 2))
    for _ in range(20):
        c = T.curve(rng.random(n).astype(np.float32), ds.cheap_ok, ds.strong_ok)
        rand_shares.append(T.share_at(c, target_acc))
        rand_curve += np.array(c) / 20
    cv["random"] = [(float(s), float(a)) for s, a in rand_curve]
    print("\nstrong share | accuracy: random  heuristic  learned   (out-of-fold scores)")
    for i in range(0, 101, 10):
        row = "  ".join(f"{cv[k][i][1]:.4f}" for k in ("random", "heuristic", "learned"))
        print(f"   {i:3d}%      |          {row}")
    share = {k: T.share_at(c, target_acc) for k, c in cv.items()}
    share["random"] = float(np.mean(rand_shares))
    print("strong-call share to reach 95% of GPT-4 accuracy (curve, oracle cut per curve):")
    for k in ("random", "heuristic", "learned"):
        print(f"  {k:9s} {share[k]:.4f}")
    return share


def held_out_split(ds: T.Dataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    subjects = sorted(set(ds.subjects))
    rng = np.random.default_rng(seed)
    test = set(rng.permutation(subjects)[: round(len(subjects) * 0.2)])
    is_test = np.array([s in test for s in ds.subjects])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


@dataclass
class Split:
    """One held-out split: (quality, strong share, fallback share) per endpoint, latencies."""

    subjects: int
    n: int
    at: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    lat_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)


def deployed(ds: T.Dataset, x: np.ndarray, seed: int, tmp: Path) -> Split:
    """Train on the kept subjects, decide every held-out prompt through ``Router.decide``."""
    train, test = held_out_split(ds, seed)
    art = T.train_artefact(ds.subset(train), x[train], x.shape[1] - len(SHAPE_NAMES), seed=seed)
    path = tmp / f"model-{seed}.npz"
    art.save(path)
    endpoints: dict[str, dict[str, object]] = {f"t{t}": {"target_quality": t} for t in TARGETS}
    endpoints["heur"] = {"complexity": "heuristic"}
    cfg = RouterConfig.model_validate({"models": MODELS, "endpoints": endpoints})
    router = Router(cfg, model_path=path)
    prompts = [ds.prompts[i] for i in test]
    strong_ok, cheap_ok = ds.strong_ok[test], ds.cheap_ok[test]
    strong_acc = float(strong_ok.mean())
    out = Split(len({ds.subjects[i] for i in test}), len(test))
    for ep in endpoints:
        picks, fallback = [], 0
        for p in prompts:
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            d = router.decide(RouteRequest(ep, prompt=p))
            out.cpu_ns.append(time.thread_time_ns() - c0)
            out.lat_ns.append(time.perf_counter_ns() - t0)
            picks.append(d.tier == "strong")
            fallback += d.policy.startswith("fallback")
        strong = np.array(picks)
        acc = float(np.where(strong, strong_ok, cheap_ok).mean())
        out.at[ep] = (acc / strong_acc, float(strong.mean()), fallback / len(prompts))
    return out


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/datasets/routellm-mmlu"
    splits = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    ds = T.load_mmlu(data)
    strong_acc, cheap_acc = float(ds.strong_ok.mean()), float(ds.cheap_ok.mean())
    print(f"# router_eval on {machine()}")
    print(
        f"{len(ds.prompts)} prompts, {len(set(ds.subjects))} subjects; accuracy cheap "
        f"{cheap_acc:.4f}, strong {strong_acc:.4f}"
    )
    t0 = time.process_time()
    x = features(ds.prompts, local_embedder())
    share = curves(x, ds, 0.95 * strong_acc)
    print(f"features + curves: {time.process_time() - t0:.1f} s CPU")

    print(f"\ndeployed Router.decide on held-out subjects ({splits} splits, 20% of subjects each)")
    print("split  subj  prompts | quality / strong share / fallback share at target")
    runs: list[Split] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(splits):
            r = deployed(ds, x, seed, Path(tmp))
            runs.append(r)
            cells = "  ".join(
                f"{t}: {r.at[f't{t}'][0]:.4f}/{r.at[f't{t}'][1]:.3f}/{r.at[f't{t}'][2]:.3f}"
                for t in TARGETS
            )
            hq, hs, _ = r.at["heur"]
            print(f"  {seed}     {r.subjects:3}  {r.n:5}  | {cells} | heuristic {hq:.4f}/{hs:.3f}")
    quality = {t: [r.at[f"t{t}"][0] for r in runs] for t in TARGETS}
    strong_share = {t: [r.at[f"t{t}"][1] for r in runs] for t in TARGETS}
    heur_q = [r.at["heur"][0] for r in runs]
    for t in TARGETS:
        met = sum(q >= t for q in quality[t])
        print(
            f"target {t:.2f}: quality worst {min(quality[t]):.4f} mean {np.mean(quality[t]):.4f}"
            f" (≥ target on {met}/{splits} splits); strong share mean"
            f" {np.mean(strong_share[t]):.4f}"
        )
    print(
        f"keyword heuristic (fixed cut): quality worst {min(heur_q):.4f} mean {np.mean(heur_q):.4f}"
    )
    lat = np.array([v for r in runs for v in r.lat_ns])
    cpu = np.array([v for r in runs for v in r.cpu_ns])
    p50, p99 = np.percentile(lat, 50) / 1e3, np.percentile(lat, 99) / 1e3
    c50, c99 = np.percentile(cpu, 50) / 1e3, np.percentile(cpu, 99) / 1e3
    print(
        f"Router.decide (MMLU prompts, {len(lat)} calls): wall p50 {p50:.0f} µs, p99 {p99:.0f} µs;"
        f" thread CPU p50 {c50:.0f} µs, p99 {c99:.0f} µs (wall p99 includes waiting for a core)"
    )
    for t in TARGETS:
        result(
            f"quality at target {t:.2f}, deployed Router.decide, held-out subjects "
            f"(worst of {splits} splits)",
            min(quality[t]),
            "share",
            f"≥ {t:.2f}",
            float(np.mean(heur_q)),
            "keyword heuristic (fixed cut), mean",
        )
    result(
        f"strong-call share at target 0.95, deployed (mean of {splits} splits)",
        float(np.mean(strong_share[0.95])),
        "share",
        "below 1 (always strong)",
        share["learned"],
        "oracle cut on the out-of-fold curve",
    )
    result(
        "strong-call share at 95% of GPT-4 accuracy (MMLU, subjects held out, curve)",
        share["learned"],
        "share",
        "below random (RouteLLM: ~45% fewer)",
        share["random"],
        "random routing",
    )
    result("same, keyword heuristic", share["heuristic"], "share", "", share["random"], "random")
    result("Router.decide p99 (wall)", p99, "µs", "well under 1 ms")
    result("Router.decide p99 (thread CPU)", c99, "µs", "well under 1 ms")
    print(f"router_strong_share_at_95={share['learned']:.4f}")
    print(f"router_quality_at_95_worst={min(quality[0.95]):.4f}")


if __name__ == "__main__":
    main()
