"""The budget guard on the real Redis (and the real alerts topic): atomic reserve across
processes, expiry of a dead caller's hold, 80/95 % warnings once each, Redis down in both
modes, period roll-over in non-UTC zones, reconciliation of a lost settle, the router's view."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import Consumer

from spendstream.alerts import Alert
from spendstream.budget import (
    BudgetExceeded,
    BudgetGuard,
    BudgetUnavailable,
    Estimator,
    KafkaAlertPublisher,
    ReconcileLoop,
    Reservation,
    budget_scopes,
    count_input_tokens,
    period_bounds,
)
from spendstream.config import Settings
from spendstream.livespend import hour_key
from spendstream.money import PICO, usd_to_pico
from spendstream.router import BudgetView, Router, RouterConfig, RouteRequest
from spendstream.stream import tokens as stream_tokens
from tests.stream_helpers import private_settings, wait_for

CENT = PICO // 100


def new_guard(url: str, limits: dict[str, dict[str, str]], **kw: object) -> BudgetGuard:
    return BudgetGuard(url, limits, namespace=f"t-{uuid.uuid4().hex[:8]}", **kw)  # type: ignore[arg-type]


@pytest.fixture
def guard_factory(stack: Settings) -> Iterator[list[BudgetGuard]]:
    made: list[BudgetGuard] = []
    yield made
    for g in made:
        keys = g.redis.keys(f"{g.prefix}*")
        if keys:
            g.redis.delete(*keys)
        g.close()


def _spend(url: str, ns: str, limit: str, seed: int, threads: int, calls: int) -> tuple[int, int]:
    """One process: ``threads`` callers reserving random estimates, 10 % of them overrunning."""
    # a generous timeout: a reserve timing out on a loaded machine would fail open here
    guard = BudgetGuard(url, {"team:t": {"daily": limit}}, namespace=ns, socket_timeout_s=10)
    totals = [0, 0]
    lock = threading.Lock()

    def caller(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        for _ in range(calls):
            est = rng.randint(1, 40) * CENT
            try:
                res = guard.reserve(["team:t"], est)
            except BudgetExceeded:
                continue
            actual = est * 6 // 5 if rng.random() < 0.1 else rng.randint(est // 2, est)
            res.settle(actual)
            with lock:
                totals[0] += actual
                totals[1] += max(0, actual - est)

    ts = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    guard.close()
    return totals[0], totals[1]


@pytest.mark.stack
def test_concurrent_processes_cannot_overshoot_beyond_the_bound(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    g = new_guard(stack.redis_url, {"team:t": {"daily": "20"}})
    guard_factory.append(g)
    ns = g.prefix.split("{")[1].rstrip("}")
    # spawn, not fork: a forked child that collects the parent's garbage librdkafka handles
    # segfaults (bench/budget_overshoot did, exit -11, after the stack check's admin client)
    with mp.get_context("spawn").Pool(4) as pool:
        got = pool.starmap(_spend, [(stack.redis_url, ns, "20", s, 8, 25) for s in range(4)])
    spent = sum(a for a, _ in got)
    overrun = sum(o for _, o in got)
    settled, reserved = g.state("team:t", "day")
    assert reserved == 0
    assert settled == spent  # every settle counted exactly once, across 32 callers
    assert spent <= usd_to_pico("20") + overrun  # the stated bound
    assert spent > usd_to_pico("20") * 9 // 10  # and the budget was actually used up


def _reserve_and_die(url: str, ns: str) -> None:
    g = BudgetGuard(url, {"team:t": {"daily": "1"}}, namespace=ns, reservation_ttl_s=5.0)
    g.reserve(["team:t"], Decimal("0.9"))
    os._exit(3)  # no settle, no release: the caller died mid-call


@pytest.mark.stack
def test_a_crashed_callers_reservation_expires(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    # 5 s: the checks below must run before the hold expires, even on a loaded machine
    g = new_guard(stack.redis_url, {"team:t": {"daily": "1"}}, reservation_ttl_s=5.0)
    guard_factory.append(g)
    ns = g.prefix.split("{")[1].rstrip("}")
    p = mp.get_context("spawn").Process(target=_reserve_and_die, args=(stack.redis_url, ns))
    p.start()
    p.join(30)
    assert p.exitcode == 3
    assert g.state("team:t", "day") == (0, usd_to_pico("0.9"))
    with pytest.raises(BudgetExceeded) as ei:
        g.reserve(["team:t"], Decimal("0.2"))
    assert (ei.value.scope, ei.value.period, ei.value.reserved) == (
        "team:t",
        "day",
        Decimal("0.9"),
    )
    wait_for(lambda: g.reap() == 1, 30, "the dead reservation to be reaped", interval=0.25)
    assert g.state("team:t", "day") == (0, 0)
    g.reserve(["team:t"], Decimal("0.9")).settle(Decimal("0.5"))
    assert g.state("team:t", "day") == (usd_to_pico("0.5"), 0)
    assert g.redis.zcard(g.zset) == 0


@pytest.mark.stack
def test_warnings_at_80_and_95_reach_the_alerts_topic_once_each(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    s, _ = private_settings(stack, "budget")
    pub = KafkaAlertPublisher(s)
    g = new_guard(s.redis_url, {"team:w": {"hourly": "1"}}, publisher=pub)
    guard_factory.append(g)
    for cents in (50, 31, 5, 10, 3):  # committed 50, 81 (80%), 86, 96 (95%), 99
        g.reserve(budget_scopes("w"), cents * CENT).settle(cents * CENT)
    pub.close()
    assert g.stats.counts["warning"] == 2
    c = Consumer(s.librdkafka(**{"group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"}))
    c.subscribe([s.topic_alerts])
    got: list[Alert] = []

    def poll() -> None:
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(Alert.from_json(msg.value()))

    try:
        wait_for(lambda: len(got) >= 2, 30, "two budget warnings", every=poll)
        for _ in range(4):  # a third record would show up here
            poll()
    finally:
        c.close()
    assert [(a.rule, a.scope, a.details["threshold"], a.severity) for a in got] == [
        ("budget", "team:w", "80%", "warning"),
        ("budget", "team:w", "95%", "critical"),
    ]
    assert [a.observed_usd for a in got] == [Decimal("0.81"), Decimal("0.96")]
    assert all(a.baseline_usd == 1 for a in got)


def test_redis_down_fails_open_or_closed_and_counts_it() -> None:
    url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    opened = BudgetGuard(url, {"team:t": {"daily": "1"}}, mode="fail_open")
    r = opened.reserve(budget_scopes("t"), Decimal("5"))
    assert r.degraded and r.guard is None
    r.settle(Decimal("5"))  # a no-op, not an error
    assert opened.stats.counts == {"fail_open": 1}
    closed = BudgetGuard(url, {"team:t": {"daily": "1"}}, mode="fail_closed")
    with pytest.raises(BudgetUnavailable):
        closed.reserve(budget_scopes("t"), Decimal("0.1"))
    assert closed.stats.counts == {"fail_closed": 1}
    # a settle that cannot reach Redis never raises (the call happened): counted, left to TTL
    held = Reservation(closed, "k", PICO, 0, closed.counters(["team:t"]))
    held.settle(Decimal("0.5"))
    assert held.done and closed.stats.counts == {"fail_closed": 1, "settle_lost": 1}


class FixedClosed:
    """A closed-spend source that knows one figure (a stand-in for a PostgreSQL reader)."""

    def __init__(self, pico: int) -> None:
        self.pico = pico

    def closed(self, scope: str, period: str, start: datetime, through: int) -> int | None:
        return self.pico if period == "month" else None


@pytest.mark.stack
def test_the_reconcile_loop_raises_counters_in_the_background(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    g = new_guard(
        stack.redis_url, {"team:m": {"monthly": "100"}}, source=FixedClosed(usd_to_pico("7"))
    )
    guard_factory.append(g)
    g.reserve(["team:m"], Decimal("1")).settle(Decimal("1"))
    loop = ReconcileLoop(g, every_s=0.1).start()
    try:
        wait_for(lambda: g.state("team:m", "month")[0] > PICO, 10, "a reconciliation round")
    finally:
        loop.stop()
    # the $1 settle is in the current minute, after the last closed one: kept on top
    assert g.state("team:m", "month") == (usd_to_pico("8"), 0)
    assert g.stats.counts["reconciled"] >= 1


@pytest.mark.stack
def test_periods_roll_over_in_a_non_utc_zone(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    g = new_guard(stack.redis_url, {"team:k": {"daily": "1", "monthly": "3"}}, tz="Asia/Kolkata")
    guard_factory.append(g)
    before = datetime(2027, 3, 31, 18, 29, tzinfo=UTC)  # 23:59 IST on 31 March (future:
    # counters expire a day after their period)
    after = before + timedelta(minutes=2)  # 00:01 IST on 1 April: new day and new month
    g.reserve(["team:k"], Decimal("1"), at=before).settle(Decimal("1"))
    with pytest.raises(BudgetExceeded) as ei:
        g.reserve(["team:k"], Decimal("0.01"), at=before)
    assert ei.value.period == "day" and ei.value.spent == 1
    g.reserve(["team:k"], Decimal("1"), at=after).settle(Decimal("1"))
    assert g.state("team:k", "day", before) == (PICO, 0)
    assert g.state("team:k", "day", after) == (PICO, 0)
    assert g.state("team:k", "month", after) == (PICO, 0)
    # an hour in a :30 zone starts at :30 UTC; a DST day is 25 hours long
    start, end = period_bounds("hour", before, ZoneInfo("Asia/Kolkata"))
    assert (start, end) == (before - timedelta(minutes=59), before + timedelta(minutes=1))
    start, end = period_bounds("hour", after, ZoneInfo("Asia/Kolkata"))
    assert start == datetime(2027, 3, 31, 18, 30, tzinfo=UTC)
    ny = ZoneInfo("America/New_York")
    start, end = period_bounds("day", datetime(2026, 11, 1, 12, tzinfo=UTC), ny)
    assert end - start == timedelta(hours=25)


@pytest.mark.stack
def test_a_lost_settle_is_corrected_by_reconciliation(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    team = f"r{uuid.uuid4().hex[:8]}"
    scope = f"team:{team}"
    g = new_guard(stack.redis_url, {scope: {"hourly": "10"}}, reservation_ttl_s=0.5)
    guard_factory.append(g)
    t0 = datetime.now(UTC).replace(minute=5, second=0, microsecond=0)
    g.reserve([scope], Decimal("1"), at=t0).settle(Decimal("1"))
    g.reserve([scope], Decimal("2"), at=t0)  # the caller spends $1.50, then dies unsettled
    wait_for(lambda: g.reap() == 1, 10, "the lost reservation to expire", interval=0.2)
    assert g.state(scope, "hour", t0) == (PICO, 0)  # $1.50 of real spend is not counted
    later = t0 + timedelta(minutes=10)
    g.reserve([scope], Decimal("0.25"), at=later).settle(Decimal("0.25"))  # not closed yet
    # the worker closes minutes ≤ 5 and writes the hour's exact spend so far: $1 + $1.50
    g.redis.set(hour_key(scope, t0), usd_to_pico("2.5"), ex=600)
    try:
        now = later + timedelta(seconds=30)  # minute 15 open, minutes ≤ 12 closed
        assert g.reconcile(now) == 1
        assert g.state(scope, "hour", now) == (usd_to_pico("2.75"), 0)
        g.redis.set(hour_key(scope, t0), usd_to_pico("1"), ex=600)  # a stale figure
        assert g.reconcile(now) == 0  # never lowers a counter
        assert g.state(scope, "hour", now) == (usd_to_pico("2.75"), 0)
    finally:
        g.redis.delete(hour_key(scope, t0))


@pytest.mark.stack
def test_context_manager_settles_or_releases(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    g = new_guard(stack.redis_url, {"team:c": {"daily": "5"}})
    guard_factory.append(g)
    with g.reserve(["team:c"], Decimal("1")) as r:
        r.settle(Decimal("0.4"))
    with g.guarded(["team:c"], Decimal("1")):
        pass  # no settle: the estimate is counted
    with pytest.raises(RuntimeError), g.reserve(["team:c"], Decimal("1")):
        raise RuntimeError("provider failed")  # released
    r.settle(Decimal("3"))  # a second settle of one reservation is a no-op
    assert g.state("team:c", "day") == (usd_to_pico("1.4"), 0)
    assert g.reserve(["team:nobody"], Decimal("99")).guard is None  # no limit: no Redis call


def test_input_tokens_match_the_streams_count() -> None:
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 12 * 7? Answer with digits only, nothing else."},
    ]
    import json

    assert count_input_tokens("openai", "gpt-4o", msgs) == stream_tokens.estimate_input(
        "openai", "gpt-4o", json.dumps(msgs), "chat"
    )
    text = "Summarise the quarterly invoice in three bullet points."
    assert count_input_tokens("anthropic", "claude-3-5-haiku", prompt=text) == (
        stream_tokens.estimate_input("anthropic", "claude-3-5-haiku", text, "chat")
    )


def test_estimate_is_input_plus_max_tokens_at_book_prices() -> None:
    est = Estimator()
    n = count_input_tokens("openai", "gpt-4o-mini", prompt="hello there")
    at = datetime(2026, 6, 1, tzinfo=UTC)
    row = est.book.row_at("openai", "gpt-4o-mini", at.timestamp())
    got = est.estimate("openai", "gpt-4o-mini", 500, prompt="hello there", at=at)
    assert got == n * row.base.input + 500 * max(row.base.output, row.base.reasoning)
    with pytest.raises(ValueError, match="no price"):
        est.estimate("nobody", "no-model", 10, prompt="x")


@pytest.mark.stack
def test_router_budget_policy_reads_the_guards_counters(
    stack: Settings, guard_factory: list[BudgetGuard]
) -> None:
    team = f"g{uuid.uuid4().hex[:8]}"
    g = new_guard(stack.redis_url, {f"team:{team}": {"daily": "10"}})
    guard_factory.append(g)
    cfg = RouterConfig.model_validate(
        {
            "models": {
                "cheap": {"provider": "openai", "model": "gpt-4o-mini"},
                "strong": {"provider": "openai", "model": "gpt-4o"},
            },
            "default": {"complexity": "off", "premium_tiers": ["gold"]},
            "endpoints": {
                "chat": {"budget": {"scope": "team", "daily_usd": "10", "refuse_at": 1.0}}
            },
        }
    )
    view = BudgetView(stack.redis_url, guard=g)
    view.watch(f"team:{team}")
    rt = Router(cfg, budgets=view)
    req = RouteRequest("chat", prompt="x", team=team, tier="gold")
    try:
        view.refresh()
        assert rt.decide(req).model == "gpt-4o"
        held = g.reserve(budget_scopes(team), Decimal("8"))  # in flight, not yet settled
        view.refresh()
        assert rt.decide(req).model == "gpt-4o-mini"  # 80 %: downgrade, in real time
        held.settle(Decimal("10"))
        view.refresh()
        assert rt.decide(req).refused
    finally:
        view.close()


def test_settle_figure_from_usage_matches_the_workers_price() -> None:
    """``Estimator.cost`` of a text call's usage is the enrichment's exact cost."""
    from spendstream.pricing import price
    from spendstream.producers.emitter import MemoryEmitter

    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 512},
        },
    }
    mem = MemoryEmitter()
    with mem.track("openai", "gpt-4o-mini", service="s", endpoint="/e") as call:
        call.set_response(body)
    ev = mem.events[-1]
    exact = price(ev).cost
    assert exact is not None
    got = Estimator().cost("openai", "gpt-4o-mini", call.usage, at=ev.timestamp)
    assert got == usd_to_pico(exact.total)
    assert Estimator().cost("openai", "gpt-4o-mini", None) is None
