"""What the response cache leaves in the real Redis: every key expires, and each entry holds
only the fields matching and answering need (the list the module docstring gives)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from spendstream.cache import SemanticCache
from spendstream.cache.request import normalise_text
from spendstream.config import Settings
from tests.test_cache import PW, PW_PARA, req, run

pytestmark = [pytest.mark.stack]

TTL = 3600


def test_every_cache_key_expires_and_holds_only_the_documented_fields(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        await c.put(req("Why is the sky blue?"), "Rayleigh scattering.", Decimal("0.001"))
        await c.put(req(PW), "Use 'Forgot password'.", Decimal("0.002"))
        await c.put(req("What is inflation?"), "Rising prices.", Decimal("0.003"))  # evicts 1st
        await c.put(req(PW, temperature=0.7), "Try the reset link.", Decimal("0.004"))  # exact
        exact = await c.get(req(f"  {PW} "))
        assert exact is not None and exact.cached_prompt == normalise_text(PW)
        assert (await c.get(req(PW_PARA))) is not None
        assert await c.get(req("Why is the sky blue?")) is None
        assert c.stats.evictions == 1

        keys = sorted([k.decode() async for k in c.redis.scan_iter(match=f"{c.prefix}:*")])
        kinds = sorted(k.removeprefix(c.prefix + ":").split(":")[0] for k in keys)
        assert kinds == ["e", "e", "events", "parts", "x", "x", "x", "z"]
        ttls = {k: await c.redis.ttl(k) for k in keys}
        assert all(0 < t <= TTL for t in ttls.values()), ttls  # -1 would be "never expires"

        for k in keys:
            kind = k.removeprefix(c.prefix + ":").split(":")[0]
            if kind == "e":
                fields = set(await c.redis.hkeys(k))
                expect = {b"vec", b"prompt", b"response", b"cost", b"exact", b"created"}
                assert fields == expect | {b"expires"}
            elif kind == "x":
                assert set(json.loads(await c.redis.get(k))) == {"response", "cost_usd"}
        stream = await c.redis.xrange(f"{c.prefix}:events")
        assert [sorted(f) for _, f in stream] == [[b"id", b"op", b"part"]] * 4  # 3 adds, 1 del

    run(stack, body, ttl_s=TTL, max_entries=2)
