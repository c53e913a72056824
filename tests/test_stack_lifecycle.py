"""A second, private stack: `up` → `status` → `down` through the CLI leaves no process behind,
and a fresh stack comes up with its own generated passwords (which no output shows)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from spendstream.config import Settings
from spendstream.stack.process import port_open
from spendstream.stack.services import Postgres

pytestmark = [pytest.mark.stack, pytest.mark.slow]

PORTS = {
    "KAFKA_PORT": 29192,
    "KAFKA_CONTROLLER_PORT": 29193,
    "POSTGRES_PORT": 25532,
    "REDIS_PORT": 26480,
    "PROMETHEUS_PORT": 29190,
}


@pytest.fixture(params=["open", "private"])
def stack_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A stack dir PostgreSQL's unprivileged user can reach ("open"), or one below a 0700
    folder ("private", like a checkout under /root) where the data dir moves to /var/tmp."""
    parent = Path(tempfile.mkdtemp(prefix="spendstream-stack-", dir="/tmp"))
    parent.chmod(0o755 if request.param == "open" else 0o700)
    d = parent / "stack"
    yield d
    pg = Postgres(Settings(stack_dir=d))
    shutil.rmtree(pg.root, ignore_errors=True)
    shutil.rmtree(parent, ignore_errors=True)


def processes_under(d: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(d) in text and state != "Z":
            found.append(text)
    return found


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_up_status_down_leaves_nothing_running(stack_dir: Path) -> None:
    env = {
        **os.environ,
        "SPENDSTREAM_STACK_DIR": str(stack_dir),
        "SPENDSTREAM_METRICS_PORT": "29464",
        **{f"SPENDSTREAM_{k}": str(v) for k, v in PORTS.items()},
    }
    try:
        up = cli(env, "stack", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        st = cli(env, "stack", "status")
        assert st.returncode == 0, st.stdout + st.stderr
        lines = {ln.split()[0]: ln.split() for ln in st.stdout.splitlines()[1:]}
        assert {k: v[1] for k, v in lines.items()} == {
            "postgres": "up",
            "redis": "up",
            "prometheus": "up",
            "kafka": "up",
        }
        assert lines["kafka"][2] == "127.0.0.1:29192"
        s = Settings(stack_dir=stack_dir)
        secrets = [s.stack_secret_path(n).read_text().strip() for n in ("postgres", "redis")]
        assert all(len(pw) == 32 and pw not in up.stdout + up.stderr + st.stdout for pw in secrets)
        pg = Postgres(s)
        assert len(processes_under(stack_dir) + processes_under(pg.root)) >= 4
        assert (pg.data / "PG_VERSION").exists()
        if os.geteuid() == 0 and stack_dir.parent.stat().st_mode & 0o077 == 0:
            assert pg.root != pg.dir and str(pg.root).startswith("/var/tmp/spendstream-pg-")
    finally:
        down = cli(env, "stack", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.strip() == "stopped: kafka, prometheus, redis, postgres"
    assert processes_under(stack_dir) == []
    assert processes_under(pg.root) == []
    assert not any(port_open(p) for p in PORTS.values())
    st = cli(env, "stack", "status")
    assert st.returncode == 3
    assert all(ln.split()[1] == "down" for ln in st.stdout.splitlines()[1:])
