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
from spendstream.cache.guard import Mismatch, canonical, check, mismatch
from spendstream.cache.stem import stem
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

    assert mismatch("convert 250 USD to EUR", "convert 100 USD to EUR") == (
        "numbers mismatch: ['250'] vs ['100']"
    )
    assert mismatch("Who wrote Hamlet?", "Who wrote Macbeth?") == (
        "entities mismatch: ['hamlet'] vs ['macbeth']"
    )
    assert check("Is it safe to fly?", "Is it not safe to fly?") == Mismatch(
        "negation", ("0 negations",), ("1 negations",)
    )
    assert check("Sort in ascending order", "Sort in descending order") == Mismatch(
        "operators", ("asc",), ("desc",)
    )
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


TRAIN = (
    "A train leaves the station at 3 pm travelling at 60 miles per hour. A second train leaves "
    "the same station at 4 pm travelling at 80 miles per hour on the same track. At what time "
    "does the second train catch up with the first one?"
)
SWAP = (
    "When an increase in speed doubles the kinetic energy of a moving body its momentum\n"
    "A. increases but less than doubles\nB. doubles\nC. more than doubles\nD. depends on "
    "factors not stated\nAnswer:"
)
APPLES = "How many apples does Maria have if she buys 5 more at $5 each and already had 12?"
PARAPHRASES = [
    (TRAIN, "Please solve: " + TRAIN),
    (TRAIN, "Could you please work this out for me? " + TRAIN),
    (APPLES, APPLES.replace("How many", "What number of")),
    (APPLES, APPLES.replace("$5", "5 dollars")),
    (APPLES, "What number of apples does Maria have if she buys five more at 5 dollars each "
     "and already had twelve?"),
    ("What is 15% of 80?", "What is fifteen percent of 80?"),
    ("How can I speed up my Python code?", "How do I speed up Python code?"),
    ("What is the fastest way to get to the airport?", "Fastest way to the airport?"),
    ("Walk 3 blocks north. Where am I?", "Kindly walk three blocks north. Where am I?"),
    ("What is the difference between a list and a tuple in Python?",
     "In Python, what's the difference between a tuple and a list?"),
]  # fmt: skip
NEAR_MISSES = [
    (APPLES, APPLES.replace("buys 5 more", "buys 6 more"), "numbers"),
    (APPLES, APPLES.replace("$5", "$7"), "numbers"),
    (APPLES, APPLES.replace("Maria", "Lucas"), "entities"),
    (TRAIN, TRAIN.replace("second train leaves", "second train never leaves"), "negation"),
    (TRAIN, TRAIN.replace("80 miles", "90 miles"), "numbers"),
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?",
     "direction"),
    ("Sort the numbers in ascending order", "Sort the numbers in descending order", "operators"),
    ("Is the sum of 3 and 4 greater than 6?", "Is the sum of 3 and 4 less than 6?", "operators"),
    ("weather in berlin tomorrow", "weather in madrid tomorrow", "substituted content words"),
    ("Turn left at the bank", "Turn right at the bank", "direction"),
    ("Is 11 squared larger than 50 times 40?", "Is 50 squared larger than 11 times 40?",
     "numbers"),
    (SWAP, SWAP.replace("kinetic energy of a moving body its momentum",
                        "momentum of a moving body its kinetic energy"), "word order"),
    ("who wrote hamlet?", "who wrote macbeth?", "substituted content words"),
    ("Does the package arrive before noon?", "Does the package arrive after noon?", "operators"),
]  # fmt: skip


def test_stemmer_is_porter2_and_leaves_short_function_words_alone() -> None:
    cases = {
        "this": "this", "was": "was", "gas": "gas", "news": "news", "running": "run",
        "hopping": "hop", "hoped": "hope", "cries": "cri", "ties": "tie", "caresses": "caress",
        "passwords": "password", "agreed": "agre", "relational": "relat", "generously":
        "generous", "consignment": "consign", "happily": "happili", "skies": "sky",
        "dying": "die", "succeed": "succeed", "falling": "fall", "filing": "file",
    }  # fmt: skip
    assert {w: stem(w) for w in cases} == cases
    # "does" is a function word: the guard never stems it, so it cannot look like an edit
    assert check("Does this work on Linux?", "Does this work on linux?") is None


def test_numbers_are_normalised_before_they_are_compared() -> None:
    assert canonical("$5 and twenty-five dollars, 5 percent") == "5 USD and 25 USD, 5%"
    assert canonical("one hundred and twenty, between five and ten") == "120, between 5 and 10"
    assert canonical("What number of cats?") == "how many cats?"


@pytest.mark.parametrize(("stored", "query"), PARAPHRASES)
def test_the_guard_lets_rewordings_through(stored: str, query: str) -> None:
    assert check(query, stored) is None


