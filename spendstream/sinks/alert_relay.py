"""Alert delivery: ``spendstream alerts tail`` and ``spendstream alerts relay``.

The relay reads the alerts topic in its own consumer group and POSTs each alert as JSON (or a
Slack-compatible ``{"text": …}`` body), retrying with backoff until the receiver accepts it;
only then is the record's offset committed. The stream worker is at-least-once, so the same
``(alert_id, status)`` can appear twice on the topic: on start the relay re-reads the topic up
to its committed offsets to learn what it already delivered, and drops repeats. Every request
carries ``Idempotency-Key: <alert_id>:<status>`` for the one case left — the relay killed
between the receiver's answer and the commit.

Every field of an alert is hostile: scopes and messages carry model, endpoint, team and user
names that any producer chooses. A probe showed one event with model ``<!channel> <https://evil
|click>`` paging a whole Slack channel with a masked phishing link, so text is stripped of
control characters (terminal escapes, bidi overrides) and capped for every format, and Slack
text is escaped per Slack's rules (``& < >`` as entities, bare ``@channel``/``@here``/
``@everyone`` broken by a zero-width space, ``mrkdwn`` and unfurling off).

300 distinct unknown models made 600 webhook posts in a minute (``price_unknown`` fires at
once). So each rule gets at most ``alert_relay_max_per_minute`` firing alerts per event-time
minute; the rest are *held*: counted, committed, listed by ``alerts tail``, and summed up in ONE
summary alert (an :class:`Alert` with ``details["relay_summary"]``) naming how many were held
and the first scopes. What the receiver loses is the individual held records (their resolution
too: a ``resolved`` is held when its ``firing`` was). Event time, not the wall clock, so a
replay or restart makes the same decisions.

HTTP is treated as hostile too. Redirects are never followed (a 302 was re-sent as a GET to
any host and counted as delivered); a 3xx or a 4xx other than 408/429 is the receiver refusing
this request: retried ``alert_relay_refused_attempts`` times, then counted ``rejected``, logged
at ERROR with the alert's line, and the relay moves on (a misconfigured receiver must not
block every later alert). A 5xx/408/429, a timeout, a malformed status line, an oversized
header, a reset or a TLS failure means the receiver is down: retried forever with capped
exponential backoff, order kept. One attempt has a total deadline (``alert_relay_deadline_s``)
— a receiver trickling one byte a second hung the old relay — and at most 1 KiB of a reply
body is read. The webhook URL (Slack's carries its secret in the path) comes from
``--webhook-file`` or ``SPENDSTREAM_ALERT_WEBHOOK_URL`` so ``ps`` does not show it, and logs only
show its scheme and host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from ..alerts import Alert, alert_id
from ..config import Settings
from ..scopes import GLOBAL, minute_dt, minute_of

log = logging.getLogger("spendstream.alerts")

MAX_TEXT = 3000
"""Characters of one alert line (Slack shows 4,000 before "see more"; a name can be 100 KiB)."""
MAX_REPLY = 1024
"""Bytes of a receiver's reply body read (for the log); the rest is never read."""
SUMMARY_AFTER_S = 5.0
"""A held group is summarised when the topic is drained, or at the latest this long after."""
SUMMARY_SCOPES = 10
STATE_MINUTES = 1440
"""Fan-out counters older than this (event time, behind the newest alert) are forgotten."""

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_MENTION = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_SEVERITY = {"info": 0, "warning": 1, "critical": 2}


