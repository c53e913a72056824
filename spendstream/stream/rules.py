"""Spike rules, evaluated per scope when an event-time minute closes.

Everything here is a pure function of the closed minutes of one scope, so a replay of the
same events at any speed gives the same alerts. State lives in a JSON-able dict that the
worker keeps in a Faust table.

- **spend_spike**: the minute's spend against the scope's recent minutes (up to
  ``baseline_minutes`` closed minutes,
  zeros included): fires when spend exceeds :func:`spike_threshold` for ``sustain_minutes``
  consecutive minutes. The baseline is frozen while the alert fires, and it
  resolves after ``resolve_minutes`` minutes back under the frozen threshold.
- **model_mix** (endpoint scopes): most of a minute's spend (≥ 50%) is on models that had
  < 5% of the endpoint's baseline spend, and those calls cost more per call than the usual
  ones. Shares the incident with spend_spike: one scope has one open spend incident.
- **budget** (scopes with a configured hourly/daily budget): the spend so far in the hour/day
  plus the last 5 minutes' rate projected to its end exceeds the budget; ``critical`` once the
  budget is spent. Resolves when a new period starts under budget.
- **price_unknown** (model scopes): calls to a model without a price. Fires at once, resolves
  after ``resolve_minutes`` × 3 minutes without such calls.

Empty minutes: a scope with nothing open (:meth:`ScopeRules.needs_every_minute` false) only
appends zeros to its history and rolls its hour/day totals on an empty minute, so
:meth:`ScopeRules.close_empty` applies a whole stretch of them in O(``baseline_minutes``) —
stage 2 closes idle scopes lazily, when they next have calls. State stays bounded: the history
keeps ``baseline_minutes`` entries and an endpoint's model baseline its
``MODEL_BASE_KEEP`` biggest models (the rest summed under ``OTHER``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..alerts import Alert, Contributor, Rule, Severity, alert_id, minute_dt
from .prices import PICO, pico_to_usd
from .windows import OTHER, Agg, top_with_other

MODEL_BASE_KEEP = 40
"""Models kept in an endpoint's model baseline (by spend); the rest are summed under OTHER."""


@dataclass(frozen=True, slots=True)
class RuleConfig:
    min_spend_usd: Decimal = Decimal("0.05")
    spike_ratio: float = 3.0
    spike_z: float = 6.0
    max_ratio: float = 1.5
    baseline_minutes: int = 60
    min_baseline_minutes: int = 15
    sustain_minutes: int = 2
    resolve_minutes: int = 3
    cooldown_minutes: int = 10
    budgets: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    """``{"team:finance": {"hourly": Decimal("5"), "daily": Decimal("80")}}``."""

    @property
    def min_spend_pico(self) -> int:
        return int(self.min_spend_usd * PICO)


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


def spike_threshold(values: list[int], cfg: RuleConfig) -> tuple[int, int]:
    """(baseline, threshold) for one minute's spend given the scope's recent minutes.

    The threshold is the largest of: ``spike_ratio`` × the mean, median + ``spike_z`` robust
    standard deviations (1.4826 × MAD), ``max_ratio`` × the busiest recent minute, and the
    absolute floor. The last term keeps sparse, heavy-tailed scopes (a few expensive calls
    a minute) from paging on an ordinary burst.
    """
    mean = statistics.fmean(values)
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    thr = max(
        mean * cfg.spike_ratio,
        med + cfg.spike_z * 1.4826 * mad,
        max(values) * cfg.max_ratio,
        cfg.min_spend_pico,
    )
    return int(mean), int(thr)


