"""Runaway-session quality: recall, detection delay and false pages of the runaway rule.

    python bench/runaway_quality.py [--seeds 0,1,2,3] [--days 3] [--scales 10,100,1000]
                                    [--shape base|wide|regular]

A seeded generator of sessions on one endpoint (per-minute aggregates built from per-call
events, vectorised with numpy; each scale is total calls/min at the daily mean): sessions
arrive as a Poisson process with a diurnal shape (trough 04:00 UTC, ×0.2–×1.8); a session's
length is heavy-tailed (log-normal number of calls, median 3, σ 1.3: one in ~100 makes > 60
calls), its mean think time between calls log-normal around 40 s (σ 0.6; ``--shape wide``: σ 0.9),
the gaps exponential around it (``--shape regular``: gamma k=4), its cost per call the
endpoint's (log-uniform $0.0002–$0.01 per seed) × a session factor (log-normal σ 0.6: some
users carry long contexts) × a per-call factor (σ 0.8). Legitimate heavy sessions on top: 1% of
sessions are "power users" (150–400 calls every 20–60 s: the long sessions a chat product
has), and 1% are "tool bursts" (8–25 calls within a minute, then done).

After one warm-up day, agent loops are injected (6 per day, uniformly in time): one session
calling every 2–20 s (log-uniform) for 15–120 minutes, each call costing the endpoint's cost ×
a log-normal factor (σ 0.5). Minutes go through the real :class:`~.windows.Agg` (its top-16
trim and serialisation, as stage 1 stores it) into the worker's :class:`ScopeRules`.

Scored: a loop is *detected* when its session fires between its start and its end plus the
window; *recall* counts every loop, and separately the loops within reach (a call every ≤ 8 s
at ≥ 0.75× the endpoint's cost per call, and ≥ ``runaway_usd_per_day`` projected: slower or
cheaper loops overlap the pace and spend of a person reading answers); any other runaway
firing in the scored days is a false page (per week); delay is minutes from the loop's start
to the firing window's end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import result
from spendstream.alerts import Alert
from spendstream.money import usd_to_pico
from spendstream.stream.rules import RuleConfig, ScopeRules
from spendstream.stream.windows import Agg

DAY = 1440
SCOPE = "endpoint:agent/run"
LOOPS_PER_DAY = 6
REACH_CALLS_PER_MIN = 7.5
"""Loops within reach call at least this often (every ≤ 8 s) ..."""
REACH_COST = 0.75
"""... at ≥ this × the endpoint's typical cost per call (so ≥ ×5.6 a typical session-minute)."""


@dataclass(frozen=True)
class Loop:
    session: str
    start: int
    end: int
    gap_s: float
    cost: float

    @property
    def calls_per_min(self) -> float:
        return 60.0 / self.gap_s


def _diurnal(t_min: np.ndarray) -> np.ndarray:
    return 1.0 + 0.8 * np.cos(2 * np.pi * ((t_min % DAY) / DAY - 16 / 24))


SHAPES = {"base": (0.6, 1.0), "wide": (0.9, 1.0), "regular": (0.6, 4.0)}
"""Think-time shapes: (σ of a session's log mean think time, gamma shape of its gaps). "wide"
puts ~6× more sessions at loop pace (mean think time ≤ 10 s); "regular" makes each person's
gaps steadier (gamma k=4 instead of exponential)."""


