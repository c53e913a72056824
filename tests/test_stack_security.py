"""The local stack is closed to the other local users: passwords everywhere, private files.

Most tests inspect the running stack from outside (file modes, the processes' umask, a
connection without or with the old password, a raw Redis PING, Prometheus' lifecycle API).
The last one upgrades a PostgreSQL made the way older spendstream made it (trust on the socket,
password ``spendstream``) and checks that `stack up` moves it to the generated password.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from spendstream import stack as local_stack
from spendstream.config import LEGACY_POSTGRES_PASSWORD, Settings
from spendstream.stack import credentials
from spendstream.stack.services import Postgres, all_services
from tests.books import on_pg

pytestmark = pytest.mark.stack

SERVICES = ("kafka", "postgres", "redis", "prometheus")


def pg_fetch(s: Settings, host: str, password: str | None, sql: str) -> list[asyncpg.Record]:
    """``sql``'s rows as ``s.postgres_user`` on ``host`` (a socket dir or an address)."""

    async def fetch(conn: Any) -> list[asyncpg.Record]:
        return list(await conn.fetch(sql))

    return on_pg(
        fetch,
        host=host,
        port=s.postgres_port,
        user=s.postgres_user,
        password=password,
        database="postgres",
        timeout=5,
    )


def open_to_others(root: Path) -> list[str]:
    """Paths under ``root`` that group or other may read, write or enter (symlinks aside)."""
    found = []
    for path in (root, *root.rglob("*")):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # a segment or WAL file the running service just removed
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            found.append(f"{path} {stat.filemode(st.st_mode)}")
    return found


