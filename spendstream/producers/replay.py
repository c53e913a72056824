"""Publishing a stream of events: recorded files (`spendstream replay`) and synthetic traffic.

Events keep their own timestamps (event time); only the wall-clock pacing changes with
``speed``. Both paths publish through the SDK's :class:`Emitter`, so what the pipeline sees is
exactly what instrumented services send — but they wait for buffer room instead of dropping.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from ..events import LLMCallEvent, describe_error
from .emitter import Emitter


@dataclass
class PublishResult:
    published: int = 0
    dropped: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


class Progress:
    """A one-line progress bar on stderr, redrawn at most every 0.25 s."""

    def __init__(self, total: int | None, out: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.out = out or sys.stderr
        self.enabled = enabled
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.25):
            return
        self._last = now
        rate = done / max(now - self.t0, 1e-9)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * 30)
            line = f"[{bar:<30}] {done:>10,}/{self.total:,} {frac:6.1%} {rate:>9,.0f} ev/s"
        else:
            line = f"{done:>10,} events {rate:>9,.0f} ev/s"
        self.out.write("\r" + line)
        self.out.flush()

    def close(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.out.write("\n")
            self.out.flush()


def read_jsonl(path: Path, bad: list[tuple[int, str]]) -> Iterator[LLMCallEvent]:
    """Events of a JSONL file; malformed lines are appended to ``bad`` as (line no, reason)."""
    with path.open("rb") as f:
        for no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield LLMCallEvent.model_validate_json(line)
            except ValidationError as exc:
                bad.append((no, describe_error(exc)))
            except ValueError as exc:
                bad.append((no, f"undecodable: {exc}"))


def publish(
    events: Iterable[LLMCallEvent],
    emitter: Emitter,
    *,
    speed: float | None = None,
    progress: Progress | None = None,
    flush_timeout: float = 120.0,
) -> PublishResult:
    """Publish in order, paced by event time ``speed`` times faster (None: no pacing)."""
    res = PublishResult()
    t0 = time.monotonic()
    first_ts = None
    before = emitter.stats().dropped_total
    for ev in events:
        if speed is not None:
            if first_ts is None:
                first_ts = ev.timestamp
            due = (ev.timestamp - first_ts).total_seconds() / speed
            ahead = due - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        emitter.put(ev)
        res.published += 1
        if progress is not None and res.published % 256 == 0:
            progress.update(res.published)
    left = emitter.flush(flush_timeout)
    res.dropped = emitter.stats().dropped_total - before + left
    res.seconds = time.monotonic() - t0
    if progress is not None:
        progress.close(res.published)
    return res


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