def _sessions(
    rng: np.random.Generator, scale: float, days: int, cost: float, shape: str = "base"
) -> list[np.ndarray]:
    """Arrays (session index, call time in s, cost pico) of the ordinary and heavy sessions."""
    think_sigma, gap_k = SHAPES[shape]
    mean_calls = np.exp(np.log(3) + 1.3**2 / 2) * 0.98 + 0.01 * 275 + 0.01 * 16
    horizon = days * DAY
    n = rng.poisson(scale * horizon / mean_calls)
    starts = np.sort(rng.uniform(0, horizon, n))
    keep = rng.uniform(0, 1.8, n) < _diurnal(starts)  # thinning: the diurnal shape
    starts = starts[keep] * 60
    n = len(starts)
    kind = rng.uniform(size=n)
    calls = np.maximum(1, np.round(rng.lognormal(np.log(3), 1.3, n))).astype(int)
    gap = rng.lognormal(np.log(40), think_sigma, n)
    power, burst = kind < 0.01, (kind >= 0.01) & (kind < 0.02)
    calls[power] = rng.integers(150, 400, power.sum())
    gap[power] = rng.uniform(20, 60, power.sum())
    calls[burst] = rng.integers(8, 25, burst.sum())
    gap[burst] = rng.uniform(1, 3, burst.sum())
    sess = np.repeat(np.arange(n), calls)
    step = gap[sess] * rng.gamma(gap_k, 1.0 / gap_k, len(sess))
    first = np.concatenate(([0], np.cumsum(calls)[:-1]))
    step[first] = 0.0
    cum = np.cumsum(step)
    t = starts[sess] + cum - np.repeat(cum[first], calls)
    factor = rng.lognormal(0, 0.6, n)[sess] * rng.lognormal(0, 0.8, len(sess))
    return [sess, t, cost * factor]


def _loops(rng: np.random.Generator, days: int, cost: float) -> tuple[list[Loop], list[np.ndarray]]:
    loops: list[Loop] = []
    for day in range(1, days):
        for i in range(LOOPS_PER_DAY):
            start = int(day * DAY + rng.uniform(0, DAY - 130))
            gap = float(np.exp(rng.uniform(np.log(2), np.log(20))))
            dur = int(rng.uniform(15, 120))
            c = cost * float(rng.lognormal(0, 0.5))
            loops.append(Loop(f"loop-{day}-{i}", start, start + dur, gap, c))
    t = [np.arange(lp.start * 60.0, lp.end * 60.0, lp.gap_s) for lp in loops]
    idx = [np.full(len(x), -1 - i) for i, x in enumerate(t)]
    costs = [np.full(len(x), lp.cost) for x, lp in zip(t, loops, strict=True)]
    if not loops:
        return loops, [np.zeros(0, int), np.zeros(0), np.zeros(0)]
    return loops, [np.concatenate(idx), np.concatenate(t), np.concatenate(costs)]


