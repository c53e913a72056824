"""The runaway-session rule (issue 17): one session of an endpoint spending far above its peers.

An agent stuck in a loop calls the same endpoint every few seconds under one session id for
as long as nobody stops it. Per endpoint the aggregate detector sees it only when the loop is
a large share of the endpoint's spend; a loop of 6 calls/min on an endpoint serving 200 users
is +3% of its calls and never pages there, yet it costs a working day of a person every hour.

**What is compared.** Stage 1's endpoint windows keep the top ``TOP_SESSIONS`` sessions of
each minute by spend (exact: the raw topic is keyed by service/endpoint) and the count/sum of
the rest (:mod:`.windows`). Stage 2 keeps, per endpoint, a decayed histogram of *session
spend per active minute* in quarter-octave log bins (each top session one observation, the
rest as their count at their mean), so the reference is the endpoint's own sessions, learned
over about a day (:data:`SPAN`). A session's statistic is its spend over the trailing
``runaway_minutes`` (idle minutes count as zero) divided by the window: a loop is active
every minute, a person is not, so the comparison is already conservative for people.

**The base.** Robust, on the log scale, from the histogram's median m and σ = 1.4826·MAD
(log₂ → nats): ``B = e^m · max(runaway_ratio, e^{σ²/2}·(1 + Z·√((e^{σ²}−1)/A)))``, i.e. at
least ×``runaway_ratio`` the typical session-minute, and :data:`Z` standard errors above the
mean of ``A`` = 80% of the window's active minutes of a log-normal session with that spread
(the session's figure is a mean over the window, so its spread is that of a mean). A tracked
session is *scored* when it had calls in ≥ 80% of the window's minutes and its rate projected
over a day reaches ``runaway_usd_per_day``; its **score** is min(calls in the window /
``runaway_min_calls``, window rate / B): 1 = a call every ≤ 10 s (60 in 10 min) at the base
rate — the rule before issue 17's second round fired at score ≥ 1.

**Why a fixed bar fails, and the factor k.** B is one session's comparison; a busy endpoint
makes hundreds of them a minute, so ordinary sessions cross a fixed bar in proportion to the
traffic (multiple comparisons). Measured on the bench (seed 0, 1,000 calls/min): ~30 sessions a
day peak at score ≥ 0.5 and ~2 a day at ≥ 1 — people whose think time drew ≤ 11 s, 100–174
calls — so a bar at 1 paged 10.3 times a week. A session pages when its score reaches
**k ≥ 1**, set for ``runaway_false_per_week`` false pages per endpoint-week: each scored
session's *peak* score is kept while it is tracked and, when it leaves, added to a decayed
histogram (16 bins/octave, weight 1/:data:`SPAN` per session: the weights are a rate per
minute; one value per session is the natural declustering, so the overlap of consecutive
windows needs no extremal index). Peaks over threshold at u = :data:`TAIL_FROM` (half-way to a
page): λ_u sessions a minute exceed u, their excesses are exponential with mean β (the
generalised Pareto with ξ = 0: log-normal think times and costs put the score in the Gumbel
domain), so k = u + β·ln(λ_u / target) with target = false pages per week / 10,080 minutes.
Measured k: 1.5–1.7 at 1,000 calls/min. An exponential excess on the *log* score (a Pareto
tail, heavier than log-normal) gave k 2.3–4.7 there and recall in reach 0.24 — too
conservative. A firing session's peak is only known to be ≥ k: it counts in λ_u and as an
excess censored at k − u (the exponential MLE with right-censoring: β = all excesses / the
observed ones). Dropping it instead lost the tail's top whenever k was low (k 1.1 with no peak
≥ 1 learned; 2.8 false pages/week at 100 calls/min on ``--shape wide``, 0.93 with censoring,
TAIL_N 10).
Loops count too (≤ 6 a day on the bench, capped at k: they raise k a little); a loop that does
not fire is learned as it is (traffic the rule could not tell from people). With under
:data:`TAIL_N` sessions over u in a span, or λ_u under the target, k = 1: a quiet endpoint
makes few comparisons and keeps the single-session bar. TAIL_N is the one trade-off constant:
with 10, k fell back to 1 at 5,000 calls/min whenever under 10 sessions a day got half-way
(most sessions are never seen for 8 minutes outside the top 16) and paged 8.6 times a week; with
3, recall in reach at 10 calls/min fell 0.85 → 0.56 (β from three peaks, loops among them);
5: 0.78 a week at 5,000 and 0.79 recall at 10 (figures at 100 and 1,000 calls/min were the same
with 3 and 10).

**What cannot be separated.** A person at loop pace for 15–25 minutes is, in every figure the
rule sees (pace, spend per call, active minutes), a 15–25-minute loop; only duration tells
them apart, and waiting 25 minutes for every loop would triple the delay (8 min). So on a busy
endpoint the rule raises k instead and misses the slowest loops within reach (a call every
6–8 s at about the endpoint's cost): recall in reach at 1,000 calls/min 0.76 → 0.68 for false
pages 10.3 → 1.4 a week. The endpoint detector still sees loops that move the aggregate.

No fire before ``min_baseline_minutes`` minutes with sessions and :data:`MIN_OBS` observations.
Critical when the rate is also material for the organisation (the detector's
:func:`.detector.material`), else a warning. A session over the threshold (B·k, or open) teaches
the session-minute histogram nothing.

**Tracking.** Each minute the window's top sessions join the tracked set; it keeps the
:data:`TRACK` with the largest window spend × share of minutes active since first seen (a loop
that just started outranks an expensive one-off call, whose score decays as 1/minutes; ranking
by window spend alone evicted a starting loop every minute at 100 calls/min). Approximation: a
session outside its minute's top 16 counts as idle that minute, so on a busy endpoint
(~1,000 calls/min, ~800 sessions a minute) a loop must out-spend the top 2% of session-minutes
to be seen; with 32 kept, recall there rose 0.67 → 0.80 but false pages doubled.

**One alert per episode**, naming the session in the message and details (alerts are no
Prometheus series, so a session id is allowed there; scope stays the endpoint). It resolves
after ``resolve_minutes`` minutes in a row with the trailing rate under half the threshold
(hysteresis: a loop pausing a few minutes still has most of its window over it), and a new
episode of the same session is a new alert. At most :data:`MAX_OPEN` open per endpoint
(a deploy that makes every session loop is the endpoint detector's incident).

**Bounded state** per endpoint: ≤ ~60 histogram bins (15 with 1,000 sessions a minute),
≤ ~50 peak-score bins (16 an octave from 0.5 to about k: a peak over k fired, is not kept),
one peak per tracked session, ≤ :data:`TRACK` tracked sessions plus the open ones × ≤
``runaway_minutes`` active minutes each: ≤ 24 × (40 + 10 × 30) B + ~1.5 KB ≈ 10 KB JSON with
UUID ids whatever the number of sessions; 1.8 KB measured with 1,000 new UUID sessions a
minute for 300 minutes (the test: 100,000 distinct).

**Measured** with ``python bench/runaway_quality.py --seeds 0,1,2,3,4 --days 4`` (one endpoint,
5 seeds × 3 scored days per scale; see its docstring for the traffic): see :data:`MEASURED`.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from ..alerts import Alert, Contributor, Severity, alert_id
from ..money import pico_to_usd, usd_to_pico
from ..scopes import minute_dt
from .detector import DetectorConfig, Org, material, usd
from .windows import Agg

BINS_PER_OCTAVE = 4
SPAN = 1440
"""Minutes (with sessions) of the histogram's decay."""
TRACK = 24
"""Sessions tracked per endpoint (by trailing-window spend), besides the open ones."""
MAX_OPEN = 8
"""Open runaway alerts per endpoint at most."""
MIN_OBS = 50
"""Session-minutes in the histogram before the rule may fire."""
Z = 2.0
"""Standard errors of a window mean above the typical session (one session's comparison)."""
ACTIVE_SHARE = 0.8
"""Share of the window's minutes a session must have calls in."""
TAIL_FROM = 0.5
"""Score above which session peaks make the tail: half-way to a page (an octave below)."""
TAIL_N = 5
"""Sessions over :data:`TAIL_FROM` (effective, in a span) before the tail replaces k = 1."""
WEEK = 7 * 1440
X_BINS = 16
"""Bins per octave of the busiest-score histogram (4.4% steps: k sits near 1–3)."""
MEASURED = (
    "recall in reach / false pages per week, fixed bar (k = 1) -> now; base shape: 10 calls/min "
    "0.85 / 0.00 -> 0.79 / 0.00; 100: 1.00 / 4.67 -> 0.94 / 0.47; 1000: 0.76 / 10.27 -> "
    "0.56 / 0.00; 5000 (3 seeds): 0.42 / 14.78 -> 0.29 / 0.78. --shape wide: 10: 0.82 / 1.40 -> "
    "0.56 / 0.00; 100: 1.00 / 30.33 -> 0.74 / 0.93; 1000: 0.74 / 74.67 -> 0.12 / 1.40. "
    "--shape regular: 10: 0.97 / 0.00 -> 0.79 / 0.00; 100: 1.00 / 5.60 -> 0.97 / 0.47; "
    "1000: 0.82 / 16.80 -> 0.62 / 0.47. Median delay 8 min throughout"
)
"""``python bench/runaway_quality.py --seeds 0,1,2,3,4 --days 4``, 2 shared cores (CPU-bound,
deterministic per seed: figures do not depend on timing)."""


