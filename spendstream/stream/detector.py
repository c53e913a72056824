"""The anomaly detector of endpoint scopes: sensitivity from each scope's own statistics.

A pure function of one scope's closed event-time minutes (replay at any speed gives the same
alerts); its state is a small JSON-able dict (~3-5 KB per endpoint once a week of seasonal
buckets is learned, see :data:`STATE_NOTE`).

**Expected level.** For calls and spend per minute: the *seasonal* level (15-minute buckets of
the day, separate weekday and weekend profiles, each an EWMA over days with weight
``1/season_days``) once the bucket has been seen on an earlier day, the max of the bucket and
its two neighbours so a recurring batch that starts a few minutes early or late is still
"usual"; before that, a trailing EWMA over ``baseline_minutes``. Long-run (1-day EWMA)
levels give the per-call baselines (cost per call, tokens per call, error rate) the messages
compare with. No baseline learns from a minute of an open incident, or of an evidence streak
(evidence over half the threshold, for at most an hour): an unalerted incident cannot become
"normal" within minutes, as it did with the former trailing hour.

**Evidence that grows with volume.** Each signal (spend, calls, errors) runs a one-sided
Poisson CUSUM: per minute, the log-likelihood ratio of "rate ×k" against "rate as expected",
``n·ln k − λ(k−1)``, summed and floored at 0; the scope fires when the sum reaches
``evidence`` (nats). Spend is not a count, so it is measured in quasi-Poisson units ``u`` =
max(cost per call, variance/mean of the minute's spend about its expected level): heavy-tailed
token counts make ``u`` larger and the test correspondingly more cautious. Evidence per minute
is ~``λ·(k·ln k − k + 1)`` at rate ×k, so it scales with volume: a 500 calls/min scope doubling
its spend gathers hundreds of nats in one minute; a 2 calls/min scope a few per minute, and
its per-minute evidence is capped at half the threshold unless overwhelming (≥ 3× the
threshold on a scope with λ ≥ ``evidence``), so one odd minute never pages alone — it needs
at least two; a ×16 model switch on a busy endpoint pages in one. With k = 2.5 only minutes
above ~1.64× the expected level add evidence, so noise, diurnal drift and weekly growth decay.

**Materiality.** Statistically sure is not enough to page: the excess spend (observed −
expected, averaged over the evidence streak) projected over a day must be at least
``material_share`` of the organisation's daily spend (an EWMA of ``global:all`` that stage 2
passes in) or ``material_usd_per_day`` when set. An error or call storm whose money impact is
immaterial is a ``warning`` (``error_storm`` when errors are ≥ 20% of calls and ≥ 3× usual;
``call_storm`` when the excess calls are ``material_share`` of the organisation's calls).

**One incident, one alert per endpoint**, firing once and resolving once: after firing, a
minute is "back in band" when no signal's log-likelihood ratio is positive (every signal
under ~1.64× expected); the alert resolves after ``resolve_minutes`` such minutes in a row
whose evidence for "normal" sums to half the threshold — never while the incident goes on.
Endpoint scopes are the only ones that page: every call belongs to exactly one endpoint, so
the most specific scope that explains an excess is an endpoint; its message names the service
and global scopes it moved and the model that replaced the usual one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..money import pico_to_usd, usd_to_pico
from .windows import Agg

BUCKET = 15
"""Minutes per seasonal bucket."""
BUCKETS_PER_DAY = 1440 // BUCKET
LONG_MINUTES = 1440
"""Span of the long-run EWMAs (per-call baselines, spend variance)."""
STATE_NOTE = "~100 B base + ≤ 192 seasonal buckets × ~30 B + ≤ 40 models × ~40 B"
SIG = ("spend", "calls", "errors")


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    evidence: float = 12.0
    ratio: float = 2.5
    error_ratio: float = 3.0
    baseline_minutes: int = 30
    min_baseline_minutes: int = 15
    season_days: float = 3.0
    resolve_minutes: int = 3
    cooldown_minutes: int = 10
    material_share: float = 0.02
    material_usd_per_day: Decimal = Decimal("0")
    runaway_minutes: int = 10
    """Trailing window of the runaway-session rule (:mod:`.runaway`)."""
    runaway_ratio: float = 4.0
    """A runaway session spends at least this × a typical session's rate (and the tail bound)."""
    runaway_min_calls: int = 60
    """Calls in the window a runaway session needs (a loop, not one expensive call)."""
    runaway_usd_per_day: Decimal = Decimal("1")
    """A session's rate projected over a day must reach this to page."""
    runaway_false_per_week: float = 1.0
    """False runaway pages per endpoint-week the threshold is set for (extreme-value tail)."""


