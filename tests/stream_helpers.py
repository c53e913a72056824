"""Running real workers against a private set of topics, and reading their output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
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
        stop_processes(procs)


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


def wait_for(
    cond: Callable[[], Any],
    timeout: float,
    what: str,
    every: Callable[[], Any] | None = None,
    interval: float = 0.2,
) -> None:
    """Until ``cond()`` is true, failing the test after ``timeout`` seconds.

    Between checks it sleeps ``interval`` seconds, unless ``every`` is given: then ``every()``
    runs before each check and is the wait (a blocking poll, e.g. ``reader.poll(0.5)``). A check
    that opens a connection or a consumer must not run back to back: on 2 cores a spinning
    check steals the CPU of the workers it waits for."""
    deadline = time.monotonic() + timeout
    while True:
        if every is not None:
            every()
        if cond():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if every is None:
            time.sleep(interval)


async def wait_for_async(
    cond: Callable[[], Awaitable[bool]],
    timeout: float,  # noqa: ASYNC109 - wait_for's signature
    what: str,
    interval: float = 0.05,
) -> None:
    """:func:`wait_for` inside an event loop: awaits ``cond()``, ``asyncio.sleep`` between."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def stop_processes(
    procs: list[subprocess.Popen[bytes]], timeout: float = 20, group: bool = True
) -> list[int]:
    """SIGTERM every one (to its process group when ``group``: started in a session of its
    own), wait until ``timeout`` s have passed for all, then SIGKILL those left; the exit codes.
    All are signalled first so they stop in parallel, and each gets one SIGTERM only (a second
    one may make a worker skip its clean shutdown)."""

    def signal_it(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)

    for proc in procs:
        signal_it(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_it(proc, signal.SIGKILL)
            proc.wait()
    return [proc.returncode for proc in procs]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20, group: bool = True) -> int:
    """:func:`stop_processes` of one process; its exit code."""
    return stop_processes([proc], timeout, group)[0]


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
        stop_process(proc)
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


def wait_windows(reader: TopicReader, n: int, timeout: float) -> None:
    """Poll the windows topic until it holds at least ``n`` distinct windows."""
    wait_for(
        lambda: len(latest_windows(reader)) >= n,
        timeout,
        f"{n} windows",
        every=lambda: reader.poll(0.5),
    )
