"""The offset guard and the stage-2 write buffer, without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from spendstream.stream.offsets import OffsetGuard
from spendstream.stream.pipeline import WriteBuffer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> tuple[OffsetGuard, list[Any], Clock]:
    clock = Clock()
    monkeypatch.setattr("spendstream.stream.offsets.time.monotonic", clock)
    seeks: list[Any] = []

    async def seek(topic: str, partition: int, offset: int) -> None:
        seeks.append((topic, partition, offset))

    return OffsetGuard(seek, retry_s=1.0, accept_after=3), seeks, clock


async def test_in_order_replayed_and_stateless_records_pass(
    guarded: tuple[OffsetGuard, list[Any], Clock],
) -> None:
    g, seeks, _ = guarded
    assert await g.admit("raw", 0, 10, 10)  # the expected one
    assert await g.admit("raw", 0, 5, 10)  # already applied: processed again, idempotently
    assert await g.admit("raw", 0, 99, None)  # no state yet: anything goes
    assert seeks == []


async def test_a_jump_is_skipped_and_reread_once_per_interval(
    guarded: tuple[OffsetGuard, list[Any], Clock],
) -> None:
    g, seeks, clock = guarded
    assert not await g.admit("raw", 3, 179, 130)
    assert not await g.admit("raw", 3, 180, 130)  # queued before the seek: skipped, no seek
    assert seeks == [("raw", 3, 130)]
    assert await g.admit("raw", 3, 130, 130)  # the re-read arrives: in order again
    clock.now += 5
    assert not await g.admit("raw", 3, 140, 131)  # a new gap is a new re-read
    assert seeks == [("raw", 3, 130), ("raw", 3, 131)]


async def test_a_gap_that_survives_rereads_is_accepted(
    guarded: tuple[OffsetGuard, list[Any], Clock],
) -> None:
    g, seeks, clock = guarded
    for _ in range(3):
        assert not await g.admit("raw", 1, 50, 48)
        clock.now += 1.5
    assert await g.admit("raw", 1, 50, 48)  # offsets 48, 49 do not exist (markers)
    assert len(seeks) == 3 and g.accepted == 1


def test_write_buffer_holds_writes_until_commit() -> None:
    table: dict[str, Any] = {"a": 1, "b": 2}
    buf = WriteBuffer(table)
    buf["a"] = 10
    del buf["b"]
    buf["c"] = 3
    assert (buf["a"], "b" in buf, buf.get("c")) == (10, False, 3)
    assert table == {"a": 1, "b": 2}  # nothing reached the table (or its changelog) yet
    assert sorted(buf) == ["a", "c"] and len(buf) == 2
    buf.commit()
    assert table == {"a": 10, "c": 3} and buf.pending == {}
