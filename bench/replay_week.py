"""Seconds to replay a recorded week through two stream workers, against the same week computed
in this process without Kafka, and how far apart the stage-2 partitions' event time drifts.

A week of synthetic traffic (~225k events over every scope of the catalog, one incident) is
written to a JSONL file and replayed with ``spendstream replay --max-speed`` into private topics
while TWO ``spendstream worker`` processes run (started and Ready before the clock starts). The
clock runs from the replay's start until the windows topic holds every window the offline run
(:func:`spendstream.stream.offline.run`) closes; their spend must then equal the offline run's
exactly. Baseline: the offline run's own seconds in this process (same events, same envelopes).

Spread: when the first stage-2 partition has closed all of its windows, the newest closed minute
of every other stage-2 partition (a scope's partition is :func:`pipeline.scope_partition`); the
spread is how many minutes of event time the slowest partition is behind. A large spread means
one worker's partitions race ahead while the other's lag: alerts of the lagging scopes come late.

Where the time goes (2026-12-03, 143.0 s with a since-reverted producer path): the raw topic
is keyed by service/endpoint and the catalog's few endpoints leave 3 of 12 raw partitions
empty, so one worker applied 166k of the 226k events; its stage-2 partitions finished 30-40 s
after the other worker's, which had as many windows. The wall time is that worker's.

Run: ``python bench/replay_week.py [DAYS]`` (default 7). Last line ``replay_week_s=<seconds>``.
``SPENDSTREAM_BENCH_DEADLINE_S`` (default 1800) bounds the wait; on a timeout the keys of the
windows still missing are printed (one week-long run once lost its last window; not seen since).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO

from _common import (
    cpu_seconds,
    machine,
    private_settings,
    result,
    settings_with_stack,
    start_worker,
    stop_worker,
)
from confluent_kafka import Consumer

from spendstream.config import Settings
from spendstream.events import LLMCallEvent, Operation
from spendstream.producers.synthetic import (
    CATALOG,
    DEFAULT_START,
    EndpointProfile,
    SyntheticTraffic,
    TrafficConfig,
    with_incidents,
)
from spendstream.stream.offline import records_of
from spendstream.stream.offline import run as offline_run
from spendstream.stream.pipeline import scope_partition

RATE = 0.372
"""Events per simulated second: 0.372 x 604,800 s ≈ 225k events in a week."""
DEADLINE_S = float(os.environ.get("SPENDSTREAM_BENCH_DEADLINE_S", "1800"))
MORE = (
    EndpointProfile("docs-assistant", "/ask", "docs", "openai", "gpt-4.1-mini", 3, 1400, 300),
    EndpointProfile("docs-assistant", "/index", "docs", "openai", "text-embedding-3-small", 4,
                    500, 0, operation=Operation.EMBEDDINGS),
    EndpointProfile("docs-assistant", "/rewrite", "docs", "anthropic", "claude-3-5-haiku-latest",
                    2, 2000, 900),
    EndpointProfile("ops", "/triage", "platform", "google", "gemini-2.5-flash", 2, 3000, 200),
    EndpointProfile("ops", "/postmortem", "platform", "anthropic", "claude-sonnet-4-0", 0.5, 6000,
                    1500),
)  # fmt: skip
"""Two more services (five endpoints, two teams) beside the catalog's: 35 scopes, not 25."""


def week(days: float) -> list[LLMCallEvent]:
    """The recorded traffic: every endpoint of the catalog and :data:`MORE`, daily cycle, one
    model-switch incident (its pricier model is one more scope)."""
    base = TrafficConfig(seed=16, rate=RATE, catalog=CATALOG + MORE)
    cfg = with_incidents(base, ["model-switch@30h+2h"])
    return list(SyntheticTraffic(cfg).events(until=DEFAULT_START + timedelta(days=days)))


