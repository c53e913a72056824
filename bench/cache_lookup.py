"""Semantic cache lookup latency at 10k and 100k entries, vs scanning Redis keys (the seed's way).

    python bench/cache_lookup.py

One partition is filled with N distinct prompts (bulk ``put_many``; real embeddings of
generated support-style questions), then a *fresh* instance starts (its index is built from
Redis — timed) and answers 2,000 lookups that miss the exact tier and go through embedding,
index search, guard and, on a hit, one Redis read. Baseline in the same run: the seed's
approach — SCAN the partition's entry keys, fetch every vector, cosine in numpy — timed on a
few lookups (it is seconds per lookup at 100k). Last line ``cache_lookup_p99_ms_100k=<p99>``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from decimal import Decimal

import numpy as np
from _common import machine, result, settings_with_stack

from spendstream.cache import CacheConfig, CacheRequest, SemanticCache

TOPICS = [
    "password",
    "invoice",
    "refund",
    "shipping",
    "subscription",
    "account",
    "order",
    "delivery",
    "payment",
    "discount",
    "warranty",
    "return",
    "upgrade",
    "login",
    "email",
]
VERBS = [
    "change",
    "reset",
    "cancel",
    "find",
    "update",
    "download",
    "track",
    "delete",
    "renew",
    "check",
    "transfer",
    "verify",
    "recover",
    "extend",
    "pause",
]
PLACES = [
    "on the mobile app",
    "on the website",
    "from my laptop",
    "while travelling",
    "for my team",
    "for a family member",
    "before the deadline",
    "after moving house",
]


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(
            f"How do I {rng.choice(VERBS)} my {rng.choice(TOPICS)} {rng.choice(PLACES)} "
            f"(case {rng.randrange(10**6)})?"
        )
    return sorted(out)


def req(q: str) -> CacheRequest:
    return CacheRequest(
        "bench", "gpt-4o-mini", [{"role": "user", "content": q}], {"temperature": 0}
    )


async def scan_lookup(cache: SemanticCache, part: str, q: np.ndarray) -> float:
    """The seed's lookup: every entry's vector read from Redis, then cosine."""
    keys = [k async for k in cache.redis.scan_iter(match=f"{cache.prefix}:e:{part}:*", count=5000)]
    best = -1.0
    for i in range(0, len(keys), 5000):
        pipe = cache.redis.pipeline(transaction=False)
        for k in keys[i : i + 5000]:
            pipe.hget(k, "vec")
        vecs = np.frombuffer(b"".join(v for v in await pipe.execute() if v), np.float32)
        sims = vecs.reshape(-1, q.shape[0]) @ q
        best = max(best, float(sims.max()))
    return best


async def one_size(url: str, n: int, lookups: int, scans: int) -> dict[str, float]:
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = CacheConfig(namespace=ns, max_entries=n + 1)
    writer = SemanticCache(url, cfg)
    stored = prompts(n, seed=n)
    t = time.perf_counter()
    for i in range(0, n, 5000):
        await writer.put_many(
            [
                (req(p), f"answer {j}", Decimal("0.001"))
                for j, p in enumerate(stored[i : i + 5000], start=i)
            ]
        )
    fill_s = time.perf_counter() - t
    await writer.close()
    reader = SemanticCache(url, cfg)
    t = time.perf_counter()
    await reader.start()
    load_s = time.perf_counter() - t
    queries = [p.replace("How do I", "How can I") for p in random.Random(1).sample(stored, lookups)]
    for q in queries[:50]:
        await reader.get(req(q))  # warm-up
    lat = []
    for q in queries:
        t0 = time.perf_counter_ns()
        await reader.get(req(q))
        lat.append(time.perf_counter_ns() - t0)
    hits = reader.stats.hits_semantic
    part = req(stored[0]).partition
    scan = []
    qv = reader.embedder.embed(queries[:scans])
    for v in qv:
        t0 = time.perf_counter_ns()
        await scan_lookup(reader, part, v)
        scan.append(time.perf_counter_ns() - t0)
    await reader.clear()
    await reader.close()
    return {
        "fill_s": fill_s,
        "load_s": load_s,
        "p50": np.percentile(lat, 50) / 1e6,
        "p99": np.percentile(lat, 99) / 1e6,
        "hit_share": hits / (lookups + 50),
        "scan_p50": np.percentile(scan, 50) / 1e6,
        "scan_max": max(scan) / 1e6,
    }


def main() -> None:
    s = settings_with_stack()
    print(f"# cache_lookup on {machine()}")
    res = {}
    for n, scans in ((10_000, 20), (100_000, 5)):
        r = asyncio.run(one_size(s.redis_url, n, 2000, scans))
        res[n] = r
        print(
            f"{n:>7} entries: fill {r['fill_s']:.1f} s, index built from Redis in "
            f"{r['load_s']:.1f} s; lookup p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms "
            f"(semantic hits {r['hit_share']:.0%}); scan-of-keys baseline p50 "
            f"{r['scan_p50']:.0f} ms (max {r['scan_max']:.0f} ms over {scans}); "
            f"ratio {r['scan_p50'] / r['p50']:.0f}x"
        )
    for n in (10_000, 100_000):
        result(
            f"semantic cache lookup p99, {n:,} entries",
            res[n]["p99"],
            "ms",
            "≤ 5 ms at 100k",
            res[n]["scan_p50"],
            "scan of Redis keys (p50)",
        )
    print(f"cache_lookup_p99_ms_10k={res[10_000]['p99']:.3f}")
    print(f"cache_lookup_p99_ms_100k={res[100_000]['p99']:.3f}")


if __name__ == "__main__":
    main()
