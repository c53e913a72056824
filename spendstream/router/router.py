"""The model-cascading router: one decision per request, explained, in microseconds.

Policies are applied in a fixed order, first match wins (each is per endpoint, see
:mod:`.policy`):

1. context — models whose window is smaller than the request are out; none left → refuse;
2. budget — live spend of the scope at ``refuse_at`` → refuse, at ``downgrade_at`` → cheap;
3. forced — A/B share of keys pinned to one model;
4. premium tier — listed tiers get the strong model;
5. retry escalation — the Nth retry goes strong (the cheap answer already failed);
6. complexity — learned or heuristic score against the threshold for the target quality; a
   prompt outside the learned model's domain goes to the endpoint's ``fallback`` (default
   strong). ``Decision.policy`` / ``score`` / ``calibrated`` say which judged and whether the
   decision is known to meet the target; the reason string carries the same (bounded: policy
   names are a fixed set, numbers are two decimals).

Money outranks everything but physics (a prompt that does not fit); the decision's ``reason``
names the rule and its numbers so the enriched events can attribute savings
(``requested_model`` / ``routing_reason``).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from time import time
from typing import Any

from ..cache.embedders import Embedder
from ..config import Settings
from ..money import pico_to_usd
from ..scopes import GLOBAL, endpoint_scope, service_scope, team_scope
from ..stream.prices import PriceBook
from .budget import BudgetView
from .complexity import ComplexityPolicy, Judgement, KeywordHeuristic, LearnedComplexity
from .policy import Budget, EndpointPolicy, ModelSpec, RouterConfig, load_config

log = logging.getLogger("spendstream.router")
CHARS_PER_TOKEN = 4
"""Context estimate when the caller gives no token count: cheap, and errs towards larger."""


@dataclass(frozen=True, slots=True)
class RouteRequest:
    endpoint: str
    messages: Sequence[Mapping[str, Any]] = ()
    prompt: str | None = None
    """Plain prompt, used when ``messages`` is empty."""
    service: str | None = None
    team: str | None = None
    user_id: str | None = None
    tier: str | None = None
    retry_count: int = 0
    context_tokens: int | None = None
    """Prompt tokens plus the completion budget; estimated from characters when absent."""
    requested_model: str | None = None

    def text(self) -> str:
        """What the complexity policy reads: the last user turn (else the prompt)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):  # OpenAI content parts
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return self.prompt or ""

    def tokens(self) -> int:
        if self.context_tokens is not None:
            return self.context_tokens
        chars = sum(len(str(m.get("content", ""))) for m in self.messages) + len(self.prompt or "")
        return chars // CHARS_PER_TOKEN + 1


@dataclass(frozen=True, slots=True)
class Decision:
    model: str
    """The provider's model id to call ('' when refused)."""
    provider: str
    tier: str
    """The config's name for it (``cheap``, ``strong``, …)."""
    reason: str
    confidence: float
    usd_per_1k_input: Decimal | None
    usd_per_1k_output: Decimal | None
    refused: bool = False
    requested_model: str | None = None
    policy: str = "rule"
    """Who decided: rule (context, budget, forced, tier, retry, off), learned, heuristic,
    fallback-strong, fallback-cheap or fallback-heuristic."""
    score: float | None = None
    """The complexity score, when a complexity policy judged."""
    calibrated: bool = False
    """Whether this decision is calibrated to meet the endpoint's target quality."""

    def event_fields(self) -> dict[str, str]:
        """Fields for the call event (``emitter.track(..., **decision.event_fields())``)."""
        out = {"routing_reason": self.reason[:256]}
        if self.requested_model:
            out["requested_model"] = self.requested_model
        return out


