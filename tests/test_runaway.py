"""The runaway-session rule on dicts (no stack): a loop fires once naming its session and
resolves after it stops; a busy legitimate session and one expensive call do not fire; the
state stays bounded with 100,000 distinct sessions; sessions survive the window's storage."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from spendstream.alerts import Alert
from spendstream.config import Settings
from spendstream.stream.rules import RuleConfig, ScopeRules
from spendstream.stream.runaway import TRACK, RunawayRule
from spendstream.stream.windows import TOP_SESSIONS, Agg

SCOPE = "endpoint:agent/run"
COST = 2_000_000_000  # $0.002 per call


class Endpoint:
    """An endpoint with ~40 people, each calling about once a minute at a varied cost."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.rules = ScopeRules(RuleConfig())
        self.state: dict[str, Any] = {}
        self.minute = 0
        self.people = 0

    def minute_agg(self, extra: dict[str, list[int]]) -> Agg:
        a = Agg()
        for _ in range(40):  # 40 people active this minute, from a rotating population
            self.people += 1
            sid = f"u-{self.people % 400}"
            cost = int(COST * self.rng.lognormvariate(0, 0.8))
            a.sessions[sid] = [cost, 1]
        a.sessions.update(extra)
        for sp, n in a.sessions.values():
            a.spend += sp
            a.calls += n
        a.models = {"m": a.spend}
        return Agg.from_dict(a.to_dict())  # as stage 1 stores it: top sessions + the rest

    def run(self, minutes: int, extra: dict[str, list[int]] | None = None) -> list[Alert]:
        out: list[Alert] = []
        for _ in range(minutes):
            agg = self.minute_agg(dict(extra or {}))
            out += self.rules.close_minute(SCOPE, self.state, self.minute, agg)
            self.minute += 1
        return [a for a in out if a.rule == "runaway_session"]


def test_an_agent_loop_fires_once_with_its_session_id_and_resolves_when_it_stops() -> None:
    ep = Endpoint()
    assert ep.run(120) == []  # warm-up: people only
    start = ep.minute
    # every 5 s for 30 minutes: 12 calls/min at the usual cost per call
    fired = ep.run(30, {"agent-7f3c": [12 * COST, 12]})
    after = ep.run(30)
    assert [(a.status, a.details["session_id"]) for a in fired] == [("firing", "agent-7f3c")]
    a = fired[0]
    assert a.scope == SCOPE and "session agent-7f3c" in a.message
    assert a.severity in ("warning", "critical")
    assert start + 7 <= a.window_start.timestamp() / 60 <= start + 10  # 8 active minutes
    assert int(a.details["calls"]) >= 96
    assert [(r.status, r.alert_id) for r in after] == [("resolved", a.alert_id)]
    assert after[0].window_start.timestamp() / 60 <= start + 30 + 10


def test_a_busy_legitimate_session_and_one_expensive_call_do_not_fire() -> None:
    ep = Endpoint()
    ep.run(120)
    # a person for an hour: 2 calls/min at 3× the usual cost (long context)
    assert ep.run(60, {"power-user": [6 * COST, 2]}) == []
    # one enormous call, then nothing: 50× the usual cost
    assert ep.run(1, {"one-off": [50 * COST, 1]}) == []
    assert ep.run(20) == []


def test_no_history_never_fires() -> None:
    ep = Endpoint()
    assert ep.run(12, {"agent-early": [12 * COST, 12]}) == []


def test_a_loop_that_pauses_briefly_is_one_episode() -> None:
    ep = Endpoint()
    ep.run(120)
    loop = {"agent-1": [12 * COST, 12]}
    out = ep.run(20, loop) + ep.run(3) + ep.run(20, loop) + ep.run(30)
    assert [(a.status, a.details["session_id"]) for a in out] == [
        ("firing", "agent-1"),
        ("resolved", "agent-1"),
    ]


def test_state_stays_bounded_with_100k_distinct_sessions() -> None:
    rules = ScopeRules(RuleConfig())
    state: dict[str, Any] = {}
    rng = random.Random(1)
    sizes = []
    for m in range(100):  # 1,000 new sessions every minute: 100,000 in all
        a = Agg()
        for i in range(1000):
            a.sessions[f"{m:03d}-{i:04d}-{'x' * 200}"] = [int(COST * rng.lognormvariate(0, 1)), 1]
        a.spend = sum(v[0] for v in a.sessions.values())
        a.calls = 1000
        stored = a.to_dict()
        assert len(stored["ss"]) == TOP_SESSIONS and stored["sr"][0] == 1000 - TOP_SESSIONS
        assert sum(v[0] for v in stored["ss"].values()) + stored["sr"][1] == a.spend
        rules.close_minute(SCOPE, state, m, Agg.from_dict(stored))
        sizes.append(len(json.dumps(state["rw"])))
    assert len(state["rw"]["t"]) <= TRACK
    assert max(sizes) < 70_000  # 24 tracked × 10 minutes × ~210-character ids, at most
    assert max(sizes[50:]) <= max(sizes[:50]) * 1.2  # flat: not growing with sessions seen


def test_sessions_merge_and_old_windows_without_sessions_still_read() -> None:
    old = {"spend": 5, "calls": 1, "models": {"m": 5}}  # a window stored before sessions
    a = Agg.from_dict(old)
    assert a.sessions == {} and a.srest == [0, 0, 0] and "ss" not in a.to_dict()
    b = Agg()
    b.sessions = {"s1": [10, 2], "s2": [3, 1]}
    c = Agg()
    c.sessions = {"s1": [1, 1]}
    c.srest = [4, 40, 5]
    b.merge(c)
    assert b.sessions == {"s1": [11, 3], "s2": [3, 1]} and b.srest == [4, 40, 5]
    b.merge(c, sessions=False)
    assert b.sessions == {"s1": [11, 3], "s2": [3, 1]}


