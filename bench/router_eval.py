"""Router cost–quality on MMLU with subjects held out: random vs keyword heuristic vs learned.

    python bench/router_eval.py [DATA_DIR]   (default ../shared/datasets/routellm-mmlu)

Every prompt is scored by a model trained without its subject (5 subject-grouped folds). A
curve sends the top-q share of prompts (by score) to the strong model (GPT-4) and the rest to
the cheap one (Mixtral-8x7B), and reads the accuracy from the dataset's labels. The figure is
the strong-call share needed to reach 95% of GPT-4's accuracy; random routing is the baseline
in the same run (ratio = learned / random). A second check plays the deployed path: a
threshold chosen from the training subjects only, applied to the held-out ones. Last line:
``router_strong_share_at_95=<learned share>``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from _common import machine, result

from spendstream.cache.embedders import local_embedder
from spendstream.router import Router, RouterConfig, RouteRequest
from spendstream.router import train as T
from spendstream.router.complexity import KeywordHeuristic
from spendstream.router.features import features

TARGET = 0.95


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/datasets/routellm-mmlu"
    ds = T.load_mmlu(data)
    n = len(ds.prompts)
    strong_acc, cheap_acc = float(ds.strong_ok.mean()), float(ds.cheap_ok.mean())
    target_acc = TARGET * strong_acc
    print(f"# router_eval on {machine()}")
    print(
        f"{n} prompts, {len(set(ds.subjects))} subjects; accuracy cheap {cheap_acc:.4f}, "
        f"strong {strong_acc:.4f}; target {TARGET:.0%} of strong = {target_acc:.4f}"
    )

    t0 = time.perf_counter()
    x = features(ds.prompts, local_embedder())
    learned = T.cross_validated_scores(x, ds)
    print(f"features + 5-fold training: {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(7)
    heur = np.array([KeywordHeuristic().score(p) for p in ds.prompts], np.float32)
    heur = heur + rng.random(n).astype(np.float32) * 1e-4  # random order among equal scores

    curves = {
        "learned": T.curve(learned, ds.cheap_ok, ds.strong_ok),
        "heuristic": T.curve(heur, ds.cheap_ok, ds.strong_ok),
    }
    rand_shares = []
    rand_curve = np.zeros((101, 2))
    for _ in range(20):
        c = T.curve(rng.random(n).astype(np.float32), ds.cheap_ok, ds.strong_ok)
        rand_shares.append(T.share_at(c, target_acc))
        rand_curve += np.array(c) / 20
    curves["random"] = [(float(s), float(a)) for s, a in rand_curve]

    print("\nstrong share | accuracy: random  heuristic  learned")
    for i in range(0, 101, 10):
        row = "  ".join(f"{curves[k][i][1]:.4f}" for k in ("random", "heuristic", "learned"))
        print(f"   {i:3d}%      |          {row}")
    share = {k: T.share_at(c, target_acc) for k, c in curves.items()}
    share["random"] = float(np.mean(rand_shares))
    print(f"\nstrong-call share to reach {TARGET:.0%} of GPT-4 accuracy:")
    for k in ("random", "heuristic", "learned"):
        print(f"  {k:9s} {share[k]:.4f}")
    print(
        f"  learned vs random: {1 - share['learned'] / share['random']:.1%} fewer strong calls; "
        f"vs always-strong: {1 - share['learned']:.1%} fewer"
    )

    cut = KeywordHeuristic().cut
    hs, ha = T.routed_accuracy(heur, cut, ds.cheap_ok, ds.strong_ok)
    print(
        f"heuristic at its fixed cut {cut}: quality {ha / strong_acc:.4f} of strong at strong "
        f"share {hs:.4f} (it has no knob for a target quality)"
    )

    # deployed path: threshold from the training subjects only (nested out-of-fold calibration)
    routed = np.zeros(n, bool)
    for rows in T.subject_folds(ds.subjects, 5):
        train = np.setdiff1d(np.arange(n), rows)
        sub = ds.subset(train)
        calib = T.calibration(T.cross_validated_scores(x[train], sub, k=4), sub)
        w = T.fit(x[train], sub.gain)
        q = T.share_for(calib, TARGET)
        thr = float(np.quantile(w.predict(x[train]), 1 - q)) if q > 0 else np.inf
        routed[rows] = w.predict(x[rows]) > thr
    acc = float(np.where(routed, ds.strong_ok, ds.cheap_ok).mean())
    print(
        f"\ndeployed threshold (target {TARGET:.0%}) on held-out subjects: quality "
        f"{acc / strong_acc:.4f} of strong at strong share {routed.mean():.4f}"
    )

    cfg = RouterConfig.model_validate(
        {
            "models": {
                "cheap": {"provider": "openai", "model": "gpt-4o-mini"},
                "strong": {"provider": "openai", "model": "gpt-4o"},
            }
        }
    )
    router = Router(cfg)
    reqs = [RouteRequest("bench", prompt=p) for p in ds.prompts[:2000]]
    router.decide(reqs[0])
    lat = []
    for r in reqs:
        t = time.perf_counter_ns()
        router.decide(r)
        lat.append(time.perf_counter_ns() - t)
    print(
        f"Router.decide (learned policy, MMLU prompts): p50 {np.percentile(lat, 50) / 1e3:.0f} µs, "
        f"p99 {np.percentile(lat, 99) / 1e3:.0f} µs"
    )
    result(
        "strong-call share at 95% of GPT-4 accuracy (MMLU, subjects held out)",
        share["learned"],
        "share",
        "below random (RouteLLM: ~45% fewer)",
        share["random"],
        "random routing",
    )
    result(
        "same, keyword heuristic",
        share["heuristic"],
        "share",
        "",
        share["random"],
        "random routing",
    )
    result("Router.decide p99", float(np.percentile(lat, 99)) / 1e3, "µs", "well under 1 ms")
    print(f"router_ratio_vs_random={share['learned'] / share['random']:.4f}")
    print(f"router_strong_share_at_95={share['learned']:.4f}")


if __name__ == "__main__":
    main()
