"""The ingest gateway: OTLP/HTTP traces and JSON events in, raw-topic events out.

aiohttp, because it is already installed (Faust depends on it), serves HTTP/1.1 with
keep-alive on one event loop with no framework layer between the socket and the handler,
and bounds request bodies itself (``client_max_size``). An ASGI stack (Starlette + uvicorn)
would add two dependencies and a layer for the same three routes.

Publishing goes through the SDK's own :class:`~spendstream.producers.Emitter` (same wire
envelope, same idempotent producer, same bounded buffer). Before a request's events are handed
over, the gateway checks the emitter has room for *all* of them (:func:`has_room`): a request
is accepted whole or refused with 503 + ``Retry-After`` (OTLP exporters retry 429/502/503/504),
so a retry never re-sends half a batch that was already counted.

Routes (``Authorization: Bearer <key>`` on both POST routes):

- ``POST /v1/traces``: ``application/x-protobuf`` or ``application/json`` (OTLP/JSON), gzip
  allowed. 200 with an ExportTraceServiceResponse (``partial_success`` counts rejected GenAI
  spans and names the reasons), 400 undecodable, 401 no/unknown key, 403 an event of another
  service/team than the key's, 413 body over ``max_body_bytes``, 415 other content types,
  503 buffer full. Error bodies are a ``google.rpc.Status`` in the request's encoding.
- ``POST /v1/events``: a JSON object, a JSON array or JSON Lines of ``LLMCallEvent``; the
  answer counts accepted and rejected items and quotes the first errors.
- ``GET /healthz``: 200 while serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError

from ..events import LLMCallEvent, describe_error
from ..producers.emitter import EVENT_BYTES, Emitter, text_bytes
from .keys import KeyBinding, KeyStore
from .otlp import DecodeError, MappingConfig, decode_json, decode_protobuf, map_spans

log = logging.getLogger("spendstream.ingest")

MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""Default body limit (compressed and decompressed): 8 MiB, ~20k GenAI spans per request,
well above an SDK BatchSpanProcessor's 512-span export."""
MAX_ERRORS_QUOTED: Final = 10
RETRY_AFTER_S: Final = 2
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"


@dataclass
class GatewayStats:
    """Counters since start (tests and logs read them)."""

    requests: int = 0
    accepted: int = 0
    ignored: int = 0
    rejected: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    """Responses by error status code."""


@dataclass(frozen=True)
class GatewayConfig:
    max_body_bytes: int = MAX_BODY_BYTES
    mapping: MappingConfig = field(default_factory=MappingConfig)
    retry_after_s: int = RETRY_AFTER_S


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def has_room(emitter: Emitter, events: list[LLMCallEvent]) -> bool:
    """Whether the emitter's bounded buffer takes all ``events`` now (public API only).

    Conservative: ``pending()`` also counts records in flight, which no longer use buffer
    slots. Only the emitter thread drains the buffer, so room checked here cannot shrink
    before the same (single-threaded) handler emits.
    """
    s = emitter.settings
    n = len(events)
    text = sum(text_bytes(e) for e in events if e.prompt_text or e.response_text)
    if emitter.pending() + n > s.producer_buffer_events:
        return False
    return emitter.buffered_bytes() + n * EVENT_BYTES + text <= s.producer_buffer_bytes