def plain(text: str, limit: int = MAX_TEXT) -> str:
    """One line without control or bidi characters, at most ``limit`` characters."""
    text = _CONTROL.sub(lambda m: " " if m.group() in "\t\n\r" else "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_text(text: str) -> str:
    """``text`` made inert for Slack: entities for ``& < >``, bare mentions broken."""
    t = plain(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u200b\\1", t)


def line_of(a: Alert) -> str:
    """One human line per alert (``alerts tail``, Slack text), control characters removed."""
    icon = "FIRING" if a.status == "firing" else "resolved"
    ratio = f" ×{a.ratio:.1f}" if a.ratio else ""
    return plain(
        f"[{icon}] {a.severity} {a.rule} {a.scope} window {a.window_start:%Y-%m-%d %H:%M}Z: "
        f"${a.observed_usd} vs ${a.baseline_usd}{ratio} — {a.message}"
    )


def payload(a: Alert, fmt: str) -> bytes:
    if fmt == "slack":
        body = {"text": slack_text(line_of(a)), "mrkdwn": False}
        return json.dumps({**body, "unfurl_links": False, "unfurl_media": False}).encode()
    return a.to_json()  # JSON-escaped strings: names cannot break out of their field


def redact_url(url: str | None) -> str:
    """Scheme, host and port only: a webhook's path or query is often its secret."""
    if not url:
        return "(none)"
    try:
        u = urlsplit(url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port else ""
    except ValueError:
        return "(unparseable URL)"
    rest = "/…" if (u.path not in ("", "/") or u.query) else ""
    if not u.scheme or not host:
        return "(relative URL)" if rest else "(no URL)"
    return plain(f"{u.scheme}://{host}{port}{rest}", 200)


@dataclass
class RelayStats:
    delivered: int = 0
    duplicates: int = 0
    retries: int = 0
    """Failed attempts that were tried again."""
    rejected: int = 0
    """Alerts given up after ``alert_relay_refused_attempts`` refusals (logged at ERROR)."""
    unreadable: int = 0
    held: int = 0
    """Alerts over the fan-out cap: committed and summarised, not posted one by one."""
    summaries: int = 0
    redirects: int = 0
    refused: int = 0
    """4xx answers other than 408/429 (attempts)."""
    server_errors: int = 0
    """5xx, 408 and 429 answers (attempts)."""
    timeouts: int = 0
    transport_errors: int = 0
    """Attempts without a usable answer: refused connection, reset, malformed or oversized."""


Verdict = Literal["ok", "refused", "retry"]


class Webhook:
    """One receiver: httpx without redirects, a total deadline per attempt, bounded reads."""

    def __init__(self, url: str, fmt: str, s: Settings) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"webhook must be an http(s) URL, got {redact_url(url)}")
        self.url, self.fmt = url, fmt
        self.deadline_s = s.alert_relay_deadline_s
        self.refused_attempts = s.alert_relay_refused_attempts
        self.retry_initial_s = s.alert_relay_retry_initial_s
        self.retry_max_s = s.alert_relay_retry_max_s
        self._client: Any = None
        for name in ("httpx", "httpcore"):  # they log each request's full URL (its secret)
            lg = logging.getLogger(name)
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))

    def _http(self) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False, timeout=httpx.Timeout(self.deadline_s)
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _post(self, body: bytes, key: str) -> tuple[int, str | None, bytes]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        async with self._http().stream("POST", self.url, content=body, headers=headers) as r:
            reply = b""
            async for chunk in r.aiter_raw():
                reply += chunk[: MAX_REPLY - len(reply)]
                if len(reply) >= MAX_REPLY:
                    break
            return int(r.status_code), r.headers.get("location"), reply

    async def attempt(self, body: bytes, key: str, stats: RelayStats) -> tuple[Verdict, str]:
        """One POST, classified; never raises (but for cancellation)."""
        try:
            code, location, reply = await asyncio.wait_for(self._post(body, key), self.deadline_s)
        except TimeoutError:
            stats.timeouts += 1
            await self.close()  # the half-read connection must not be reused
            return "retry", f"no complete answer within {self.deadline_s:g}s"
        except Exception as exc:  # malformed status line, huge header, reset, TLS, refused …
            stats.transport_errors += 1
            await self.close()
            return "retry", f"{type(exc).__name__}: {plain(str(exc), 200)}"
        if 200 <= code < 300:
            return "ok", f"HTTP {code}"
        if 300 <= code < 400:
            stats.redirects += 1
            return "refused", f"HTTP {code} redirect to {redact_url(location)}, not followed"
        if 400 <= code < 500 and code not in (408, 429):
            stats.refused += 1
            return "refused", f"HTTP {code}: {plain(reply.decode('utf-8', 'replace'), 200)}"
        stats.server_errors += 1
        return "retry", f"HTTP {code}"


async def deliver(hook: Webhook, a: Alert, stats: RelayStats, stop: asyncio.Event) -> bool:
    """POST until accepted (2xx); True when accepted. A refusal (3xx, 4xx but 408/429) is
    retried ``refused_attempts`` times and then rejected: logged at ERROR with the alert's line
    so it is not lost silently, and skipped so it cannot block later alerts."""
    key = f"{a.alert_id}:{a.status}"
    body = payload(a, hook.fmt)
    delay, refusals = hook.retry_initial_s, 0
    while not stop.is_set():
        verdict, why = await hook.attempt(body, key, stats)
        if verdict == "ok":
            return True
        if verdict == "refused":
            refusals += 1
            if refusals >= hook.refused_attempts:
                stats.rejected += 1
                log.error(
                    "webhook %s refused alert %s %d times (%s); rejected, moving on: %s",
                    redact_url(hook.url), key, refusals, why, line_of(a),
                )  # fmt: skip
                return False
        stats.retries += 1
        log.warning("webhook delivery of %s failed (%s); retrying in %.1fs", key, why, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, hook.retry_max_s)
    return False


