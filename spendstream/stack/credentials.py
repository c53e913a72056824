"""Per-stack passwords: generated once by `stack up`, kept in 0600 files of a 0700 dir.

Why: the stack used to initialise PostgreSQL with ``--auth-local=trust`` on a world-writable
socket (any local user was superuser: ``psql -h .stack/postgres`` worked for ``nobody``), the
fixed password ``spendstream`` over TCP, and Redis without any password. A random password per
stack, readable by its owner only, closes both; `Settings` reads the files itself (also in the
workers and sinks the demo and tests start, which get ``SPENDSTREAM_STACK_DIR``), so nobody
has to copy a password into the environment, and nothing prints it.

Passwords are only generated while no service of the stack runs: clients that already hold
the old password (another session's workers, a drill restarting one service) keep working,
and the next full `stack down` / `stack up` moves the whole stack over at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import unicodedata

from ..config import Settings

NAMES = ("postgres", "redis")
"""The services with a generated password (Kafka and Prometheus listen on loopback, no auth)."""


def missing(s: Settings) -> list[str]:
    """The passwords that are neither set nor generated yet (a stack made before they were)."""
    return [n for n in NAMES if s.stack_secret(n) is None]


def ensure(s: Settings) -> list[str]:
    """Generate the missing passwords (never replaces one), then re-derive ``s``'s addresses.

    Returns the names generated. ``O_EXCL``: of two concurrent `stack up`, one file wins.
    """
    d = s.stack_secret_path("postgres").parent
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    made = []
    for name in missing(s):
        try:
            fd = os.open(s.stack_secret_path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # empty file, or another `stack up` is writing it
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        made.append(name)
    for name in NAMES:
        path = s.stack_secret_path(name)
        if path.exists():
            path.chmod(0o600)
    s.reload_stack_secrets()
    return made


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802/7677), so that setting a
    role's password never puts the password itself into PostgreSQL's input or logs.

    SASLprep is the identity for ASCII (token_urlsafe); a given non-ASCII password gets its
    NFKC step, which covers what PostgreSQL and asyncpg do to ordinary text."""
    if not password.isascii():
        password = unicodedata.normalize("NFKC", password)
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored).decode()}:{b64(server).decode()}"
    )
