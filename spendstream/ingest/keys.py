"""API keys of the ingest gateway: a JSON Lines file of sha256 hashes, re-read on change.

Each line is ``{"sha256": "<hex>", "service": "...", "team": "..."|null}``. Only hashes are
stored, so the file (and its backups) never hold a usable key. A key is bound to one service
and optionally one team: the gateway refuses (403) any event of another service or team
under it. The file is re-read when its mtime or size changes, so a key is added or revoked
without a restart; a file that fails to parse keeps the last good set (a half-written edit
must not lock every service out) and is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..events import LLMCallEvent

log = logging.getLogger("spendstream.ingest")

KEY_PREFIX = "ssk_"


@dataclass(frozen=True, slots=True)
class KeyBinding:
    """Who a key speaks for."""

    service: str
    team: str | None = None

    def check(self, event: LLMCallEvent) -> str | None:
        """Why ``event`` may not be sent with this key (None: it may)."""
        if event.service != self.service:
            return f"this key is bound to service {self.service!r}, not {event.service[:64]!r}"
        if self.team is not None and event.team not in (None, self.team):
            return f"this key is bound to team {self.team!r}, not {event.team[:64]!r}"
        return None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The keys file, looked up by the hash of a presented bearer token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, KeyBinding] = {}
        self.reloads = 0
        self.refresh()

    def refresh(self) -> None:
        """Re-read the file if its mtime or size changed (one stat per call)."""
        try:
            st = os.stat(self.path)
        except OSError:
            if self._stamp is not None:
                log.warning("keys file %s is gone; keeping the last keys", self.path)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            self._keys = parse_keys(self.path.read_text())
            self.reloads += 1
        except (OSError, ValueError) as exc:
            log.error("keys file %s not loaded (keeping the last keys): %s", self.path, exc)
        self._stamp = stamp

    def lookup(self, token: str) -> KeyBinding | None:
        self.refresh()
        return self._keys.get(hash_key(token))


def parse_keys(text: str) -> dict[str, KeyBinding]:
    """Hash → binding; raises ValueError naming the bad line."""
    out: dict[str, KeyBinding] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(line)
            digest, service, team = d["sha256"], d["service"], d.get("team")
            if not (isinstance(digest, str) and len(digest) == 64 and isinstance(service, str)):
                raise ValueError("sha256 (64 hex) and service (text) are required")
            if team is not None and not isinstance(team, str):
                raise ValueError("team must be text or null")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"line {no}: {exc}") from None
        out[digest.lower()] = KeyBinding(service, team)
    return out


def add_key(path: Path, service: str, team: str | None = None) -> str:
    """Append a new key's hash for ``service``/``team`` and return the key (shown once)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    line = json.dumps({"sha256": hash_key(key), "service": service, "team": team})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")
    return key
