"""CPU per event of the worker core alone (no Kafka, no Faust) against ``json.loads`` of the
same lines, in the same run: the ceiling of ``pipeline_throughput``'s ratio.

``pipeline_throughput`` compares a whole worker with a bare consumer that only runs
``json.loads`` per line; whatever the worker does per event beyond decoding counts against it.
This bench runs :class:`~spendstream.stream.worker.Worker` (stage 1's ``apply_batch`` and the
tick) on in-memory state with the records the SDK would write for the same synthetic traffic
(``wire.pack``), and times each per-event step on its own: the fast reader
(``fastcheck.read_line``), pricing (``Enricher.enrich``), the enriched JSON
(``EnrichedCall.to_json``) and the windows' record aggregates. No broker takes part, so it runs
anywhere in seconds; best of 3 passes of process CPU time (the VM's speed varies).
Run: ``python bench/worker_core.py [N]``. Last line ``worker_core_ratio=<json.loads / core>``
(the worker core's events/s as a share of bare decoding's).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import zlib
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from _common import machine, result

from spendstream.config import Settings
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.stream.enrich import Enricher
from spendstream.stream.fastcheck import read_line
from spendstream.stream.pipeline import DictState, Stage1, Stage2, WriteBuffer
from spendstream.stream.rules import RuleConfig
from spendstream.stream.windows import RecordAggregate
from spendstream.stream.worker import EndOffset, Record, Worker
from spendstream.wire import pack

RAW, STAGE2, BATCH = 12, 6, 200


class NoBroker:
    """The broker operations the core asks for; nothing is ever skipped or re-read here."""

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        raise AssertionError("no seek expected: offsets are contiguous")

    async def probe(self, topic: str, partition: int, offset: int) -> int | None:
        return offset

    def committed(self, topic: str, partition: int) -> int | None:
        return None

    def highwater(self, topic: str, partition: int) -> EndOffset | None:
        return None


def records(n: int) -> list[Record]:
    events = SyntheticTraffic(TrafficConfig(seed=21, rate=300)).events(count=n)
    out, nxt = [], [0] * RAW
    for key, lines in pack(events):
        p = zlib.crc32(key) % RAW
        out.append(Record(p, nxt[p], key, b"\n".join(lines), None))
        nxt[p] += 1
    return out


def run_core(recs: list[Record], enricher: Enricher) -> int:
    """One fresh worker core through every record; returns the enriched calls it sent."""
    s = Settings(_env_file=None, raw_partitions=RAW, stage2_partitions=STAGE2)
    t2 = DictState()
    buf = WriteBuffer(t2, MappingProxyType(t2))
    stage2 = Stage2(buf, RuleConfig(), RAW, s.allowed_lateness_s, 15)
    core = Worker(
        s, Stage1(DictState(), s.window_retention_minutes), stage2, buf, enricher, NoBroker()
    )

    async def go() -> int:
        sent = 0
        for i in range(0, len(recs), BATCH):
            out = await core.apply_batch(recs[i : i + BATCH])
            sent += sum(m.value.count(b"\n") + 1 for m in out if m.topic == "enriched")
            core.tick(set(range(RAW)))
        return sent

    return asyncio.run(go())


def best_cpu(f: Callable[[], Any], passes: int = 3) -> float:
    best = float("inf")
    for _ in range(passes):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return best


def main(n: int = 100_000) -> None:
    recs = records(n)
    lines = [ln for r in recs for ln in (r.value or b"").split(b"\n")]
    enricher = Enricher()
    assert run_core(recs[:50], enricher) > 0  # warm the tokenizers and the price cache
    events = [(ev, ln) for ln in lines if (ev := read_line(ln)) is not None]
    calls = [enricher.enrich(ev, ln) for ev, ln in events]

    def aggregate() -> None:
        for i in range(0, len(calls), 100):
            RecordAggregate().add_calls(calls[i : i + 100])

    us = 1e6 / len(lines)
    base = best_cpu(lambda: [json.loads(ln) for ln in lines]) * us
    steps = {
        "read_line (msgspec + schema rules)": best_cpu(lambda: [read_line(ln) for ln in lines]),
        "enrich (tokens, price, cost)": best_cpu(
            lambda: [enricher.enrich(e, ln) for e, ln in events]
        ),
        "EnrichedCall.to_json": best_cpu(lambda: [c.to_json() for c in calls]),
        "record aggregates": best_cpu(aggregate),
    }
    sent = run_core(recs, enricher)
    assert sent == len(lines), (sent, len(lines))  # every event enriched and sent
    core = best_cpu(lambda: run_core(recs, enricher)) * us

    print(f"worker_core: {len(lines)} events in {len(recs)} records; {machine()}")
    print(f"{'step':<40} {'µs/event CPU':>13}")
    print(f"{'json.loads (the bare consumer)':<40} {base:>13.2f}")
    for name, sec in steps.items():
        print(f"{name:<40} {sec * us:>13.2f}")
    rest = core - sum(steps.values()) * us
    print(f"{'rest of the core (dedupe, state, tick)':<40} {rest:>13.2f}")
    print(f"{'worker core, all of it':<40} {core:>13.2f}")
    ratio = base / core
    print(f"the core alone reaches {ratio:.3f} of bare decoding's rate (pipeline goal 0.35)")
    result(
        "worker core alone (no broker), events per CPU second",
        1e6 / core,
        "events/s",
        "the ceiling of pipeline_ratio (goal 0.35)",
        1e6 / base,
        "json.loads per line",
    )
    print(f"worker_core_ratio={ratio:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
