"""Bounded cardinality in the stream worker (issue 13), on plain dicts: window name maps keep
a top-K with an exact ``other`` bucket, no state record grows with the number of scopes,
closing a minute visits only the scopes with data (or an open alert), idle scopes are pruned,
metric label sets are capped, and the price book's caches are bounded."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from spendstream.events import LLMCallEvent, Usage, example_event
from spendstream.money import PICO
from spendstream.scopes import endpoint_scope, minute_of
from spendstream.stream.enrich import EnrichedCall, Enricher
from spendstream.stream.metrics import PipelineMetrics
from spendstream.stream.pipeline import DictState, Snapshot, Stage1, Stage2
from spendstream.stream.prices import PriceBook
from spendstream.stream.rules import HIST_KEEP, RuleConfig, ScopeRules
from spendstream.stream.windows import OTHER, TOP_NAMES, Agg, RecordAggregate

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MINUTE0 = minute_of(T0.timestamp())
SAFE_BYTES = 256 * 1024


def event(i: int, at: datetime = T0, **kw: Any) -> LLMCallEvent:
    base: dict[str, Any] = {
        "timestamp": at,
        "service": "svc",
        "endpoint": "/chat",
        "provider": "openai",
        "request_model": "gpt-4o-mini",
        "usage": Usage(input_tokens=100 + i, output_tokens=10),
    }
    return LLMCallEvent(**{**base, **kw})


def calls_of(events: list[LLMCallEvent]) -> list[EnrichedCall]:
    enricher = Enricher()
    return [enricher.enrich(e, e.to_json()) for e in events]


def aggregate(calls: list[EnrichedCall]) -> RecordAggregate:
    rec = RecordAggregate()
    rec.add_calls(calls)
    return rec


def test_window_maps_keep_the_top_names_and_other_holds_the_rest_exactly() -> None:
    events = [
        event(
            i,
            prompt_version=f"pv-{i:05d}-" + "x" * 100,
            request_model=f"m-{i % 60}",
            response_model="gpt-4o-mini",
        )
        for i in range(2_000)
    ]
    calls = calls_of(events)
    state = DictState()
    Stage1(state).apply(0, 0, aggregate(calls))
    stored = state[f"0|{MINUTE0}|global:all"]["agg"]
    spend = sum(c.cost_pico for c in calls)
    assert spend > 0 and stored["spend"] == spend and stored["calls"] == 2_000
    assert len(stored["pv"]) == TOP_NAMES + 1 and sum(stored["pv"].values()) == spend
    by_pv = sorted(((c.cost_pico, c.event.prompt_version) for c in calls), reverse=True)
    assert set(stored["pv"]) - {OTHER} == {pv for _, pv in by_pv[:TOP_NAMES]}
    assert len(stored["models"]) == TOP_NAMES + 1 and sum(stored["models"].values()) == spend
    # merging trimmed partials keeps the totals exact
    a, b = Agg.from_dict(stored), Agg.from_dict(stored)
    a.merge(b)
    d = a.to_dict()
    assert sum(d["pv"].values()) == sum(d["models"].values()) == d["spend"] == 2 * spend
    assert len(d["pv"]) == TOP_NAMES + 1


def test_no_stage1_record_grows_with_the_number_of_scopes_in_a_minute() -> None:
    events = [event(i, endpoint=f"/raw/{i:05d}/" + "p" * 200) for i in range(5_000)]
    calls = calls_of(events)
    state = DictState()
    s1 = Stage1(state)
    s1.apply(0, 0, aggregate(calls))
    sizes = [len(json.dumps(v)) for v in state.values()]
    assert len(state) == 5_000 + 4 + 2  # endpoints, model/service/team/global, watermark, version
    assert max(sizes) < 4096
    snaps = s1.snapshots(0)
    assert len(snaps) == 5_004
    ends = [sn.agg["spend"] for sn in snaps if sn.scope.startswith("endpoint:")]
    assert sum(ends) == sum(c.cost_pico for c in calls)
    # the worker's partials messages carry snapshots one by one: none is oversized
    assert (
        max(len(json.dumps([sn.partition, sn.scope, sn.minute, sn.thru, sn.agg])) for sn in snaps)
        < SAFE_BYTES
    )


def agg_dict(spend: int, calls: int = 1) -> dict[str, Any]:
    a = Agg()
    a.spend, a.calls = spend, calls
    a.models = {"m": spend}
    return a.to_dict()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def stage2(raw_partitions: int = 2, **kw: Any) -> tuple[Stage2, dict[str, Any], Clock]:
    clock = Clock((MINUTE0 + 10) * 60)
    table: dict[str, Any] = {}
    return Stage2(table, RuleConfig(**kw), raw_partitions, 0, 15, clock=clock), table, clock


def feed(s2: Stage2, minute: int, scopes: list[str], thru: int, spend: int = 1_000) -> None:
    s2.apply_snapshots(0, [Snapshot(0, sc, minute, thru, agg_dict(spend)) for sc in scopes])
    wm = (minute + 1) * 60 + 1
    s2.set_watermarks(0, {0: (wm, False), 1: (wm, False)})


def test_closing_a_minute_visits_only_the_scopes_with_data() -> None:
    s2, table, clock = stage2()
    many = [f"endpoint:svc/e{i}" for i in range(20_000)]
    feed(s2, MINUTE0, many, 0)
    clock.t = (MINUTE0 + 30) * 60
    res = s2.close(0)
    assert s2.visited == 20_000 and len(res.windows) == 20_000
    few = ["endpoint:svc/e1", "endpoint:svc/e2", "global:all"]
    for k in range(1, 11):
        feed(s2, MINUTE0 + k, few, k)
        s2.close(0)
    assert s2.visited == 20_000 + 3 * 10
    # no stage-2 record grows with the scopes either
    assert max(len(json.dumps(v)) for v in table.values()) < SAFE_BYTES


def test_a_six_day_stretch_without_calls_is_jumped_over() -> None:
    s2, _, clock = stage2()
    feed(s2, MINUTE0, ["global:all", "team:a"], 0)
    s2.close(0)
    later = MINUTE0 + 6 * 1440
    clock.t = (later + 10) * 60
    feed(s2, later, ["global:all"], 1)
    res = s2.close(0)
    assert s2.visited == 3  # two scopes at MINUTE0, one 6 days later: no empty minute visited
    assert [(w.scope, w.minute) for w in res.windows] == [("global:all", later)]


def test_an_empty_stretch_leaves_the_rules_state_as_closing_minute_by_minute() -> None:
    cfg = RuleConfig(baseline_minutes=20, min_baseline_minutes=5)
    rules = ScopeRules(cfg)
    spiky = [10**10] * 10 + [10**12, 2 * 10**12, 10**12]  # a spike alert is open at the end

    def history(state: dict[str, Any]) -> list[Any]:
        out = []
        for i, spend in enumerate(spiky):
            a = Agg()
            a.spend, a.calls = spend, 1
            out += rules.close_minute("endpoint:s/x", state, MINUTE0 + i, a)
        return out

    slow: dict[str, Any] = {}
    fast: dict[str, Any] = {}
    assert [a.status for a in history(slow)] == ["firing"]
    history(fast)
    first, last = MINUTE0 + len(spiky), MINUTE0 + len(spiky) + 500
    slow_alerts = []
    for m in range(first, last + 1):
        slow_alerts += rules.close_minute("endpoint:s/x", slow, m, Agg())
    fast_alerts = rules.close_empty("endpoint:s/x", fast, first, last)
    assert [a.status for a in fast_alerts] == [a.status for a in slow_alerts] == ["resolved"]
    assert fast_alerts[0].window_start == slow_alerts[0].window_start
    assert fast == slow
    assert len(fast["hist"]) == HIST_KEEP and fast["hist"][-1] == [last, 0, 0]


def test_idle_scopes_are_pruned_once_past_the_baseline_and_their_day() -> None:
    s2, table, clock = stage2(baseline_minutes=60, budgets={"team:b": {"daily": 5}})
    feed(s2, MINUTE0, ["endpoint:svc/once", "team:b", "global:all"], 0)
    clock.t = 1e12
    s2.close(0)
    assert "s|endpoint:svc/once" in table
    day_end = MINUTE0 - MINUTE0 % 1440 + 1440
    for k, m in enumerate(range(MINUTE0 + 1, day_end + 2)):
        s2.apply_snapshots(0, [Snapshot(0, "global:all", m, k + 1, agg_dict(10))])
        s2.set_watermarks(0, {0: ((m + 1) * 60, False), 1: ((m + 1) * 60, False)})
        s2.close(0)
        if m == MINUTE0 + 100:  # past the baseline, but its day is not over: day totals kept
            assert "s|endpoint:svc/once" in table
    assert "s|endpoint:svc/once" not in table and s2.pruned == 1
    assert "s|team:b" in table  # a budget scope is never pruned
    assert "s|global:all" in table
    assert not [k for k in table if k.startswith(f"w|0|{MINUTE0}|")]


def test_metric_label_sets_are_capped_with_other_and_an_overflow_count() -> None:
    calls = calls_of([event(i, endpoint=f"/e/{i}", team=f"t{i}") for i in range(250)])
    metrics = PipelineMetrics(max_label_sets=100)
    metrics.add_calls(calls)
    metrics.add_calls(calls[:10])  # known label sets stay themselves
    reg = CollectorRegistry()
    reg.register(metrics)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    req = fams["spendstream_llm_requests"].samples
    assert len({tuple(sorted(s.labels.items())) for s in req}) == 101
    other = [s for s in req if s.labels["endpoint"] == "other"]
    assert len(other) == 1 and other[0].value == 150
    assert other[0].labels["team"] == other[0].labels["model"] == "other"
    assert other[0].labels["status"] == "ok"
    assert sum(s.value for s in req) == 260
    cost = sum(s.value for s in fams["spendstream_llm_cost_usd"].samples)
    assert (
        abs(cost - (sum(c.cost_pico for c in calls) + sum(c.cost_pico for c in calls[:10])) / PICO)
        < 1e-9
    )
    over = {s.labels["family"]: s.value for s in fams["spendstream_metric_labels_overflow"].samples}
    assert over == {"spendstream_llm": 150, "gen_ai": 0}


def test_price_book_caches_unknown_models_once_and_stays_bounded() -> None:
    book = PriceBook(max_entries=50)
    at = T0.timestamp()
    for i in range(300):
        assert book.row_at("openai", f"no-such-model-{i}", at) is None
    assert book.searches == 300
    for _ in range(3):
        assert book.row_at("openai", "no-such-model-299", at + 60) is None
    assert book.searches == 300
    assert max(len(book._cache), len(book._found), len(book._hot)) <= 50
    assert book.row_at("openai", "gpt-4o", at) is not None
    assert book.row_at("openai", "gpt-4o", at + timedelta(days=1).total_seconds()) is not None
    assert book.searches == 301


def test_a_record_replayed_after_a_partial_write_is_counted_once_per_scope_key() -> None:
    calls = calls_of([event(i, endpoint=f"/e{i % 3}") for i in range(30)])
    first, rec = aggregate(calls[:3]), aggregate(calls)
    done = DictState()
    Stage1(done).apply(0, 4, first)
    at4 = dict(done)
    Stage1(done).apply(0, 5, rec)
    # a crash after some of offset 5's keys reached the changelog: one endpoint key and the
    # watermark (thru) are still as offset 4 left them, every other key has offset 5 applied
    crashed = DictState(done)
    e1 = f"0|{MINUTE0}|endpoint:svc/e1"
    crashed[e1], crashed["0|wm"] = at4[e1], at4["0|wm"]
    assert crashed != done and done[e1]["thru"] == 5
    Stage1(crashed).apply(0, 5, rec)  # the record is re-read
    assert crashed == done


def test_a_scope_index_lost_in_a_crash_is_rebuilt_by_the_resync_repeat() -> None:
    s2, table, clock = stage2()
    snaps = [Snapshot(0, sc, MINUTE0, 3, agg_dict(500)) for sc in ("global:all", "team:a")]
    s2.apply_snapshots(0, snaps)
    for k in [k for k in table if k.startswith(f"wi|0|{MINUTE0}|")]:
        del table[k]  # the index writes never reached the changelog; the windows did
    restarted = Stage2(table, RuleConfig(), 2, 0, 15, clock=clock)
    restarted.apply_snapshots(0, snaps)  # stage 1's periodic resync repeats its snapshots
    wm = (MINUTE0 + 1) * 60 + 1
    restarted.set_watermarks(0, {0: (wm, False), 1: (wm, False)})
    res = restarted.close(0)
    assert sorted((w.scope, w.agg.spend) for w in res.windows) == [
        ("global:all", 500),
        ("team:a", 500),
    ]


def test_a_slash_in_a_service_name_cannot_make_two_endpoints_share_a_scope() -> None:
    assert endpoint_scope("a/v1", "/x") != endpoint_scope("a", "/v1/x")
    assert endpoint_scope("a%2Fv1", "/x") != endpoint_scope("a/v1", "/x")
    assert endpoint_scope("support", "/v1/answer") == "endpoint:support/v1/answer"
    enricher = Enricher()
    events = [
        example_event(event_id=str(uuid.UUID(int=1)), service="a/v1", endpoint="/x"),
        example_event(event_id=str(uuid.UUID(int=2)), service="a", endpoint="/v1/x"),
    ]
    rec = RecordAggregate()
    rec.add_calls(enricher.enrich(e, e.to_json()) for e in events)
    endpoint_calls = {sc: a.calls for (sc, _), a in rec.items() if sc.startswith("endpoint:")}
    assert endpoint_calls == {"endpoint:a%2Fv1/x": 1, "endpoint:a/v1/x": 1}
