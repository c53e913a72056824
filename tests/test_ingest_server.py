"""The ingest gateway on the real stack: real OTel clients in, raw-topic events out."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendstream.config import Settings
from spendstream.events import LLMCallEvent, example_event
from spendstream.ingest.keys import KeyStore, add_key
from spendstream.ingest.otlp import event_id
from spendstream.ingest.server import Gateway, GatewayConfig, serve
from spendstream.producers import Emitter
from spendstream.wire import decode
from tests.stream_helpers import TopicReader, private_settings
from tests.test_ingest_otlp import BASE, TRACE, request_json, request_pb, span_json

pytestmark = pytest.mark.stack

FIXTURES = Path(__file__).parent / "fixtures" / "ingest"


class RunningGateway:
    """A gateway serving on its own event loop in a thread (the clients here block)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.02)
        raise AssertionError("gateway did not start within 10 s")

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            await serve(self.gateway, "127.0.0.1", self.port, self._stop)

        self._loop.run_until_complete(main())

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=20)


@pytest.fixture
def env(stack: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    s, _ = private_settings(stack, "ingest")
    keys = tmp_path / "keys.jsonl"
    key = add_key(keys, "support-bot", "customer-success")
    other_team = add_key(keys, "support-bot", "billing")
    untied = add_key(keys, "batch-jobs")
    emitter = Emitter(s, register_atexit=False)
    gw = RunningGateway(Gateway(emitter, KeyStore(keys)))
    reader = TopicReader(s, s.topic_raw)
    try:
        yield {
            "s": s,
            "gw": gw,
            "key": key,
            "other_team": other_team,
            "untied": untied,
            "keys": keys,
            "reader": reader,
        }
    finally:
        gw.close()
        emitter.close(5)
        reader.close()


def raw_events(reader: TopicReader, n: int, deadline_s: float = 30) -> list[LLMCallEvent]:
    """Poll the raw topic until ``n`` events arrived (then a little longer for extras)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        reader.poll(0.3)
        got = [e for m in reader.records for e in decode(m.value())]
        if len(got) >= n:
            reader.poll(1.0)  # one more second: a duplicate would show up here
            out = [e for m in reader.records for e in decode(m.value())]
            assert all(isinstance(e, LLMCallEvent) for e in out), out
            return [e for e in out if isinstance(e, LLMCallEvent)]
    raise AssertionError(f"only {len(got)} of {n} events within {deadline_s}s")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the real openai SDK, instrumented by opentelemetry-instrumentation-openai-v2 -------------
class _FakeOpenAI(BaseHTTPRequestHandler):
    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def recorded_server(fixture: str) -> Iterator[str]:
    """A local provider API answering every POST with a recorded response body."""
    handler = type("Recorded", (_FakeOpenAI,), {"body": (FIXTURES / fixture).read_bytes()})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def fake_openai() -> Iterator[str]:
    with recorded_server("openai_chat_cached_reasoning.json") as url:
        yield url + "/v1"


def _tracer_provider(env: dict[str, Any]) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(
        endpoint=env["gw"].url + "/v1/traces", headers=auth(env["key"]), timeout=10
    )
    tp = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    tp.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    return tp


def test_openai_sdk_through_otel_exporter(env: dict[str, Any], fake_openai: str) -> None:
    import openai
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    tp = _tracer_provider(env)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    try:
        client = openai.OpenAI(base_url=fake_openai, api_key="sk-test", max_retries=0)
        tracer = tp.get_tracer("app")
        for _ in range(3):
            route = {"http.route": "/v1/answer"}
            with tracer.start_as_current_span("POST /v1/answer", attributes=route):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
        assert tp.force_flush(20_000)
    finally:
        instrumentor.uninstrument()
        tp.shutdown()
    events = raw_events(env["reader"], 3)
    assert len(events) == 3
    assert len({e.event_id for e in events}) == 3
    for ev in events:
        assert (ev.service, ev.endpoint) == ("support-bot", "/v1/answer")
        assert ev.team == "customer-success"
        assert (ev.provider, ev.request_model) == ("openai", "gpt-4o-mini")
        assert ev.response_model == "gpt-4o-mini-2024-07-18"
        # openai-v2 2.4b0 copies prompt_tokens/completion_tokens only: the recorded body's
        # cached_tokens (1024) and reasoning_tokens (64) never reach the span (module docstring)
        usage = ev.usage.model_dump(exclude_none=True)
        assert usage == {"input_tokens": 1200, "output_tokens": 350}
        assert ev.latency_ms is not None and 0 < ev.latency_ms < 10_000
    assert env["gw"].gateway.stats.ignored == 3  # the three server spans


def test_anthropic_sdk_through_openllmetry(env: dict[str, Any]) -> None:
    """OpenLLMetry's Anthropic instrumentor adds the cache tokens to Anthropic's raw
    input_tokens (OTel semantics): the event's parts are within its whole."""
    import anthropic
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

    tp = _tracer_provider(env)
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    try:
        with recorded_server("anthropic_message_cached.json") as url:
            client = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
            for _ in range(2):
                client.messages.create(
                    model="claude-sonnet-4-5",
                    max_tokens=512,
                    messages=[{"role": "user", "content": "hi"}],
                )
        assert tp.force_flush(20_000)
    finally:
        instrumentor.uninstrument()
        tp.shutdown()
    events = raw_events(env["reader"], 2)
    assert len(events) == 2 and len({e.event_id for e in events}) == 2
    for ev in events:
        assert (ev.provider, ev.request_model) == ("anthropic", "claude-sonnet-4-5")
        assert ev.response_model == "claude-sonnet-4-5-20250929"
        assert ev.usage_error is None
        assert ev.usage.model_dump(exclude_none=True) == {
            "input_tokens": 5020,  # 20 uncached + 4000 read + 1000 written
            "output_tokens": 300,
            "cache_read_tokens": 4000,
            "cache_creation_tokens": 1000,
        }


# --- plain HTTP -------------------------------------------------------------------------------
def _good_body() -> bytes:
    attrs = {
        **BASE,
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 350,
        "gen_ai.usage.cache_read.input_tokens": 1024,
        "gen_ai.usage.reasoning.output_tokens": 64,
        "http.route": "/v1/answer",
    }
    return request_json([span_json(attrs)])


def test_otlp_json_and_a_retried_export(env: dict[str, Any]) -> None:
    body = _good_body()
    url = env["gw"].url + "/v1/traces"
    headers = {**auth(env["key"]), "Content-Type": "application/json"}
    for _ in range(2):  # the exporter retried: same body twice
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == 200 and r.json() == {}
    r = httpx.post(
        url, content=request_pb(body), headers={**headers, "Content-Type": "application/x-protobuf"}
    )
    assert r.status_code == 200 and r.content == b""
    gz = {**headers, "Content-Encoding": "gzip"}
    assert httpx.post(url, content=gzip.compress(body), headers=gz).status_code == 200
    deflate = {**headers, "Content-Encoding": "deflate"}
    assert httpx.post(url, content=zlib.compress(body), headers=deflate).status_code == 200
    events = raw_events(env["reader"], 5)
    assert len(events) == 5
    want = event_id(TRACE, bytes.fromhex("eee19b7ec3c1b174"))
    assert {e.event_id for e in events} == {want}
    assert events[0].usage.model_dump(exclude_none=True) == {
        "input_tokens": 1200,
        "output_tokens": 350,
        "cache_read_tokens": 1024,
        "reasoning_tokens": 64,
    }


def test_partial_success_keeps_good_spans(env: dict[str, Any]) -> None:
    spans = [
        span_json({**BASE, "gen_ai.system": "openai", "gen_ai.usage.input_tokens": 7}, "01" * 8),
        span_json({**BASE, "gen_ai.usage.input_tokens": "7"}, "02" * 8),  # wrong type
        span_json({**BASE, "gen_ai.request.model": "m" * 1_000_000}, "03" * 8),  # huge
        span_json({"db.system": "postgresql"}, "04" * 8),
    ]
    r = httpx.post(
        env["gw"].url + "/v1/traces",
        content=request_json(spans),
        headers={**auth(env["key"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 200
    ps = r.json()["partialSuccess"]
    assert ps["rejectedSpans"] == "2"
    assert "gen_ai.usage.input_tokens is not a token count" in ps["errorMessage"]
    (ev,) = raw_events(env["reader"], 1)
    assert ev.usage.input_tokens == 7 and ev.team == "customer-success"
    stats = env["gw"].gateway.stats
    assert (stats.accepted, stats.rejected, stats.ignored) == (1, 2, 1)


def test_status_codes(env: dict[str, Any]) -> None:
    url = env["gw"].url + "/v1/traces"
    js = {"Content-Type": "application/json"}
    body = _good_body()
    assert httpx.post(url, content=body, headers=js).status_code == 401
    assert httpx.post(url, content=body, headers={**js, **auth("ssk_nope")}).status_code == 401
    cs = {**BASE, "gen_ai.system": "openai", "spendstream.team": "customer-success"}
    r = httpx.post(
        url, content=request_json([span_json(cs)]), headers={**js, **auth(env["other_team"])}
    )
    assert r.status_code == 403 and "bound to team 'billing'" in r.json()["message"]
    assert httpx.post(url, content=body, headers={**js, **auth(env["untied"])}).status_code == 403
    r = httpx.post(url, content=body, headers={"Content-Type": "text/plain", **auth(env["key"])})
    assert r.status_code == 415
    pb = {"Content-Type": "application/x-protobuf", **auth(env["key"])}
    r = httpx.post(url, content=b"\xff\xff\xff", headers=pb)
    assert r.status_code == 400 and r.content.startswith(b"\x08\x03\x12")  # google.rpc.Status
    big = b"x" * (GatewayConfig().max_body_bytes + 1)
    assert httpx.post(url, content=big, headers=pb).status_code == 413
    bomb = gzip.compress(b"\0" * (GatewayConfig().max_body_bytes + 1))  # ~8 KiB on the wire
    r = httpx.post(url, content=bomb, headers={**pb, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    r = httpx.post(url, content=b"not gzip", headers={**pb, "Content-Encoding": "gzip"})
    assert r.status_code == 400
    r = httpx.post(url, content=body, headers={**js, **auth(env["key"]), "Content-Encoding": "br"})
    assert r.status_code == 415 and r.json() == {
        "code": 3,
        "message": "content encoding 'br': use gzip or none",
    }  # the gateway's error shape, not aiohttp's plain-text 400
    r = httpx.post(url, content=body, headers={**pb, "Content-Encoding": "br"})
    assert r.status_code == 415 and r.content.startswith(b"\x08\x03\x12")
    r = httpx.post(
        url, content=gzip.compress(body)[:-8], headers={**pb, "Content-Encoding": "gzip"}
    )
    assert r.status_code == 400 and b"truncated gzip body" in r.content
    # the team attribute of another team, under a team-bound key
    attrs = {**BASE, "gen_ai.system": "openai", "spendstream.team": "billing"}
    team_body = request_json([span_json(attrs)])
    r = httpx.post(url, content=team_body, headers={**js, **auth(env["key"])})
    assert r.status_code == 403
    assert httpx.get(env["gw"].url + "/healthz").status_code == 200
    assert env["gw"].gateway.stats.refused == {401: 2, 403: 3, 415: 3, 400: 3, 413: 2}
    env["reader"].poll(1.0)
    assert env["reader"].records == []  # nothing of the refused requests was published


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=2000), as_json=st.booleans())
def test_fuzzed_bodies_never_break_the_gateway(
    fuzz_gateway: tuple[str, str], body: bytes, as_json: bool
) -> None:
    url, key = fuzz_gateway
    ctype = "application/json" if as_json else "application/x-protobuf"
    r = httpx.post(url + "/v1/traces", content=body, headers={"Content-Type": ctype, **auth(key)})
    assert r.status_code in (200, 400), (r.status_code, r.text[:200])


@pytest.fixture(scope="module")
def fuzz_gateway(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    s, _ = private_settings(stack, "ingest-fuzz")
    keys = tmp_path_factory.mktemp("fuzz") / "keys.jsonl"
    key = add_key(keys, "support-bot")
    emitter = Emitter(s, register_atexit=False)
    gw = RunningGateway(Gateway(emitter, KeyStore(keys)))
    yield gw.url, key
    assert httpx.get(gw.url + "/healthz").status_code == 200
    gw.close()
    emitter.close(5)


def test_json_fuzz_of_structure(env: dict[str, Any]) -> None:
    """Well-formed JSON of the wrong shapes: 400 or a counted rejection, never a 500."""
    url = env["gw"].url + "/v1/traces"
    headers = {"Content-Type": "application/json", **auth(env["key"])}

    def one(span: dict[str, Any]) -> dict[str, Any]:
        return {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}

    shapes: list[Any] = [
        one({}),
        {"resourceSpans": [{"resource": {"attributes": [{"key": 1}]}}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": "x"}]}]},
        one(span_json({**BASE, "gen_ai.usage.input_tokens": True})),
        one({**span_json(BASE), "startTimeUnixNano": -1}),
        one({**span_json(BASE), "status": {"code": "x"}}),
        [],
    ]
    bodies = [json.dumps(d).encode() for d in shapes] + [b"[" * 100_000 + b"]" * 100_000]
    codes = [httpx.post(url, content=b, headers=headers).status_code for b in bodies]
    assert codes == [400, 200, 400, 200, 400, 400, 400, 400]
    assert env["gw"].gateway.stats.rejected == 1  # the bool token count


def test_events_route(env: dict[str, Any]) -> None:
    url = env["gw"].url + "/v1/events"
    good = json.loads(example_event(team=None).to_json())
    bad = {**good, "usage": {"input_tokens": -1}}
    r = httpx.post(url, json=[good, bad], headers=auth(env["key"]))
    assert r.status_code == 200
    assert (r.json()["accepted"], r.json()["rejected"]) == (1, 1)
    assert r.json()["errors"][0].startswith("item 1: usage.input_tokens")
    second = {**good, "event_id": "5b6f0b8e-3c0a-4a53-9d4e-0f1f9a4c2e12"}
    lines = (json.dumps(second) + "\n" + json.dumps(second) + "\n").encode()
    r = httpx.post(url, content=lines, headers=auth(env["key"]))
    assert r.json()["accepted"] == 2
    r = httpx.post(url, json={**good, "service": "billing-api"}, headers=auth(env["key"]))
    assert r.status_code == 403
    assert httpx.post(url, content=b"{oops", headers=auth(env["key"])).status_code == 400
    events = raw_events(env["reader"], 3)
    assert len(events) == 3 and all(e.team == "customer-success" for e in events)


def test_keys_rotate_without_restart(env: dict[str, Any]) -> None:
    url = env["gw"].url + "/v1/traces"
    headers = {"Content-Type": "application/json"}
    new = add_key(env["keys"], "support-bot")
    with_new = {**headers, **auth(new)}
    assert httpx.post(url, content=_good_body(), headers=with_new).status_code == 200
    lines = env["keys"].read_text().splitlines()
    env["keys"].write_text("\n".join(lines[:-1]) + "\n")  # revoke the new key
    assert httpx.post(url, content=_good_body(), headers=with_new).status_code == 401
    env["keys"].write_text("{half a line")  # a broken edit keeps the last good keys
    r = httpx.post(url, content=_good_body(), headers={**headers, **auth(env["key"])})
    assert r.status_code == 200


def test_buffer_full_is_503_with_retry_after(stack: Settings, tmp_path: Path) -> None:
    """Kafka unreachable (nothing listens on the address): the buffer fills, then 503."""
    s = stack.model_copy(
        update={"kafka_bootstrap_servers": "127.0.0.1:1", "producer_buffer_events": 2}
    )
    keys = tmp_path / "keys.jsonl"
    key = add_key(keys, "support-bot")
    emitter = Emitter(s, register_atexit=False)
    gw = RunningGateway(Gateway(emitter, KeyStore(keys)))
    try:
        headers = {"Content-Type": "application/json", **auth(key)}
        spans = [span_json({**BASE, "gen_ai.system": "openai"}, f"{i:016x}") for i in (1, 2)]
        r = httpx.post(gw.url + "/v1/traces", content=request_json(spans), headers=headers)
        assert r.status_code == 200
        r = httpx.post(gw.url + "/v1/traces", content=_good_body(), headers=headers)
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert httpx.get(gw.url + "/healthz").json()["pending"] == 2
    finally:
        gw.close()
        emitter.close(0.5)