@dataclass
class Progress:
    """The windows topic read so far: latest revision per key, and per stage-2 partition the
    offline windows still missing and the newest closed minute."""

    stage2: int
    expected: dict[str, int]
    """Offline window key → spend (picodollars)."""
    latest: dict[str, bytes] = field(default_factory=dict)
    missing: dict[int, set[str]] = field(default_factory=dict)
    newest: dict[int, int] = field(default_factory=dict)
    spread_min: int | None = None
    first_done_s: float | None = None

    def __post_init__(self) -> None:
        self.missing = {q: set() for q in range(self.stage2)}
        for key in self.expected:
            self.missing[self.partition(key)].add(key)

    def partition(self, key: str) -> int:
        return scope_partition(key.rsplit("|", 1)[0], self.stage2)

    def add(self, key: str, value: bytes, elapsed_s: float) -> None:
        """One window record; notes the spread when a partition's last window arrives first."""
        self.latest[key] = value
        q = self.partition(key)
        minute = int(key.rsplit("|", 1)[1])
        self.newest[q] = max(self.newest.get(q, minute), minute)
        left = self.missing[q]
        if key in left:
            left.discard(key)
            if not left:
                print(f"[{elapsed_s:6.1f}s] stage-2 partition {q} has closed all its windows",
                      flush=True)  # fmt: skip
            if not left and self.spread_min is None:
                self.first_done_s = elapsed_s
                self.spread_min = self.newest[q] - min(
                    self.newest.get(p, self.first_minute()) for p in range(self.stage2)
                )
                print(f"[{elapsed_s:6.1f}s] stage-2 partition {q} done first; spread "
                      f"{self.spread_min} min", flush=True)  # fmt: skip

    def load(self) -> str:
        """Windows per stage-2 partition: how evenly the scopes' hashes spread the work."""
        return ", ".join(f"q{q}: {len(keys):,}" for q, keys in sorted(self.missing.items()))

    def first_minute(self) -> int:
        return min(int(k.rsplit("|", 1)[1]) for k in self.expected) - 1

    def done(self) -> bool:
        return not any(self.missing.values())

    def differing(self) -> int:
        """Offline windows whose latest revision here has another spend (exact)."""
        import json

        return sum(
            1 for k, v in self.expected.items() if json.loads(self.latest[k])["spend_pico"] != v
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(procs: list[subprocess.Popen[bytes]], logs: list[Path], deadline_s: float) -> None:
    """Until every worker's log says Faust is Ready (polled every 0.2 s)."""
    end = time.monotonic() + deadline_s
    while not all(b"Ready" in p.read_bytes() for p in logs):
        if any(p.poll() is not None for p in procs) or time.monotonic() > end:
            raise SystemExit(f"workers not ready: see {', '.join(map(str, logs))}")
        time.sleep(0.2)


def follow(s: Settings, progress: Progress, replay: subprocess.Popen[bytes], t0: float) -> float:
    """Read the windows topic until every offline window closed; the seconds since ``t0``."""
    c = Consumer(
        s.librdkafka(
            **{
                "group.id": f"bench-week-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    c.subscribe([s.topic_windows])
    shown = 0.0
    try:
        while not progress.done():
            if time.perf_counter() - t0 >= shown + 60:  # a line a minute: where a slow run is
                shown = time.perf_counter() - t0
                left = sum(map(len, progress.missing.values()))
                print(f"[{shown:6.1f}s] {len(progress.expected) - left:,} of "
                      f"{len(progress.expected):,} windows closed", flush=True)  # fmt: skip
            for m in c.consume(5000, 0.5):  # blocks up to 0.5 s: no spinning
                if m.error() is None:
                    progress.add(m.key().decode(), m.value(), time.perf_counter() - t0)
            if replay.poll() not in (None, 0):
                raise SystemExit(f"replay failed: exit {replay.returncode}")
            if time.perf_counter() - t0 > DEADLINE_S:
                gone = sorted(k for keys in progress.missing.values() for k in keys)
                raise SystemExit(f"timed out after {DEADLINE_S:.0f}s: {len(gone)} windows "
                                 f"missing, first {gone[:10]}")  # fmt: skip
        return time.perf_counter() - t0
    finally:
        c.close()


def through_workers(s: Settings, env: dict[str, str], path: Path, progress: Progress) -> float:
    """Replay ``path`` with two workers running; seconds until every offline window closed."""
    logs = [Path(s.stack_dir) / f"bench-replay-week-worker-{i}.log" for i in range(2)]
    started: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    replay: subprocess.Popen[bytes] | None = None
    try:
        started = [start_worker(env, log) for log in logs]
        wait_ready([p for p, _ in started], logs, 180)
        t0 = time.perf_counter()
        replay = subprocess.Popen(
            [sys.executable, "-m", "spendstream.cli", "replay", str(path), "--max-speed",
             "--no-progress"],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        cpu0 = sum(cpu_seconds(p.pid) for p, _ in started)
        took = follow(s, progress, replay, t0)
        cpu = sum(cpu_seconds(p.pid) for p, _ in started) - cpu0
        windows = len(progress.expected)
        print(f"workers' CPU {cpu:.1f} s = {cpu / windows * 1e6:.0f} µs per closed window "
              f"(both workers, replay start to last window)", flush=True)  # fmt: skip
        assert replay.wait(60) == 0
        return took
    finally:
        for proc, _ in started:
            stop_worker(proc)
        if replay:
            stop(replay)
        for _, log in started:
            log.close()


def main() -> None:
    days = float(sys.argv[1]) if len(sys.argv) > 1 else 7.0
    base = settings_with_stack()
    s, env = private_settings(base, "week")
    print(f"machine: {machine()}")
    events = week(days)
    t = time.perf_counter()
    offline = offline_run(records_of(events, s.raw_partitions))
    offline_s = time.perf_counter() - t
    scopes = {k.rsplit("|", 1)[0] for k in offline.windows}
    print(f"{len(events):,} events over {len(scopes)} scopes, {len(offline.windows):,} windows; "
          f"offline run {offline_s:.1f} s")  # fmt: skip
    progress = Progress(s.stage2_partitions, {k: w.agg.spend for k, w in offline.windows.items()})
    print(f"windows per stage-2 partition: {progress.load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "week.jsonl"
        path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
        took = through_workers(s, env, path, progress)
    differing = progress.differing()
    label = f"{len(events) / 1000:.0f}k events, {len(scopes)} scopes, {days:g} days"
    result(f"replay a week, 2 workers, until every window closed ({label})", took, "s",
           "<= 60 s", offline_s, "offline run, same process")  # fmt: skip
    result("stage-2 partitions' event-time spread when the first finishes",
           float(progress.spread_min or 0), "min", "<= 5 min")  # fmt: skip
    result("windows differing from the offline run", float(differing), "windows", "0")
    print(f"first stage-2 partition finished at {progress.first_done_s:.1f} s")
    print(f"replay_week_s={took:.1f}")
    if differing:
        raise SystemExit(f"{differing} windows differ from the offline run")


if __name__ == "__main__":
    main()
