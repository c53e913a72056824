"""The alert relay on the real broker: each alert of a scripted incident reaches a local HTTP
receiver exactly once — through receiver errors, repeats on the topic and a relay restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from spendstream.alerts import Alert, alert_id
from spendstream.config import Settings
from spendstream.probes import group_lag
from spendstream.sinks.alert_relay import line_of, payload
from tests.stream_helpers import ROOT, private_settings, stop_process, wait_for

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)


def alert(scope: str, status: str, minute: int) -> Alert:
    start = T0 + timedelta(minutes=minute)
    return Alert(
        alert_id=alert_id("spend", scope, 0),
        rule="spend_spike",
        status=status,
        severity="critical",
        scope=scope,
        window_start=start,
        window_end=start + timedelta(minutes=1),
        first_seen=T0,
        observed_usd=Decimal("12.5"),
        baseline_usd=Decimal("1.25"),
        ratio=10.0,
        message=f"{scope} {status}",
    )


class Receiver:
    """A webhook that fails its first ``fail_first`` requests with 503."""

    def __init__(self, fail_first: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.fail_left = fail_first
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    failing = outer.fail_left > 0
                    outer.fail_left -= 1
                    if not failing:
                        outer.got.append((self.headers["Idempotency-Key"], body))
                self.send_response(503 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def start_relay(env: dict[str, str], url: str, log: Path) -> subprocess.Popen[bytes]:
    """The relay CLI given the URL in a 0600 file (not in argv, where ``ps`` shows it)."""
    hook_file = log.with_name("webhook-url")
    hook_file.write_text(url + "\n")
    hook_file.chmod(0o600)
    return subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "alerts", "relay", "--webhook-file",
         str(hook_file), "--group", f"relay-{env['SPENDSTREAM_WORKER_APP_ID']}"],
        env={**os.environ, **env}, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


def stop(p: subprocess.Popen[bytes]) -> None:
    """A clean stop: SIGTERM (the relay is not a group leader), exit 0 within 30 s."""
    assert stop_process(p, 30, group=False) == 0


@pytest.mark.stack
def test_each_alert_reaches_the_webhook_once_across_a_restart(
    stack: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    s, env = private_settings(stack, "relay")
    prod = Producer(s.librdkafka())

    def publish(alerts: list[Alert]) -> None:
        for a in alerts:
            prod.produce(s.topic_alerts, a.to_json(), a.scope.encode())
        assert prod.flush(10) == 0

    scopes = [f"endpoint:svc{i}/op" for i in range(3)]
    first = [alert(scopes[0], "firing", 0), alert(scopes[1], "firing", 1)]
    first.append(first[0])  # the worker's at-least-once repeat
    publish(first)
    log = tmp_path / "relay.log"
    relay = start_relay(env, receiver.url, log)
    wait_for(lambda: len(receiver.got) >= 2, 60, "two deliveries")
    wait_for(lambda: group_lag(s, f"relay-{s.worker_app_id}", s.topic_alerts) == 0, 60, "commit")
    stop(relay)

    publish(
        [
            alert(scopes[0], "resolved", 5),
            alert(scopes[1], "firing", 1),  # a repeat from before the restart
            alert(scopes[1], "resolved", 6),
            alert(scopes[2], "firing", 7),
            alert(scopes[2], "resolved", 9),
        ]
    )
    relay = subprocess.Popen(  # this time from the environment
        [sys.executable, "-m", "spendstream.cli", "alerts", "relay",
         "--group", f"relay-{env['SPENDSTREAM_WORKER_APP_ID']}"],
        env={**os.environ, **env, "SPENDSTREAM_ALERT_WEBHOOK_URL": receiver.url},
        stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    wait_for(lambda: len(receiver.got) >= 6, 60, "six deliveries")
    wait_for(lambda: group_lag(s, f"relay-{s.worker_app_id}", s.topic_alerts) == 0, 60, "commit")
    stop(relay)

    keys = [k for k, _ in receiver.got]
    expected = {
        f"{alert_id('spend', sc, 0)}:{st}" for sc in scopes for st in ("firing", "resolved")
    }
    assert sorted(keys) == sorted(expected)  # each exactly once
    bodies = [Alert.from_json(b) for _, b in receiver.got]
    assert {f"{a.alert_id}:{a.status}" for a in bodies} == expected
    logged = log.read_bytes()
    assert b"failed (HTTP 503); retrying" in logged
    host = receiver.url.removesuffix("/hook").encode()
    assert logged.count(b"to " + host + "/… (json)".encode()) == 2  # started twice
    assert b"/hook" not in logged  # the path (a Slack webhook's secret) is never logged


def test_slack_payload_is_one_text_line() -> None:
    a = alert("endpoint:svc/op", "firing", 0)
    body = json.loads(payload(a, "slack"))
    assert body["text"] == line_of(a)  # nothing to escape in this one
    assert "[FIRING] critical spend_spike endpoint:svc/op window 2026-03-02 10:00Z" in body["text"]
    assert json.loads(payload(a, "json"))["alert_id"] == str(a.alert_id)