@dataclass(frozen=True, slots=True)
class Org:
    """The organisation's level (from ``global:all``), per day: spend (pico) and calls."""

    spend_day: float = 0.0
    calls_day: float = 0.0


def _weekend(minute: int) -> bool:
    return (minute // 1440 + 3) % 7 >= 5  # epoch day 0 was a Thursday


def bucket_of(minute: int) -> int:
    b = (minute % 1440) // BUCKET
    return b + (BUCKETS_PER_DAY if _weekend(minute) else 0)


def _ewma(st: dict[str, Any], key: str, span: int, minute: int) -> list[float]:
    """The EWMA vector ``key`` decayed to just before ``minute`` (empty minutes are zeros)."""
    vec, at = st.get(key, [[0.0] * 5, minute - 1])
    a = max(1.0 / span, 1.0 / (st.get("n", 0) + 1))
    d = (1 - a) ** max(0, minute - 1 - at)
    return [v * d for v in vec]


def _push(st: dict[str, Any], key: str, span: int, minute: int, x: list[float]) -> None:
    a = max(1.0 / span, 1.0 / (st.get("n", 0) + 1))
    prev = _ewma(st, key, span, minute)
    st[key] = [[round(p + a * (v - p), 6) for p, v in zip(prev, x, strict=True)], minute]


def seasonal(st: dict[str, Any], minute: int) -> tuple[float, float] | None:
    sea: dict[str, list[float]] = st.get("sea", {})
    b = bucket_of(minute)
    if str(b) not in sea:
        return None
    base = b - b % BUCKETS_PER_DAY
    near = [sea.get(str(base + (b - base + k) % BUCKETS_PER_DAY)) for k in (-1, 0, 1)]
    got = [v for v in near if v is not None]
    return max(v[0] for v in got), max(v[1] for v in got)


def expected(st: dict[str, Any], cfg: DetectorConfig, minute: int) -> tuple[float, float]:
    """(calls, spend) expected in ``minute``: seasonal when known, else trailing; never under
    a quarter of the long-run level (a usually silent hour is not an infinite ratio)."""
    fast = _ewma(st, "f", cfg.baseline_minutes, minute)
    long = _ewma(st, "l", LONG_MINUTES, minute)
    sea = seasonal(st, minute)
    c, s = sea if sea is not None else (fast[0], fast[2])
    return max(c, 0.25 * long[0], 0.05), max(s, 0.25 * long[2], 1.0)


def _units(st: dict[str, Any], minute: int, e_calls: float, e_spend: float) -> tuple[float, float]:
    """Quasi-Poisson units of (calls, spend) at the expected level: variance/mean, with the
    variance modelled as max(P·E, Q·E²) from the EWMAs of r²/E (P) and r²/E² (Q) of the
    residuals r. Variance/mean grows with the level when traffic is overdispersed (a
    gamma-Poisson minute: var = λ + λ²/shape), so one ratio for all hours under-estimated it at
    the daily peak: most false pages of the first bench runs were at 08:00-10:00."""
    long = _ewma(st, "l", LONG_MINUTES, minute)
    v = st.get("v", [0.0, 0.0, 0.0, 0.0])
    cost = long[2] / max(long[0], 1e-9)
    u_calls = max(1.0, v[0], v[1] * e_calls)
    u_spend = max(cost, v[2], v[3] * e_spend, 1.0)
    return u_calls, u_spend


def _llr(n: float, lam: float, k: float, h: float) -> float:
    """One minute's evidence, capped at h/2 (so two minutes are needed) unless it is
    overwhelming (≥ 3h) on a scope with λ ≥ h: a gamma-Poisson minute (shape 20) reaches ×2.4
    about once in 10⁵ minutes, which paged alone at 480 calls/min."""
    v = n * math.log(k) - lam * (k - 1)
    return v if lam >= h and v >= 3 * h else min(v, h / 2)


def signals(
    st: dict[str, Any], cfg: DetectorConfig, minute: int, agg: Agg, ratio: float | None = None
) -> tuple[list[float], tuple[float, float]]:
    """Per-minute log-likelihood ratios of (spend, calls, errors) for "×``ratio``" (default
    ``cfg.ratio``) against "as expected", and the expected (calls, spend)."""
    k = ratio or cfg.ratio
    e_calls, e_spend = expected(st, cfg, minute)
    u_calls, u_spend = _units(st, minute, e_calls, e_spend)
    long = _ewma(st, "l", LONG_MINUTES, minute)
    err_rate = max(long[1] / max(long[0], 1e-9), 0.01)
    h = cfg.evidence
    out = [
        _llr(agg.spend / u_spend, e_spend / u_spend, k, h),
        _llr(agg.calls / u_calls, e_calls / u_calls, k, h),
        _llr(agg.errors, e_calls * err_rate, cfg.error_ratio, h),
    ]
    return out, (e_calls, e_spend)


def learn(st: dict[str, Any], cfg: DetectorConfig, minute: int, agg: Agg) -> None:
    """Add a normal minute to the baselines (trailing, long-run, variance, seasonal)."""
    e_calls, e_spend = expected(st, cfg, minute) if st.get("n", 0) else (agg.calls, agg.spend)
    x = [float(agg.calls), float(agg.errors), float(agg.spend), float(agg.inp), float(agg.out)]
    v = st.get("v", [0.0, 0.0, 0.0, 0.0])
    a = max(1.0 / LONG_MINUTES, 1.0 / (st.get("n", 0) + 1))
    rc, rs = (agg.calls - e_calls) ** 2, (agg.spend - e_spend) ** 2
    ec, es = max(e_calls, 0.05), max(e_spend, 1.0)
    new = (rc / ec, rc / ec**2, rs / es, rs / es**2)
    # winsorised at 9× the current estimate (floored at one unit: a call, a call's cost) so
    # an unalerted shift or one odd minute cannot inflate the units and blind the scope
    cost = agg.spend / agg.calls if agg.calls else 1.0
    caps = (
        9 * max(v[0], 1.0),
        9 * max(v[1], 1 / ec),
        9 * max(v[2], cost),
        9 * max(v[3], cost / es),
    )
    st["v"] = [
        float(f"{old + a * (min(x, cap) - old):.6g}")
        for old, x, cap in zip(v, new, caps, strict=True)
    ]
    _push(st, "f", cfg.baseline_minutes, minute, x)
    _push(st, "l", LONG_MINUTES, minute, x)
    st["n"] = st.get("n", 0) + 1
    _season_add(st, cfg, minute, agg.calls, agg.spend, excluded=False)


def hold(st: dict[str, Any], cfg: DetectorConfig, minute: int, agg: Agg | None = None) -> None:
    """An excluded minute: the baselines stay as they are (not decayed by it). With ``agg``
    (an evidence streak that has not paged) the trailing level still follows: freezing it
    during a natural morning ramp made the expected level fall further behind, the streak
    longer and the baseline frozen for hours (most first-day false pages)."""
    for key in ("f", "l"):
        if key in st:
            st[key] = [st[key][0], minute]
    if agg is not None and "f" in st:
        x = [float(agg.calls), float(agg.errors), float(agg.spend), float(agg.inp), float(agg.out)]
        _push(st, "f", cfg.baseline_minutes, minute, x)
    _season_add(st, cfg, minute, 0, 0, excluded=True)


def _season_add(
    st: dict[str, Any], cfg: DetectorConfig, minute: int, calls: int, spend: int, *, excluded: bool
) -> None:
    inst = minute // BUCKET
    cur = st.get("cur")
    if cur is not None and cur[0] != inst:
        kept = BUCKET - cur[3]
        if kept >= BUCKET // 2:  # an instance mostly held out teaches nothing
            sea: dict[str, list[float]] = st.setdefault("sea", {})
            key = str(bucket_of(cur[0] * BUCKET))
            mean = (cur[1] / kept, cur[2] / kept)
            old = sea.get(key)
            b = 1.0 / cfg.season_days
            new = (
                mean
                if old is None
                else (old[0] + b * (mean[0] - old[0]), old[1] + b * (mean[1] - old[1]))
            )
            sea[key] = [round(new[0], 3), round(new[1], 1)]
        cur = None
    if cur is None:
        cur = [inst, 0, 0, 0]
    cur[1] += calls
    cur[2] += spend
    cur[3] += 1 if excluded else 0
    st["cur"] = cur


def excess(st: dict[str, Any]) -> tuple[float, float]:
    """(spend pico, calls) per minute above expected over the evidence streak."""
    acc = st.get("acc")
    if not acc or acc[5] <= 0:
        return 0.0, 0.0
    return acc[6] / acc[5], acc[7] / acc[5]


def material(cfg: DetectorConfig, org: Org | None, spend_per_min: float) -> bool:
    day = spend_per_min * 1440
    floor = float(usd_to_pico(cfg.material_usd_per_day))
    share = cfg.material_share * org.spend_day if org is not None and org.spend_day > 0 else 0.0
    need = max(floor, share)
    return day > 0 and day >= need


def usd(pico: float) -> str:
    v = pico_to_usd(int(pico))
    return f"${v:.2f}" if abs(v) >= 1 else f"${v:.3f}"
