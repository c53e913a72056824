"""Response cache on the real Redis: tiers, TTL, eviction, partitions, two processes, guard."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from spendstream.cache import CacheConfig, CacheRequest, SemanticCache
from spendstream.cache.guard import mismatch
from spendstream.config import Settings
from spendstream.events import CacheKind, LLMCallEvent
from tests.stream_helpers import wait_for_async

pytestmark = [pytest.mark.stack]

PW = "How do I reset my password?"
PW_PARA = "I forgot my password, how can I reset it?"


def req(
    q: str,
    tenant: str = "acme",
    model: str = "gpt-4o-mini",
    system: str = "Be brief.",
    temperature: float = 0.0,
) -> CacheRequest:
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": q}]
    return CacheRequest(tenant, model, msgs, {"temperature": temperature})


def run(stack: Settings, body: Callable[[SemanticCache], Awaitable[Any]], **cfg: Any) -> Any:
    ns = f"test-{uuid.uuid4().hex[:8]}"

    async def go() -> Any:
        cache = SemanticCache(stack.redis_url, CacheConfig(namespace=ns, **cfg))
        await cache.start()
        try:
            return await body(cache)
        finally:
            await cache.clear()
            await cache.close()

    return asyncio.run(go())


def test_exact_and_semantic_hits_misses_and_stats(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        assert await c.get(req(PW)) is None
        await c.put(req(PW), "Use 'Forgot password' on the sign-in page.", Decimal("0.0012"))
        exact = await c.get(req("  How do I   reset my password? "))  # whitespace-normalised
        assert exact is not None and exact.kind is CacheKind.EXACT
        sem = await c.get(req(PW_PARA))
        assert sem is not None and sem.kind is CacheKind.SEMANTIC
        assert (
            sem.response == "Use 'Forgot password' on the sign-in page." and sem.cached_prompt == PW
        )
        assert await c.get(req("What is the capital of France?")) is None
        st = c.stats
        assert (st.hits_exact, st.hits_semantic, st.misses, st.puts) == (1, 1, 2, 1)
        assert st.saved_usd == Decimal("0.0024")
        ev = LLMCallEvent(
            timestamp=datetime.now(UTC),
            service="svc",
            endpoint="help",
            provider="openai",
            request_model="gpt-4o-mini",
            **sem.event_fields(),
        )
        back = LLMCallEvent.from_json(ev.to_json())
        assert back.cache_hit and back.cache_kind is CacheKind.SEMANTIC
        assert back.cache_saved_usd == Decimal("0.0012")
        assert (back.usage.input_tokens, back.usage.output_tokens) == (0, 0)

    run(stack, body)


def test_entries_expire_with_their_ttl(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        await c.put(req(PW), "answer", Decimal("0.001"))
        assert await c.get(req(PW)) is not None and await c.get(req(PW_PARA)) is not None

        async def both_gone() -> bool:
            return await c.get(req(PW)) is None and await c.get(req(PW_PARA)) is None

        await wait_for_async(both_gone, 5, "the entry to expire")
        left = [k async for k in c.redis.scan_iter(match=f"{c.prefix}:[ex]:*")]
        assert left == []  # Redis expired the entry and its exact twin

    run(stack, body, ttl_s=1)


def test_size_bound_evicts_the_oldest_everywhere(stack: Settings) -> None:
    prompts = [
        "Explain photosynthesis.",
        "What is inflation?",
        "How does a vaccine work?",
        "What causes the seasons on Earth?",
        "Why is the sky blue?",
    ]

    async def body(c: SemanticCache) -> None:
        for i, p in enumerate(prompts):
            await c.put(req(p), f"a{i}", Decimal("0.001"))
        part = req(prompts[0]).partition
        assert await c.redis.zcard(f"{c.prefix}:z:{part}") == 3
        assert len(c.indexes[part]) == 3 and c.stats.evictions == 2
        assert [await c.get(req(p)) is not None for p in prompts] == [
            False,
            False,
            True,
            True,
            True,
        ]

    run(stack, body, max_entries=3)


def test_a_lookup_never_crosses_a_partition(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        await c.put(req(PW), "acme's answer", Decimal("0.001"))
        for other in (
            req(PW, tenant="globex"),
            req(PW_PARA, tenant="globex"),
            req(PW, model="gpt-4o"),
            req(PW, system="Answer in French."),
            req(PW, temperature=0.2),
        ):
            assert await c.get(other) is None
        assert (await c.get(req(PW_PARA))) is not None

    run(stack, body)


def test_sampling_requests_skip_the_semantic_tier(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        await c.put(req(PW, temperature=0.7), "answer", Decimal("0.001"))
        assert await c.get(req(PW_PARA, temperature=0.7)) is None
        hit = await c.get(req(PW, temperature=0.7))
        assert hit is not None and hit.kind is CacheKind.EXACT
        assert not c.indexes  # nothing was embedded

    run(stack, body)


def test_guard_rejects_a_different_amount(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        await c.put(req("convert 100 USD to EUR"), "92.10 EUR", Decimal("0.001"))
        assert await c.get(req("convert 250 USD to EUR")) is None
        assert c.stats.guard_rejections == 1
        hit = await c.get(req("Please convert 100 USD to EUR"))
        assert hit is not None and hit.response == "92.10 EUR"

    assert mismatch("convert 250 USD to EUR", "convert 100 USD to EUR") == "numbers differ"
    assert mismatch("Who wrote Hamlet?", "Who wrote Macbeth?") == "entities differ"
    assert mismatch("Is it safe to fly?", "Is it not safe to fly?") == "negation differs"
    assert mismatch("Sort in ascending order", "Sort in descending order") is not None
    run(stack, body)


PUT_SCRIPT = """
import asyncio, sys
from decimal import Decimal
from spendstream.cache import CacheConfig, CacheRequest, SemanticCache
async def main():
    c = SemanticCache(sys.argv[1], CacheConfig(namespace=sys.argv[2], max_entries=2))
    await c.start()
    for q in sys.argv[3:]:
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}]
        await c.put(CacheRequest("acme", "gpt-4o-mini", msgs, {"temperature": 0}), "from-p2:" + q,
                    Decimal("0.002"))
    await c.close()
