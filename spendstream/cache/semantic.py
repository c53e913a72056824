"""The response cache: exact and semantic tiers on Redis, a numpy index per partition.

Redis holds every entry (with TTL) and is the source of truth; each app instance mirrors the
vectors of its partitions in :class:`~.index.PartitionIndex` so a semantic lookup is a local
matrix product plus one Redis round trip for the answer. Instances stay in sync through a Redis
stream of ``add``/``del`` events that a background task tails; an entry that expired or was
evicted elsewhere is also caught at read time (its key is gone), so a stale index can cost a
miss but never serve a dead entry.

Redis layout under ``spendstream:cache:<namespace>`` — every key has a TTL (``ttl_s``; the
shared ones are refreshed by each put, so they outlive their newest entry by at most ``ttl_s``):

- ``:x:<exact key>`` exact tier, JSON ``{"response", "cost_usd"}``;
- ``:e:<partition>:<id>`` semantic entry, hash ``vec`` (float32 embedding), ``prompt``,
  ``response``, ``cost``, ``exact`` (its ``:x:`` twin, for eviction), ``created``, ``expires``;
- ``:z:<partition>`` entry ids by creation time (size bound, eviction; expired ids pruned on put);
- ``:parts`` known partitions (built into the index on start);
- ``:events`` the sync stream, ``op``/``part``/``id`` only (capped at ``stream_maxlen``).

What is stored, and why: the response (it is the answer served) and the cost (the spend a hit
avoided). The last user message is kept in clear in semantic entries only, because the guard
(:mod:`.guard`) compares the query's numbers, entities, negation, operators, direction words
and wording with the candidate's text, and an embedding cannot give them back; the exact
tier does not keep it (a hit's prompt is the query itself). Key names hold 12-byte BLAKE2b
digests of the partition (tenant, model, system prompt, sampling, earlier turns) and of the
prompt — unkeyed, so a guessable short prompt can be confirmed from a key name. ``keep_text``
does not apply: a response cache stores text by nature.
Anyone who can read this Redis database reads every cached prompt and response of every tenant
for up to ``ttl_s``: give the cache its own Redis (or ACL user limited to this prefix), with a
password and TLS off-host, and a ``ttl_s`` no longer than the answers may be kept. Nothing
written here is ever without a TTL (a probe found ``:z:``, ``:parts`` and ``:events`` without one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from ..events import CacheKind, Usage
from .embedders import Embedder, local_embedder
from .guard import Mismatch, check
from .index import Candidate, PartitionIndex
from .request import CacheRequest

log = logging.getLogger("spendstream.cache")


@dataclass(frozen=True)
class CacheConfig:
    namespace: str = "default"
    similarity: float = 0.80
    """Cosine threshold for a semantic hit (tuned by ``bench/cache_quality.py``)."""
    ttl_s: int = 86_400
    max_entries: int = 100_000
    """Per partition, in Redis and in each instance's index; oldest evicted first."""
    semantic_when_sampling: bool = False
    """Serve semantic hits to requests with temperature > 0 (off: their answers vary anyway)."""
    stream_maxlen: int = 1_000_000


@dataclass(frozen=True)
class CacheHit:
    kind: CacheKind
    response: str
    cost_usd: Decimal
    """What the cached call cost: the spend this hit avoided."""
    similarity: float
    cached_prompt: str

    def event_fields(self) -> dict[str, Any]:
        """Fields for the call event of a cache-served request (no provider call, no tokens)."""
        return {
            "cache_hit": True,
            "cache_kind": self.kind,
            "cache_saved_usd": self.cost_usd,
            "usage": Usage(input_tokens=0, output_tokens=0),
        }


@dataclass(frozen=True)
class CandidateCheck:
    """One nearest entry as :meth:`SemanticCache.explain` saw it."""

    cached_prompt: str
    similarity: float
    above_threshold: bool
    mismatch: Mismatch | None
    """The guard check that refuses it (``None``: the guard lets it through)."""


@dataclass(frozen=True)
class Explanation:
    """Why a lookup hits or misses: ``outcome`` is ``exact``, ``semantic`` or ``miss``."""

    outcome: str
    reason: str
    threshold: float
    candidates: tuple[CandidateCheck, ...] = ()
    """The nearest entries (at most 4), best first, threshold or not."""

    @property
    def nearest(self) -> CandidateCheck | None:
        return self.candidates[0] if self.candidates else None


def _miss_reason(checks: tuple[CandidateCheck, ...], thr: float) -> str:
    if not checks:
        return "no live entries in this partition"
    best = checks[0]
    if not best.above_threshold:
        return f"nearest entry at cosine {best.similarity:.3f} is below the threshold {thr}"
    refused = [c for c in checks if c.above_threshold and c.mismatch is not None]
    if refused:
        return f"guard refused the nearest entry: {refused[0].mismatch}"
    return "the matching entry is gone from Redis (expired or evicted)"


