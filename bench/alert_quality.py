"""Alert quality: recall, delay, pages per incident and false pages, at 4 traffic scales.

    python bench/alert_quality.py [--seeds 0,1,2] [--weeks 3] [--scales 10,100,1000,5000]

A seeded scenario generator of its own makes weeks of multi-service traffic as per-minute
aggregates (event-level generation of weeks at 5,000 calls/min would be ~10^8 events): 9
endpoints with Zipf-like weights (the thinnest gets ~1% of the traffic), diurnal shape (trough
04:00 UTC), weekends at 45%, +8%/week growth, gamma-Poisson call counts, log-normal token counts
(sums sampled exactly under 40 calls, normal approximation above), 1.5% errors with short error
bursts, and a nightly batch endpoint (02:00 ± 6 min, 40 min, weekdays). After one warm-up week
it injects incidents of every kind, one at a time on a random endpoint, with random size and
duration: model switch (cost per call ×16), prompt bloat (input tokens ×3–6), retry storm
(calls ×3–5, 70% errors), volume storm (calls ×3–6), a slow ramp to ×2–3 over 6 hours, and a
new expensive model taking 40–70% of the calls. The minutes go through the worker's own
:class:`Stage2` (routing with :func:`route`, so the org level is the worker's too) on dicts.

An incident is *material* when its true excess spend projected over a day is ≥ the detector's
``material_share`` of the organisation's daily spend; error storms must alert (as warnings)
whatever their cost. A firing on the incident's endpoint between its start and 30 minutes
after its end detects it; any other firing in the scored weeks is a false page.
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
from spendstream.money import PICO
from spendstream.scopes import GLOBAL, endpoint_scope, model_scope, service_scope, team_scope
from spendstream.stream.pipeline import Snapshot, Stage2, route
from spendstream.stream.rules import RuleConfig
from spendstream.stream.windows import Agg

START = 29_459_520  # 2026-01-05 00:00 UTC (a Monday), epoch minutes
PRICES = {"mini": (150_000, 600_000), "4o": (2_500_000, 10_000_000), "o1": (15_000_000, 60_000_000)}
"""Picodollars per token (input, output)."""
REACH_CALLS = 30
"""Incidents with at least this many calls are "within the statistics' reach": a 20-minute
incident on a 0.2 call/min endpoint is 4 calls, and no test tells 4 heavy-tailed calls at ×3
from noise without paging on noise too. Reported beside the recall, which counts every one."""
KINDS = ("model_switch", "prompt_bloat", "retry_storm", "volume_storm", "ramp", "new_model")


@dataclass(frozen=True)
class Endpoint:
    name: str
    service: str
    team: str
    model: str
    weight: float
    inp: float
    out: float
    batch: bool = False

    @property
    def scope(self) -> str:
        """The worker's scope name for this endpoint (``name`` is ``<service>/<path>``)."""
        return endpoint_scope(self.service, self.name.removeprefix(self.service))


ENDPOINTS = (
    Endpoint("support/answer", "support", "cx", "mini", 0.30, 1200, 250),
    Endpoint("support/triage", "support", "cx", "mini", 0.18, 600, 40),
    Endpoint("search/rerank", "search", "core", "mini", 0.16, 900, 20),
    Endpoint("search/summarise", "search", "core", "4o", 0.10, 2500, 300),
    Endpoint("docs/extract", "docs", "core", "mini", 0.09, 3000, 400),
    Endpoint("docs/classify", "docs", "core", "mini", 0.07, 400, 10),
    Endpoint("support/escalate", "support", "cx", "4o", 0.04, 1800, 500),
    Endpoint("search/spell", "search", "core", "mini", 0.01, 100, 20),
    Endpoint("etl/nightly", "etl", "data", "mini", 0.05, 1500, 200, batch=True),
)


@dataclass
class Incident:
    kind: str
    endpoint: int
    start: int
    end: int
    size: float
    excess_pico: float = 0.0
    base_pico: float = 0.0
    minutes: int = 0
    calls: int = 0