@dataclass
class HeldGroup:
    """Alerts of one (rule, minute) held since its last summary."""

    rule: str
    minute: int
    seq: int
    """How many of this (rule, minute) came before the group: makes each summary's id unique."""
    since: float = field(default_factory=time.monotonic)
    count: int = 0
    firing: int = 0
    severity: str = "info"
    observed: Decimal = field(default_factory=Decimal)
    scopes: list[str] = field(default_factory=list)

    def add(self, a: Alert) -> None:
        self.count += 1
        if a.status == "firing":
            self.firing += 1
            self.observed += a.observed_usd
        if _SEVERITY[a.severity] > _SEVERITY[self.severity]:
            self.severity = a.severity
        if len(self.scopes) < SUMMARY_SCOPES:
            self.scopes.append(plain(a.scope, 200))

    def summary(self, cap: int) -> Alert:
        start = minute_dt(self.minute)
        more = (
            f", … ({self.count - len(self.scopes)} more)" if self.count > len(self.scopes) else ""
        )
        return Alert(
            alert_id=alert_id(f"relay-summary:{self.seq}", self.rule, self.minute),
            rule=self.rule,
            status="firing",
            severity=self.severity,
            scope=GLOBAL,
            window_start=start,
            window_end=minute_dt(self.minute + 1),
            first_seen=start,
            observed_usd=self.observed,
            baseline_usd=Decimal(0),
            message=(
                f"and {self.count} more {self.rule} alerts in this minute, held by the relay "
                f"(at most {cap} per rule per minute; `spendstream alerts tail "
                f"--from-beginning` lists them): {', '.join(self.scopes)}{more}"
            ),
            details={
                "relay_summary": "true",
                "held": str(self.count),
                "held_firing": str(self.firing),
                "held_resolved": str(self.count - self.firing),
            },
        )


class FanoutLimiter:
    """At most ``cap`` firing alerts per (rule, event-time minute); a ``resolved`` follows its
    ``firing``'s fate. State older than ``STATE_MINUTES`` behind the newest alert is dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.counts: dict[tuple[str, int], int] = {}
        self.held_ids: dict[Any, int] = {}
        self.pending: dict[tuple[str, int], HeldGroup] = {}
        self.newest = 0

    def admit(self, a: Alert, *, replay: bool = False) -> bool:
        """True: post it. False: held (added to a pending group unless ``replay``)."""
        minute = minute_of(a.window_start.timestamp())
        key = (a.rule, minute)
        if minute > self.newest:
            self._prune(minute)
        if a.status == "firing":
            n = self.counts.get(key, 0)
            self.counts[key] = n + 1
            if n < self.cap:
                return True
            self.held_ids[a.alert_id] = minute
        elif a.alert_id not in self.held_ids:
            return True
        if not replay:
            group = self.pending.get(key)
            if group is None:
                group = self.pending[key] = HeldGroup(a.rule, minute, self.counts.get(key, 0))
            group.add(a)
        return False

    def _prune(self, minute: int) -> None:
        self.newest = minute
        old = minute - STATE_MINUTES
        if self.counts and min(m for _, m in self.counts) < old:
            self.counts = {k: v for k, v in self.counts.items() if k[1] >= old}
            self.held_ids = {i: m for i, m in self.held_ids.items() if m >= old}

    def due(self, idle: bool) -> list[HeldGroup]:
        """Groups to summarise now: all when the topic is drained, else the old ones."""
        now = time.monotonic()
        keys = [k for k, g in self.pending.items() if idle or now - g.since >= SUMMARY_AFTER_S]
        return [self.pending.pop(k) for k in keys]


def _delivered_before(s: Settings, group: str, limiter: FanoutLimiter) -> set[tuple[Any, str]]:
    """(alert_id, status) of every record before the group's committed offsets (blocking);
    replays them through ``limiter`` so a restart keeps this minute's counts."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(s.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    seen: set[tuple[Any, str]] = set()
    try:
        md = c.list_topics(s.topic_alerts, timeout=10).topics.get(s.topic_alerts)
        if md is None or not md.partitions:
            return seen
        tps = [TopicPartition(s.topic_alerts, p) for p in md.partitions]
        todo = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10) if tp.offset > 0}
        if not todo:
            return seen
        c.assign([TopicPartition(s.topic_alerts, p, 0) for p in todo])
        while todo:
            msgs = c.consume(500, 2.0)
            if not msgs:
                break
            for m in msgs:
                part, off, value = m.partition(), m.offset(), m.value()
                if m.error() is not None or part is None or off is None:
                    continue
                end = todo.get(part)
                if end is None:
                    continue
                if off < end and value is not None:
                    with contextlib.suppress(ValidationError):
                        a = Alert.from_json(value)
                        if a.dedup_key not in seen:
                            seen.add(a.dedup_key)
                            limiter.admit(a, replay=True)
                if off + 1 >= end:
                    del todo[part]
    finally:
        c.close()
    return seen