class Gateway:
    """Handlers and state of one gateway process."""

    def __init__(self, emitter: Emitter, keys: KeyStore, config: GatewayConfig | None = None):
        self.emitter = emitter
        self.keys = keys
        self.config = config or GatewayConfig()
        self.stats = GatewayStats()

    def app(self) -> web.Application:
        """The routes; serve them with ``auto_decompress=False`` (as :func:`serve` does): the
        handlers inflate bodies themselves."""
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._errors]
        )
        app.router.add_post("/v1/traces", self.traces)
        app.router.add_post("/v1/events", self.events)
        app.router.add_get("/healthz", self.healthz)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every refusal as an OTLP-style error body; nothing unexpected escapes as a 500
        without a log line."""
        self.stats.requests += 1
        try:
            return await handler(request)
        except _Refused as r:
            self.stats.refused[r.status] = self.stats.refused.get(r.status, 0) + 1
            return _error_response(request, r.status, r.message, r.headers)
        except web.HTTPRequestEntityTooLarge:
            self.stats.refused[413] = self.stats.refused.get(413, 0) + 1
            msg = f"body larger than {self.config.max_body_bytes} bytes"
            return _error_response(request, 413, msg, {})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "pending": self.emitter.pending()})

    # --- routes ---------------------------------------------------------------------------
    async def traces(self, request: web.Request) -> web.Response:
        binding = self._auth(request)
        ctype = request.content_type
        if ctype not in (PROTOBUF, JSON):
            raise _Refused(415, f"content type {ctype[:80]!r}: use {PROTOBUF} or {JSON}")
        body = await self._body(request)
        try:
            spans = decode_protobuf(body) if ctype == PROTOBUF else decode_json(body)
        except DecodeError as exc:
            raise _Refused(400, str(exc)[:300]) from None
        mapping = self.config.mapping
        result = map_spans(spans, _for_key(mapping, binding))
        events = [_bind(ev, binding) for ev in result.events]
        self._publish(events)
        self.stats.ignored += result.ignored
        self.stats.rejected += result.rejected
        return _export_response(ctype, result.rejected, result.message())

    async def events(self, request: web.Request) -> web.Response:
        binding = self._auth(request)
        body = await self._body(request)
        try:
            items = _json_items(body)
        except ValueError as exc:
            raise _Refused(400, str(exc)[:300]) from None
        events: list[LLMCallEvent] = []
        errors: list[str] = []
        for i, item in enumerate(items):
            try:
                events.append(LLMCallEvent.model_validate(item))
            except ValidationError as exc:
                if len(errors) < MAX_ERRORS_QUOTED:
                    errors.append(f"item {i}: {describe_error(exc)[:300]}")
        rejected = len(items) - len(events)
        events = [_bind(ev, binding) for ev in events]
        self._publish(events)
        self.stats.rejected += rejected
        return web.json_response({"accepted": len(events), "rejected": rejected, "errors": errors})

    # --- helpers --------------------------------------------------------------------------
    def _auth(self, request: web.Request) -> KeyBinding:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refused(401, "missing bearer API key", {"WWW-Authenticate": "Bearer"})
        binding = self.keys.lookup(token.strip())
        if binding is None:
            raise _Refused(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
        return binding

    async def _body(self, request: web.Request) -> bytes:
        """The (decompressed) body, at most ``max_body_bytes`` before and after inflating.

        The runner does not decompress (``auto_decompress=False`` in :func:`serve`): aiohttp's
        parser answered an unknown ``Content-Encoding`` (``br``) itself, with a plain-text 400
        no OTLP client can read. Here it is a 415 in the OTLP error shape, and gzip/deflate are
        inflated with a bound, so a gzip bomb ends in 413 after ``max_body_bytes`` of output."""
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _Refused(413, f"body larger than {limit} bytes")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity", "gzip", "deflate"):
            raise _Refused(415, f"content encoding {encoding[:40]!r}: use gzip or none")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise
        except RequestPayloadError as exc:
            raise _Refused(400, f"unreadable body: {str(exc).strip()[:200]}") from None
        if encoding in ("gzip", "deflate"):
            return _inflate(body, encoding, limit)
        return body

    def _publish(self, events: list[LLMCallEvent]) -> None:
        """All or nothing: refuse the request (retryable) unless every event fits."""
        if not events:
            return
        if not has_room(self.emitter, events):
            raise _Refused(
                503,
                "the producer buffer is full (Kafka slow or unreachable); retry later",
                {"Retry-After": str(self.config.retry_after_s)},
            )
        sent = sum(1 for ev in events if self.emitter.emit(ev))
        self.stats.accepted += sent
        if sent < len(events):  # cannot happen with one emitting thread; never hide it
            log.error("ingest: %d of %d checked events dropped", len(events) - sent, len(events))


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip (every member) or deflate (zlib-wrapped or raw), refused past ``limit`` bytes."""
    wbits = 31 if encoding == "gzip" else 15
    out: list[bytes] = []
    size, rest = 0, body
    try:
        while rest:
            d = zlib.decompressobj(wbits)
            try:
                chunk = d.decompress(rest, limit + 1 - size)
            except zlib.error:
                if encoding != "deflate" or wbits != 15 or out:
                    raise
                wbits = -15  # some clients send raw deflate: retry once without the header
                continue
            size += len(chunk)
            out.append(chunk)
            if size > limit or d.unconsumed_tail:
                raise _Refused(413, f"body larger than {limit} bytes once inflated")
            if not d.eof:
                raise _Refused(400, f"truncated {encoding} body")
            rest = d.unused_data if encoding == "gzip" else b""
    except zlib.error as exc:
        raise _Refused(400, f"undecodable {encoding} body: {exc}") from None
    return b"".join(out)