def _bin(spend: float) -> int:
    return math.floor(BINS_PER_OCTAVE * math.log2(max(spend, 1.0)))


def _quantile(hist: list[tuple[float, float]], q: float, bins: int = BINS_PER_OCTAVE) -> float:
    """The ``q`` quantile of weighted points (value, weight), interpolated within a bin."""
    total = sum(w for _, w in hist)
    need, acc = q * total, 0.0
    for x, w in hist:
        if acc + w >= need:
            return x + (need - acc) / w / bins if w > 0 else x
        acc += w
    return hist[-1][0] if hist else 0.0


def reference(rw: dict[str, Any]) -> tuple[float, float] | None:
    """(median, σ) of log₂ session spend per active minute; None before enough history."""
    h: dict[str, float] = rw.get("h", {})
    if rw.get("obs", 0) < MIN_OBS or not h:
        return None
    pts = sorted((int(b) / BINS_PER_OCTAVE, w) for b, w in h.items())
    med = _quantile(pts, 0.5)
    dev = sorted((abs(x + 0.5 / BINS_PER_OCTAVE - med), w) for x, w in pts)
    return med, 1.4826 * _quantile(dev, 0.5)


@dataclass(frozen=True, slots=True)
class Window:
    """One tracked session's trailing window: spend (pico), calls, active minutes, first."""

    spend: int
    calls: int
    active: int
    first: int