def minutes(
    seed: int, scale: float, days: int, shape: str = "base"
) -> tuple[list[Loop], dict[int, Agg], float]:
    """The loops and the endpoint's per-minute windows (stored form: trimmed, serialised)."""
    rng = np.random.default_rng(seed)
    cost = float(usd_to_pico(f"{np.exp(rng.uniform(np.log(0.0002), np.log(0.01))):.6f}"))
    loops, lp = _loops(rng, days, cost)
    sess, t, c = (
        np.concatenate(p) for p in zip(_sessions(rng, scale, days, cost, shape), lp, strict=True)
    )
    ok = t < days * DAY * 60
    sess, t, c = sess[ok], t[ok], np.round(c[ok]).astype(np.int64)
    minute = (t // 60).astype(np.int64)
    key = minute * 10**9 + (sess + 10**8)
    uniq, inv = np.unique(key, return_inverse=True)
    spend = np.bincount(inv, weights=c)
    ncalls = np.bincount(inv)
    out: dict[int, Agg] = {}
    for k, sp, n in zip(uniq.tolist(), spend.tolist(), ncalls.tolist(), strict=True):
        m, s = divmod(k, 10**9)
        s -= 10**8
        a = out.get(m)
        if a is None:
            a = out[m] = Agg()
        sid = loops[-1 - s].session if s < 0 else f"s{seed}-{s}"
        a.sessions[sid] = [int(sp), int(n)]
        a.spend += int(sp)
        a.calls += int(n)
    for m, a in out.items():
        a.models = {"m": a.spend}
        out[m] = Agg.from_dict(a.to_dict())
    return loops, out, cost


def run(
    seed: int, scale: float, days: int, cfg: RuleConfig, shape: str = "base"
) -> tuple[list[Loop], list[Alert], float]:
    loops, mins, cost = minutes(seed, scale, days, shape)
    rules = ScopeRules(cfg)
    state: dict[str, Any] = {}
    alerts: list[Alert] = []
    for m in range(days * DAY):
        alerts += rules.close_minute(SCOPE, state, m, mins.get(m) or Agg())
    return loops, alerts, cost


def score(loops: list[Loop], alerts: list[Alert], cfg: RuleConfig, cost: float) -> dict[str, Any]:
    firing = [a for a in alerts if a.status == "firing" and a.rule == "runaway_session"]
    other = [a.window_start.timestamp() / 60 for a in alerts if a.status == "firing"]
    by_sid: dict[str, list[Alert]] = {}
    for a in firing:
        by_sid.setdefault(a.details["session_id"], []).append(a)
    floor = float(usd_to_pico(cfg.runaway_usd_per_day))
    hit, reach, reach_hit, delays, pages, endpoint = 0, 0, 0, [], 0, 0
    for lp in loops:
        got = [
            a
            for a in by_sid.pop(lp.session, [])
            if lp.start <= a.window_start.timestamp() / 60 <= lp.end + cfg.runaway_minutes
        ]
        pages += len(got)
        within = (
            lp.calls_per_min >= REACH_CALLS_PER_MIN
            and lp.cost >= REACH_COST * cost
            and lp.cost * lp.calls_per_min * DAY >= floor
        )
        reach += within
        if got:
            hit += 1
            reach_hit += within
            delays.append(got[0].window_end.timestamp() / 60 - lp.start)
        elif any(lp.start <= t <= lp.end + cfg.runaway_minutes for t in other):
            endpoint += 1  # missed here, but the endpoint's own detector paged during it
    false = [
        a
        for a in firing
        if not a.details["session_id"].startswith("loop-")
        and a.window_start.timestamp() >= DAY * 60
    ]
    return {"loops": len(loops), "hit": hit, "reach": reach, "reach_hit": reach_hit,
            "delays": delays, "false": len(false), "pages": pages,
            "endpoint": endpoint}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--scales", default="10,100,1000")
    ap.add_argument("--shape", default="base", choices=sorted(SHAPES))
    args = ap.parse_args()
    cfg = RuleConfig()
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.process_time()
    print("| calls/min | loops | detected | recall | within reach | recall in reach | "
          "pages/loop | false pages/week | median delay | missed, endpoint paged |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst_recall, worst_false = 1.0, 0.0
    for scale in (float(s) for s in args.scales.split(",")):
        tot: dict[str, Any] = {"loops": 0, "hit": 0, "reach": 0, "reach_hit": 0, "delays": [],
                               "false": 0, "pages": 0, "endpoint": 0}  # fmt: skip
        for seed in seeds:
            loops, alerts, cost = run(seed, scale, args.days, cfg, args.shape)
            for k, v in score(loops, alerts, cfg, cost).items():
                tot[k] += v
        weeks = len(seeds) * (args.days - 1) / 7
        rr = tot["reach_hit"] / max(tot["reach"], 1)
        fpw = tot["false"] / weeks
        delay = f"{statistics.median(tot['delays']):.0f} min" if tot["delays"] else "—"
        print(
            f"| {scale:.0f} | {tot['loops']} | {tot['hit']} | {tot['hit'] / tot['loops']:.2f} | "
            f"{tot['reach']} | {tot['reach_hit']} / {tot['reach']} = {rr:.2f} | "
            f"{tot['pages'] / max(tot['hit'], 1):.2f} | {fpw:.2f} | {delay} | {tot['endpoint']} |"
        )
        worst_recall, worst_false = min(worst_recall, rr), max(worst_false, fpw)
        at = f"{scale:.0f} calls/min" + ("" if args.shape == "base" else f", {args.shape}")
        result(f"runaway recall in reach at {at}", rr, "share", ">= 0.95")
        result(f"runaway false pages at {at}", fpw, "per week", "<= 1")
    print(f"cpu {time.process_time() - t0:.1f} s")
    print(f"RUNAWAY_RECALL_IN_REACH_MIN={worst_recall:.3f}")


if __name__ == "__main__":
    main()