@dataclass
class CacheStats:
    hits_exact: int = 0
    hits_semantic: int = 0
    misses: int = 0
    guard_rejections: int = 0
    stale: int = 0
    """Index candidates whose entry was already gone from Redis (expired/evicted elsewhere)."""
    puts: int = 0
    evictions: int = 0
    saved_usd: Decimal = field(default_factory=Decimal)


class SemanticCache:
    def __init__(
        self, redis_url: str, config: CacheConfig | None = None, embedder: Embedder | None = None
    ) -> None:
        import redis.asyncio as aioredis

        self.config = config or CacheConfig()
        self.embedder = embedder or local_embedder()
        self.redis: Any = aioredis.Redis.from_url(redis_url)
        self.prefix = f"spendstream:cache:{self.config.namespace}"
        self.indexes: dict[str, PartitionIndex] = {}
        self.stats = CacheStats()
        self._last_event = "0-0"
        self._sync_task: asyncio.Task[None] | None = None
        self._closing = False
        self.vector_commands = False
        """The server has native vector search (Redis 8 VSIM or RediSearch); see README."""

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the indexes from Redis, then follow the sync stream."""
        last = await self.redis.xrevrange(f"{self.prefix}:events", count=1)
        self._last_event = last[0][0].decode() if last else "0-0"
        for part in await self.redis.smembers(f"{self.prefix}:parts"):
            await self._load_partition(part.decode())
        self.vector_commands = await self._has_vector_commands()
        self._sync_task = asyncio.create_task(self._follow(), name="spendstream-cache-sync")

    async def close(self) -> None:
        self._closing = True
        if self._sync_task is not None:
            # redis-py may turn a cancel during a blocking XREAD into a connection error, which
            # the loop would retry: the flag ends it, the timeout bounds the wait
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._sync_task, timeout=3)
        await self.redis.aclose()

    async def __aenter__(self) -> SemanticCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _has_vector_commands(self) -> bool:
        with contextlib.suppress(Exception):
            info = await self.redis.execute_command("COMMAND", "INFO", "VSIM", "FT.SEARCH")
            return any(i is not None for i in info)
        return False

    # --- index maintenance -------------------------------------------------------------------
    def _index(self, part: str) -> PartitionIndex:
        idx = self.indexes.get(part)
        if idx is None:
            idx = self.indexes[part] = PartitionIndex(self.embedder.dim, self.config.max_entries)
        return idx

    async def _load_partition(self, part: str) -> None:
        ids = [i.decode() for i in await self.redis.zrange(f"{self.prefix}:z:{part}", 0, -1)]
        idx = self._index(part)
        gone = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            pipe = self.redis.pipeline(transaction=False)
            for eid in chunk:
                pipe.hmget(f"{self.prefix}:e:{part}:{eid}", "vec", "prompt", "created", "expires")
            for eid, (vec, prompt, created, expires) in zip(
                chunk, await pipe.execute(), strict=True
            ):
                if vec is None:
                    gone.append(eid)
                    continue
                idx.add(
                    eid,
                    np.frombuffer(vec, np.float32),
                    prompt.decode(),
                    float(created),
                    float(expires),
                )
        if gone:
            await self.redis.zrem(f"{self.prefix}:z:{part}", *gone)

    async def _follow(self) -> None:
        key = f"{self.prefix}:events"
        while not self._closing:
            try:
                got = await self.redis.xread({key: self._last_event}, count=1000, block=1000)
                for _, entries in got or []:
                    for msg_id, fields in entries:
                        self._last_event = msg_id.decode()
                        await self._apply(
                            fields[b"op"].decode(), fields[b"part"].decode(), fields[b"id"].decode()
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:
                    return
                log.warning("cache sync from Redis failed, retrying: %s", exc)
                await asyncio.sleep(1)

    async def _apply(self, op: str, part: str, eid: str) -> None:
        if op == "del":
            if part in self.indexes:
                self.indexes[part].remove(eid)
            return
        idx = self._index(part)
        if eid in idx.slot_of:
            return
        vec, prompt, created, expires = await self.redis.hmget(
            f"{self.prefix}:e:{part}:{eid}", "vec", "prompt", "created", "expires"
        )
        if vec is not None:
            idx.add(
                eid, np.frombuffer(vec, np.float32), prompt.decode(), float(created), float(expires)
            )

    # --- the API -----------------------------------------------------------------------------
    def semantic_allowed(self, req: CacheRequest) -> bool:
        return bool(req.query) and (req.temperature == 0 or self.config.semantic_when_sampling)

    async def get(self, req: CacheRequest) -> CacheHit | None:
        """Exact tier, then semantic (guarded); ``None`` is a miss (see :meth:`get_many`)."""
        return (await self.get_many([req]))[0]

    async def get_many(self, reqs: Sequence[CacheRequest]) -> list[CacheHit | None]:
        """Look many requests up with one exact-tier MGET and one pipelined read of the answers.

        The MGET is sent first and the (single, batched) embedding and index searches run while
        it is in flight, so a semantic hit costs one round trip of waiting plus the answers'
        read; a candidate found gone from Redis (expired elsewhere) costs one more round.
        """
        if not reqs:
            return []
        exact = asyncio.ensure_future(
            self.redis.mget([f"{self.prefix}:x:{r.exact_key}" for r in reqs])
        )
        semantic = [i for i, r in enumerate(reqs) if self._searchable(r)]
        cands: dict[int, list[Candidate]] = {}
        if semantic:
            await asyncio.sleep(0)  # let the MGET go out, then embed and search meanwhile
            vecs = self.embedder.embed([reqs[i].query for i in semantic])
            now = time.time()
            for i, q in zip(semantic, vecs, strict=True):
                cands[i] = self.indexes[reqs[i].partition].search(q, self.config.similarity, now)
        out: list[CacheHit | None] = [None] * len(reqs)
        for i, raw in enumerate(await exact):
            if raw is not None:
                d = json.loads(raw)
                cost = Decimal(d["cost_usd"])
                self.stats.hits_exact += 1
                self.stats.saved_usd += cost
                out[i] = CacheHit(CacheKind.EXACT, d["response"], cost, 1.0, reqs[i].query)
                cands.pop(i, None)
        await self._serve_semantic(reqs, cands, out)
        self.stats.misses += sum(h is None for h in out)
        return out

    def _searchable(self, req: CacheRequest) -> bool:
        idx = self.indexes.get(req.partition)
        return idx is not None and len(idx) > 0 and self.semantic_allowed(req)

    def _next_passing(self, query: str, cands: list[Candidate]) -> Candidate | None:
        """Pop candidates until one passes the guard (rejections counted and logged)."""
        while cands:
            cand = cands.pop(0)
            why = check(query, cand.prompt)
            if why is None:
                return cand
            self.stats.guard_rejections += 1
            log.debug("cache guard: %s (%r vs %r)", why, query, cand.prompt)
        return None

    async def _serve_semantic(
        self,
        reqs: Sequence[CacheRequest],
        cands: dict[int, list[Candidate]],
        out: list[CacheHit | None],
    ) -> None:
        """Fill ``out`` with guarded semantic hits, one pipelined answer read per round."""
        while cands:
            chosen = {
                i: c for i, cl in cands.items() if (c := self._next_passing(reqs[i].query, cl))
            }
            if not chosen:
                return
            pipe = self.redis.pipeline(transaction=False)
            for i, cand in chosen.items():
                pipe.hmget(
                    f"{self.prefix}:e:{reqs[i].partition}:{cand.entry_id}", "response", "cost"
                )
            for (i, cand), got in zip(chosen.items(), await pipe.execute(), strict=True):
                if got[0] is None:
                    self.stats.stale += 1
                    self.indexes[reqs[i].partition].remove(cand.entry_id)
                    continue
                cost = Decimal(got[1].decode())
                self.stats.hits_semantic += 1
                self.stats.saved_usd += cost
                out[i] = CacheHit(
                    CacheKind.SEMANTIC, got[0].decode(), cost, cand.score, cand.prompt
                )
                del cands[i]
            cands = {i: cl for i, cl in cands.items() if cl}

    async def explain(self, req: CacheRequest) -> Explanation:
        """Why ``req`` would hit or miss now: tier, nearest entries, similarity, guard verdicts.

        A diagnostic: it reads Redis and the index like :meth:`get` but changes no stats.
        """
        thr = self.config.similarity
        if await self.redis.exists(f"{self.prefix}:x:{req.exact_key}"):
            return Explanation("exact", "same prompt in the same partition", thr)
        idx = self.indexes.get(req.partition)
        if not self.semantic_allowed(req):
            why = "no user message" if not req.query else "sampling (temperature > 0)"
            return Explanation("miss", f"semantic tier skipped: {why}", thr)
        if idx is None or len(idx) == 0:
            return Explanation("miss", "no entries in this partition", thr)
        q = self.embedder.embed([req.query])[0]
        near = idx.search(q, -1.0, time.time())
        checks = tuple(
            CandidateCheck(c.prompt, c.score, c.score >= thr, check(req.query, c.prompt))
            for c in near
        )
        for c, cand in zip(checks, near, strict=True):
            if c.above_threshold and c.mismatch is None:
                key = f"{self.prefix}:e:{req.partition}:{cand.entry_id}"
                if await self.redis.exists(key):
                    return Explanation(
                        "semantic", f"cosine {c.similarity:.3f} >= {thr}", thr, checks
                    )
        return Explanation("miss", _miss_reason(checks, thr), thr, checks)

    async def put(self, req: CacheRequest, response: str, cost_usd: Decimal) -> None:
        """Store an answer in both tiers (semantic only when it may be served semantically)."""
        await self.put_many([(req, response, cost_usd)])

    async def put_many(self, items: list[tuple[CacheRequest, str, Decimal]]) -> None:
        """Store many answers with one embedding batch and pipelined writes (cache warm-up)."""
        ttl = self.config.ttl_s
        now = time.time()
        expires = now + ttl
        semantic = [i for i, (r, _, _) in enumerate(items) if self.semantic_allowed(r)]
        vecs = self.embedder.embed([items[i][0].query for i in semantic]) if semantic else None
        vec_of = {i: vecs[k] for k, i in enumerate(semantic)} if vecs is not None else {}
        touched: set[str] = set()
        for start in range(0, len(items), 1000):
            pipe = self.redis.pipeline(transaction=False)
            chunk_parts: set[str] = set()
            for i in range(start, min(start + 1000, len(items))):
                req, response, cost = items[i]
                body = {"response": response, "cost_usd": str(cost)}
                pipe.set(f"{self.prefix}:x:{req.exact_key}", json.dumps(body), ex=ttl)
                self.stats.puts += 1
                if i not in vec_of:
                    continue
                part, eid, vec = req.partition, uuid.uuid4().hex, vec_of[i].astype(np.float32)
                ekey = f"{self.prefix}:e:{part}:{eid}"
                pipe.hset(ekey, mapping={
                    "vec": vec.tobytes(), "prompt": req.query, "response": response,
                    "cost": str(cost), "exact": req.exact_key, "created": repr(now),
                    "expires": repr(expires),
                })  # fmt: skip
                pipe.expire(ekey, ttl)
                pipe.zadd(f"{self.prefix}:z:{part}", {eid: now})
                pipe.sadd(f"{self.prefix}:parts", part)
                pipe.xadd(
                    f"{self.prefix}:events",
                    {"op": "add", "part": part, "id": eid},
                    maxlen=self.config.stream_maxlen,
                    approximate=True,
                )
                chunk_parts.add(part)
                self._index(part).add(eid, vec, req.query, now, expires)
            self._refresh_ttls(pipe, chunk_parts, now)
            touched |= chunk_parts
            await pipe.execute()
        if not touched:
            return
        pipe = self.redis.pipeline(transaction=False)
        parts = sorted(touched)
        for part in parts:
            pipe.zcard(f"{self.prefix}:z:{part}")
        for part, size in zip(parts, await pipe.execute(), strict=True):
            if size > self.config.max_entries:
                await self._evict(part, size - self.config.max_entries)

    def _refresh_ttls(self, pipe: Any, parts: set[str], now: float) -> None:
        """Shared keys live as long as their newest entry; ids of expired entries leave ``:z:``."""
        ttl = self.config.ttl_s
        for part in parts:
            zkey = f"{self.prefix}:z:{part}"
            pipe.zremrangebyscore(zkey, "-inf", f"({now - ttl!r}")
            pipe.expire(zkey, ttl)
        if parts:
            pipe.expire(f"{self.prefix}:parts", ttl)
            pipe.expire(f"{self.prefix}:events", ttl)

    async def _evict(self, part: str, n: int) -> None:
        """Drop the ``n`` oldest entries of a partition everywhere, exact-tier twin included."""
        popped = await self.redis.zpopmin(f"{self.prefix}:z:{part}", n)
        if not popped:
            return
        ids = [eid.decode() for eid, _ in popped]
        pipe = self.redis.pipeline(transaction=False)
        for e in ids:
            pipe.hget(f"{self.prefix}:e:{part}:{e}", "exact")
        exact = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for e, x in zip(ids, exact, strict=True):
            pipe.delete(f"{self.prefix}:e:{part}:{e}")
            if x is not None:
                pipe.delete(f"{self.prefix}:x:{x.decode()}")
            pipe.xadd(
                f"{self.prefix}:events",
                {"op": "del", "part": part, "id": e},
                maxlen=self.config.stream_maxlen,
                approximate=True,
            )
            self._index(part).remove(e)
        pipe.expire(f"{self.prefix}:events", self.config.ttl_s)
        await pipe.execute()
        self.stats.evictions += len(ids)

    async def clear(self) -> int:
        """Delete every key of this namespace (all partitions, the sync stream); returns the count.

        Other instances keep their in-memory entries until they restart, but can no longer serve
        them: a hit's answer is read from Redis.
        """
        keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await self.redis.delete(*keys[i : i + 1000])
        self.indexes.clear()
        return len(keys)

    def entries(self) -> int:
        return sum(len(i) for i in self.indexes.values())
