"""Router policies: each rule, their order, budgets against live spend in the real Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.livespend import day_key, hour_key
from spendstream.router import (
    BudgetView,
    KeywordHeuristic,
    LearnedComplexity,
    Router,
    RouterConfig,
    RouteRequest,
    load_config,
)

MODELS = {
    "cheap": {"provider": "openai", "model": "gpt-4o-mini", "context_tokens": 1000},
    "strong": {"provider": "openai", "model": "gpt-4o", "context_tokens": 8000},
}
EASY = "Write a haiku about cats"
HARD = (
    "Analyze the algorithm step by step, prove its complexity and compare the trade-offs "
    "of the two designs."
)


def router(endpoint: dict[str, object] | None = None, **kw: object) -> Router:
    cfg = RouterConfig.model_validate(
        {
            "models": MODELS,
            "default": {"complexity": "heuristic"},
            "endpoints": {"chat": endpoint or {}},
        }
    )
    return Router(cfg, **kw)  # type: ignore[arg-type]


def test_heuristic_complexity_sends_easy_cheap_and_hard_strong() -> None:
    r = router()
    easy, hard = (
        r.decide(RouteRequest("chat", prompt=EASY)),
        r.decide(RouteRequest("chat", prompt=HARD)),
    )
    assert (easy.model, easy.tier) == ("gpt-4o-mini", "cheap")
    assert (hard.model, hard.tier) == ("gpt-4o", "strong")
    assert hard.reason.startswith("heuristic 1.00>0.50")
    assert 0.5 <= easy.confidence <= 1.0


def test_decision_carries_genai_prices_per_1k_tokens() -> None:
    # gpt-4o-mini $0.15 / $0.60 per million tokens; gpt-4o $2.50 / $10
    easy = router().decide(RouteRequest("chat", prompt=EASY))
    hard = router().decide(RouteRequest("chat", prompt=HARD))
    assert (easy.usd_per_1k_input, easy.usd_per_1k_output) == (
        Decimal("0.00015"),
        Decimal("0.0006"),
    )
    assert (hard.usd_per_1k_input, hard.usd_per_1k_output) == (Decimal("0.0025"), Decimal("0.01"))


def test_premium_tier_gets_the_strong_model() -> None:
    r = router({"premium_tiers": ["enterprise"]})
    d = r.decide(RouteRequest("chat", prompt=EASY, tier="enterprise"))
    assert d.model == "gpt-4o" and d.reason == "premium tier enterprise"
    assert r.decide(RouteRequest("chat", prompt=EASY, tier="free")).model == "gpt-4o-mini"


def test_retry_escalates_after_the_configured_count() -> None:
    r = router({"escalate_after_retries": 2})
    assert r.decide(RouteRequest("chat", prompt=EASY, retry_count=1)).model == "gpt-4o-mini"
    d = r.decide(RouteRequest("chat", prompt=EASY, retry_count=2))
    assert d.model == "gpt-4o" and d.reason == "retry 2: escalate"


def test_context_limits_escalate_then_refuse() -> None:
    r = router()
    assert r.decide(RouteRequest("chat", prompt=EASY, context_tokens=1000)).model == "gpt-4o-mini"
    d = r.decide(RouteRequest("chat", prompt=EASY, context_tokens=1001))
    assert d.model == "gpt-4o" and "window" in d.reason
    # estimated from characters when no count is given: 40k chars ≈ 10k tokens > both windows
    big = r.decide(RouteRequest("chat", messages=[{"role": "user", "content": "x" * 40_000}]))
    assert big.refused and big.model == "" and "exceeds every model" in big.reason


def test_forced_ab_share_is_stable_per_user() -> None:
    r = router({"forced": {"model": "strong", "share": 0.3}})
    users = [f"user-{i}" for i in range(2000)]
    first = [r.decide(RouteRequest("chat", prompt=EASY, user_id=u)).model for u in users]
    again = [r.decide(RouteRequest("chat", prompt=EASY, user_id=u)).model for u in users]
    assert first == again
    forced = first.count("gpt-4o")
    assert 500 <= forced <= 700, forced  # 30% of 2000 ± sampling
    everyone = router({"forced": {"model": "strong", "share": 1.0}})
    assert everyone.decide(RouteRequest("chat", prompt=EASY, user_id="u")).reason.startswith(
        "forced"
    )


def test_learned_policy_threshold_follows_the_target_quality() -> None:
    m = LearnedComplexity()
    shares = [m.strong_share(q) for q in (0.84, 0.9, 0.95, 0.99, 1.0)]
    assert shares[0] == 0.0 and shares == sorted(shares) and shares[-1] > 0.9
    mmlu_like = "Which of the following is a prime number?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:"
    cfg = {"models": MODELS, "default": {"complexity": "learned"}}
    low = Router(RouterConfig.model_validate({**cfg, "endpoints": {"q": {"target_quality": 0.84}}}))
    high = Router(RouterConfig.model_validate({**cfg, "endpoints": {"q": {"target_quality": 1.0}}}))
    assert low.decide(RouteRequest("q", prompt=mmlu_like)).model == "gpt-4o-mini"
    d = high.decide(RouteRequest("q", prompt=mmlu_like))
    assert d.model == "gpt-4o" and d.reason.startswith("learned ")
    # a chat turn is outside the training domain: judged by the heuristic instead
    assert high.decide(RouteRequest("q", prompt="hi, how are you?")).reason.startswith("heuristic")
    assert KeywordHeuristic().threshold(0.5) == KeywordHeuristic().threshold(0.99)


def test_decision_lands_in_the_call_event() -> None:
    d = router().decide(RouteRequest("chat", prompt=HARD, requested_model="gpt-4.1"))
    ev = LLMCallEvent(
        timestamp=datetime.now(UTC),
        service="svc",
        endpoint="chat",
        provider=d.provider,
        request_model=d.model,
        **d.event_fields(),
    )
    back = LLMCallEvent.from_json(ev.to_json())
    assert (back.request_model, back.requested_model) == ("gpt-4o", "gpt-4.1")
    assert back.routing_reason == d.reason


def test_yaml_and_toml_configs_load_and_unknown_models_fail(tmp_path: Path) -> None:
    y = tmp_path / "r.yaml"
    y.write_text(
        "models:\n  cheap: {provider: openai, model: gpt-4o-mini}\n"
        "  strong: {provider: openai, model: gpt-4o}\n"
        "endpoints:\n  svc/chat: {premium_tiers: [gold], complexity: heuristic}\n"
    )
    t = tmp_path / "r.toml"
    t.write_text(
        '[models.cheap]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'
        '[models.strong]\nprovider = "openai"\nmodel = "gpt-4o"\n'
        '[endpoints."svc/chat"]\npremium_tiers = ["gold"]\ncomplexity = "heuristic"\n'
    )
    for path in (y, t):
        cfg = load_config(path)
        assert cfg.policy_for("chat", "svc").premium_tiers == ("gold",)
        assert cfg.policy_for("chat", "other").premium_tiers == ()
    bad = tmp_path / "bad.yaml"
    bad.write_text(y.read_text().replace("{premium_tiers: [gold]", "{forced: {model: huge}"))
    with pytest.raises(ValueError, match="unknown models"):
        load_config(bad)


@pytest.mark.stack
def test_budget_downgrades_then_refuses_on_live_spend_in_redis(stack: Settings) -> None:
    team = f"t{uuid.uuid4().hex[:8]}"
    scope = f"team:{team}"
    r = redis.Redis.from_url(stack.redis_url)
    now = datetime.now(UTC)
    budgets = BudgetView(stack.redis_url)
    rt = router(
        {
            "premium_tiers": ["gold"],
            "budget": {"scope": "team", "daily_usd": "10", "downgrade_at": 0.8, "refuse_at": 1.0},
        },
        budgets=budgets,
    )
    req = RouteRequest("chat", prompt=HARD, team=team, tier="gold")
    try:
        assert rt.decide(req).model == "gpt-4o"  # unseen scope: no spend known yet
        r.set(day_key(scope, now), 7_990_000_000_000)  # $7.99 in picodollars
        budgets.refresh()
        assert rt.decide(req).model == "gpt-4o"
        r.set(day_key(scope, now), 8_000_000_000_000)  # $8.00 = 80%
        budgets.refresh()
        d = rt.decide(req)
        assert (d.model, d.refused) == ("gpt-4o-mini", False)
        assert d.reason == f"budget: {scope} daily $8.00/$10 ≥ 80%: downgrade"
        r.set(day_key(scope, now), 10_000_000_000_000)
        budgets.refresh()
        d = rt.decide(req)
        assert d.refused and d.reason.startswith(f"budget: {scope} daily $10.00/$10")
        # another team is not affected
        assert (
            rt.decide(RouteRequest("chat", prompt=HARD, team="other", tier="gold")).model
            == "gpt-4o"
        )
    finally:
        r.delete(day_key(scope, now), hour_key(scope, now))
        budgets.close()
        r.close()
