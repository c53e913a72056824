"""The partials topic's wire format: stage 1's window snapshots and watermark reports.

One stage-2 partition receives, per tick, one or more JSON messages
``{"snaps": [[raw partition, scope, minute, thru, agg], ...], "wm": {raw partition: [ts, idle]}}``.
Snapshots are cut into messages of at most :data:`MAX_PARTIALS_BYTES` (10,000 prompt versions
in one minute made a single message exceed Kafka's 1 MiB limit and crashed every worker) and
only the last message of a tick carries the watermarks: stage 2 must have applied every
snapshot a watermark covers before it closes minutes with it. Snapshots are encoded once each
and joined, not re-serialised per message.

Encoded and decoded with msgspec (the same JSON: compact, UTF-8 instead of ``\\u`` escapes,
read back to the same values by any JSON reader): ``json.dumps``/``json.loads`` of the
snapshots were ~8% of a worker's CPU in a replay (py-spy, bench/replay_week).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from .pipeline import Snapshot

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

MAX_PARTIALS_BYTES = 256 * 1024
Report = tuple[float | None, bool]
"""A raw partition's watermark (largest event time seen, None before any) and idle flag."""


def encode(snaps: Iterable[Snapshot], reports: dict[int, Report]) -> list[bytes]:
    """The messages of one tick for one stage-2 partition (at least one: the watermarks)."""
    out: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for sn in snaps:
        enc = _encode([sn.partition, sn.scope, sn.minute, sn.thru, sn.agg])
        if batch and size + len(enc) > MAX_PARTIALS_BYTES:
            out.append(b'{"snaps":[' + b",".join(batch) + b'],"wm":{}}')
            batch, size = [], 0
        batch.append(enc)
        size += len(enc) + 1
    wm = _encode({str(p): [ts, idle] for p, (ts, idle) in reports.items()})
    out.append(b'{"snaps":[' + b",".join(batch) + b'],"wm":' + wm + b"}")
    return out


def decode(value: bytes) -> tuple[list[Snapshot], dict[int, Report]]:
    """Snapshots and watermark reports of one partials message."""
    msg: dict[str, Any] = _decode(value)
    snaps = [Snapshot(p, sc, mi, th, ag) for p, sc, mi, th, ag in msg["snaps"]]
    reports = {int(p): (v[0], bool(v[1])) for p, v in msg["wm"].items()}
    return snaps, reports
