"""Router policies: each rule, their order, budgets against live spend in the real Redis."""

from __future__ import annotations

import json
import logging
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from spendstream.cli import main as cli
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
from spendstream.router import features as fx

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


MMLU_LIKE = [
    "Which of the following is a prime number?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:",
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over Q.\nA. 0\nB. 4\n"
    "C. 2\nD. 6\nAnswer:",
    "Which of the following best describes the function of the mitochondria?\nA. protein "
    "synthesis\nB. energy production\nC. lipid storage\nD. cell division\nAnswer:",
    "A 0.1 M solution of acetic acid has a pH of about\nA. 1\nB. 2.9\nC. 7\nD. 13\nAnswer:",
    "In the case Marbury v. Madison, the Supreme Court established\nA. judicial review\n"
    "B. federalism\nC. the commerce clause\nD. due process\nAnswer:",
    "What is the time complexity of binary search on a sorted array of n elements?\nA. O(1)\n"
    "B. O(log n)\nC. O(n)\nD. O(n log n)\nAnswer:",
    "Statement 1 | Every group of order 4 is cyclic. Statement 2 | Every abelian group is "
    "cyclic.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer:",
    "Which philosopher wrote the Critique of Pure Reason?\nA. Hume\nB. Kant\nC. Hegel\n"
    "D. Locke\nAnswer:",
]
OUT_OF_DOMAIN = "hi, how are you?"


def learned(endpoints: dict[str, dict[str, object]], **kw: object) -> Router:
    cfg = {"models": MODELS, "default": {"complexity": "learned"}, "endpoints": endpoints}
    return Router(RouterConfig.model_validate(cfg), **kw)  # type: ignore[arg-type]


def test_learned_cut_and_decisions_follow_the_target_quality() -> None:
    m = LearnedComplexity()
    cuts = [m.threshold(q) for q in (0.8, 0.9, 0.95, 0.98, 1.0)]
    assert cuts == sorted(cuts, reverse=True) and cuts[-1] == float("-inf")
    assert cuts[0] > cuts[2] > cuts[3]  # a higher target lowers the cut
    targets = (0.8, 0.95, 1.0)
    r = learned({f"q{t}": {"target_quality": t} for t in targets})
    strong = {
        t: [r.decide(RouteRequest(f"q{t}", prompt=p)).tier == "strong" for p in MMLU_LIKE]
        for t in targets
    }
    assert all(
        d.policy == "learned" for p in MMLU_LIKE for d in [r.decide(RouteRequest("q1.0", prompt=p))]
    )
    assert sum(strong[0.8]) <= sum(strong[0.95]) <= sum(strong[1.0]) == len(MMLU_LIKE)
    assert strong[0.8] != strong[1.0]
    assert KeywordHeuristic().threshold(0.5) == KeywordHeuristic().threshold(0.99)


def test_decision_says_which_policy_judged_its_score_and_calibration() -> None:
    d = learned({"q": {"target_quality": 0.95}}).decide(RouteRequest("q", prompt=MMLU_LIKE[0]))
    assert (d.policy, d.calibrated) == ("learned", True)
    assert d.score is not None and d.reason.startswith(f"learned {d.score:.2f}")
    assert d.reason.endswith("(calibrated for target 0.95)")
    h = router().decide(RouteRequest("chat", prompt=HARD))
    assert (h.policy, h.score, h.calibrated) == ("heuristic", 1.0, False)
    assert h.reason == "heuristic 1.00>0.50: strong (not calibrated for target 0.95)"
    rule = router({"premium_tiers": ["gold"]}).decide(
        RouteRequest("chat", prompt=EASY, tier="gold")
    )
    assert (rule.policy, rule.score, rule.calibrated) == ("rule", None, False)


