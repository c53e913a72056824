"""`spendstream ingest-key add` and `spendstream ingest` as a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from spendstream.config import Settings
from spendstream.ingest.keys import hash_key, parse_keys
from tests.stream_helpers import ROOT, TopicReader, private_settings
from tests.test_ingest_server import _good_body, raw_events

pytestmark = pytest.mark.stack


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args],
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_key_add_then_serve(stack: Settings, tmp_path: Path) -> None:
    keys = tmp_path / "keys.jsonl"
    key = _cli("ingest-key", "add", "--keys-file", str(keys), "--service", "support-bot",
               "--team", "cs").stdout.strip()  # fmt: skip
    assert key.startswith("ssk_") and key not in keys.read_text()
    binding = parse_keys(keys.read_text())[hash_key(key)]
    assert (binding.service, binding.team) == ("support-bot", "cs")
    assert oct(keys.stat().st_mode & 0o777) == "0o600"

    s, env = private_settings(stack, "ingest-cli")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "ingest", "--port", str(port),
         "--keys-file", str(keys), "--endpoint-attr", "spendstream.endpoint"],
        env={**os.environ, **env}, cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    reader = TopicReader(s, s.topic_raw)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gateway did not start within 30 s"
                time.sleep(0.05)
        r = httpx.post(
            url + "/v1/traces",
            content=_good_body(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        assert r.status_code == 200
        os.killpg(proc.pid, signal.SIGTERM)  # the flush at shutdown delivers what was accepted
        assert proc.wait(timeout=30) == 0
        (ev,) = raw_events(reader, 1)
        # --endpoint-attr replaced the default list: http.route is no longer read
        assert (ev.service, ev.team, ev.endpoint) == ("support-bot", "cs", "otel")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.close()
