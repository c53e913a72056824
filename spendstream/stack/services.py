"""The four real services of the local stack, without Docker.

Each service knows its prerequisites, how to prepare its private data dir, how to start, and
what "ready" means for it: a produce/consume round trip for Kafka, ``SELECT 1`` for PostgreSQL,
``PING`` for Redis and ``/-/ready`` for Prometheus. Everything listens on loopback only, and
is closed to the other local users: each service's dir is 0700 (files 0600), PostgreSQL asks
for a password on its socket too, Redis has ``requirepass`` (passwords: credentials.py), and
Prometheus runs without its lifecycle API (``/-/quit`` was one unauthenticated POST away).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import subprocess
import urllib.request
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from string import Template

from ..config import LEGACY_POSTGRES_PASSWORD, Settings
from .credentials import scram_verifier
from .process import ManagedProcess, Prerequisite, StackError, port_open, restrict

log = logging.getLogger("spendstream.stack")

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"


def infra_file(*parts: str) -> Path:
    path = INFRA_DIR.joinpath(*parts)
    if not path.exists():
        raise StackError(
            f"{path} not found: `spendstream stack` runs from a source checkout of spendstream"
        )
    return path


def render(template: Path, dest: Path, **values: object) -> Path:
    """Fill ``${name}`` placeholders of an infra template and write it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(
        Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    )
    return dest


