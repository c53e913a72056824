"""Rules, evaluated per scope when an event-time minute closes.

Everything here is a pure function of the closed minutes of one scope (plus the organisation's
level stage 2 passes in, itself a function of the closed ``global:all`` minutes), so a replay of
the same events at any speed gives the same alerts. State lives in a JSON-able dict that the
worker keeps in a Faust table.

- **Anomalies** (endpoint scopes; :mod:`.detector` explains how it decides): one incident per
  endpoint, ``spend_spike`` / ``model_mix`` (critical: material excess spend, ``model_mix`` when
  a model that had < 5% of the endpoint's history carries most of it), ``error_storm`` /
  ``call_storm`` (warning: statistically sure, money impact immaterial). Fires once, resolves
  once when every signal is back in its band.
- **budget** (scopes with a configured hourly/daily budget): the spend so far in the hour/day
  plus the last 5 minutes' rate projected to its end exceeds the budget; ``critical`` once the
  budget is spent. Resolves when the projection is back under budget.
- **runaway_session** (endpoint scopes with session ids; :mod:`.runaway`): one session's spend
  rate over the trailing ``runaway_minutes`` far above the endpoint's other sessions, sustained
  over many calls (an agent loop). One alert per session episode, naming the session.
- **price_unknown** (model scopes): calls to a model without a price. Fires at once, resolves
  after ``resolve_minutes`` × 3 minutes without such calls.

Empty minutes: a scope with nothing open (:meth:`ScopeRules.needs_every_minute` false) only
appends zeros to its history and rolls its hour/day totals on an empty minute (the detector
counts empty minutes lazily, as zeros, when the scope next has calls), so
:meth:`ScopeRules.close_empty` applies a whole stretch of them in O(``HIST_KEEP``) — stage 2
closes idle scopes lazily. State stays bounded: the history keeps :data:`HIST_KEEP` entries, the
detector ≤ 192 seasonal buckets and an endpoint's model baseline its ``MODEL_BASE_KEEP`` biggest
models (the rest summed under ``OTHER``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..alerts import Alert, Contributor, Rule, Severity, alert_id
from ..money import pico_to_usd, usd_to_pico
from ..scopes import GLOBAL, endpoint_service, minute_dt, service_scope
from .detector import SIG, DetectorConfig, Org, hold, learn, material, seasonal, signals, usd
from .runaway import RunawayRule
from .windows import OTHER, Agg, top_with_other

HIST_KEEP = 5
"""Closed minutes kept per scope (the budget rule's recent rate)."""
HOLD_MINUTES = 360
"""An evidence streak that has not paged (immaterial) is held out of the baselines this long,
then learned as the new normal (a slow ramp is caught within it)."""
"""Closed minutes kept per scope (the budget rule's recent rate)."""
MODEL_BASE_KEEP = 40
"""Models kept in an endpoint's model baseline (by spend); the rest are summed under OTHER."""


@dataclass(frozen=True, slots=True)
class RuleConfig(DetectorConfig):
    """The detector's settings plus the budgets: one set of fields, not a copy kept in step."""

    budgets: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    """``{"team:finance": {"hourly": Decimal("5"), "daily": Decimal("80")}}``."""


def _contributors(agg: Agg) -> dict[str, list[Contributor]]:
    out: dict[str, list[Contributor]] = {}
    total = agg.spend or 1
    for name, d in (("model", agg.models), ("user", agg.users), ("prompt_version", agg.pv)):
        top = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        if top:
            out[name] = [
                Contributor(name=k, spend_usd=pico_to_usd(v), share=round(v / total, 4))
                for k, v in top
            ]
    return out


def _fold_base(base: dict[str, list[int]]) -> dict[str, list[int]]:
    """Keep the MODEL_BASE_KEEP biggest models of a baseline; sum the rest under OTHER."""
    top = top_with_other({m: v[0] for m, v in base.items()}, MODEL_BASE_KEEP)
    out = {m: base[m] for m in top if m != OTHER}
    rest = [v for m, v in base.items() if m not in out]
    if rest:
        out[OTHER] = [sum(v[0] for v in rest), sum(v[1] for v in rest)]
    return out


def _long(d: dict[str, Any]) -> list[float]:
    """The long-run EWMA (calls, errors, spend, input, output per minute); ratios only."""
    vec: list[float] = d.get("l", [[0.0] * 5, 0])[0]
    return vec


def _new_models(d: dict[str, Any], acc: dict[str, Any]) -> list[str]:
    """Models carrying ≥ 50% of the streak's spend that had < 5% of the endpoint's history."""
    base: dict[str, list[int]] = d.get("models", {})
    total = sum(v[0] for v in base.values())
    models: dict[str, int] = acc["models"]
    new = [m for m, v in models.items() if m != OTHER and base.get(m, [0, 0])[0] < 0.05 * total]
    if sum(models[m] for m in new) < 0.5 * max(acc["sp"], 1):
        return []
    return sorted(new)


def _times(r: float) -> str:
    return f"×{r:.0f}" if r >= 10 else f"×{r:.1f}"


def _explain(scope: str, d: dict[str, Any], acc: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """What changed, in words a person acts on, and its money impact."""
    long, calls = _long(d), max(acc["c"], 1)
    parts: list[str] = []
    new = _new_models(d, acc)
    base_cpc = long[2] / long[0] if long[0] > 0 else 0.0
    if base_cpc > 0 and acc["sp"] / calls >= 1.5 * base_cpc:
        txt = f"cost per call {_times(acc['sp'] / calls / base_cpc)}"
        base = d.get("models", {})
        usual = max(base, key=lambda m: base[m][0]) if base else None
        if new:
            txt += f" ({', '.join(new)} replaced {usual})" if usual else f" (new: {new[0]})"
        parts.append(txt)
    base_tpc = (long[3] + long[4]) / long[0] if long[0] > 0 else 0.0
    if not new and base_tpc > 0 and acc["tok"] / calls >= 1.5 * base_tpc:
        parts.append(f"tokens per call {_times(acc['tok'] / calls / base_tpc)}")
    if acc["c"] >= 1.5 * max(acc["ec"], 1e-9):
        parts.append(f"calls {_times(acc['c'] / max(acc['ec'], 1e-9))}")
    base_rate = long[1] / long[0] if long[0] > 0 else 0.0
    rate = acc["e"] / calls
    if rate >= 0.1 and rate >= 3 * base_rate:
        parts.append(f"errors {rate:.0%} of calls (usual {base_rate:.0%})")
    if not parts:
        parts.append(f"spend {_times(acc['sp'] / max(acc['es'], 1.0))} the usual for the time")
    per_min = (acc["sp"] - acc["es"]) / acc["m"]
    related = [service_scope(endpoint_service(scope)), GLOBAL] + [f"model {m}" for m in new]
    msg = (
        f"{scope}: {', '.join(parts)}, +{usd(per_min * 60)}/h, ≈ +{usd(per_min * 1440)}/day "
        f"(also raises {', '.join(related)})"
    )
    details = {
        "excess_usd_per_hour": str(pico_to_usd(int(per_min * 60))),
        "excess_usd_per_day": str(pico_to_usd(int(per_min * 1440))),
        "evidence": ",".join(f"{k}={v:.1f}" for k, v in zip(SIG, d["s"], strict=True)),
        "related_scopes": ",".join(related),
        "streak_minutes": str(acc["m"]),
    }
    return msg, details


class ScopeRules:
    """Evaluates one scope's closed minutes; ``state`` is the scope's persisted dict."""

    def __init__(self, cfg: RuleConfig) -> None:
        self.cfg = cfg
        self.dcfg: DetectorConfig = cfg
        self.runaway = RunawayRule(cfg)

    def close_minute(
        self, scope: str, state: dict[str, Any], minute: int, agg: Agg, org: Org | None = None
    ) -> list[Alert]:
        """Run the scope's rules on a closed minute. ``org`` is the organisation's level
        (stage 2 passes it; None: materiality falls back to ``material_usd_per_day``)."""
        alerts: list[Alert] = []
        if scope.startswith("endpoint:"):
            alerts += self._anomaly(scope, state, minute, agg, org)
            if agg.sessions or agg.srest[0] or "rw" in state:
                alerts += self.runaway.close_minute(
                    scope, state.setdefault("rw", {}), minute, agg, org
                )
        if scope.startswith("model:"):
            alerts += self._price_unknown(scope, state, minute, agg)
        if scope in self.cfg.budgets:
            alerts += self._budget(scope, state, minute, agg)
        # history last: a minute never counts in its own budget rate
        hist: list[list[int]] = state.setdefault("hist", [])
        hist.append([minute, agg.spend, 0])
        del hist[: max(0, len(hist) - HIST_KEEP)]
        for key, size in (("hour", 60), ("day", 1440)):
            start = minute - minute % size
            cur = state.get(key)
            state[key] = [start, agg.spend + (cur[1] if cur and cur[0] == start else 0)]
        return alerts

    def needs_every_minute(self, scope: str, state: dict[str, Any]) -> bool:
        """Whether an empty minute can change more than the history and hour/day totals:
        an open alert or evidence streak, or a budget whose projection still has a non-zero
        rate. (The detector's baselines count an empty minute lazily, as a zero.)"""
        d = state.get("d") or {}
        if d.get("inc") is not None or d.get("s"):
            return True
        if (state.get("rw") or {}).get("open"):
            return True
        if state.get("unknown_alert") is not None or state.get("budget_alert") is not None:
            return True
        if scope in self.cfg.budgets:
            return any(h[1] for h in state.get("hist", [])[-4:])
        return False

    def close_empty(
        self, scope: str, state: dict[str, Any], first: int, last: int, org: Org | None = None
    ) -> list[Alert]:
        """:meth:`close_minute` with no calls for every minute ``first..last``, in
        O(min(last - first, HIST_KEEP)) once nothing is open. The state is the same as
        closing each minute."""
        alerts: list[Alert] = []
        minute = first
        while minute <= last and self.needs_every_minute(scope, state):
            alerts += self.close_minute(scope, state, minute, Agg(), org)
            minute += 1
        if minute > last:
            return alerts
        hist: list[list[int]] = state.setdefault("hist", [])
        hist.extend([m, 0, 0] for m in range(max(minute, last - HIST_KEEP + 1), last + 1))
        del hist[: max(0, len(hist) - HIST_KEEP)]
        for key, size in (("hour", 60), ("day", 1440)):
            start = last - last % size
            cur = state.get(key)
            state[key] = [start, cur[1] if cur and cur[0] == start else 0]
        return alerts

    # --- anomaly (endpoint scopes): see spendstream.stream.detector ------------------------
    def _anomaly(
        self, scope: str, state: dict[str, Any], minute: int, agg: Agg, org: Org | None
    ) -> list[Alert]:
        cfg = self.dcfg
        d: dict[str, Any] = state.setdefault("d", {})
        if d.get("n", 0) < cfg.min_baseline_minutes:  # no history: learn, never fire
            if agg.calls:
                self._learn(d, minute, agg)
            return []
        llr, (e_calls, e_spend) = signals(d, cfg, minute, agg)
        if d.get("inc") is not None:
            # hysteresis: back to normal is tested against half-way to ×k (×1.75), so a
            # minute above ~1.35× expected counts against resolving (a ramp at ×1.7 resolved
            # 5 minutes after firing when tested against ×k)
            back, _ = signals(d, cfg, minute, agg, (1 + cfg.ratio) / 2)
            hold(d, cfg, minute)
            return self._maybe_resolve(scope, d, minute, agg, back, e_spend)
        h = cfg.evidence
        s = [max(0.0, min(3 * h, a + b)) for a, b in zip(d.get("s", [0.0] * 3), llr, strict=True)]
        if max(s) > 0:
            d["s"] = [round(v, 4) for v in s]
            self._accumulate(d, minute, agg, e_calls, e_spend)
            # the change point: the minute after the streak's lowest evidence (CUSUM's
            # estimate of when the rate changed), not the streak's first minute; a noise
            # minute that left a little evidence started streaks 7 minutes before a switch
            low = d["acc"].get("low")
            if low is None:
                d["acc"]["low"] = [round(max(s), 4), minute]
            elif max(s) <= low[0]:
                d["acc"]["low"] = [round(max(s), 4), minute + 1]
        else:
            d.pop("s", None)
            d.pop("acc", None)
        out = self._maybe_fire(scope, d, minute, agg, org, e_spend)
        acc = d.get("acc")
        streak = acc is not None and max(s) >= h / 2 and minute - acc["start"] < HOLD_MINUTES
        if out:
            hold(d, cfg, minute)
        elif streak:
            hold(d, cfg, minute, agg)
        elif agg.calls:
            self._learn(d, minute, agg)
        return out

    def _learn(self, d: dict[str, Any], minute: int, agg: Agg) -> None:
        learn(d, self.dcfg, minute, agg)
        base: dict[str, list[int]] = d.setdefault("models", {})
        for m, v in agg.models.items():
            sp, n = base.get(m, [0, 0])
            base[m] = [sp + v, n + 1]
        if len(base) > 2 * MODEL_BASE_KEEP:
            d["models"] = _fold_base(base)

    @staticmethod
    def _accumulate(
        d: dict[str, Any], minute: int, agg: Agg, e_calls: float, e_spend: float
    ) -> None:
        acc = d.get("acc") or {"start": minute, "m": 0, "c": 0, "e": 0, "sp": 0, "tok": 0,
                               "ec": 0.0, "es": 0.0, "models": {}}  # fmt: skip
        acc["m"] += 1
        acc["c"] += agg.calls
        acc["e"] += agg.errors
        acc["sp"] += agg.spend
        acc["tok"] += agg.inp + agg.out
        acc["ec"] = round(acc["ec"] + e_calls, 3)
        acc["es"] = round(acc["es"] + e_spend, 1)
        models: dict[str, int] = acc["models"]
        for m, v in agg.models.items():
            models[m] = models.get(m, 0) + v
        acc["models"] = top_with_other(models, 3)
        d["acc"] = acc

    def _classify(
        self, d: dict[str, Any], minute: int, org: Org | None
    ) -> tuple[Rule, Severity] | None:
        """Which page (if any) the evidence and its money impact justify."""
        h, acc, s = self.dcfg.evidence, d["acc"], d["s"]
        per_min = (acc["sp"] - acc["es"]) / acc["m"]
        # the streak as a whole must be well above expected (half-way to ×k), not a run of
        # noise a few minutes long: most false pages of heavy-tailed scopes were ×1.2-×1.6
        k = self.dcfg.ratio
        gate = (1 + k) / 2
        if s[0] >= h and acc["sp"] >= gate * acc["es"] and material(self.dcfg, org, per_min):
            new = _new_models(d, acc)
            return ("model_mix" if new else "spend_spike"), "critical"
        base_rate = _long(d)[1] / max(_long(d)[0], 1e-9)
        rate = acc["e"] / max(acc["c"], 1)
        if s[2] >= h and rate >= max(0.2, 3 * base_rate):
            return "error_storm", "warning"
        xc = (acc["c"] - acc["ec"]) / acc["m"] * 1440
        need = self.dcfg.material_share * (org.calls_day if org is not None else 0.0)
        # a volume warning wants the seasonal level (known after a day) and ×k over the streak:
        # night troughs and first-day ramps gave ×1.8 runs on the trailing level
        known = seasonal(d, minute) is not None
        if known and s[1] >= h and acc["c"] >= k * acc["ec"] and xc > 0 and xc >= need:
            return "call_storm", "warning"
        return None

    def _maybe_fire(
        self, scope: str, d: dict[str, Any], minute: int, agg: Agg, org: Org | None, e_spend: float
    ) -> list[Alert]:
        if "acc" not in d or max(d["s"]) < self.dcfg.evidence or minute <= d.get("cool", -1):
            return []
        kind = self._classify(d, minute, org)
        if kind is None:
            return []
        rule, sev = kind
        acc = d["acc"]
        d["inc"] = {
            "id": str(alert_id("spend", scope, acc["low"][1])),
            "first": acc["low"][1],
            "rule": rule,
            "es": round(e_spend, 1),
            "sig": [i for i, v in enumerate(d["s"]) if v >= self.dcfg.evidence / 2],
        }
        msg, details = _explain(scope, d, acc)
        return [
            self._alert(d["inc"], scope, minute, agg, "firing", msg, int(e_spend), sev, details)
        ]

    def _maybe_resolve(
        self, scope: str, d: dict[str, Any], minute: int, agg: Agg, llr: list[float], e_spend: float
    ) -> list[Alert]:
        # evidence for "back to normal" against "still ×k": a CUSUM of -llr of the signals
        # that fired (the most elevated one counts); per-minute "every signal calm" never
        # held on a thin scope, where any minute with a call looks elevated
        r = d.get("r", [0.0, 0])
        total = max(0.0, r[0] - max(llr[i] for i in d["inc"].get("sig") or (0, 1, 2)))
        r = [round(total, 4), r[1] + 1 if total > 0 else 0]
        d["r"] = r
        if r[0] < self.dcfg.evidence / 2 or r[1] < self.dcfg.resolve_minutes:
            return []
        inc = d.pop("inc")
        for key in ("s", "acc", "r"):
            d.pop(key, None)
        d["cool"] = minute + self.dcfg.cooldown_minutes
        msg = f"{scope}: back to its usual level for {r[1]} minutes (≈ {usd(e_spend)}/min)"
        return [self._alert(inc, scope, minute, agg, "resolved", msg, int(e_spend), "info")]

    # --- price unknown ---------------------------------------------------------------------
    def _price_unknown(
        self, scope: str, state: dict[str, Any], minute: int, agg: Agg
    ) -> list[Alert]:
        active = state.get("unknown_alert")
        if active is None:
            if not agg.unknown:
                return []
            state["unknown_alert"] = {
                "id": str(alert_id("price_unknown", scope, minute)),
                "first": minute,
                "rule": "price_unknown",
                "ok": 0,
            }
            msg = (
                f"{scope}: {agg.unknown} calls to a model without a price; their cost is "
                "unknown (add it to the price-override file)"
            )
            return [
                self._alert(
                    state["unknown_alert"],
                    scope,
                    minute,
                    agg,
                    "firing",
                    msg,
                    0,
                    "warning",
                    details={"calls": str(agg.unknown)},
                )
            ]
        active["ok"] = 0 if agg.unknown else active["ok"] + 1
        if active["ok"] < 3 * self.cfg.resolve_minutes:
            return []
        state["unknown_alert"] = None
        return [
            self._alert(
                active,
                scope,
                minute,
                agg,
                "resolved",
                f"{scope}: no unpriced calls for {active['ok']} minutes",
                0,
                "info",
            )
        ]

    # --- budgets ---------------------------------------------------------------------------
    def _budget(self, scope: str, state: dict[str, Any], minute: int, agg: Agg) -> list[Alert]:
        budgets = self.cfg.budgets[scope]
        recent = [h[1] for h in state.get("hist", [])[-4:]] + [agg.spend]
        rate = sum(recent) / len(recent)
        worst: tuple[Severity, str, int, int, int] | None = None
        for period, key, minutes in (("hourly", "hour", 60), ("daily", "day", 1440)):
            if period not in budgets:
                continue
            budget = usd_to_pico(budgets[period])
            start = minute - minute % minutes
            cur = state.get(key)
            spent = agg.spend + (cur[1] if cur and cur[0] == start else 0)
            remaining = start + minutes - 1 - minute
            projected = spent + int(rate * remaining)
            if projected < budget:
                continue
            sev: Severity = "critical" if spent >= budget else "warning"
            if worst is None or (sev == "critical" and worst[0] != "critical"):
                worst = (sev, period, budget, spent, projected)
        active = state.get("budget_alert")
        if worst is None:
            if active is None:
                return []
            state["budget_alert"] = None
            return [
                self._alert(
                    active,
                    scope,
                    minute,
                    agg,
                    "resolved",
                    f"{scope}: spend projected under budget",
                    active["budget"],
                    "info",
                )
            ]
        sev, period, budget, spent, projected = worst
        if active is not None:
            return []
        exhaust = ""
        if rate > 0 and spent < budget:
            exhaust = minute_dt(minute + 1 + int((budget - spent) / rate)).isoformat()
        state["budget_alert"] = {
            "id": str(alert_id("budget", scope, minute)),
            "first": minute,
            "rule": "budget",
            "budget": budget,
            "ok": 0,
        }
        msg = (
            f"{scope}: {period} budget ${pico_to_usd(budget)}: spent ${pico_to_usd(spent)}, "
            f"projected ${pico_to_usd(projected)}"
        )
        details = {
            "period": period,
            "spent_usd": str(pico_to_usd(spent)),
            "projected_usd": str(pico_to_usd(projected)),
        }
        if exhaust:
            details["projected_exhaustion"] = exhaust
        return [
            self._alert(
                state["budget_alert"],
                scope,
                minute,
                agg,
                "firing",
                msg,
                budget,
                sev,
                details=details,
            )
        ]

    # ---------------------------------------------------------------------------------------
    def _alert(
        self,
        a: dict[str, Any],
        scope: str,
        minute: int,
        agg: Agg,
        status: str,
        msg: str,
        baseline: int,
        severity: Severity,
        details: dict[str, str] | None = None,
    ) -> Alert:
        import uuid

        return Alert(
            alert_id=uuid.UUID(a["id"]),
            rule=a["rule"],
            status="firing" if status == "firing" else "resolved",
            severity=severity,
            scope=scope,
            window_start=minute_dt(minute),
            window_end=minute_dt(minute + 1),
            first_seen=minute_dt(a["first"]),
            observed_usd=pico_to_usd(agg.spend),
            baseline_usd=pico_to_usd(baseline),
            ratio=round(agg.spend / baseline, 2) if baseline > 0 else None,
            top_contributors=_contributors(agg),
            message=msg,
            details=details or {},
        )
