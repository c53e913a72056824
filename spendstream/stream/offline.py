"""The whole stream computation in one process, without Kafka: for tests, tuning and reports.

It runs the same :class:`Enricher`, :class:`Stage1` and :class:`Stage2` code as the worker, on
dict state, feeding records in a given order. Comparing its output with the worker's on the
real broker shows that distribution, batching and restarts change nothing.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..alerts import Alert
from ..events import LLMCallEvent
from ..wire import pack
from .enrich import Enricher
from .pipeline import DictState, Snapshot, Stage1, Stage2, WindowTotal, route
from .rules import RuleConfig


@dataclass
class OfflineResult:
    alerts: list[Alert] = field(default_factory=list)
    windows: dict[str, WindowTotal] = field(default_factory=dict)
    dead: int = 0
    calls: int = 0


def records_of(
    events: Sequence[LLMCallEvent], raw_partitions: int, drain: int = 5000
) -> list[tuple[int, bytes]]:
    """Envelopes as the SDK's emitter makes them (:func:`spendstream.wire.pack` over drains of
    ``drain`` events): (partition, value)."""
    out: list[tuple[int, bytes]] = []
    for start in range(0, len(events), drain):
        for key, lines in pack(events[start : start + drain]):
            out.append((zlib.crc32(key) % raw_partitions, b"\n".join(lines)))
    return out


def run(
    records: Iterable[tuple[int, bytes]],
    *,
    raw_partitions: int = 12,
    stage2_partitions: int = 6,
    rules: RuleConfig | None = None,
    tick_every: int = 20,
    allowed_lateness_s: int = 120,
    enricher: Enricher | None = None,
    clock: Callable[[], float] = time.time,
) -> OfflineResult:
    """Process ``records`` in order; every ``tick_every`` records stage 1 publishes.
    ``enricher`` is the worker's (a default one when not given; tests inject its clock);
    ``clock`` is the one the watermarks are capped by (events far ahead of it wait)."""
    res = OfflineResult()
    enricher = enricher or Enricher()
    t1 = DictState()
    t2: dict[str, Any] = {}
    s1 = Stage1(t1, clock=clock)
    s2 = Stage2(t2, rules or RuleConfig(), raw_partitions, allowed_lateness_s, clock=clock)
    offsets = [0] * raw_partitions

    records = list(records)
    last_index = {p: i for i, (p, _) in enumerate(records)}
    done = 0  # records processed so far

    def tick() -> None:
        # a partition is idle once it has no records left (the worker: caught up and quiet)
        snaps = [s for p in range(raw_partitions) for s in s1.snapshots(p)]
        reports = {
            p: (s1.watermark(p), last_index.get(p, -1) < done) for p in range(raw_partitions)
        }
        by_q: dict[int, list[Snapshot]] = {q: [] for q in range(stage2_partitions)}
        for q, sn in route(snaps, stage2_partitions):
            by_q[q].append(sn)
        for q in range(stage2_partitions):
            mine = by_q[q]
            for fix in s2.apply_snapshots(q, mine):
                res.windows[fix.key] = fix
            s2.set_watermarks(q, reports)
            out = s2.close(q)
            res.alerts += out.alerts
            for w in out.windows:
                res.windows[w.key] = w

    for i, (p, value) in enumerate(records):
        r = enricher.process(value)
        s1.apply(p, offsets[p], r.aggregate)
        offsets[p] += 1
        res.dead += len(r.dead)
        res.calls += len(r.calls)
        done = i + 1
        if done % tick_every == 0:
            tick()
    tick()
    return res
