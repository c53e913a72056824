"""A retried export never counts twice, end to end on the real stack: the real
``opentelemetry-exporter-otlp-proto-http`` exporter through a proxy that answers 503 once
(before the gateway saw the batch, and after it accepted it: a lost 200), plus the same batch
exported twice; then a real worker and the PostgreSQL sink. Windows, rows and the worker's
Prometheus exposition each count every span once; the duplicates are counted by service."""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.ingest.keys import KeyStore, add_key
from spendstream.ingest.server import Gateway
from spendstream.money import usd_to_pico
from spendstream.producers import Emitter
from spendstream.scopes import minute_of
from spendstream.stream.enrich import Enricher
from spendstream.wire import decode
from tests.books import migrated_db, query
from tests.stream_helpers import TopicReader, latest_windows, sink_process, wait_for, workers
from tests.test_ingest_server import RunningGateway, auth

pytestmark = pytest.mark.stack


class FlakyProxy:
    """Forwards POSTs to the gateway; the first one is answered 503 (``Retry-After``) either
    instead of forwarding (``lose="request"``) or after forwarding (``lose="response"``: the
    gateway accepted the batch, the client never learns it)."""

    def __init__(self, upstream: str, lose: str, retry_after: str) -> None:
        self.upstream, self.lose, self.retry_after = upstream, lose, retry_after
        self.attempts = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.attempts += 1
                    first = proxy.attempts == 1
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                if not (first and proxy.lose == "request"):
                    r = httpx.post(
                        proxy.upstream + self.path, content=body, headers=headers, timeout=30
                    )
                    status, content, ctype = r.status_code, r.content, r.headers["content-type"]
                if first:
                    status, content, ctype = 503, b"", "text/plain"
                self.send_response(status)
                if first:
                    self.send_header("Retry-After", proxy.retry_after)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def finished_spans(n: int, start: datetime, first_id: int) -> list[Any]:
    """``n`` GenAI client spans of support-bot, recorded by the real OTel SDK."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("app")
    t0 = int(start.timestamp() * 1e9)
    for i in range(n):
        at = t0 + (first_id + i) * 100_000_000
        span = tracer.start_span(
            "chat gpt-4o-mini",
            start_time=at,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 1000 + first_id + i,
                "gen_ai.usage.output_tokens": 100 + i,
                "http.route": "/v1/answer",
            },
        )
        span.end(end_time=at + 400_000_000)
    tp.shutdown()
    return list(mem.get_finished_spans())


def exporter(url: str, key: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # generous: a client timeout on a loaded machine would be one more (legitimate) retry
    return OTLPSpanExporter(endpoint=url + "/v1/traces", headers=auth(key), timeout=30)


@pytest.fixture
def gateway(stack: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    s, env = migrated_db(stack, "iretry")
    s = s.model_copy(update={"idle_timeout_s": 2.0})
    env["SPENDSTREAM_IDLE_TIMEOUT_S"] = "2"
    keys = tmp_path / "keys.jsonl"
    key = add_key(keys, "support-bot", "customer-success")
    emitter = Emitter(s, register_atexit=False)
    gw = RunningGateway(Gateway(emitter, KeyStore(keys)))
    try:
        yield {"s": s, "env": env, "gw": gw, "key": key}
    finally:
        gw.close()
        emitter.close(5)


def scrape(log_dir: Path) -> dict[tuple[str, str], float]:
    log = b"".join(p.read_bytes() for p in log_dir.glob("worker-*.log"))
    port = int(re.findall(rb"metrics on :(\d+)", log)[-1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            k = (smp.name, smp.labels.get("service", ""))
            out[k] = out.get(k, 0.0) + smp.value
    return out


def test_exporter_retries_and_a_re_sent_batch_count_each_span_once(
    gateway: dict[str, Any], tmp_path: Path
) -> None:
    s, gw, key = gateway["s"], gateway["gw"], gateway["key"]
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=8)
    refused, lost, twice = (finished_spans(10, start, k) for k in (0, 10, 20))
    from opentelemetry.sdk.trace.export import SpanExportResult

    p1 = FlakyProxy(gw.url, "request", "0")
    p2 = FlakyProxy(gw.url, "response", "1")
    try:
        assert exporter(p1.url, key).export(refused) == SpanExportResult.SUCCESS
        assert exporter(p2.url, key).export(lost) == SpanExportResult.SUCCESS
    finally:
        p1.close()
        p2.close()
    assert (p1.attempts, p2.attempts) == (2, 2)
    direct = exporter(gw.url, key)
    for _ in range(2):  # the client retried after a lost 200: the very same batch again
        assert direct.export(twice) == SpanExportResult.SUCCESS
    # one span in the next minute moves the watermark past the minute under test (it closes)
    assert direct.export(finished_spans(1, start + timedelta(minutes=1), 30)) == (
        SpanExportResult.SUCCESS
    )
    assert gw.gateway.stats.accepted == 10 + 2 * 10 + 2 * 10 + 1

    raw = TopicReader(s, s.topic_raw)
    got: list[LLMCallEvent] = []

    def read_raw() -> None:
        raw.poll(0.5)
        got[:] = [e for m in raw.records for e in decode(m.value()) if isinstance(e, LLMCallEvent)]

    wait_for(lambda: len(got) >= 51, 30, "51 raw events", every=read_raw)
    raw.close()
    distinct = list({e.event_id: e for e in got}.values())
    assert len(got) == 51 and len(distinct) == 31
    minute = minute_of(start.timestamp())
    in_minute = [e for e in distinct if minute_of(e.timestamp.timestamp()) == minute]
    assert len(in_minute) == 30
    total = Enricher().total_pico(in_minute)

    windows = TopicReader(s, s.topic_windows)
    with workers(gateway["env"], 1, tmp_path), sink_process(gateway["env"], tmp_path):
        wait_for(
            lambda: f"global:all|{minute}" in latest_windows(windows),
            240,  # a worker starting on a loaded 2-core machine
            "the minute's global window",
            every=lambda: windows.poll(0.5),
        )
        w = latest_windows(windows)[f"global:all|{minute}"]
        assert (w["calls"], w["spend_pico"]) == (30, total)
        wait_for(lambda: query(s, "SELECT count(*) FROM llm_calls") >= 31, 60, "31 PostgreSQL rows")
        wait_for(lambda: b"metrics on :" in _logs(tmp_path), 30, "the metrics port")
        m = scrape(tmp_path)
    windows.close()
    assert query(s, "SELECT count(*) FROM llm_calls") == 31
    assert query(s, "SELECT count(DISTINCT event_id) FROM llm_calls") == 31
    assert usd_to_pico(query(s, "SELECT sum(cost_usd) FROM llm_calls")) == Enricher().total_pico(
        distinct
    )
    assert m[("spendstream_llm_requests_total", "support-bot")] == 31
    assert m[("spendstream_duplicate_events_total", "support-bot")] == 20


def _logs(log_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in log_dir.glob("worker-*.log"))