asyncio.run(main())
"""


def test_two_processes_share_entries_and_evictions(stack: Settings) -> None:
    ns = f"test-{uuid.uuid4().hex[:8]}"

    def put_elsewhere(*prompts: str) -> None:
        subprocess.run(
            [sys.executable, "-c", PUT_SCRIPT, stack.redis_url, ns, *prompts],
            check=True,
            timeout=60,
        )

    async def go() -> None:
        put_elsewhere(PW)  # before we start: loaded from Redis on start
        c = SemanticCache(stack.redis_url, CacheConfig(namespace=ns, max_entries=2))
        await c.start()
        try:
            hit = await c.get(req(PW_PARA))
            assert hit is not None and hit.response == f"from-p2:{PW}"
            put_elsewhere("How can I cancel my subscription?")  # while we run: via the stream
            part = req(PW).partition
            await wait_for_async(
                lambda: _true(len(c.indexes[part]) == 2), 10, "the other process's entry"
            )
            hit = await c.get(req("What's the way to cancel my subscription?"))
            assert hit is not None and hit.response == "from-p2:How can I cancel my subscription?"
            put_elsewhere("Why is the sky blue?")  # evicts the oldest (the password entry)
            await wait_for_async(
                lambda: _true(PW not in c.indexes[part].prompts), 10, "the eviction"
            )
            assert len(c.indexes[part]) == 2
            assert await c.get(req(PW_PARA)) is None and await c.get(req(PW)) is None
        finally:
            await c.clear()
            await c.close()

    asyncio.run(go())


async def _true(v: bool) -> bool:
    return v
