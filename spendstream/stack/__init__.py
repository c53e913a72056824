"""`spendstream stack up | down | status`: the real local stack, no Docker.

Kafka (KRaft, jars from Maven Central), PostgreSQL, Redis and Prometheus (Debian packages), each
in a private (0700) dir under ``SPENDSTREAM_STACK_DIR``, on loopback and non-default ports, with
passwords generated per stack (credentials.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import Settings
from . import credentials
from .process import StackError, port_open, wait_until
from .services import Service, all_services

__all__ = ["ServiceStatus", "StackError", "down", "status", "up"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    port: int
    pid: int | None
    ready: bool

    @property
    def state(self) -> str:
        if self.ready:
            return "up"
        return "starting" if self.pid else "down"


def _select(settings: Settings, names: Iterable[str] | None) -> list[Service]:
    services = all_services(settings)
    if names is None:
        return services
    wanted = set(names)
    unknown = wanted - {s.name for s in services}
    if unknown:
        raise StackError(f"unknown service(s): {', '.join(sorted(unknown))}")
    return [s for s in services if s.name in wanted]


def _ready(svc: Service) -> bool:
    try:
        return svc.ready()
    except Exception:
        return False


def up(settings: Settings, names: Iterable[str] | None = None) -> list[ServiceStatus]:
    """Start what is not running, wait for real readiness, provision; idempotent."""
    services = _select(settings, names)
    for svc in services:
        svc.check_prerequisites()
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    _passwords(settings)
    started: list[Service] = []
    for svc in services:
        if svc.running_pid() is not None:
            continue
        if port_open(svc.port):
            raise StackError(
                f"{svc.name}: port {svc.port} is taken by a process this stack did not start; "
                f"stop it or set SPENDSTREAM_{svc.name.upper()}_PORT"
            )
        svc.prepare()
        svc.restrict()
        log.info("starting %s on 127.0.0.1:%d", svc.name, svc.port)
        svc.launch()
        started.append(svc)
    for svc in services:
        t0 = time.monotonic()

        def check(svc: Service = svc) -> bool:
            if svc.proc.exited_early():
                raise StackError(
                    f"{svc.name} exited during start-up; log {svc.proc.logfile}:\n{svc.proc.tail()}"
                )
            return _ready(svc)

        try:
            wait_until(check, settings.stack_timeout_s, f"{svc.name} to be ready", interval=0.25)
        except StackError as exc:
            raise StackError(
                f"{exc}\nlast log lines of {svc.proc.logfile}:\n{svc.proc.tail()}"
            ) from None
        svc.after_ready()
        if svc in started:
            log.info("%s ready in %.1fs", svc.name, time.monotonic() - t0)
    return status(settings, names)


def _passwords(settings: Settings) -> None:
    """Generate the stack's missing passwords, but only while none of its services runs: a
    running one (a stack made before passwords) has clients holding the old credentials."""
    lacking = credentials.missing(settings)
    if not lacking:
        return
    if not any(svc.running_pid() for svc in all_services(settings)):
        made = credentials.ensure(settings)
        where = settings.stack_secret_path("postgres").parent
        log.info("generated the stack's %s password(s) in %s", ", ".join(made), where)
        return
    log.warning(
        "this stack runs without generated %s password(s) (it was made by an older "
        "spendstream): `spendstream stack down && spendstream stack up` generates them",
        "/".join(lacking),
    )


def down(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Stop services in reverse start order; returns the names that were running."""
    stopped = []
    for svc in reversed(_select(settings, names)):
        if svc.stop():
            stopped.append(svc.name)
    return stopped


def status(settings: Settings, names: Iterable[str] | None = None) -> list[ServiceStatus]:
    out = []
    for svc in _select(settings, names):
        pid = svc.running_pid()
        out.append(ServiceStatus(svc.name, svc.port, pid, pid is not None and _ready(svc)))
    return out
