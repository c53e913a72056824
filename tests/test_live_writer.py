"""The worker's live-spend writer on the real Redis of the stack."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis

from spendstream.config import Settings
from spendstream.livespend import LiveSpend
from spendstream.money import pico_to_usd
from spendstream.scopes import minute_dt
from spendstream.stream.live import LiveSpendWriter
from spendstream.stream.pipeline import WindowTotal
from spendstream.stream.windows import Agg

MINUTE0 = 29_000_000 - 29_000_000 % 1440  # a UTC midnight


def sets_done(r: Any) -> int:
    return int(r.info("commandstats").get("cmdstat_set", {}).get("calls", 0))


def test_one_set_per_hour_and_day_key_holds_the_last_running_total(stack: Settings) -> None:
    scope = f"team:live-{uuid.uuid4().hex[:8]}"
    # two hours of closed minutes, in closing order, with running hour and day totals
    windows, day = [], 0
    for m in range(MINUTE0, MINUTE0 + 120):
        day += 1_000_000
        hour = (m - MINUTE0) % 60 * 1_000_000 + 1_000_000
        windows.append(WindowTotal(scope, m, Agg(), 0, hour, day))
    r = redis.Redis.from_url(stack.redis_url)
    before = sets_done(r)
    writer = LiveSpendWriter(stack.redis_url)

    async def write() -> None:
        await writer.update(windows)
        await writer.close()

    asyncio.run(write())
    assert sets_done(r) - before == 3  # two hour keys and one day key, not 240 SETs
    live = LiveSpend(stack.redis_url)
    first_hour, last = minute_dt(MINUTE0 + 59), minute_dt(MINUTE0 + 119)
    assert live.spend(scope, first_hour) == (pico_to_usd(60_000_000), pico_to_usd(120_000_000))
    assert live.spend(scope, last) == (pico_to_usd(60_000_000), pico_to_usd(120_000_000))
    live.close()
    r.close()
