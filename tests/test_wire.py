"""The batching rule every producer shares (:func:`spendstream.wire.pack`), without a broker.

The emitter's stack test (test_emitter) checks the same order end to end but only catches a
reordering when its threads happen to interleave across a slot boundary; these tests build
that interleaving on purpose and then check the rule's three promises on arbitrary input.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from spendstream.events import LLMCallEvent, example_event
from spendstream.wire import pack

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
ENDPOINTS = ["/a", "/b", "/c"]


def call(n: int, endpoint: str, at_s: float) -> LLMCallEvent:
    return example_event(
        event_id=str(uuid.UUID(int=n + 1, version=4)),
        endpoint=endpoint,
        timestamp=(T0 + timedelta(seconds=at_s)).isoformat(),
    )


def ids_of(lines: list[bytes]) -> list[uuid.UUID]:
    return [LLMCallEvent.model_validate_json(line).event_id for line in lines]


def per_key(records: list[tuple[bytes, list[bytes]]]) -> dict[bytes, list[uuid.UUID]]:
    out: dict[bytes, list[uuid.UUID]] = {}
    for key, lines in records:
        out.setdefault(key, []).extend(ids_of(lines))
    return out


def test_a_thread_running_ahead_into_the_next_slot_does_not_reorder_another_threads_calls() -> None:
    # thread B's call at 61 s reaches the buffer before thread A's calls at 50 s and 55 s and
    # A's own call at 62 s: all four share the endpoint, so they share a key.
    a1, a2, b1, a3 = call(0, "/a", 50), call(1, "/a", 55), call(2, "/a", 61), call(3, "/a", 62)
    records = pack([b1, a1, a2, a3], span_s=60)
    got = [e for _, lines in records for e in ids_of(lines)]
    assert got == [b1.event_id, a1.event_id, a2.event_id, a3.event_id]
    assert [len(lines) for _, lines in records] == [1, 2, 1]  # a slot change cuts a record


def test_one_slot_one_key_and_room_make_one_record() -> None:
    events = [call(i, "/a", i * 0.5) for i in range(100)]
    assert [len(lines) for _, lines in pack(events, max_events=40, span_s=60)] == [40, 40, 20]


timestamps = st.lists(
    st.tuples(st.sampled_from(ENDPOINTS), st.integers(min_value=0, max_value=400)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(timestamps, st.integers(min_value=1, max_value=7), st.sampled_from([0.0, 10.0, 60.0]))
def test_every_key_keeps_its_input_order_and_every_record_holds_one_slot(
    calls: list[tuple[str, int]], max_events: int, span_s: float
) -> None:
    events = [call(i, ep, at) for i, (ep, at) in enumerate(calls)]
    records = pack(events, max_events=max_events, span_s=span_s)

    expected: dict[bytes, list[uuid.UUID]] = {}
    for ev in events:
        expected.setdefault(ev.kafka_key(), []).append(ev.event_id)
    assert per_key(records) == expected
    for key, lines in records:
        got = [LLMCallEvent.model_validate_json(line) for line in lines]
        assert 1 <= len(got) <= max_events
        assert {e.kafka_key() for e in got} == {key}
        if span_s:
            assert len({int(e.timestamp.timestamp() // span_s) for e in got}) == 1


@settings(max_examples=200, deadline=None)
@given(timestamps)
def test_time_ordered_input_comes_out_less_than_one_slot_out_of_order(
    calls: list[tuple[str, int]],
) -> None:
    events = [call(i, ep, at) for i, (ep, at) in enumerate(sorted(calls, key=lambda c: c[1]))]
    at = {e.event_id: e.timestamp for e in events}
    latest = T0
    for _, lines in pack(events, max_events=5, span_s=60):
        for eid in ids_of(lines):
            assert latest - at[eid] < timedelta(seconds=60)
            latest = max(latest, at[eid])


def test_a_line_bigger_than_max_bytes_still_travels_alone() -> None:
    events = [call(i, "/a", 1) for i in range(3)]
    size = len(events[0].to_json())
    assert [len(lines) for _, lines in pack(events, max_bytes=size)] == [1, 1, 1]
    assert [len(lines) for _, lines in pack(events, max_bytes=2 * (size + 1))] == [2, 1]