def loop_events() -> list[Any]:
    """150 minutes of 30 people on ``agent/run`` and, from minute 90 to 110, a session calling
    every 5 s (wire events with session ids)."""
    from datetime import UTC, datetime, timedelta

    from spendstream.events import LLMCallEvent, Usage

    t0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    rng = random.Random(5)
    events = []

    def call(at: datetime, sid: str) -> LLMCallEvent:
        tokens = int(800 * rng.lognormvariate(0, 0.6))
        return LLMCallEvent(timestamp=at, service="agent", endpoint="/run", provider="openai",
                            request_model="gpt-4o", session_id=sid,
                            usage=Usage(input_tokens=tokens, output_tokens=200))  # fmt: skip

    for m in range(150):
        for p in range(30):  # 30 people, about a call a minute each
            if rng.random() < 0.8:
                events.append(call(t0 + timedelta(minutes=m, seconds=rng.uniform(0, 59)), f"u{p}"))
        if 90 <= m < 110:  # the loop: every 5 s for 20 minutes
            loop = [call(t0 + timedelta(minutes=m, seconds=5 * k), "agent-loop") for k in range(12)]
            events += loop
    events.sort(key=lambda e: e.timestamp)
    return events


def runaway_alerts(alerts: list[Any]) -> list[tuple[str, str | None]]:
    return [(a.status, a.details.get("session_id")) for a in alerts if a.rule == "runaway_session"]


def test_the_rule_runs_on_the_workers_pipeline_from_wire_events() -> None:
    """Events with session ids through the wire, the fast reader, stage 1's windows and stage 2
    (``offline.run``: the worker's code without Faust): the loop pages once, by session id."""
    from spendstream.stream.offline import records_of, run

    res = run(records_of(loop_events(), 4), raw_partitions=4, stage2_partitions=2)
    assert runaway_alerts(res.alerts) == [("firing", "agent-loop"), ("resolved", "agent-loop")]


@pytest.mark.stack
@pytest.mark.slow
def test_the_real_worker_pages_the_loop_once(stack: Settings, tmp_path: Path) -> None:
    """The same events replayed through a real worker on the broker."""
    from spendstream.stream.offline import records_of, run
    from tests.test_worker import replay_through_worker

    events = loop_events()
    path = tmp_path / "loop.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    offline = run(records_of(events, 12))
    alerts, _ = replay_through_worker(
        stack, path, len(offline.windows), ["--max-speed"], tmp_path, n_workers=1
    )
    assert runaway_alerts(alerts) == [("firing", "agent-loop"), ("resolved", "agent-loop")]


def test_only_endpoint_windows_carry_sessions() -> None:
    """Stage 1's record aggregate: sessions in the endpoint scope, none in model/service/team/
    global (the rule reads endpoints only, and global:all must not carry session ids)."""
    from datetime import UTC, datetime

    from spendstream.events import LLMCallEvent, Usage
    from spendstream.stream.enrich import Enricher
    from spendstream.stream.windows import RecordAggregate

    at = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
    events = [
        LLMCallEvent(
            timestamp=at,
            service="svc",
            endpoint="/chat",
            provider="openai",
            request_model="gpt-4o-mini",
            team="cx",
            session_id=f"s{i % 3}",
            usage=Usage(input_tokens=100, output_tokens=10),
        )
        for i in range(7)
    ] + [
        LLMCallEvent(
            timestamp=at,
            service="svc",
            endpoint="/chat",
            provider="openai",
            request_model="gpt-4o-mini",
            team="cx",
            usage=Usage(input_tokens=100, output_tokens=10),
        )
    ]
    enricher = Enricher()
    calls = [enricher.enrich(e, e.to_json()) for e in events]
    rec = RecordAggregate()
    rec.add_calls(calls)
    by_scope = {scope: agg for (scope, _), agg in rec.items()}
    ep = by_scope.pop("endpoint:svc/chat")
    assert {k: v[1] for k, v in ep.sessions.items()} == {"s0": 3, "s1": 2, "s2": 2}
    assert sum(v[0] for v in ep.sessions.values()) == sum(c.cost_pico for c in calls[:7])
    assert by_scope and all(a.sessions == {} and "ss" not in a.to_dict() for a in by_scope.values())


def test_a_busy_endpoint_raises_the_bar_so_people_at_loop_pace_stop_paging() -> None:
    """With sessions often half-way to a page, the tail sets k > 1: a person at 7 calls/min
    for 20 minutes (score 1.17) pages on a quiet endpoint but not here; a loop still does."""
    quiet = Endpoint()
    quiet.run(120)
    fast_person = {"fast-person": [7 * COST, 7]}
    assert [a.status for a in quiet.run(20, fast_person)] == ["firing"]

    busy = Endpoint()
    busy.run(120)
    for i in range(24):  # 12 hours: every 30 minutes a session at 5 calls/min for 15 minutes
        busy.run(15, {f"brisk-{i}": [5 * COST, 5]})
        busy.run(15)
    k = RunawayRule(RuleConfig()).factor(busy.state["rw"])
    assert 1.3 < k < 3.0
    assert busy.run(20, fast_person) + busy.run(15) == []
    fired = busy.run(20, {"agent-9": [20 * 2 * COST, 20]})  # every 3 s at 2× the cost
    assert [(a.status, a.details["session_id"]) for a in fired] == [("firing", "agent-9")]
