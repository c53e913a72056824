"""Live spend in Redis: the key layout, and the read side for services and the router.

The stream worker (:class:`~spendstream.stream.live.LiveSpendWriter`) writes, when a minute
closes, each scope's spend so far in that minute's UTC hour and day (``SET`` of an absolute
value with a TTL — idempotent, so a replayed close writes the same number). Values are integer
picodollars. The figures trail real time by the worker's allowed lateness plus a minute (only
closed minutes count) and leave out late corrections; they are meant for budget checks in
services and the router, while PostgreSQL and the windows topic hold the exact books.

This half is core (no stream import): the router reads it, and the router depends on the core
only; the writer and this reader share one definition of the keys.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .money import pico_to_usd

PREFIX = "spendstream:spend"
HOUR_TTL_S = 3 * 3600
DAY_TTL_S = 3 * 86400


def hour_key(scope: str, at: datetime) -> str:
    return f"{PREFIX}:hour:{at.astimezone(UTC):%Y-%m-%dT%H}:{scope}"


def day_key(scope: str, at: datetime) -> str:
    return f"{PREFIX}:day:{at.astimezone(UTC):%Y-%m-%d}:{scope}"


class LiveSpend:
    """Read side for services and the router: ``spend("team:search")`` → (hour, day) USD."""

    def __init__(self, url: str) -> None:
        import redis

        self.redis: Any = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    def spend(self, scope: str, at: datetime | None = None) -> tuple[Decimal, Decimal]:
        """Spend of ``scope`` in the UTC hour and day containing ``at`` (default now)."""
        at = at or datetime.now(UTC)
        hour, day = self.redis.mget(hour_key(scope, at), day_key(scope, at))
        return pico_to_usd(int(hour or 0)), pico_to_usd(int(day or 0))

    def close(self) -> None:
        self.redis.close()