def test_stack_passwords_are_random_files_only_the_owner_can_read(stack: Settings) -> None:
    folder = stack.stack_secret_path("postgres").parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    values = {}
    for name in credentials.NAMES:
        path = stack.stack_secret_path(name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        values[name] = path.read_text().strip()
        assert len(values[name]) == 32  # token_urlsafe(24)
    assert values["postgres"] != values["redis"]
    assert f":{values['postgres']}@" in stack.postgres_dsn
    assert f":{values['redis']}@" in stack.redis_url
    assert values["postgres"] not in repr(stack) and values["redis"] not in repr(stack)


def test_every_service_dir_and_file_is_owner_only(stack: Settings) -> None:
    pg = Postgres(stack)
    for root in {stack.stack_dir / name for name in SERVICES} | {pg.root}:
        assert open_to_others(root) == [], root
    assert any((stack.stack_dir / "kafka" / "data").rglob("*.log"))  # segments were checked


def test_service_processes_run_with_umask_077(stack: Settings) -> None:
    pids = {r.name: r.pid for r in local_stack.status(stack)}
    assert set(pids) == set(SERVICES)
    for name, pid in pids.items():
        umask = Path(f"/proc/{pid}/status").read_text().split("Umask:")[1].split()[0]
        assert umask == "0077", name


def test_postgres_wants_the_generated_password_on_socket_and_tcp(stack: Settings) -> None:
    socket_dir = str(Postgres(stack).root)
    assert stat.S_IMODE(Path(socket_dir).stat().st_mode) == 0o700
    for host in (socket_dir, "127.0.0.1"):
        for wrong in (None, LEGACY_POSTGRES_PASSWORD):
            with pytest.raises(asyncpg.InvalidPasswordError):
                pg_fetch(stack, host, wrong, "SELECT 1")
    password = stack.stack_secret("postgres")
    rules = pg_fetch(stack, socket_dir, password, "SELECT type, auth_method FROM pg_hba_file_rules")
    [(perms,)] = pg_fetch(stack, socket_dir, password, "SHOW unix_socket_permissions")
    assert sorted((r["type"], r["auth_method"]) for r in rules) == [
        ("host", "scram-sha-256"),
        ("host", "scram-sha-256"),
        ("local", "scram-sha-256"),
    ]
    assert perms == "0700"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_reaches_neither_socket_nor_segments_nor_passwords(
    stack: Settings,
) -> None:
    segment = next((stack.stack_dir / "kafka" / "data").rglob("*.log"))
    psql = ["psql", "-h", str(Postgres(stack).root), "-p", str(stack.postgres_port), "-w"]
    for argv in (
        [*psql, "-U", stack.postgres_user, "-d", "postgres", "-c", "SELECT 1"],
        ["cat", str(segment)],
        ["cat", str(stack.stack_secret_path("postgres"))],
        ["cat", str(stack.stack_dir / "redis" / "redis.conf")],
    ):
        res = subprocess.run(argv, user="nobody", capture_output=True, text=True, cwd="/")
        assert res.returncode != 0, argv
        assert "Permission denied" in res.stderr, res.stderr


def test_redis_refuses_commands_before_auth(stack: Settings) -> None:
    with socket.create_connection(("127.0.0.1", stack.redis_port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(100).startswith(b"-NOAUTH Authentication required")
    client = redis.Redis.from_url(stack.redis_url)
    try:
        assert client.config_get("requirepass")["requirepass"] == stack.stack_secret("redis")
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
    finally:
        client.close()
    conf = stack.stack_dir / "redis" / "redis.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600


def test_prometheus_lifecycle_api_is_off(stack: Settings) -> None:
    # /-/reload, not /-/quit: on a stack that still has the API, this test must not stop it
    request = urllib.request.Request(stack.prometheus_url + "/-/reload", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 403
    assert err.value.read() == b"Lifecycle API is not enabled."
    with urllib.request.urlopen(f"{stack.prometheus_url}/-/ready", timeout=5) as r:
        assert r.status == 200  # still running


def test_status_and_logs_never_show_a_password(stack: Settings) -> None:
    env = {**os.environ, "SPENDSTREAM_STACK_DIR": str(stack.stack_dir)}
    st = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "stack", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert st.returncode == 0, st.stderr
    logs = [stack.stack_dir / n / f"{n}.log" for n in SERVICES]
    logs.append(stack.stack_dir / "kafka" / "server.log")
    for name in credentials.NAMES:
        secret = stack.stack_secret(name)
        assert secret and secret not in st.stdout + st.stderr
        for log in logs:
            assert secret.encode() not in log.read_bytes(), log


def test_no_password_is_generated_while_a_service_of_the_stack_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stack made before passwords keeps its credentials while anything of it runs (other
    clients hold them): a one-service restart must not lock them out."""
    s = Settings(stack_dir=tmp_path / "stack")
    redis_dir = s.stack_dir / "redis"
    redis_dir.mkdir(parents=True)
    stand_in = subprocess.Popen(  # a "redis-server" whose command line names its dir
        [sys.executable, "-c", "import time; time.sleep(60)", str(redis_dir)]
    )
    try:
        (redis_dir / "redis.pid").write_text(f"{stand_in.pid}\n")
        assert [svc.name for svc in all_services(s) if svc.running_pid()] == ["redis"]
        with caplog.at_level(logging.WARNING, logger="spendstream.stack"):
            local_stack._passwords(s)
        assert not s.stack_secret_path("postgres").parent.exists()
        assert "stack down && spendstream stack up" in caplog.text
        assert f":{LEGACY_POSTGRES_PASSWORD}@" in s.postgres_dsn
    finally:
        stand_in.kill()
        stand_in.wait()
    local_stack._passwords(s)  # nothing runs now
    assert credentials.missing(s) == []


@pytest.fixture
def old_postgres() -> Iterator[Settings]:
    """A private stack dir holding a PostgreSQL exactly as older spendstream initialised it:
    trust on the socket, password ``spendstream``, 0755 dir, one table of data."""
    parent = Path(tempfile.mkdtemp(prefix="spendstream-upgrade-", dir="/tmp"))
    parent.chmod(0o755)
    s = Settings(stack_dir=parent / "stack", postgres_port=25632)
    pg = Postgres(s)
    pg.dir.mkdir(parents=True)
    pg._own(pg.dir)
    (pg.dir / "pwfile").write_text(LEGACY_POSTGRES_PASSWORD + "\n")
    pg._own(pg.dir / "pwfile")
    initdb = [str(pg.bindir() / "initdb"), "-D", str(pg.data), "-U", s.postgres_user]
    res = pg._as_user([*initdb, f"--pwfile={pg.dir / 'pwfile'}", "--auth-local=trust",
                       "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"])  # fmt: skip
    assert res.returncode == 0, res.stderr
    single = [str(pg.bindir() / "postgres"), "--single", "-D", str(pg.data), "postgres"]
    sql = "CREATE TABLE kept (x int)\nINSERT INTO kept VALUES (42)\n"
    res = subprocess.run(single, input=sql, capture_output=True, text=True, user=pg.user, cwd="/")
    assert res.returncode == 0 and "ERROR" not in res.stderr, res.stderr
    pg.dir.chmod(0o755)
    try:
        yield s
    finally:
        local_stack.down(s, ["postgres"])
        shutil.rmtree(pg.root, ignore_errors=True)
        shutil.rmtree(parent, ignore_errors=True)


def test_up_moves_an_old_trust_stack_to_a_generated_password_keeping_its_data(
    old_postgres: Settings,
) -> None:
    s = old_postgres
    assert "trust" in (Postgres(s).data / "pg_hba.conf").read_text()
    assert f":{LEGACY_POSTGRES_PASSWORD}@" in s.postgres_dsn
    local_stack.up(s, ["postgres"])
    generated = s.stack_secret_path("postgres").read_text().strip()
    assert f":{generated}@" in s.postgres_dsn  # the caller's settings follow, in place
    assert [tuple(r) for r in pg_fetch(s, "127.0.0.1", generated, "SELECT x FROM kept")] == [(42,)]
    methods = pg_fetch(
        s, "127.0.0.1", generated, "SELECT DISTINCT auth_method FROM pg_hba_file_rules"
    )
    assert [m["auth_method"] for m in methods] == ["scram-sha-256"]
    for host in (str(Postgres(s).root), "127.0.0.1"):
        with pytest.raises(asyncpg.InvalidPasswordError):
            pg_fetch(s, host, LEGACY_POSTGRES_PASSWORD, "SELECT 1")
    assert open_to_others(Postgres(s).dir) == []
    assert Settings(stack_dir=s.stack_dir, postgres_port=25632).postgres_dsn == s.postgres_dsn