def _window(entries: list[list[int]]) -> Window:
    first = entries[0][0] if entries else 0
    return Window(sum(e[1] for e in entries), sum(e[2] for e in entries), len(entries), first)


class RunawayRule:
    """The rule on one endpoint's state dict ``rw`` (inside the scope's rules state)."""

    def __init__(self, cfg: DetectorConfig) -> None:
        self.cfg = cfg

    def threshold(self, rw: dict[str, Any]) -> float | None:
        """Base spend per minute (pico) of a runaway: ×ratio the typical session-minute and
        :data:`Z` standard errors of a window mean (one session's comparison, before the
        multiple-comparisons factor :meth:`factor`)."""
        ref = reference(rw)
        if ref is None or rw.get("m", 0) < self.cfg.min_baseline_minutes:
            return None
        med, sigma = ref
        return float(2**med * max(self.cfg.runaway_ratio, self._sampling_bound(sigma)))

    def factor(self, rw: dict[str, Any]) -> float:
        """k ≥ 1: a session pages when its score reaches k. Peaks over threshold on the
        decayed histogram of the peak scores of the endpoint's past sessions (weight per minute:
        a rate): λ_u sessions a minute peak above u = :data:`TAIL_FROM`, their excess is
        exponential (the generalised Pareto with ξ = 0, β its mean), so k = u + β·ln(λ_u /
        target) is reached by ``runaway_false_per_week`` sessions a week; 1 before
        :data:`TAIL_N` such sessions in a span, or when λ_u itself is under the target."""
        span = min(rw.get("m", 0), SPAN)
        top = [(math.pow(2, int(b) / X_BINS), float(w)) for b, w in rw.get("x", {}).items()]
        top = [(v, w) for v, w in top if v >= TAIL_FROM]
        seen = sum(w for _, w in top)
        cens, cens_ex = (float(c) for c in rw.get("xc", [0.0, 0.0]))
        lam = seen + cens
        target = self.cfg.runaway_false_per_week / WEEK  # per minute with sessions
        if seen * span < TAIL_N or lam <= target:
            return 1.0
        mid = math.pow(2, 0.5 / X_BINS)  # a bin's geometric middle
        # exponential MLE with right-censoring: all excesses (censored ones at k) / observed
        beta = (sum((v * mid - TAIL_FROM) * w for v, w in top) + cens_ex) / seen
        return max(1.0, TAIL_FROM + beta * math.log(lam / target))

    def score(self, win: Window, base: float) -> float:
        """How far a session is into runaway land: 1 at the base rate and min_calls."""
        rate = win.spend / self.cfg.runaway_minutes
        return min(win.calls / self.cfg.runaway_min_calls, rate / base)

    def _sampling_bound(self, sigma: float) -> float:
        """Z standard errors above the mean of ``A`` active minutes of a log-normal session
        (σ from the histogram, log₂), in units of the median: e^{s²/2}·(1 + Z·√((e^{s²}−1)/A))."""
        s2 = (sigma * math.log(2)) ** 2
        active = math.ceil(ACTIVE_SHARE * self.cfg.runaway_minutes)
        return math.exp(s2 / 2) * (1 + Z * math.sqrt(math.expm1(min(s2, 50.0)) / active))

    def close_minute(
        self, scope: str, rw: dict[str, Any], minute: int, agg: Agg, org: Org | None
    ) -> list[Alert]:
        base = self.threshold(rw)
        k = self.factor(rw)
        thr = None if base is None else base * k
        self._track(rw, minute, agg)
        alerts: list[Alert] = []
        over: set[str] = set()
        for sid, entries in sorted(rw.get("t", {}).items()):
            win = _window(entries)
            rate = win.spend / self.cfg.runaway_minutes
            if thr is not None and rate >= thr:
                over.add(sid)
            if sid in rw.get("open", {}):
                alerts += self._maybe_resolve(scope, rw, sid, minute, win, thr)
            elif (
                base is not None
                and len(rw.get("open", {})) < MAX_OPEN
                and self._candidate(win)
                and self.score(win, base) >= k
            ):
                alerts.append(self._fire(scope, rw, sid, minute, win, base * k, org))
        if base is not None and (agg.sessions or agg.srest[0]):
            fired = {a.details["session_id"] for a in alerts if a.status == "firing"}
            self._learn_tail(rw, fired, base, k)
        self._learn(rw, agg, over | set(rw.get("open", {})))
        return alerts

    def _candidate(self, win: Window) -> bool:
        """Scored at all: active in most minutes and material over a day (score decides)."""
        cfg = self.cfg
        rate = win.spend / cfg.runaway_minutes
        return win.active >= math.ceil(ACTIVE_SHARE * cfg.runaway_minutes) and (
            rate * 1440 >= usd_to_pico(cfg.runaway_usd_per_day)
        )

    def _learn_tail(self, rw: dict[str, Any], fired: set[str], base: float, k: float) -> None:
        """Keep each scored session's peak score; when it leaves the tracked set, add the peak
        to the decayed histogram. A firing session's peak is only known to be ≥ k: it counts
        as censored there (``xc``: rate, rate × excess), else the tail would lose its top."""
        pk: dict[str, float] = rw.setdefault("pk", {})
        t = rw.get("t", {})
        opened = rw.get("open", {})
        a = max(1.0 / SPAN, 1.0 / (rw.get("m", 0) + 1))
        cens, cens_ex = (c * (1 - a) for c in rw.get("xc", [0.0, 0.0]))
        for sid, entries in t.items():
            if sid in fired:
                pk.pop(sid, None)
                cens, cens_ex = cens + a, cens_ex + a * (k - TAIL_FROM)
            elif sid in opened:
                pk.pop(sid, None)
            elif self._candidate(w := _window(entries)):
                pk[sid] = round(max(pk.get(sid, 0.0), self.score(w, base)), 4)
        rw["xc"] = [round(cens, 7), round(cens_ex, 7)]
        x = {b: w * (1 - a) for b, w in rw.get("x", {}).items() if w * (1 - a) >= 1e-5}
        for sid in [s for s in pk if s not in t]:
            peak = pk.pop(sid)
            if peak >= TAIL_FROM:  # lower peaks are never used
                b = str(math.floor(X_BINS * math.log2(peak)))
                x[b] = x.get(b, 0.0) + a
        rw["x"] = {b: round(w, 7) for b, w in x.items()}

    def _track(self, rw: dict[str, Any], minute: int, agg: Agg) -> None:
        """Add the minute's top sessions, drop minutes out of the window, keep the biggest."""
        t: dict[str, list[list[int]]] = rw.setdefault("t", {})
        for sid, (sp, n) in agg.sessions.items():
            t.setdefault(sid, []).append([minute, sp, n])
        start = minute - self.cfg.runaway_minutes + 1
        opened = rw.get("open", {})
        for sid in list(t):
            t[sid] = [e for e in t[sid] if e[0] >= start]
            if not t[sid] and sid not in opened:
                del t[sid]
        if len(t) > TRACK + len(opened):
            # window spend × the share of minutes active since first seen: a loop that just
            # started outranks an expensive one-off call, whose score decays as 1/minutes
            def pace(s: str) -> float:
                w = _window(t[s])
                return w.spend * w.active / (minute - w.first + 1)

            ranked = sorted((s for s in t if s not in opened), key=lambda s: (-pace(s), s))
            for sid in ranked[TRACK:]:
                del t[sid]

    def _learn(self, rw: dict[str, Any], agg: Agg, skip: set[str]) -> None:
        """Decay the histogram one minute and add the minute's sessions (not the runaways)."""
        obs = [sp for sid, (sp, _) in agg.sessions.items() if sid not in skip]
        n_rest, sp_rest, _ = agg.srest
        if not obs and not n_rest:
            return
        h: dict[str, float] = rw.get("h", {})
        a = max(1.0 / SPAN, 1.0 / (rw.get("m", 0) + 1))
        h = {b: w * (1 - a) for b, w in h.items() if w * (1 - a) >= 1e-3}
        for sp in obs:
            b = str(_bin(sp))
            h[b] = h.get(b, 0.0) + a
        if n_rest:
            b = str(_bin(sp_rest / n_rest))
            h[b] = h.get(b, 0.0) + a * n_rest
        rw["h"] = {b: round(w, 5) for b, w in h.items()}
        rw["m"] = rw.get("m", 0) + 1
        rw["obs"] = rw.get("obs", 0) + len(obs) + n_rest

    def _fire(
        self,
        scope: str,
        rw: dict[str, Any],
        sid: str,
        minute: int,
        win: Window,
        thr: float,
        org: Org | None,
    ) -> Alert:
        opened: dict[str, Any] = rw.setdefault("open", {})
        first = win.first
        opened[sid] = {"id": str(alert_id("runaway", f"{scope}|{sid}", first)), "first": first}
        rate = win.spend / self.cfg.runaway_minutes
        sev: Severity = "critical" if material(self.cfg, org, rate) else "warning"
        typical = thr / max(self.cfg.runaway_ratio, 1.0)
        ref = reference(rw)
        if ref is not None:
            typical = 2 ** ref[0]
        msg = (
            f"{scope}: session {sid} looks like a runaway loop: {win.calls} calls, "
            f"{usd(win.spend)} in {self.cfg.runaway_minutes} min "
            f"(×{rate / typical:.0f} a typical session's {usd(typical)}/min), "
            f"+{usd(rate * 60)}/h, ≈ +{usd(rate * 1440)}/day"
        )
        details = {
            "session_id": sid,
            "calls": str(win.calls),
            "window_minutes": str(self.cfg.runaway_minutes),
            "session_usd_per_hour": str(pico_to_usd(int(rate * 60))),
            "typical_session_usd_per_minute": str(pico_to_usd(int(typical))),
            "threshold_usd_per_minute": str(pico_to_usd(int(thr))),
        }
        w = self.cfg.runaway_minutes
        return _alert(opened[sid], scope, minute, "firing", sev, sid, win, thr, msg, details, w)

    def _maybe_resolve(
        self,
        scope: str,
        rw: dict[str, Any],
        sid: str,
        minute: int,
        win: Window,
        thr: float | None,
    ) -> list[Alert]:
        inc = rw["open"][sid]
        calm = thr is None or win.spend / self.cfg.runaway_minutes < thr / 2
        inc["ok"] = inc.get("ok", 0) + 1 if calm else 0
        if inc["ok"] < self.cfg.resolve_minutes:
            return []
        del rw["open"][sid]
        if not rw["t"].get(sid):
            rw["t"].pop(sid, None)
        msg = f"{scope}: session {sid} back under its peers' rate for {inc['ok']} minutes"
        return [
            _alert(
                inc,
                scope,
                minute,
                "resolved",
                "info",
                sid,
                win,
                thr or 0.0,
                msg,
                {"session_id": sid},
                self.cfg.runaway_minutes,
            )
        ]


def _alert(
    inc: dict[str, Any],
    scope: str,
    minute: int,
    status: str,
    severity: Severity,
    sid: str,
    win: Window,
    thr: float,
    msg: str,
    details: dict[str, str],
    win_minutes: int = 1,
) -> Alert:
    """The alert record; baseline: the window spend of a session at the threshold."""
    return Alert(
        alert_id=uuid.UUID(inc["id"]),
        rule="runaway_session",
        status="firing" if status == "firing" else "resolved",
        severity=severity,
        scope=scope,
        window_start=minute_dt(minute),
        window_end=minute_dt(minute + 1),
        first_seen=minute_dt(inc["first"]),
        observed_usd=pico_to_usd(win.spend),
        baseline_usd=pico_to_usd(int(thr * win_minutes)),
        top_contributors={
            "session": [Contributor(name=sid, spend_usd=pico_to_usd(win.spend), share=1.0)]
        },
        message=msg,
        details=details,
    )
