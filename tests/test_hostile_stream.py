"""Hostile traffic for the stream worker (issue 13): one wrong clock cannot blind a partition's
windows, and a flood of distinct prompt versions in one minute neither crashes the worker nor
changes a window's totals.

The watermark defence is tested on dict state with an injected clock and events priced
directly (the enricher's admission check, which dead-letters such events first, is bypassed on
purpose: this is the second line of defence). The prompt-version flood runs a real worker."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.events import LLMCallEvent, Usage
from spendstream.scopes import minute_of
from spendstream.stream.enrich import EnrichedCall, Enricher
from spendstream.stream.pipeline import DictState, Stage1, Stage2
from spendstream.stream.rules import RuleConfig
from spendstream.stream.windows import RecordAggregate
from tests.stream_helpers import TopicReader, latest_windows, private_settings, replay, wait_for
from tests.stream_helpers import workers as run_workers

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
M0 = minute_of(T0.timestamp())
Y2099 = datetime(2099, 6, 1, tzinfo=UTC)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def calls_at(at: datetime, n: int, endpoint: str = "/chat") -> list[EnrichedCall]:
    enricher = Enricher()
    out = []
    for i in range(n):
        ev = LLMCallEvent(
            timestamp=at + timedelta(seconds=i % 50),
            service="svc",
            endpoint=endpoint,
            provider="openai",
            request_model="gpt-4o-mini",
            usage=Usage(input_tokens=1_000 + i, output_tokens=100),
        )
        out.append(enricher.enrich(ev, ev.to_json()))
    return out


def dated(c: EnrichedCall, at: datetime) -> EnrichedCall:
    """The same call with another event time (what a host with a wrong clock sends)."""
    ev = c.event.model_copy(update={"timestamp": at})
    return EnrichedCall(ev, c.tokens, c.parts_pico, c.row, c.raw, at.timestamp())


def record(calls: list[EnrichedCall]) -> RecordAggregate:
    rec = RecordAggregate()
    rec.add_calls(calls)
    return rec


def run_partition(stage1: Stage1, batches: list[list[EnrichedCall]]) -> None:
    for offset, calls in enumerate(batches):
        stage1.apply(0, offset, record(calls))


def test_one_event_dated_2099_leaves_later_real_events_in_their_windows() -> None:
    clock = Clock((M0 + 30) * 60)  # a backlog 30 minutes behind the clock, as after an outage
    real = [calls_at(T0 + timedelta(minutes=k), 40) for k in range(4)]
    batches = [real[0], [dated(real[0][0], Y2099)], real[1], real[2], real[3]]

    s1 = Stage1(DictState(), clock=clock)
    run_partition(s1, batches)
    assert s1.late_dropped == 0
    assert s1.watermark(0) == max(c.ts for c in real[3])  # the 2099 event did not move it

    table: dict[str, Any] = {}
    s2 = Stage2(table, RuleConfig(), 1, clock=clock)
    s2.apply_snapshots(0, s1.snapshots(0))
    s2.set_watermarks(0, {0: (s1.watermark(0), True)})
    res = s2.close(0)
    got = {w.minute: (w.agg.calls, w.agg.spend) for w in res.windows if w.scope == "global:all"}
    # all idle: every minute that has ended closes (M0+3 has not); the 2099 call waits alone
    assert got == {M0 + k: (40, sum(c.cost_pico for c in real[k])) for k in range(3)}
    assert s2.visited == 3 * 5  # 3 minutes x 5 scopes: nothing else was visited


def test_without_the_defence_the_same_event_makes_the_partition_late_forever() -> None:
    """The hazard removed (the test above fails without the defence)."""
    clock = Clock((M0 + 30) * 60)
    real = [calls_at(T0 + timedelta(minutes=k), 40) for k in range(4)]
    s1 = Stage1(DictState(), clock=clock, max_skew_s=float("inf"))
    run_partition(s1, [real[0], [dated(real[0][0], Y2099)], real[1], real[2], real[3]])
    assert s1.late_dropped == 120


def test_a_watermark_stored_in_2099_by_an_older_worker_is_discarded_and_rebuilt() -> None:
    clock = Clock((M0 + 5) * 60)
    state = DictState({"0|wm": {"ts": Y2099.timestamp(), "thru": 6}})
    s1 = Stage1(state, clock=clock)
    assert s1.watermark(0) is None and s1.next_offset(0) == 7
    calls = calls_at(T0, 30)
    s1.apply(0, 7, record(calls))
    assert s1.late_dropped == 0
    assert state[f"0|{M0}|global:all"]["agg"]["spend"] == sum(c.cost_pico for c in calls)
    assert s1.watermark(0) == max(c.ts for c in calls)

    table: dict[str, Any] = {"wm|0": {"0": [Y2099.timestamp(), True]}}
    s2 = Stage2(table, RuleConfig(), 1, clock=clock)
    assert s2.watermark(0) is None
    s2.set_watermarks(0, {0: (s1.watermark(0), True)})
    assert s2.watermark(0) == (max(c.ts for c in calls), True)


PV_EVENTS = 10_000


def flood(minute: datetime) -> tuple[list[LLMCallEvent], list[LLMCallEvent]]:
    """10,000 calls of one endpoint in one minute, each with its own long prompt version, plus
    an ordinary endpoint beside them and a few calls in the next minute (to close it)."""
    pv = [
        LLMCallEvent(
            timestamp=minute + timedelta(seconds=i * 50 / PV_EVENTS),
            service="promptlab",
            endpoint="/v1/try",
            provider="openai",
            request_model="gpt-4o-mini",
            prompt_version=f"exp-{i:05d}-" + "v" * 110,
            usage=Usage(input_tokens=500 + i % 97, output_tokens=50 + i % 13),
        )
        for i in range(PV_EVENTS)
    ]
    rest = [
        LLMCallEvent(
            timestamp=minute + timedelta(seconds=i % 60 + (60 if i >= 300 else 0)),
            service="support",
            endpoint="/answer",
            provider="openai",
            request_model="gpt-4o",
            usage=Usage(input_tokens=800 + i, output_tokens=120),
        )
        for i in range(400)
    ]
    return pv, rest


@pytest.mark.stack
def test_ten_thousand_prompt_versions_in_one_minute_keep_the_worker_going_and_windows_exact(
    stack: Settings, tmp_path: Path
) -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    m = minute_of(minute.timestamp())
    pv, rest = flood(minute)
    path = tmp_path / "flood.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in pv + rest))
    s, env = private_settings(stack, "pvflood")
    windows = TopicReader(s, s.topic_windows)
    scopes = ("global:all", "endpoint:promptlab/v1/try", "endpoint:support/answer",
              "model:openai/gpt-4o-mini")  # fmt: skip
    keys = {f"{sc}|{m}" for sc in scopes}
    with run_workers(env, 1, tmp_path) as procs:
        replay(env, path)
        wait_for(
            lambda: keys <= latest_windows(windows).keys(),
            120,
            "the flooded minute's windows",
            every=lambda: windows.poll(0.5),
        )
        assert procs[0].poll() is None, "the worker died"
    got = latest_windows(windows)
    windows.close()
    enricher = Enricher()
    first = [e for e in rest if e.timestamp < minute + timedelta(minutes=1)]
    assert got[f"endpoint:promptlab/v1/try|{m}"]["calls"] == PV_EVENTS
    assert got[f"endpoint:promptlab/v1/try|{m}"]["spend_pico"] == enricher.total_pico(pv)
    assert got[f"model:openai/gpt-4o-mini|{m}"]["spend_pico"] == enricher.total_pico(pv)
    assert got[f"endpoint:support/answer|{m}"]["spend_pico"] == enricher.total_pico(first)
    assert got[f"global:all|{m}"]["calls"] == PV_EVENTS + len(first)
    assert got[f"global:all|{m}"]["spend_pico"] == enricher.total_pico(pv + first)
    log = b"".join(p.read_bytes() for p in tmp_path.glob("worker-*.log"))
    assert not re.search(rb"MessageSizeTooLarge|Traceback", log), log[-2000:]