class Relay:
    """The relay's state: consumer, receiver, what was delivered, offsets waiting to commit."""

    def __init__(self, s: Settings, hook: Webhook, consumer: Any, stop: asyncio.Event) -> None:
        self.s, self.hook, self.c, self.stop = s, hook, consumer, stop
        self.stats = RelayStats()
        self.limiter = FanoutLimiter(s.alert_relay_max_per_minute)
        self.seen: set[tuple[Any, str]] = set()
        self.uncommitted: dict[Any, int] = {}

    async def handle(self, tp: Any, m: Any) -> bool:
        """Process one record; False when stopped before it was delivered (not committed)."""
        try:
            a = Alert.from_json(m.value)
        except ValidationError as exc:
            self.stats.unreadable += 1
            log.error("unreadable alert at %s@%d: %s", tp, m.offset, plain(str(exc), 500))
        else:
            if a.dedup_key in self.seen:
                self.stats.duplicates += 1
            elif not self.limiter.admit(a):
                self.stats.held += 1
                self.seen.add(a.dedup_key)
            elif await deliver(self.hook, a, self.stats, self.stop):
                self.stats.delivered += 1
                self.seen.add(a.dedup_key)
            elif self.stop.is_set():
                return False
        self.uncommitted[tp] = m.offset + 1
        if not self.limiter.pending:  # held records are committed once their summary is out
            await self.commit()
        return True

    async def summarise(self, idle: bool) -> bool:
        """Post the summaries that are due; False when stopped before one was delivered."""
        for group in self.limiter.due(idle):
            a = group.summary(self.limiter.cap)
            if await deliver(self.hook, a, self.stats, self.stop):
                self.stats.summaries += 1
                log.warning("held %d %s alerts of %s: summary sent", group.count, group.rule,
                            a.window_start.strftime("%Y-%m-%d %H:%M"))  # fmt: skip
            elif self.stop.is_set():
                return False
        if not self.limiter.pending:
            await self.commit()
        return True

    async def commit(self) -> None:
        from aiokafka import TopicPartition
        from aiokafka.structs import OffsetAndMetadata

        if self.uncommitted:
            offsets = {
                TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(off, "")
                for tp, off in self.uncommitted.items()
            }
            await self.c.commit(offsets)
            self.uncommitted.clear()

    async def run(self) -> None:
        while not self.stop.is_set():
            got = await self.c.getmany(timeout_ms=500, max_records=100)
            for tp, msgs in got.items():
                for m in msgs:
                    if not await self.handle(tp, m):
                        return
            if self.limiter.pending and not await self.summarise(idle=not got):
                return


async def relay(
    s: Settings,
    url: str,
    *,
    fmt: str = "json",
    group: str = "spendstream-alert-relay",
    stop: asyncio.Event | None = None,
) -> RelayStats:
    """Forward alerts to ``url`` until ``stop`` is set."""
    from aiokafka import AIOKafkaConsumer

    stop = stop or asyncio.Event()
    hook = Webhook(url, fmt, s)
    c = AIOKafkaConsumer(
        s.topic_alerts,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=3_600_000,  # a receiver down for long must not evict us
        **s.aiokafka(),
    )
    r = Relay(s, hook, c, stop)
    r.seen = await asyncio.to_thread(_delivered_before, s, group, r.limiter)
    log.info("relaying %s to %s (%s)", s.topic_alerts, redact_url(url), fmt)
    await c.start()
    try:
        await r.run()
    finally:
        await c.stop()
        await hook.close()
    return r.stats


async def tail(s: Settings, as_json: bool, from_beginning: bool, stop: asyncio.Event) -> None:
    """Print alerts as they arrive (no consumer group, nothing committed)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        s.topic_alerts,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **s.aiokafka(),
    )
    await c.start()
    try:
        while not stop.is_set():
            got = await c.getmany(timeout_ms=500)
            for msgs in got.values():
                for m in msgs:
                    try:
                        a = Alert.from_json(m.value)
                    except ValidationError:
                        print(f"(unreadable alert at offset {m.offset})", flush=True)
                        continue
                    print(a.to_json().decode() if as_json else line_of(a), flush=True)
    finally:
        await c.stop()
