"""Background processes of the local stack: spawn detached, track by pid file, stop for sure.

Each service runs in its own session (process group), so stopping it also stops anything it
forked, and `stack down` leaves no process behind. Each runs with umask 077 and logs to a 0600
file: Kafka's segments and the logs hold prompt text, which other local users must not read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A service of the local stack could not be prepared, started or reached."""


@dataclass(frozen=True, slots=True)
class Prerequisite:
    """A program a service needs, and the command that installs it on Debian."""

    program: str
    install: str

    def check(self) -> str:
        found = shutil.which(self.program)
        if found is None:
            raise StackError(f"'{self.program}' not found; install it with: {self.install}")
        return found


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """True if ``pid`` runs (and, given ``marker``, its command line contains it).

    The marker guards against a recycled pid after a reboot or a crash.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
        if marker is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            return marker.encode() in cmdline
    except (FileNotFoundError, IndexError):
        return False
    return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check`` until it is true or ``timeout`` seconds pass (then raise)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise StackError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last}" if last else "")
    )


@dataclass
class ManagedProcess:
    """A long-running program owned by the stack, identified by its pid file."""

    name: str
    pidfile: Path
    logfile: Path
    marker: str
    """A string unique to this instance's command line (e.g. its config path)."""

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid, self.marker) else None

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> int:
        """Spawn ``argv`` detached (own session, umask 077), output appended to the log file."""
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # a log made by an older stack was 0644
        with os.fdopen(fd, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                umask=0o077,
            )
        fd = os.open(self.pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{proc.pid}\n")
        return proc.pid

    def exited_early(self) -> bool:
        """True when the pid file names a process that is gone: it failed at start-up."""
        return self.pidfile.exists() and self.pid() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> bool:
        """Signal the leader, wait for its whole group, escalate to SIGKILL; True if one ran.

        Only the leader gets ``sig`` (PostgreSQL's children must not see the postmaster's
        shutdown signal); anything of the group still alive after ``timeout`` is killed.
        """
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.1)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _group_alive(pid):
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 20) -> str:
        """Last lines of the log, for error messages."""
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def restrict(root: Path) -> None:
    """Take group and other permissions off ``root`` and everything below it (symlinks left
    alone): files an older stack wrote with umask 022, and config files rendered here."""
    for path in (root, *root.rglob("*")):
        try:
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                path.chmod(stat.S_IMODE(st.st_mode) & 0o700)
        except FileNotFoundError:
            continue  # a file a running service just removed


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process of the group exists."""
    for statfile in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = statfile.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields: state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
