"""The offset guard and the stage-2 write buffer, without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from spendstream.stream.offsets import OffsetGuard
from spendstream.stream.pipeline import DictState, WriteBuffer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Guarded = tuple[OffsetGuard, list[Any], Clock, dict[str, int | None]]


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Guarded:
    clock = Clock()
    monkeypatch.setattr("spendstream.stream.offsets.time.monotonic", clock)
    seeks: list[Any] = []
    broker: dict[str, int | None] = {"first": None}  # what a probe of the broker answers

    async def seek(topic: str, partition: int, offset: int) -> None:
        seeks.append((topic, partition, offset))

    async def probe(topic: str, partition: int, offset: int) -> int | None:
        return broker["first"]

    return OffsetGuard(seek, probe, retry_s=1.0, probe_after_s=3.0), seeks, clock, broker


async def test_in_order_replayed_and_stateless_records_pass(guarded: Guarded) -> None:
    g, seeks, _, _ = guarded
    assert await g.admit("raw", 0, 10, 10)  # the expected one
    assert await g.admit("raw", 0, 5, 10)  # already applied: processed again, idempotently
    assert await g.admit("raw", 0, 99, None)  # no state yet: anything goes
    assert seeks == []


async def test_a_jump_is_skipped_and_reread_once_per_interval(guarded: Guarded) -> None:
    g, seeks, clock, _ = guarded
    assert not await g.admit("raw", 3, 179, 130)
    assert not await g.admit("raw", 3, 180, 130)  # queued before the seek: skipped, no seek
    assert seeks == [("raw", 3, 130)]
    assert await g.admit("raw", 3, 130, 130)  # the re-read arrives: in order again
    clock.now += 5
    assert not await g.admit("raw", 3, 140, 131)  # a new gap is a new re-read
    assert seeks == [("raw", 3, 130), ("raw", 3, 131)]


async def test_a_long_backlog_of_stale_records_never_skips_existing_offsets(
    guarded: Guarded,
) -> None:
    g, seeks, clock, broker = guarded
    broker["first"] = 20  # the broker has offset 20: the gap is not real
    for offset in range(22, 200):  # minutes of records queued before the re-read
        assert not await g.admit("partials", 1, offset, 20)
        clock.now += 0.5
    assert g.accepted == 0 and len(seeks) > 3
    assert await g.admit("partials", 1, 20, 20)


async def test_offsets_the_broker_confirms_absent_are_skipped(guarded: Guarded) -> None:
    g, seeks, clock, broker = guarded
    broker["first"] = 50  # 48 and 49 are transaction markers
    assert not await g.admit("raw", 1, 50, 48)
    clock.now += 1.5
    assert not await g.admit("raw", 1, 50, 48)  # too early to ask the broker
    clock.now += 2
    assert await g.admit("raw", 1, 50, 48)
    assert g.accepted == 1 and seeks == [("raw", 1, 48), ("raw", 1, 48)]


def test_write_buffer_holds_writes_until_commit() -> None:
    table = DictState({"a": 1, "b": 2})
    buf = WriteBuffer(table, table)
    buf["a"] = 10
    del buf["b"]
    buf["c"] = 3
    assert (buf["a"], "b" in buf, buf.get("c")) == (10, False, 3)
    assert table == {"a": 1, "b": 2}  # nothing reached the table (or its changelog) yet
    assert sorted(buf) == ["a", "c"] and len(buf) == 2
    buf.commit(0)
    assert table == {"a": 10, "c": 3} and buf.pending == {}
