"""The next offset each partition must process, from our own state, not Faust's commits.

Faust treats a jump in offsets as a gap (compaction, transaction markers) and acks the
missing offsets. After a rebalance a record prefetched before it can reach the agent ahead of
the ones before it, and those are then acked without ever being processed (faust-streaming
#221, reproduced here: 49 raw records of one partition lost in a two-worker test). So the
stages keep the last offset they applied per partition in their changelog-backed state and
check every record against it: a record past the expected offset is skipped and the
partition is re-read from the expected offset. Records queued before the re-read keep arriving
for a while (seconds, behind a backlog), so time alone proves nothing: when a gap persists, the
broker is asked directly for the first record at or after the expected offset. Only offsets it
confirms absent (transaction markers, retention) are skipped, with a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("spendstream.worker")

Seek = Callable[[str, int, int], Awaitable[None]]
Probe = Callable[[str, int, int], Awaitable[int | None]]
"""(topic, partition, offset) → offset of the first record at or after it; None: none yet."""


@dataclass(slots=True)
class _Gap:
    expected: int
    since: float
    last_seek: float = 0.0
    first: int | None = None
    """First existing offset at or after ``expected``, once the broker has said so."""


class OffsetGuard:
    """Decides whether a record may be processed given the partition's expected offset."""

    def __init__(
        self, seek: Seek, probe: Probe, retry_s: float = 1.0, probe_after_s: float = 3.0
    ) -> None:
        self.seek = seek
        self.probe = probe
        self.retry_s = retry_s
        self.probe_after_s = probe_after_s
        self.gaps: dict[tuple[str, int], _Gap] = {}
        self.rereads = 0
        self.accepted = 0

    async def admit(self, topic: str, partition: int, offset: int, expected: int | None) -> bool:
        """True: process the record (in order, or a replay of applied ones, or no state yet,
        or the first record after offsets the broker confirmed absent). False: skip it; the
        partition is being re-read from ``expected``."""
        key = (topic, partition)
        if expected is None or offset <= expected:
            self.gaps.pop(key, None)
            return True
        now = time.monotonic()
        gap = self.gaps.get(key)
        if gap is None or gap.expected != expected:
            gap = self.gaps[key] = _Gap(expected, now)
        if gap.first is not None and offset <= gap.first:
            del self.gaps[key]
            self.accepted += 1
            return True
        if now - gap.last_seek < self.retry_s:
            return False  # re-reading; records queued before the seek still arrive
        if gap.first is None and now - gap.since >= self.probe_after_s:
            first = await self.probe(topic, partition, expected)
            if first is not None and first > expected:
                log.warning(
                    "%s[%d]: offsets %d..%d do not exist (transaction markers or retention); "
                    "continuing at %d",
                    topic, partition, expected, first - 1, first,
                )  # fmt: skip
                gap.first = first
                if offset <= first:
                    del self.gaps[key]
                    self.accepted += 1
                    return True
        start = gap.first if gap.first is not None else expected
        log.warning(
            "%s[%d]: got offset %d while %d is next; re-reading from %d",
            topic, partition, offset, expected, start,
        )  # fmt: skip
        gap.last_seek = now
        self.rereads += 1
        await self.seek(topic, partition, start)
        return False