class Router:
    def __init__(
        self,
        config: RouterConfig,
        budgets: BudgetView | None = None,
        prices: PriceBook | None = None,
        embedder: Embedder | None = None,
        model_path: str | Path | None = None,
    ) -> None:
        """``model_path``: a file from ``spendstream router train`` (Settings.router_model);
        None loads the packaged MMLU model."""
        self.config = config
        self.model_path = model_path
        self._warned: set[tuple[str, str]] = set()
        self.budgets = budgets
        self.prices = prices or PriceBook()
        self._embedder = embedder
        self._price_cache: dict[str, tuple[Decimal | None, Decimal | None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, budgets: BudgetView | None = None) -> Router:
        """``router_config`` (required) and ``router_model`` from the settings."""
        if settings.router_config is None:
            raise ValueError('SPENDSTREAM_ROUTER_CONFIG is not set (README "Router")')
        return cls(load_config(settings.router_config), budgets, model_path=settings.router_model)

    @cached_property
    def learned(self) -> LearnedComplexity:
        return LearnedComplexity(self._embedder, self.model_path)

    def _complexity(self, pol: EndpointPolicy) -> ComplexityPolicy:
        return self.learned if pol.complexity == "learned" else KeywordHeuristic(pol.heuristic_cut)

    def _price(self, name: str) -> tuple[Decimal | None, Decimal | None]:
        if name not in self._price_cache:
            spec = self.config.models[name]
            row = self.prices.row_at(spec.provider, spec.model, time())
            self._price_cache[name] = (
                (None, None)
                if row is None
                else (pico_to_usd(row.base.input * 1000), pico_to_usd(row.base.output * 1000))
            )
        return self._price_cache[name]

    def _decide(
        self,
        name: str,
        reason: str,
        confidence: float,
        req: RouteRequest,
        judged: Judgement | None = None,
    ) -> Decision:
        spec: ModelSpec = self.config.models[name]
        inp, out = self._price(name)
        return Decision(
            spec.model,
            spec.provider,
            name,
            reason,
            confidence,
            inp,
            out,
            False,
            req.requested_model,
            "rule" if judged is None else judged.policy,
            None if judged is None else judged.score,
            judged is not None and judged.calibrated,
        )

    def _refuse(self, reason: str, req: RouteRequest) -> Decision:
        return Decision("", "", "", reason, 1.0, None, None, True, req.requested_model)

    def _budget_state(self, b: Budget, req: RouteRequest) -> tuple[float, str]:
        """Highest used share of the hourly/daily budget for the request's scope."""
        if self.budgets is None:
            return 0.0, ""
        if b.scope == "team":
            scope = team_scope(req.team)
        elif b.scope == "endpoint":
            scope = endpoint_scope(req.service or "unknown", req.endpoint)
        elif b.scope == "service":
            scope = service_scope(req.service or "unknown")
        else:
            scope = GLOBAL
        hour, day = self.budgets.get(scope)
        used, what = 0.0, ""
        for spent, limit, label in ((hour, b.hourly_usd, "hourly"), (day, b.daily_usd, "daily")):
            if limit is not None and float(spent / limit) >= used:
                used, what = float(spent / limit), f"{scope} {label} ${spent:.2f}/${limit}"
        return used, what

    def decide(self, req: RouteRequest) -> Decision:
        pol = self.config.policy_for(req.endpoint, req.service)
        models = self.config.models
        need = req.tokens()
        fits = {
            n: (models[n].context_tokens is None or need <= (models[n].context_tokens or 0))
            for n in {pol.cheap, pol.strong, *([pol.forced.model] if pol.forced else [])}
        }
        if not fits[pol.cheap] and not fits[pol.strong]:
            return self._refuse(f"context ~{need} tokens exceeds every model's window", req)

        if pol.budget is not None:
            used, what = self._budget_state(pol.budget, req)
            if pol.budget.refuse_at is not None and used >= pol.budget.refuse_at:
                return self._refuse(f"budget: {what} ≥ {pol.budget.refuse_at:.0%}", req)
            if used >= pol.budget.downgrade_at:
                if fits[pol.cheap]:
                    return self._decide(
                        pol.cheap,
                        f"budget: {what} ≥ {pol.budget.downgrade_at:.0%}: downgrade",
                        1.0,
                        req,
                    )
                return self._decide(
                    pol.strong,
                    f"budget: {what} but ~{need} tokens exceed {pol.cheap}'s window",
                    1.0,
                    req,
                )

        if not fits[pol.cheap]:
            return self._decide(
                pol.strong, f"context ~{need} tokens exceeds {pol.cheap}'s window", 1.0, req
            )

        if pol.forced is not None and fits[pol.forced.model]:
            key = req.user_id or req.team or ""
            bucket = (zlib.crc32(key.encode()) % 10_000) / 10_000
            if bucket < pol.forced.share:
                return self._decide(
                    pol.forced.model, f"forced: A/B {pol.forced.share:.0%} arm", 1.0, req
                )

        if req.tier is not None and req.tier in pol.premium_tiers and fits[pol.strong]:
            return self._decide(pol.strong, f"premium tier {req.tier}", 1.0, req)

        if (
            pol.escalate_after_retries is not None
            and req.retry_count >= pol.escalate_after_retries
            and fits[pol.strong]
        ):
            return self._decide(pol.strong, f"retry {req.retry_count}: escalate", 1.0, req)

        if pol.complexity == "off":
            return self._decide(pol.cheap, "complexity policy off: cheap", 1.0, req)
        return self._by_complexity(pol, req, fits[pol.strong])

    def _by_complexity(self, pol: EndpointPolicy, req: RouteRequest, strong_fits: bool) -> Decision:
        """Rule 6; the reason names the policy, its numbers and the calibration state."""
        j = self._complexity(pol).judge(req.text(), pol.target_quality, pol.fallback)
        if j.policy == "fallback-heuristic":  # with this endpoint's heuristic cut
            h = KeywordHeuristic(pol.heuristic_cut).judge(req.text(), pol.target_quality)
            j = Judgement(h.strong, h.score, h.threshold, j.policy, False, j.note)
        wanted, strong = j.strong, j.strong and strong_fits
        if wanted and not strong_fits:  # physics overrides the calibrated choice
            j = Judgement(False, j.score, j.threshold, j.policy, False, j.note)
        target = f"target {pol.target_quality:g}"
        cal = f"calibrated for {target}" if j.calibrated else f"not calibrated for {target}"
        if j.note:
            why = f"{j.policy}: {j.note}"
            if j.policy == "fallback-heuristic":
                why += f", heuristic {j.score:.2f}{'>' if wanted else '≤'}{j.threshold:.2f}"
            confidence = 0.5
        else:
            why = f"{j.policy} {j.score:.2f}{'>' if wanted else '≤'}{j.threshold:.2f}"
            # distance from the cut, squashed to (0.5, 1): how far the score is from a coin flip
            gap = abs(j.score - j.threshold) if j.threshold == j.threshold else 2.0
            confidence = 0.5 + 0.5 * min(1.0, gap / 2.0)
        why = f"{why}: {'strong' if strong else 'cheap'} ({cal})"
        if wanted and not strong_fits:
            why += f"; ~{req.tokens()} tokens exceed {pol.strong}'s window"
        self._log(pol, req, j, why)
        return self._decide(pol.strong if strong else pol.cheap, why, confidence, req, j)

    def _log(self, pol: EndpointPolicy, req: RouteRequest, j: Judgement, why: str) -> None:
        """DEBUG per decision; one WARNING per endpoint and policy when a decision is not
        calibrated for its target (so an uncalibrated endpoint is visible without DEBUG)."""
        log.debug("route %s: %s", req.endpoint, why)
        key = (f"{req.service or ''}/{req.endpoint}", j.policy)
        if not j.calibrated and pol.complexity == "learned" and key not in self._warned:
            self._warned.add(key)
            log.warning(
                "router endpoint %s: a decision not calibrated for its target: %s", key[0], why
            )