def shape(minute: int) -> float:
    """Diurnal × weekly × growth level (1.0 ≈ a weekday afternoon of week 0)."""
    h = (minute % 1440) / 60
    day = 0.25 + 0.75 * max(0.0, np.sin((h - 4) / 24 * 2 * np.pi - 0.0)) ** 1.5 + 0.1
    weekend = 0.45 if ((minute // 1440) + 3) % 7 >= 5 else 1.0
    growth = 1.0 + 0.08 * (minute - START) / 10080
    return float(day * weekend * growth)


def batch_level(minute: int, jitter: dict[int, int]) -> float:
    day = minute // 1440
    if ((day + 3) % 7) >= 5:
        return 0.0
    start = day * 1440 + 120 + jitter.setdefault(day, 0)
    return 6.0 if start <= minute < start + 40 else 0.0


def token_sum(rng: np.random.Generator, n: int, median: float, sigma: float) -> int:
    if n <= 0:
        return 0
    if n < 40:
        return int(rng.lognormal(np.log(median), sigma, n).sum())
    mean = median * np.exp(sigma**2 / 2)
    var = (np.exp(sigma**2) - 1) * np.exp(2 * np.log(median) + sigma**2)
    return max(0, int(rng.normal(n * mean, np.sqrt(n * var))))


def plan(rng: np.random.Generator, weeks: int) -> list[Incident]:
    """Incidents after the warm-up week, 6–14 hours apart, one at a time."""
    out: list[Incident] = []
    t = START + 10080 + int(rng.integers(60, 600))
    end_all = START + weeks * 10080 - 600
    while t < end_all:
        kind = KINDS[len(out) % len(KINDS)]
        ep = int(rng.integers(0, len(ENDPOINTS) - 1))  # not the batch endpoint
        dur = 480 if kind == "ramp" else int(rng.choice([20, 45, 90, 180]))
        size = {
            "model_switch": 16.0,
            "prompt_bloat": rng.uniform(3, 6),
            "retry_storm": rng.uniform(3, 5),
            "volume_storm": rng.uniform(3, 6),
            "ramp": rng.uniform(2.2, 3.0),
            "new_model": rng.uniform(0.4, 0.7),
        }[kind]
        out.append(Incident(kind, ep, t, t + dur, float(size)))
        t += dur + int(rng.integers(360, 840))
    return out


def factor(inc: Incident, minute: int) -> float:
    """The incident's strength at ``minute`` (ramp: linear over 6 h, hold 1 h, end)."""
    if not inc.start <= minute < inc.end:
        return 0.0
    if inc.kind != "ramp":
        return 1.0
    return min(1.0, (minute - inc.start) / 360)


class Traffic:
    """Per-minute aggregates of every endpoint, with the incidents applied."""

    def __init__(self, seed: int, scale: float, weeks: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.scale = scale
        self.incidents = plan(self.rng, weeks)
        self.jitter: dict[int, int] = {}
        self.noise = np.ones(len(ENDPOINTS))
        self.total_pico = 0

    def minute(self, m: int) -> list[Agg]:
        rng, lvl = self.rng, shape(m)
        self.noise = np.clip(self.noise * np.exp(rng.normal(0, 0.01, len(self.noise))), 0.8, 1.25)
        day = m // 1440
        if day not in self.jitter:
            self.jitter[day] = int(rng.integers(-6, 7))
        active = [i for i in self.incidents if i.start <= m < i.end]
        out = []
        for k, ep in enumerate(ENDPOINTS):
            base = self.scale * ep.weight * (batch_level(m, self.jitter) if ep.batch else lvl)
            inc = next((i for i in active if i.endpoint == k), None)
            agg, base_spend = self._endpoint(ep, base * float(self.noise[k]), inc, m)
            if inc is not None:
                inc.excess_pico += agg.spend - base_spend
                inc.base_pico += base_spend
                inc.minutes += 1
                inc.calls += agg.calls
            out.append(agg)
            self.total_pico += agg.spend
        return out

    def _endpoint(
        self, ep: Endpoint, lam: float, inc: Incident | None, m: int
    ) -> tuple[Agg, float]:
        rng = self.rng
        f = factor(inc, m) if inc else 0.0
        kind = inc.kind if inc else ""
        mult = (
            1 + f * (inc.size - 1) if inc and kind in ("retry_storm", "volume_storm", "ramp") else 1
        )
        lam_eff = lam * float(rng.gamma(20, 1 / 20)) if lam > 0 else 0.0
        calls = int(rng.poisson(lam_eff * mult))
        a = Agg()
        a.calls = calls
        err = 0.015 + (0.15 if rng.random() < 0.002 else 0.0)
        if kind == "retry_storm":
            err = 0.7
        a.errors = int(rng.binomial(calls, min(err, 1.0)))
        inp_med = ep.inp * (inc.size if kind == "prompt_bloat" else 1.0)
        models = {ep.model: calls}
        if kind == "model_switch":
            models = {"4o" if ep.model == "mini" else "o1": calls}
        elif kind == "new_model":
            moved = int(rng.binomial(calls, inc.size if inc else 0))
            models = {ep.model: calls - moved, "o1": moved}
        spend = 0
        for model, n in models.items():
            pin, pout = PRICES[model]
            cost = pin * token_sum(rng, n, inp_med, 0.9) + pout * token_sum(rng, n, ep.out, 0.8)
            if cost:
                a.models[model] = a.models.get(model, 0) + cost
            spend += cost
        a.spend, a.inp = spend, int(calls * inp_med)
        a.out = int(calls * ep.out)
        pin, pout = PRICES[ep.model]
        base_spend = lam * (pin * ep.inp * np.exp(0.9**2 / 2) + pout * ep.out * np.exp(0.8**2 / 2))
        return a, float(base_spend)


def scopes_of(aggs: list[Agg]) -> dict[str, Agg]:
    """Endpoint aggregates expanded to every scope kind, as :class:`RecordAggregate` does."""
    out: dict[str, Agg] = {}
    for ep, a in zip(ENDPOINTS, aggs, strict=True):
        if not a.calls:
            continue
        for scope in (
            ep.scope,
            service_scope(ep.service),
            team_scope(ep.team),
            GLOBAL,
            *(model_scope("openai", m) for m in a.models),
        ):
            cur = out.get(scope)
            if cur is None:
                out[scope] = a.copy()
            else:
                cur.merge(a)
    return out


def simulate(seed: int, scale: float, weeks: int, cfg: RuleConfig) -> tuple[Traffic, list[Alert]]:
    traffic = Traffic(seed, scale, weeks)
    return traffic, run(traffic, weeks * 10080, cfg)


def run(
    traffic: Traffic, minutes: int, cfg: RuleConfig, table: dict[str, Any] | None = None
) -> list[Alert]:
    """``minutes`` of ``traffic`` from START through the worker's :class:`Stage2` (2 stage-2
    partitions, snapshots routed as the worker routes them)."""
    table = {} if table is None else table
    parts = 2
    s2 = Stage2(table, cfg, 1, 0, 15, clock=lambda: 1e12)
    alerts: list[Alert] = []
    for m in range(START, START + minutes):
        scopes = scopes_of(traffic.minute(m))
        snaps = [Snapshot(0, sc, m, m - START, a.to_dict()) for sc, a in scopes.items()]
        by_q: dict[int, list[Snapshot]] = {q: [] for q in range(parts)}
        for q, sn in route(snaps, parts):
            by_q[q].append(sn)
        for q in range(parts):
            s2.apply_snapshots(q, by_q[q])
            s2.set_watermarks(q, {0: ((m + 1) * 60 + 1, False)})
            alerts += s2.close(q).alerts
    return alerts


@dataclass
class Score:
    expected: int = 0
    detected: int = 0
    pages: int = 0
    resolved_after_end: int = 0
    false_pages: int = 0
    weeks: float = 0.0
    immaterial: int = 0
    immaterial_paged: int = 0
    reach: int = 0
    reach_detected: int = 0


def score(
    traffic: Traffic, alerts: list[Alert], weeks: int, cfg: RuleConfig
) -> tuple[Score, list[tuple[float, float, str]]]:
    """Match firings to incidents; returns the score and (scope calls/min, delay, kind) of
    each detected sharp incident."""
    sc = Score(weeks=weeks - 1)
    org_day = traffic.total_pico / (weeks * 7)
    firing = [a for a in alerts if a.status == "firing" and a.scope.startswith("endpoint:")]
    resolved = {a.alert_id: a for a in alerts if a.status == "resolved"}
    used: set[Any] = set()
    delays: list[tuple[float, float, str]] = []
    for inc in traffic.incidents:
        scope = ENDPOINTS[inc.endpoint].scope
        per_day = inc.excess_pico / max(inc.minutes, 1) * 1440
        must = inc.kind == "retry_storm" or per_day >= cfg.material_share * org_day
        hits = [
            a
            for a in firing
            if a.scope == scope
            and inc.start * 60 <= a.window_start.timestamp() < (inc.end + 30) * 60
        ]
        used.update(a.alert_id for a in hits)
        if not must:
            sc.immaterial += 1
            sc.immaterial_paged += bool(hits)
            continue
        sc.expected += 1
        sc.reach += inc.calls >= REACH_CALLS
        if not hits:
            continue
        sc.detected += 1
        sc.reach_detected += inc.calls >= REACH_CALLS
        sc.pages += len(hits)
        first = hits[0]
        res = resolved.get(first.alert_id)
        if res is not None and res.window_start.timestamp() >= inc.end * 60:
            sc.resolved_after_end += 1
        if inc.kind != "ramp":
            delay = first.window_end.timestamp() / 60 - inc.start
            vol = traffic.scale * ENDPOINTS[inc.endpoint].weight * 0.8
            delays.append((vol, delay, inc.kind))
    scored_from = (START + 10080) * 60
    sc.false_pages = sum(
        1 for a in firing if a.alert_id not in used and a.window_start.timestamp() >= scored_from
    )
    return sc, delays


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--weeks", type=int, default=3)
    ap.add_argument("--scales", default="10,100,1000,5000")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--evidence", type=float, default=RuleConfig().evidence)
    args = ap.parse_args()
    cfg = RuleConfig(evidence=args.evidence)
    seeds = [int(x) for x in args.seeds.split(",")]
    total_expected = total_detected = 0
    print(f"seeds {seeds}, {args.weeks} weeks each (first is warm-up), {cfg}")
    print(
        f"{'calls/min':>9} {'incidents':>9} {'detected':>8} {'recall':>6} {'pages/inc':>9} "
        f"{'res>end':>7} {'false/wk':>8} {'med delay':>9} {'immat paged':>11} "
        f"{'recall(>=30 calls)':>18}"
    )
    for scale in [float(x) for x in args.scales.split(",")]:
        agg, delays, t0 = Score(), [], time.monotonic()
        for seed in seeds:
            traffic, alerts = simulate(seed * 7919 + int(scale), scale, args.weeks, cfg)
            sc, d = score(traffic, alerts, args.weeks, cfg)
            if args.verbose:
                _explain(traffic, alerts, sc)
            for f in (
                "expected",
                "detected",
                "pages",
                "resolved_after_end",
                "false_pages",
                "immaterial",
                "immaterial_paged",
                "reach",
                "reach_detected",
            ):
                setattr(agg, f, getattr(agg, f) + getattr(sc, f))
            agg.weeks += sc.weeks
            delays += d
        sharp = [dl for vol, dl, _ in delays if vol >= 5]
        med = statistics.median(sharp) if sharp else float("nan")
        recall = agg.detected / max(agg.expected, 1)
        print(
            f"{scale:>9.0f} {agg.expected:>9} {agg.detected:>8} {recall:>6.3f} "
            f"{agg.pages / max(agg.detected, 1):>9.2f} {agg.resolved_after_end:>7} "
            f"{agg.false_pages / agg.weeks:>8.2f} {med:>9.1f} "
            f"{agg.immaterial_paged:>5}/{agg.immaterial:<5} "
            f"{agg.reach_detected:>4}/{agg.reach:<4} ({time.monotonic() - t0:.0f} s)"
        )
        thin = sorted(delays)
        if thin:
            print(
                "          delay by scope volume: "
                + ", ".join(
                    f"{v:.1f}/min→{dl:.0f}m" for v, dl, _ in thin[:: max(1, len(thin) // 8)]
                )
            )
        result(f"alert recall at {scale:.0f} calls/min", recall, "share", ">= 0.95")
        result(
            f"false pages per week at {scale:.0f} calls/min",
            agg.false_pages / agg.weeks,
            "pages",
            "<= 1",
        )
        total_expected += agg.expected
        total_detected += agg.detected
    print(f"alert_recall={total_detected / max(total_expected, 1):.4f}")


def _explain(traffic: Traffic, alerts: list[Alert], sc: Score) -> None:
    for inc in traffic.incidents:
        scope = ENDPOINTS[inc.endpoint].scope
        hits = [
            a
            for a in alerts
            if a.scope == scope
            and a.status == "firing"
            and inc.start * 60 <= a.window_start.timestamp() < (inc.end + 30) * 60
        ]
        print(
            f"  {inc.kind:13} {scope:28} {inc.end - inc.start:4}m size {inc.size:5.2f} "
            f"calls {inc.calls:5} "
            f"excess/day ${inc.excess_pico / max(inc.minutes, 1) * 1440 / PICO:9.2f} "
            f"hits {len(hits)} {hits[0].message[:90] if hits else ''}"
        )
    for a in alerts:
        if a.status == "firing" and not any(
            inc.start * 60 <= a.window_start.timestamp() < (inc.end + 30) * 60
            for inc in traffic.incidents
        ):
            print(f"  FALSE {a.window_start:%a %H:%M} {a.severity} {a.rule} {a.message[:120]}")
    print(f"  org $/day {traffic.total_pico / PICO / 21:.2f}")


if __name__ == "__main__":
    main()
