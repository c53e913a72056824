"""The alert relay against hostile names and hostile receivers, on the real broker.

A receiver that redirects, answers garbage, sends a 100 KiB header or trickles its answer must
neither crash nor hang the relay: each outcome is counted, refusals are given up after a few
attempts, and later alerts still arrive. Names are escaped for Slack, and a flood of distinct
alerts of one rule in one minute becomes N posts plus one summary."""

from __future__ import annotations

import asyncio
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Producer

from spendstream.alerts import Alert
from spendstream.config import Settings
from spendstream.probes import group_lag
from spendstream.sinks.alert_relay import RelayStats, line_of, payload, redact_url, relay
from tests.stream_helpers import private_settings
from tests.test_alert_relay import Receiver, alert

OK = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"


class ScriptedReceiver:
    """Answers the n-th connection with ``script[n]`` (then 204s); records each request's key.

    A script step is raw bytes to send and close, ``"disconnect"`` (close without a word) or
    ``"trickle"`` (a valid status line, one byte every 0.1 s, for 20 s) or ``"endless"``."""

    def __init__(self, script: list[bytes | str]) -> None:
        self.keys: list[str] = []
        self.script = list(script)
        lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                headers: dict[str, str] = {}
                while (line := self.rfile.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.rfile.read(int(headers.get("content-length", "0")))
                with lock:
                    outer.keys.append(headers.get("idempotency-key", ""))
                    step = outer.script.pop(0) if outer.script else OK
                try:
                    if step == "endless":  # a 503 whose body never ends, sent fast
                        self.wfile.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 999999999\r\n\r\n")
                        while True:
                            self.wfile.write(b"x" * 65536)
                    elif step == "trickle":
                        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 200:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.1)
                    elif isinstance(step, bytes):
                        self.wfile.write(step)
                except OSError:
                    pass  # the relay gave up on us: what the test wants

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRET-TOKEN"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trap() -> Iterator[Receiver]:
    r = Receiver(fail_first=0)
    yield r
    r.close()


def publish(s: Settings, alerts: list[Alert]) -> None:
    prod = Producer(s.librdkafka())
    for a in alerts:  # one partition: the relay's order is the test's order
        prod.produce(s.topic_alerts, a.to_json(), a.scope.encode(), partition=0)
    assert prod.flush(10) == 0


def run_relay(s: Settings, url: str, done: Callable[[], bool], fmt: str = "json") -> RelayStats:
    """The relay in this process until ``done()``; fails if it crashes or takes over 60 s."""

    async def go() -> RelayStats:
        stop = asyncio.Event()
        task = asyncio.create_task(relay(s, url, fmt=fmt, group=f"relay-{s.worker_app_id}",
                                         stop=stop))  # fmt: skip
        end = time.monotonic() + 60
        while not done():
            if task.done():
                return task.result()  # raises what crashed it
            assert time.monotonic() < end, "relay made no progress in 60 s"
            await asyncio.sleep(0.05)
        stop.set()
        return await asyncio.wait_for(task, 30)

    return asyncio.run(go())


FAST = {
    "alert_relay_deadline_s": 1.0,
    "alert_relay_retry_initial_s": 0.05,
    "alert_relay_retry_max_s": 0.2,
    "alert_relay_refused_attempts": 3,
}


@pytest.mark.stack
def test_hostile_receiver_answers_are_counted_retried_or_rejected_and_later_alerts_arrive(
    stack: Settings, trap: Receiver
) -> None:
    s, _ = private_settings(stack, "hostile-relay", **FAST)
    redirect = f"Location: {trap.url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    hook = ScriptedReceiver(
        [
            "disconnect",
            b"HTTX/9 two hundred\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\nX-Big: " + b"a" * 102_400 + b"\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 1_048_576 + b"\r\nContent-Length: 0\r\n\r\n",
            "endless",  # read 1 KiB of it: a 503, not a deadline
            "trickle",
            OK,  # alert 1 delivered on its 7th attempt
            *[b"HTTP/1.1 302 Found\r\n" + redirect] * 3,  # alert 2 rejected
            *[b"HTTP/1.1 307 Temporary Redirect\r\n" + redirect] * 3,  # alert 3 rejected
        ]
    )
    try:
        alerts = [alert(f"endpoint:svc{i}/op", "firing", i) for i in range(4)]
        keys = [f"{a.alert_id}:{a.status}" for a in alerts]
        publish(s, alerts)
        started = time.monotonic()
        st = run_relay(s, hook.url, lambda: keys[3] in hook.keys)
        took = time.monotonic() - started
    finally:
        hook.close()
    assert hook.keys == [keys[0]] * 7 + [keys[1]] * 3 + [keys[2]] * 3 + [keys[3]]
    assert trap.got == []  # no redirect followed, as GET or as POST
    assert (st.delivered, st.rejected, st.redirects, st.retries) == (2, 2, 6, 10)
    assert (st.timeouts, st.transport_errors, st.server_errors, st.refused) == (1, 3, 2, 0)
    assert took < 30  # the trickle cost one 1-s deadline, not its 20 s
    assert group_lag(s, f"relay-{s.worker_app_id}", s.topic_alerts) == 0


