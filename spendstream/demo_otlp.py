"""The demo's OpenTelemetry service: one service reports its calls as OTLP spans through
``spendstream ingest``, as a TypeScript, Go or Java service with a GenAI instrumentation would,
instead of through the Python SDK.

The spans carry what an OTel GenAI instrumentation puts on a client span (``gen_ai.*`` with OTel's
token semantics: cache tokens inside input, reasoning inside output), the endpoint and team as
``spendstream.*`` attributes and the demo's run tag as ``spendstream.tag.demo_run``; they are
posted as OTLP/JSON with plain HTTP (what an OTLP exporter sends, without its SDK) at the
demo's pace, retried on 429/503 after ``Retry-After`` like an exporter. The demo's books check
then covers the gateway: PostgreSQL must hold these calls too, with the cost the demo priced
from the original events, so a mapping that loses a token count shows as a books mismatch.

Only calls whose usage a span can carry go this way (complete input/output counts, no prompt
text to estimate from); the service's other calls go through the SDK.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from .events import LLMCallEvent, Status

SERVICE: Final = "growth"
"""The demo service that reports through the gateway."""
BATCH_SIM_S: Final = 15.0
"""Simulated seconds of calls per export (0.25 s of wall time at 60x)."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def via_gateway(e: LLMCallEvent) -> bool:
    """The service's calls whose usage a GenAI span can carry."""
    u = e.usage
    return (
        e.service == SERVICE
        and e.prompt_text is None
        and u.input_tokens is not None
        and u.output_tokens is not None
    )


def _ns(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def _attr(k: str, v: Any) -> dict[str, Any]:
    val = {"intValue": str(v)} if isinstance(v, int) else {"stringValue": str(v)}
    return {"key": k, "value": val}


def span_of(e: LLMCallEvent) -> dict[str, Any]:
    """One call as an OTLP/JSON client span (trace and span ids derived from the event id)."""
    u = e.usage
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": e.operation.value,
        "gen_ai.provider.name": e.provider,
        "gen_ai.request.model": e.request_model,
        "gen_ai.response.model": e.response_model,
        "gen_ai.usage.input_tokens": u.input_tokens,
        "gen_ai.usage.output_tokens": u.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": u.cache_read_tokens,
        "gen_ai.usage.cache_write.input_tokens": u.cache_creation_tokens,
        "gen_ai.usage.reasoning.output_tokens": u.reasoning_tokens,
        "spendstream.endpoint": e.endpoint,
        "spendstream.team": e.team,
        "user.id": e.user_id,
        "error.type": e.error_type if e.status is not Status.OK else None,
        **{f"spendstream.tag.{k}": v for k, v in e.tags.items()},
    }
    start = _ns(e.timestamp)
    return {
        "traceId": e.event_id.hex,
        "spanId": uuid.uuid5(e.event_id, "span").hex[:16],
        "name": f"{e.operation.value} {e.request_model}",
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + int((e.latency_ms or 0.0) * 1e6)),
        "attributes": [_attr(k, v) for k, v in attrs.items() if v is not None],
        "status": {"code": 0 if e.status is Status.OK else 2},
    }


def export_body(events: Sequence[LLMCallEvent]) -> bytes:
    """An OTLP/JSON ``ExportTraceServiceRequest`` of the calls (one resource: the service)."""
    resource = {"attributes": [_attr("service.name", SERVICE)]}
    spans = [span_of(e) for e in events]
    doc = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}
    return json.dumps(doc).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class GatewayFeed:
    """Posts the calls to the gateway at ``speed`` × event time, an export per
    :data:`BATCH_SIM_S` simulated seconds; counts what the gateway accepted."""

    url: str
    key: str
    events: Sequence[LLMCallEvent]
    speed: float
    accepted: int = 0
    rejected: int = 0
    retries: int = 0
    problems: list[str] = field(default_factory=list)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                return int(r.status) == 200
        except OSError:
            return False

    def run(self) -> None:
        if not self.events:
            return
        t0, first = time.monotonic(), self.events[0].timestamp
        batch: list[LLMCallEvent] = []
        for e in self.events:
            if batch and (e.timestamp - batch[0].timestamp).total_seconds() >= BATCH_SIM_S:
                self._post(batch)
                batch = []
            due = (e.timestamp - first).total_seconds() / self.speed
            ahead = due - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
            batch.append(e)
        if batch:
            self._post(batch)

    def _post(self, batch: list[LLMCallEvent], deadline_s: float = 60.0) -> None:
        body, until = export_body(batch), time.monotonic() + deadline_s
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        while True:
            req = urllib.request.Request(self.url + "/v1/traces", body, headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    reply = json.loads(r.read() or b"{}")
                rejected = int(reply.get("partialSuccess", {}).get("rejectedSpans", 0))
                self.rejected += rejected
                self.accepted += len(batch) - rejected
                if rejected:
                    self.problems.append(f"the gateway rejected {rejected} spans: {reply}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code not in (429, 503) or time.monotonic() > until:
                    self.problems.append(f"the gateway answered {exc.code}: {exc.read()[:300]!r}")
                    return
                self.retries += 1
                time.sleep(float(exc.headers.get("Retry-After") or 1))
            except OSError as exc:
                if time.monotonic() > until:
                    self.problems.append(f"the gateway is unreachable: {exc}")
                    return
                self.retries += 1
                time.sleep(1)