@pytest.mark.parametrize(("stored", "query", "which"), NEAR_MISSES)
def test_the_guard_refuses_a_changed_meaning_token(stored: str, query: str, which: str) -> None:
    got = check(query, stored)
    assert got is not None and got.check == which


def test_paraphrases_hit_and_near_misses_miss_on_redis(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        for i, p in enumerate(dict.fromkeys(s for s, _ in PARAPHRASES)):
            await c.put(req(p), f"answer {i}", Decimal("0.001"))
        answers = {p: f"answer {i}" for i, p in enumerate(dict.fromkeys(s for s, _ in PARAPHRASES))}
        for stored, query in PARAPHRASES:
            hit = await c.get(req(query))
            assert hit is not None and hit.kind is CacheKind.SEMANTIC, query
            assert hit.response == answers[stored] and hit.cached_prompt == stored
        refused = 0
        for _, query, which in NEAR_MISSES[:5]:
            why = await c.explain(req(query))
            assert why.outcome == "miss" and why.nearest is not None, query
            if why.nearest.above_threshold:  # else the embedding alone keeps it out
                assert why.nearest.mismatch is not None and why.nearest.mismatch.check == which
                refused += 1
            assert await c.get(req(query)) is None, query
        assert refused >= 3  # the guard, not only the threshold, does the work here
        assert c.stats.hits_semantic == len(PARAPHRASES) and c.stats.misses == 5
        assert c.stats.guard_rejections >= refused

    run(stack, body)


def test_explain_names_the_tier_the_nearest_entry_and_the_failed_check(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        empty = await c.explain(req(APPLES))
        assert (empty.outcome, empty.reason) == ("miss", "no entries in this partition")
        await c.put(req(APPLES), "17 apples", Decimal("0.001"))
        exact = await c.explain(req(APPLES))
        assert exact.outcome == "exact" and exact.candidates == ()
        para = await c.explain(req(APPLES.replace("$5", "5 dollars")))
        assert para.outcome == "semantic" and para.threshold == c.config.similarity
        assert para.nearest is not None and para.nearest.cached_prompt == APPLES
        assert para.nearest.similarity >= c.config.similarity and para.nearest.mismatch is None
        near = await c.explain(req(APPLES.replace("buys 5 more", "buys 6 more")))
        assert near.outcome == "miss" and near.nearest is not None
        assert near.nearest.above_threshold
        assert near.nearest.mismatch == Mismatch("numbers", ("6",), ("5",))
        assert near.reason == "guard refused the nearest entry: numbers mismatch: ['6'] vs ['5']"
        far = await c.explain(req("Why is the sky blue?"))
        assert far.outcome == "miss" and far.nearest is not None
        assert not far.nearest.above_threshold
        assert far.reason.startswith("nearest entry at cosine ")
        assert far.reason.endswith(f"is below the threshold {c.config.similarity}")
        sampled = await c.explain(req(APPLES.replace("$5", "$6"), temperature=0.5))
        assert sampled.reason == "semantic tier skipped: sampling (temperature > 0)"
        assert (c.stats.hits_exact, c.stats.hits_semantic, c.stats.misses) == (0, 0, 0)

    run(stack, body)


def test_get_many_batches_both_tiers_and_counts_like_get(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        assert await c.get_many([]) == []
        await c.put(req(PW), "pw answer", Decimal("0.001"))
        await c.put(req(APPLES), "17 apples", Decimal("0.002"))
        got = await c.get_many(
            [
                req(PW),
                req(PW_PARA),
                req(APPLES.replace("How many", "What number of")),
                req(APPLES.replace("Maria", "Lucas")),
                req("What is the capital of France?"),
                req(PW, tenant="globex"),
            ]
        )
        kinds = [None if h is None else h.kind for h in got]
        assert kinds == [CacheKind.EXACT, CacheKind.SEMANTIC, CacheKind.SEMANTIC, None, None, None]
        assert [h.response for h in got if h is not None] == ["pw answer", "pw answer", "17 apples"]
        st = c.stats
        assert (st.hits_exact, st.hits_semantic, st.misses) == (1, 2, 3)
        assert st.saved_usd == Decimal("0.004")

    run(stack, body)


def test_get_many_skips_an_entry_expired_elsewhere(stack: Settings) -> None:
    async def body(c: SemanticCache) -> None:
        await c.put(req(PW), "pw answer", Decimal("0.001"))
        part = req(PW).partition
        (eid,) = c.indexes[part].slot_of
        await c.redis.delete(f"{c.prefix}:e:{part}:{eid}")  # as if it expired in Redis
        assert await c.get_many([req(PW_PARA), req(PW_PARA)]) == [None, None]
        assert (c.stats.stale, c.stats.misses, len(c.indexes[part])) == (2, 2, 0)  # per lookup

    run(stack, body)