def test_each_fallback_mode_on_an_out_of_domain_prompt(caplog: pytest.LogCaptureFixture) -> None:
    r = learned(
        {
            "default_safe": {},
            "cheap": {"fallback": "cheap"},
            "heur": {"fallback": "heuristic"},
            "heur_low": {"fallback": "heuristic", "heuristic_cut": 0.0},
        }
    )
    sim = r.learned.artefact.score(fx.features([OUT_OF_DOMAIN], r.learned.embedder))[1][0]
    assert sim < r.learned.domain_cut  # the premise: a chat turn is out of the MMLU domain
    with caplog.at_level(logging.DEBUG, logger="spendstream.router"):
        got = {
            e: r.decide(RouteRequest(e, prompt=OUT_OF_DOMAIN))
            for e in ("default_safe", "cheap", "heur", "heur_low")
        }
        r.decide(RouteRequest("cheap", prompt=OUT_OF_DOMAIN))
    seen = {e: (d.tier, d.policy, d.calibrated) for e, d in got.items()}
    assert seen == {
        "default_safe": ("strong", "fallback-strong", True),
        "cheap": ("cheap", "fallback-cheap", False),
        "heur": ("cheap", "fallback-heuristic", False),  # no keywords, 4 words: 0.005 ≤ 0.5
        "heur_low": ("strong", "fallback-heuristic", False),
    }
    assert got["default_safe"].reason.startswith("fallback-strong: out of domain (similarity ")
    assert got["default_safe"].reason.endswith(": strong (calibrated for target 0.95)")
    assert "heuristic 0.01≤0.50: cheap" in got["heur"].reason
    warnings = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # once per endpoint and policy, not per decision
    assert any("fallback-cheap" in w and "/cheap" in w for w in warnings)
    debug = [m.getMessage() for m in caplog.records if m.levelno == logging.DEBUG]
    assert len(debug) == 5 and all(m.startswith("route ") for m in debug)


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
    assert back.routing_reason == "heuristic 1.00>0.50: strong (not calibrated for target 0.95)"


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


def _labels(path: Path, n: int = 240, seed: int = 5) -> None:
    """Easy lookups both models answer; multi-step maths only the strong one does (10% noise)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hard = i % 2 == 1
        if hard:
            a, b, c = rng.randint(10, 99), rng.randint(100, 999), rng.randint(2, 9)
            prompt = (
                f"Solve for x step by step: {a}x^{c} + {b}x = {a * b} and prove the root is "
                f"unique; then integrate x^{c} * sin({a}x) from 0 to {b}."
            )
        else:
            word = rng.choice(["cat", "river", "apple", "train", "cloud", "garden", "piano"])
            prompt = f"Write one friendly sentence about a {word} for a greeting card #{i}."
        noise = rng.random() < 0.1
        rows.append(
            {
                "prompt": prompt,
                "cheap_correct": (not hard) != noise,
                "strong_correct": True,
                "group": f"g{i // 4}",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_router_train_and_eval_cli_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels, model = tmp_path / "labels.jsonl", tmp_path / "model.npz"
    _labels(labels)
    assert cli(["router", "train", "--labels", str(labels), "--out", str(model)]) == 0
    assert f"wrote {model}: 240 prompts, 60 groups" in capsys.readouterr().out
    assert cli(["router", "eval", "--labels", str(labels), "--target", "0.95"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("target 0.950: quality "))
    words = line.replace(",", "").split()
    quality, share = float(words[3]), float(words[8])
    assert quality >= 0.95 and share < 0.75, line  # hard half strong, most easy ones cheap
    conf = tmp_path / "router.yaml"
    conf.write_text(
        "models:\n  cheap: {provider: openai, model: gpt-4o-mini}\n"
        "  strong: {provider: openai, model: gpt-4o}\n"
        "endpoints:\n  q: {target_quality: 0.95}\n"
    )
    r = Router.from_settings(Settings(router_config=conf, router_model=model))
    hard = r.decide(
        RouteRequest(
            "q",
            prompt="Solve for x step by step: 12x^3 + 400x = 4800 "
            "and prove the root is unique; then integrate x^3 * sin(12x) from 0 to 400.",
        )
    )
    easy = r.decide(
        RouteRequest("q", prompt="Write one friendly sentence about a cat for a greeting card #7.")
    )
    assert (hard.tier, hard.policy, hard.calibrated) == ("strong", "learned", True)
    assert (easy.tier, easy.policy) == ("cheap", "learned")
    with pytest.raises(ValueError, match="row 2: expected true/false"):
        bad = tmp_path / "bad.csv"
        bad.write_text("prompt,cheap_correct,strong_correct\na,1,1\nb,maybe,1\n")
        cli(["router", "train", "--labels", str(bad)])