def unknown(scope: str, status: str, minute: int) -> Alert:
    return alert(scope, status, minute).model_copy(update={"rule": "price_unknown"})


@pytest.mark.stack
def test_a_flood_of_one_rule_in_one_minute_is_twenty_posts_and_one_summary(
    stack: Settings,
) -> None:
    s, _ = private_settings(stack, "flood-relay", alert_relay_max_per_minute=20, **FAST)
    flood = [unknown(f"model:unknown-{i:03d}", "firing", 0) for i in range(300)]
    later = [
        unknown("model:next-minute", "firing", 1),  # another minute: its own budget
        unknown("model:unknown-000", "resolved", 3),  # its firing was posted: posted
        unknown("model:unknown-299", "resolved", 3),  # its firing was held: held
    ]
    publish(s, flood + later)
    got = Receiver(fail_first=0)
    try:
        group = f"relay-{s.worker_app_id}"
        st = run_relay(
            s, got.url, lambda: len(got.got) >= 24 and group_lag(s, group, s.topic_alerts) == 0
        )
    finally:
        got.close()
    bodies = [Alert.from_json(b) for _, b in got.got]
    individual = [(a.scope, a.status) for a in bodies if "relay_summary" not in a.details]
    summaries = [a for a in bodies if "relay_summary" in a.details]
    assert individual == [(f"model:unknown-{i:03d}", "firing") for i in range(20)] + [
        ("model:next-minute", "firing"),
        ("model:unknown-000", "resolved"),
    ]
    assert [(a.details["held"], a.details["held_resolved"]) for a in summaries] == [
        ("280", "0"),
        ("1", "1"),
    ]
    first = summaries[0]
    assert first.rule == "price_unknown" and first.window_start == flood[0].window_start
    assert first.message.startswith("and 280 more price_unknown alerts in this minute")
    assert "model:unknown-020, model:unknown-021" in first.message
    assert first.observed_usd == sum((a.observed_usd for a in flood[20:]), start=0)
    assert (st.delivered, st.held, st.summaries, st.rejected) == (22, 281, 2, 0)


HOSTILE = "model:<!channel> <https://evil.example|click> @here & *b*\x1b[31m\u202eX\ny"


def test_slack_text_escapes_links_mentions_and_control_characters() -> None:
    a = alert(HOSTILE, "firing", 0).model_copy(update={"message": "hi @everyone <@U123>"})
    body = json.loads(payload(a, "slack"))
    assert body == {
        "text": "[FIRING] critical spend_spike model:&lt;!channel&gt; &lt;https://evil.example"
        "|click&gt; @\u200bhere &amp; *b*[31mX y window 2026-03-02 10:00Z: $12.5 vs $1.25 "
        "×10.0 — hi @\u200beveryone &lt;@U123&gt;",
        "mrkdwn": False,
        "unfurl_links": False,
        "unfurl_media": False,
    }


def test_json_payload_keeps_hostile_names_as_exact_strings_and_tail_lines_are_plain() -> None:
    a = alert(HOSTILE, "firing", 0)
    assert json.loads(payload(a, "json"))["scope"] == HOSTILE
    assert "\x1b" not in line_of(a) and "\u202e" not in line_of(a) and "\n" not in line_of(a)
    assert len(line_of(alert("model:" + "m" * 100_000, "firing", 0))) == 3000


def test_logged_webhook_urls_keep_scheme_and_host_only() -> None:
    assert redact_url("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/…"
    assert redact_url("http://user:pw@127.0.0.1:8080/?token=abc") == "http://127.0.0.1:8080/…"
    assert redact_url("https://example.com") == "https://example.com"
    assert redact_url("/services/T0/B0/XXXX") == "(relative URL)"


@pytest.mark.stack
def test_a_restarted_relay_remembers_how_many_of_this_minute_it_already_posted(
    stack: Settings,
) -> None:
    s, _ = private_settings(stack, "flood-restart", alert_relay_max_per_minute=20, **FAST)
    group = f"relay-{s.worker_app_id}"
    got = Receiver(fail_first=0)
    try:
        publish(s, [unknown(f"model:a-{i:02d}", "firing", 0) for i in range(25)])
        run_relay(
            s, got.url, lambda: len(got.got) >= 21 and group_lag(s, group, s.topic_alerts) == 0
        )
        publish(s, [unknown(f"model:b-{i:02d}", "firing", 0) for i in range(5)])
        st = run_relay(
            s, got.url, lambda: len(got.got) >= 22 and group_lag(s, group, s.topic_alerts) == 0
        )
    finally:
        got.close()
    bodies = [Alert.from_json(b) for _, b in got.got]
    assert [a.details.get("held") for a in bodies] == [None] * 20 + ["5", "5"]
    assert bodies[-1].message.startswith("and 5 more price_unknown alerts in this minute")
    assert "model:b-00" in bodies[-1].message
    assert (st.delivered, st.held, st.summaries) == (0, 5, 1)
