"""Live spend in Redis: current hourly and daily spend per scope, one round trip to read.

The stream worker writes, when a minute closes, each scope's spend so far in that minute's
UTC hour and day (``SET`` of an absolute value with a TTL — idempotent, so a replayed close
writes the same number). Values are integer picodollars. The figures trail real time by the
worker's allowed lateness plus a minute (only closed minutes count) and leave out late
corrections; they are meant for budget checks in services and the router, while PostgreSQL and
the windows topic hold the exact books. Redis being down never stops the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..stream.prices import pico_to_usd

if TYPE_CHECKING:
    from ..stream.pipeline import WindowTotal

log = logging.getLogger("spendstream.live")

PREFIX = "spendstream:spend"
HOUR_TTL_S = 3 * 3600
DAY_TTL_S = 3 * 86400


def hour_key(scope: str, at: datetime) -> str:
    return f"{PREFIX}:hour:{at.astimezone(UTC):%Y-%m-%dT%H}:{scope}"


def day_key(scope: str, at: datetime) -> str:
    return f"{PREFIX}:day:{at.astimezone(UTC):%Y-%m-%d}:{scope}"


class LiveSpendWriter:
    """Used by the worker's stage 2 (async redis client)."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.redis: Any = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.failures = 0
        self.pause_until = 0.0
        """After a failure, writes pause for 10 s so an unreachable Redis costs no time."""

    async def update(self, windows: Iterable[WindowTotal]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for w in windows:
            at = datetime.fromtimestamp(w.minute * 60, UTC)
            pipe.set(hour_key(w.scope, at), w.hour_spend, ex=HOUR_TTL_S)
            pipe.set(day_key(w.scope, at), w.day_spend, ex=DAY_TTL_S)
            n += 1
        if not n or time.monotonic() < self.pause_until:
            return
        try:
            await pipe.execute()
        except Exception as exc:  # advisory data: log, count, carry on
            self.failures += 1
            self.pause_until = time.monotonic() + 10
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("live spend not written to Redis (%d failures): %s", self.failures, exc)

    async def close(self) -> None:
        await self.redis.aclose()


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
