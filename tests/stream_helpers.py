"""Running real workers against a private set of topics, and reading their output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from spendstream.alerts import Alert
from spendstream.config import Settings
from spendstream.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]


def private_settings(base: Settings, name: str, **extra: Any) -> tuple[Settings, dict[str, str]]:
    """Settings with fresh topics (created) and worker group; also as env for subprocesses."""
    s, env = base.isolated(f"t-{name}-{uuid.uuid4().hex[:8]}", **extra)
    ensure_topics(s)
    return s, env


class Workers(list[subprocess.Popen[bytes]]):
    """Running worker processes; ``start()`` adds one."""

    start: Any


@contextmanager
def workers(
    env: dict[str, str], n: int = 1, log_dir: Path | None = None, loglevel: str = "info"
) -> Iterator[Workers]:
    procs = Workers()

    def start(i: int) -> subprocess.Popen[bytes]:
        log = open(  # noqa: SIM115 - handed to the child process, closed with it
            (log_dir or Path("/tmp"))
            / f"worker-{env['SPENDSTREAM_WORKER_APP_ID']}-{i}-{len(procs)}.log",
            "wb",
        )
        return subprocess.Popen(
            [sys.executable, "-m", "spendstream.cli", "worker", "--loglevel", loglevel],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    procs.extend(start(i) for i in range(n))
    procs.start = start
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@dataclass
class TopicReader:
    """Incrementally reads a topic from the start (one consumer, kept between polls)."""

    s: Settings
    topic: str
    records: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.c = Consumer(
            self.s.librdkafka(
                **{
                    "group.id": f"r-{uuid.uuid4().hex}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
        )
        self.c.subscribe([self.topic])

    def poll(self, seconds: float = 0.5) -> int:
        got = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.c.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            self.records.append(msg)
            got += 1
        return got

    def close(self) -> None:
        self.c.close()


def wait_for(check: Any, deadline_s: float, what: str, every: Any = None) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if every is not None:
            every()
        if check():
            return
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")


def alerts_of(reader: TopicReader) -> list[Alert]:
    return [Alert.from_json(m.value()) for m in reader.records]


def latest_windows(reader: TopicReader) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in reader.records:
        out[m.key().decode()] = json.loads(m.value())
    return out


@contextmanager
def sink_process(env: dict[str, str], log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`spendstream sink postgres` as a subprocess (stopped with SIGTERM)."""
    log = open(log_dir / f"sink-{env['SPENDSTREAM_WORKER_APP_ID']}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "sink", "postgres",
         "--group", f"sink-{env['SPENDSTREAM_WORKER_APP_ID']}"],
        env={**os.environ, **env, "SPENDSTREAM_LOG_LEVEL": "INFO"},
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def start_replay(env: dict[str, str], path: Path, *speed: str) -> subprocess.Popen[bytes]:
    """`spendstream replay FILE SPEED…` in the background (e.g. ``"--speed", "120"``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "replay", str(path), *speed, "--no-progress"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def replay(env: dict[str, str], path: Path, *speed: str, timeout: float = 600) -> None:
    """Replay ``path`` to completion (default ``--max-speed``); fails the test on an error."""
    proc = start_replay(env, path, *(speed or ("--max-speed",)))
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")


def wait_windows(reader: TopicReader, n: int, deadline_s: float) -> None:
    """Poll the windows topic until it holds at least ``n`` distinct windows."""
    wait_for(
        lambda: len(latest_windows(reader)) >= n,
        deadline_s,
        f"{n} windows",
        every=lambda: reader.poll(0.5),
    )
