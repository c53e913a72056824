"""Kafka record format of the raw topic: an envelope of one or more events, JSON Lines.

Why an envelope: on the real broker here a per-record Faust agent handled ~4.8k events/s while
the same agent given 50 events per record handled ~45k events/s; Faust's cost is per record, so
the SDK packs several events that share a Kafka key into one record.

Why JSON Lines rather than one JSON array: each line is decoded on its own, so one malformed
event goes to the dead-letter topic with its own bytes while its neighbours are processed.

Format v1 (header ``spendstream-wire: jsonl/1``; records without the header are read the same):
the record value is UTF-8 ``LLMCallEvent`` JSON documents separated by ``\\n``; every event in a
record has the record's key (``LLMCallEvent.kafka_key()``). A record holding one event is a valid
envelope, so plain single-event producers are compatible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from .events import LLMCallEvent, describe_error

WIRE_HEADER = "spendstream-wire"
WIRE_VERSION = "jsonl/1"
HEADERS: list[tuple[str, str | bytes | None]] = [(WIRE_HEADER, WIRE_VERSION.encode())]


DLQ_ERROR = "spendstream-error"
DLQ_SOURCE_TOPIC = "spendstream-source-topic"
DLQ_SOURCE_PARTITION = "spendstream-source-partition"
DLQ_SOURCE_OFFSET = "spendstream-source-offset"
DLQ_SOURCE_LINE = "spendstream-source-line"
MAX_DLQ_REASON_BYTES = 4000


def dlq_headers(
    topic: str, partition: int, offset: int, line: int | None, reason: str
) -> dict[str, bytes]:
    """Headers of a dead-letter record: why, and where the record came from (topic, partition,
    offset, line), so it can be found, fixed and re-sent. The worker (raw topic) and the
    PostgreSQL sink (enriched topic) write the same headers to the same topic."""
    h = {
        DLQ_ERROR: reason.encode()[:MAX_DLQ_REASON_BYTES],
        DLQ_SOURCE_TOPIC: topic.encode(),
        DLQ_SOURCE_PARTITION: str(partition).encode(),
        DLQ_SOURCE_OFFSET: str(offset).encode(),
    }
    if line is not None:
        h[DLQ_SOURCE_LINE] = str(line).encode()
    return h


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of a record that is not a valid event: its index, original bytes and reason."""

    index: int
    raw: bytes
    reason: str


def pack(
    events: Iterable[LLMCallEvent],
    max_events: int = 100,
    max_bytes: int = 262_144,
    span_s: float = 60.0,
    on_error: Callable[[LLMCallEvent, Exception], None] | None = None,
) -> list[tuple[bytes, list[bytes]]]:
    """Cut events into records: (key, lines), the SDK's and every producer's batching rule.

    Each key has at most one open record; an event joins its key's open record while that
    record is in the event's slot of ``span_s`` seconds of *event time* and has room, else it
    opens the key's next one. Records come out in the order they were opened, so:

    - events of one key keep their input order exactly (a thread's calls of one endpoint
      arrive in the order it made them, however the emitter's threads interleave);
    - events of different keys are reordered at most within one slot, so a replay at high
      speed is never more out of order within a partition than ``span_s`` — below the stream
      worker's allowed lateness.

    Grouping by (slot, key) in order of first appearance, the rule before this one, broke the
    first: with three threads emitting, one thread's slot-6 event opened the slot-6 record
    ahead of another thread's slot-5 events of the same key (seen once in CI, test_emitter).
    """
    out: list[tuple[bytes, list[bytes]]] = []
    open_: dict[bytes, _OpenRecord] = {}
    for ev in events:
        try:
            slot = int(ev.timestamp.timestamp() // span_s) if span_s > 0 else 0
            key = ev.kafka_key()
            line = ev.to_json()
        except Exception as exc:
            if on_error is None:
                raise
            on_error(ev, exc)
            continue
        rec = open_.get(key)
        if rec is None or not rec.takes(slot, len(line), max_events, max_bytes):
            rec = open_[key] = _OpenRecord(slot)
            out.append((key, rec.lines))
        rec.add(line)
    return out


@dataclass(slots=True)
class _OpenRecord:
    """The record :func:`pack` is filling for one key: its slot, lines and size so far."""

    slot: int
    lines: list[bytes] = field(default_factory=list)
    size: int = 0

    def takes(self, slot: int, line_bytes: int, max_events: int, max_bytes: int) -> bool:
        return (
            slot == self.slot
            and len(self.lines) < max_events
            and self.size + line_bytes + 1 <= max_bytes
        )

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line) + 1


def encode(events: Sequence[LLMCallEvent]) -> bytes:
    """One record value for ``events`` (which should share a Kafka key)."""
    return b"\n".join(ev.to_json() for ev in events)


def check_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    """Return an error if the record declares a wire version this code cannot read."""
    for name, value in headers or ():
        if name != WIRE_HEADER or value is None:
            continue
        got = value.decode(errors="replace")
        if got != WIRE_VERSION:
            return f"unsupported {WIRE_HEADER} {got!r}, expected {WIRE_VERSION!r}"
    return None


def decode(value: bytes | None) -> Iterator[LLMCallEvent | BadLine]:
    """Events of one record in order; a line that fails becomes a :class:`BadLine`.

    Blank lines (e.g. a trailing newline) are skipped. This is the helper third-party
    consumers of the raw topic should use.
    """
    if not value:
        yield BadLine(0, value or b"", "empty record")
        return
    for i, line in enumerate(value.split(b"\n")):
        if not line.strip():
            continue
        try:
            yield LLMCallEvent.model_validate_json(line)
        except ValidationError as exc:
            yield BadLine(i, line, describe_error(exc))
        except (UnicodeDecodeError, ValueError) as exc:
            yield BadLine(i, line, f"undecodable: {exc}")