class Service(ABC):
    """One stack service; subclasses fill in the specifics."""

    name: str
    prerequisites: tuple[Prerequisite, ...] = ()

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.dir = settings.stack_dir / self.name
        self.proc = ManagedProcess(
            self.name, self.dir / f"{self.name}.pid", self.dir / f"{self.name}.log", str(self.dir)
        )

    @property
    @abstractmethod
    def port(self) -> int: ...

    def check_prerequisites(self) -> None:
        for p in self.prerequisites:
            p.check()

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Create data dirs and config files (idempotent); may download once."""

    def restrict(self) -> None:
        """Make the service's files its owner's alone (after `prepare`, before `launch`)."""
        restrict(self.dir)

    @abstractmethod
    def launch(self) -> None:
        """Spawn the server process (only called when it is not running)."""

    @abstractmethod
    def ready(self) -> bool:
        """One real round trip against the server."""

    def after_ready(self) -> None:  # noqa: B027 - optional hook
        """Provisioning once the server answers (topics, database)."""

    def running_pid(self) -> int | None:
        return self.proc.pid()

    def stop(self) -> bool:
        return self.proc.stop()


class Kafka(Service):
    """Apache Kafka in KRaft combined mode (broker + controller), jars from Maven Central."""

    name = "kafka"
    prerequisites = (
        Prerequisite("java", "apt-get install -y openjdk-17-jre-headless"),
        Prerequisite("mvn", "apt-get install -y maven"),
    )

    @property
    def port(self) -> int:
        return self.s.kafka_port

    @property
    def version(self) -> str:
        m = re.search(
            r"<kafka.version>([^<]+)</kafka.version>", infra_file("kafka", "pom.xml").read_text()
        )
        if m is None:
            raise StackError("infra/kafka/pom.xml has no <kafka.version>")
        return m.group(1)

    @property
    def libs(self) -> Path:
        return self.s.stack_dir / "cache" / f"kafka-{self.version}"

    def fetch_jars(self) -> Path:
        """Copy the pinned broker and its runtime jars from Maven into the cache, once."""
        if (self.libs / ".complete").exists():
            return self.libs
        tmp = self.libs.with_name(self.libs.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(infra_file("kafka", "pom.xml")),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise StackError(
                f"maven could not fetch the Kafka jars:\n{res.stdout[-2000:]}{res.stderr[-2000:]}"
            )
        (tmp / ".complete").write_text(self.version)
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        return self.libs

    def _java(self, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.s.kafka_heap}",
            f"-Xms{self.s.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            *args,
        ]

    def prepare(self) -> None:
        self.fetch_jars()
        data = self.dir / "data"
        render(
            infra_file("kafka", "server.properties"),
            self.dir / "server.properties",
            port=self.s.kafka_port,
            controller_port=self.s.kafka_controller_port,
            data_dir=data,
        )
        render(
            infra_file("kafka", "log4j2.properties"),
            self.dir / "log4j2.properties",
            log_file=self.dir / "server.log",
        )
        if not (data / "meta.properties").exists():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid: "-…" reads as a flag
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            res = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.dir / "server.properties"),
                ),
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise StackError(f"kafka storage format failed:\n{res.stdout}{res.stderr}")

    def launch(self) -> None:
        self.proc.start(
            self._java("kafka.Kafka", str(self.dir / "server.properties")), cwd=self.dir
        )

    def ready(self) -> bool:
        from .checks import kafka_round_trip

        return port_open(self.port) and kafka_round_trip(self.s, timeout=10.0)

    def after_ready(self) -> None:
        from ..topics import ensure_topics

        ensure_topics(self.s)


class Postgres(Service):
    """PostgreSQL from Debian's packages in a private data dir; never run as root."""

    name = "postgres"

    @property
    def port(self) -> int:
        return self.s.postgres_port

    @staticmethod
    def bindir() -> Path:
        versions = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"),
            key=lambda p: int(p.parent.parent.name),
        )
        if not versions:
            raise StackError(
                "PostgreSQL server not found; install it with: apt-get install -y postgresql"
            )
        return versions[-1].parent

    def check_prerequisites(self) -> None:
        self.bindir()

    @property
    def user(self) -> str | None:
        """The unprivileged account to run as when we are root (PostgreSQL refuses root)."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise StackError(
            "running as root but no 'postgres' user exists; apt-get install -y postgresql"
        )

    @property
    def root(self) -> Path:
        """Where the data dir and socket live: the stack dir, or a private dir under /var/tmp
        when the unprivileged user cannot reach the stack dir (e.g. a checkout under /root)."""
        return self._fallback if self._fallback.exists() else self.dir

    @property
    def _fallback(self) -> Path:
        return Path("/var/tmp") / f"spendstream-pg-{hashlib.sha1(bytes(self.dir)).hexdigest()[:12]}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _sync_marker(self) -> ManagedProcess:
        """The postmaster's command line names its data dir, which may have moved to /var/tmp."""
        self.proc.marker = str(self.data)
        return self.proc

    def running_pid(self) -> int | None:
        return self._sync_marker().pid()

    def _as_user(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, user=self.user, cwd="/")

    def _own(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @property
    def password(self) -> str:
        return self.s.stack_secret("postgres") or LEGACY_POSTGRES_PASSWORD

    def prepare(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._own(self.dir)
        if self.user is not None and self._as_user(["test", "-w", str(self.root)]).returncode != 0:
            self._fallback.mkdir(mode=0o700, exist_ok=True)
            self._own(self._fallback)
        if (self.data / "PG_VERSION").exists():
            self._set_password()  # the configured one, also on a stack made with another
        else:
            self._initdb()
        hba = render(infra_file("postgres", "pg_hba.conf"), self.data / "pg_hba.conf")
        self._own(hba)

    def restrict(self) -> None:
        restrict(self.dir)
        restrict(self.root)  # the socket's dir, and the data dir when it lives in /var/tmp

    def _set_password(self) -> None:
        """ALTER ROLE in single-user mode, before the server starts: no socket, no trust.

        Only the SCRAM verifier goes in, so the password is in no PostgreSQL log either."""
        role = self.s.postgres_user.replace('"', '""')
        sql = f"ALTER ROLE \"{role}\" PASSWORD '{scram_verifier(self.password)}'\n"
        argv = [str(self.bindir() / "postgres"), "--single", "-D", str(self.data), "postgres"]
        res = subprocess.run(
            argv, input=sql, capture_output=True, text=True, user=self.user, cwd="/"
        )
        if res.returncode != 0 or "ERROR:" in res.stdout + res.stderr:
            raise StackError(f"could not set the role's password:\n{res.stdout}{res.stderr}")

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self._own(pwfile)
        res = self._as_user(
            [
                str(self.bindir() / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.s.postgres_user,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        pwfile.unlink()
        if res.returncode != 0:
            raise StackError(f"initdb failed:\n{res.stdout}{res.stderr}")

    def launch(self) -> None:
        self._sync_marker().start(
            [
                str(self.bindir() / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                "-c",
                "unix_socket_permissions=0700",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
            ],
            user=self.user,
            cwd=Path("/"),
        )

    def stop(self) -> bool:
        import signal

        return self._sync_marker().stop(
            signal.SIGINT
        )  # "fast" shutdown: abort sessions, checkpoint

    def ready(self) -> bool:
        from .checks import postgres_select_one

        return port_open(self.port) and postgres_select_one(self.s, database="postgres")

    def after_ready(self) -> None:
        import asyncio

        from ..sinks.postgres import migrate_db
        from .checks import postgres_ensure_database

        postgres_ensure_database(self.s)
        applied = asyncio.run(migrate_db(self.s))  # `spendstream db migrate`, as the issue asks
        if applied:
            log.info("postgres: applied migrations %s", ", ".join(applied))


class Redis(Service):
    """Redis from Debian's packages, loopback only, no persistence (live spend is derived)."""

    name = "redis"
    prerequisites = (Prerequisite("redis-server", "apt-get install -y redis-server"),)

    @property
    def port(self) -> int:
        return self.s.redis_port

    def prepare(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Redis rewrites its process title; keeping the config path in it lets the pid check
        # tell our server from any other redis-server.
        conf = (
            f'port {self.port}\nbind 127.0.0.1\nprotected-mode yes\nsave ""\nappendonly no\n'
            f"dir {self.dir}\nmaxmemory-policy noeviction\n"
            'proc-title-template "{title} {listen-addr} {config-file}"\n'
        )
        password = self.s.stack_secret("redis")
        if password:  # none: a stack made before passwords, until its next full restart
            conf += f"requirepass {json.dumps(password)}\n"  # a quoted string Redis reads
        fd = os.open(self.dir / "redis.conf", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(conf)

    def launch(self) -> None:
        self.proc.start(["redis-server", str(self.dir / "redis.conf")], cwd=self.dir)

    def ready(self) -> bool:
        from .checks import redis_ping

        return port_open(self.port) and redis_ping(self.s)


class Prometheus(Service):
    """Prometheus from Debian's packages scraping the workers' metrics ports."""

    name = "prometheus"
    prerequisites = (Prerequisite("prometheus", "apt-get install -y prometheus"),)

    @property
    def port(self) -> int:
        return self.s.prometheus_port

    def prepare(self) -> None:
        targets = self.dir / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        render(
            infra_file("prometheus", "prometheus.yml"),
            self.dir / "prometheus.yml",
            rules_dir=infra_file("prometheus", "rules"),
            prometheus_port=self.port,
            targets_dir=targets,
        )
        ports = range(self.s.metrics_port, self.s.metrics_port + self.s.metrics_targets)
        (targets / "workers.json").write_text(
            json.dumps(
                [{"targets": [f"127.0.0.1:{p}" for p in ports], "labels": {"stack": "local"}}],
                indent=2,
            )
        )

    def launch(self) -> None:
        self.proc.start(
            [
                "prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=15d",
            ],
            cwd=self.dir,
        )

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        with urllib.request.urlopen(f"{self.s.prometheus_url}/-/ready", timeout=2) as r:
            return bool(r.status == 200)


def all_services(settings: Settings) -> list[Service]:
    """In start order; `down` stops them in reverse."""
    return [Postgres(settings), Redis(settings), Prometheus(settings), Kafka(settings)]