class ScopeRules:
    """Evaluates one scope's closed minutes; ``state`` is the scope's persisted dict."""

    def __init__(self, cfg: RuleConfig) -> None:
        self.cfg = cfg

    def close_minute(self, scope: str, state: dict[str, Any], minute: int, agg: Agg) -> list[Alert]:
        alerts: list[Alert] = []
        alerts += self._spend(scope, state, minute, agg)
        if scope.startswith("model:"):
            alerts += self._price_unknown(scope, state, minute, agg)
        if scope in self.cfg.budgets:
            alerts += self._budget(scope, state, minute, agg)
        # history last: a minute never counts in its own baseline
        hist: list[list[int]] = state.setdefault("hist", [])
        # minutes of an alert or of a streak that may become one stay out of baselines
        firing = state.get("spend_alert") is not None or state.get("streak", 0) > 0
        hist.append([minute, agg.spend, 1 if firing else 0])
        del hist[: max(0, len(hist) - self.cfg.baseline_minutes)]
        for key, size in (("hour", 60), ("day", 1440)):
            start = minute - minute % size
            cur = state.get(key)
            state[key] = [start, agg.spend + (cur[1] if cur and cur[0] == start else 0)]
        if not firing and scope.startswith("endpoint:"):
            base: dict[str, list[int]] = state.setdefault("model_base", {})
            for m, v in agg.models.items():
                s, n = base.get(m, [0, 0])
                base[m] = [s + v, n + 1]
            if len(base) > 2 * MODEL_BASE_KEEP:
                state["model_base"] = _fold_base(base)
            state["model_calls"] = state.get("model_calls", 0) + agg.calls
        return alerts

    def needs_every_minute(self, scope: str, state: dict[str, Any]) -> bool:
        """Whether an empty minute can change more than the history and hour/day totals:
        an open alert or streak, or a budget whose projection still has a non-zero rate.
        With ``min_spend_usd`` 0 a threshold of 0 "spikes" on an empty minute: always."""
        if self.cfg.min_spend_pico <= 0:
            return True
        if state.get("spend_alert") is not None or state.get("streak", 0) > 0:
            return True
        if state.get("unknown_alert") is not None or state.get("budget_alert") is not None:
            return True
        if scope in self.cfg.budgets:
            return any(h[1] for h in state.get("hist", [])[-4:])
        return False

    def close_empty(self, scope: str, state: dict[str, Any], first: int, last: int) -> list[Alert]:
        """:meth:`close_minute` with no calls for every minute ``first..last``, in
        O(min(last - first, baseline_minutes)) once nothing is open. The state is the same as
        closing each minute (except that ``streak`` is not created where absent: absent is 0)."""
        alerts: list[Alert] = []
        minute = first
        while minute <= last and self.needs_every_minute(scope, state):
            alerts += self.close_minute(scope, state, minute, Agg())
            minute += 1
        if minute > last:
            return alerts
        n = self.cfg.baseline_minutes
        hist: list[list[int]] = state.setdefault("hist", [])
        hist.extend([m, 0, 0] for m in range(max(minute, last - n + 1), last + 1))
        del hist[: max(0, len(hist) - n)]
        for key, size in (("hour", 60), ("day", 1440)):
            start = last - last % size
            cur = state.get(key)
            state[key] = [start, cur[1] if cur and cur[0] == start else 0]
        return alerts

    # --- spend: spike + model mix ----------------------------------------------------------
    def _model_mix(self, state: dict[str, Any], agg: Agg) -> tuple[bool, str]:
        base: dict[str, list[int]] = state.get("model_base", {})
        total_base = sum(s for s, _ in base.values())
        if total_base <= 0 or agg.spend < self.cfg.min_spend_pico:
            return False, ""
        new = {m: v for m, v in agg.models.items() if base.get(m, [0, 0])[0] < 0.05 * total_base}
        new_spend = sum(new.values())
        if new_spend < 0.5 * agg.spend:
            return False, ""
        base_calls = max(1, state.get("model_calls", 1))
        base_cost_per_call = total_base / base_calls
        new_cost_per_call = new_spend / max(1, agg.calls)
        if new_cost_per_call <= 1.5 * base_cost_per_call:
            return False, ""
        return True, ", ".join(sorted(new))

    def _spend(self, scope: str, state: dict[str, Any], minute: int, agg: Agg) -> list[Alert]:
        cfg = self.cfg
        hist = [h for h in state.get("hist", []) if not h[2]][-cfg.baseline_minutes :]
        mix, new_models = (
            self._model_mix(state, agg) if scope.startswith("endpoint:") else (False, "")
        )
        active = state.get("spend_alert")
        if active is None:
            if len(hist) < cfg.min_baseline_minutes:
                return []
            med, thr = spike_threshold([h[1] for h in hist], cfg)
            cond = agg.spend >= thr or mix
            state["streak"] = state.get("streak", 0) + 1 if cond else 0
            if state["streak"] == 1 and cond:
                state["streak_start"] = minute
            if state["streak"] < cfg.sustain_minutes or minute <= state.get("cooldown_until", -1):
                return []
            first = state["streak_start"]
            rule: Rule = "model_mix" if mix else "spend_spike"
            state["spend_alert"] = {
                "id": str(alert_id("spend", scope, first)),
                "first": first,
                "rule": rule,
                "med": med,
                "thr": thr,
                "ok": 0,
            }
            state["streak"] = 0
            msg = (
                f"{scope}: spend ${pico_to_usd(agg.spend)} in the minute vs usual "
                f"${pico_to_usd(med)}" + (f"; spend moved to {new_models}" if mix else "")
            )
            return [
                self._alert(
                    state["spend_alert"],
                    scope,
                    minute,
                    agg,
                    "firing",
                    msg,
                    med,
                    "critical" if agg.spend >= 10 * max(med, 1) else "warning",
                )
            ]
        cond = agg.spend >= active["thr"] or mix
        active["ok"] = 0 if cond else active["ok"] + 1
        if active["ok"] < cfg.resolve_minutes:
            return []
        state["spend_alert"] = None
        state["cooldown_until"] = minute + cfg.cooldown_minutes
        msg = f"{scope}: spend back under ${pico_to_usd(active['thr'])} per minute"
        return [self._alert(active, scope, minute, agg, "resolved", msg, active["med"], "info")]

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
            budget = int(budgets[period] * PICO)
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