def _for_key(mapping: MappingConfig, binding: KeyBinding) -> MappingConfig:
    """A resource without ``service.name`` speaks as the key's service."""
    from dataclasses import replace

    return replace(mapping, default_service=binding.service)


def _bind(event: LLMCallEvent, binding: KeyBinding) -> LLMCallEvent:
    """The key's team on an event without one; 403 for another service or team."""
    if (why := binding.check(event)) is not None:
        raise _Refused(403, why)
    if binding.team is not None and event.team is None:
        return event.model_copy(update={"team": binding.team})
    return event


def _json_items(body: bytes) -> list[Any]:
    """A JSON object, a JSON array, or JSON Lines → items; ValueError if none of them."""
    text = body.decode("utf-8", errors="strict")
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty body")
    try:
        doc = json.loads(stripped)
    except ValueError:
        try:
            return [json.loads(line) for line in stripped.splitlines() if line.strip()]
        except ValueError as exc:
            raise ValueError(f"neither JSON nor JSON Lines: {exc}") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return doc if isinstance(doc, list) else [doc]


# --- OTLP response bodies -----------------------------------------------------------------
def _export_response(ctype: str, rejected: int, message: str) -> web.Response:
    if ctype == PROTOBUF:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        resp = ExportTraceServiceResponse()
        if rejected or message:
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = message
        return web.Response(body=resp.SerializeToString(), content_type=PROTOBUF)
    doc: dict[str, Any] = {}
    if rejected or message:
        doc["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
    return web.json_response(doc)


_GRPC_CODES: Final = {400: 3, 401: 16, 403: 7, 413: 3, 415: 3, 429: 8, 503: 14}
"""HTTP status → google.rpc.Code (INVALID_ARGUMENT, UNAUTHENTICATED, ...)."""


def _error_response(
    request: web.Request, status: int, message: str, headers: dict[str, str]
) -> web.Response:
    """A ``google.rpc.Status`` body (protobuf or JSON, as the request), per the OTLP spec."""
    code = _GRPC_CODES.get(status, 2)
    if request.content_type == PROTOBUF:
        msg = message.encode()
        body = b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg
        return web.Response(status=status, body=body, content_type=PROTOBUF, headers=headers)
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def serve(gateway: Gateway, host: str, port: int, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set, then flush the emitter (accepted events are not lost)."""
    # bodies are inflated by the gateway (Gateway._body): bounded, and an unknown encoding
    # answered in the OTLP error shape instead of by aiohttp's parser
    runner = web.AppRunner(gateway.app(), access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("ingest gateway on http://%s:%d (keys %s)", host, port, gateway.keys.path)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await gateway.emitter.aflush(gateway.emitter.settings.producer_flush_timeout_s)
