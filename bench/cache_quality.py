"""Semantic cache quality: paraphrases that should hit, near-duplicates that must not.

    python bench/cache_quality.py [MMLU_DIR]

Sets (README "Semantic cache"):

- generated (:mod:`cache_paraphrases`): ten request families (word problems, trains, support
  tickets — long; conversions, percentages, travel, code, comparisons, directions, meetings —
  short) with random slots, seeds 1–5, 8 instances per family per seed: ~310 paraphrase pairs
  per seed of six rewording kinds (politeness, synonyms, reorder, how_many, spelling,
  imperative) and ~216 near misses of five kinds (number, entity, negation, direction,
  comparison). Generated, not hand-picked, so the guard is not fitted to a fixed list;
- hand-written: ``bench/data/paraphrases.tsv`` (55 pairs with one intent) and
  ``bench/data/near_duplicates.tsv`` (40 pairs differing in a number, an entity, a negation or
  a direction — some lower-case);
- MMLU near-duplicates: for each subject, the most similar pairs of *different* questions (by
  the local model's cosine), 300 in all — role swaps, reordered options, one word changed.

1. Embedder comparison (with the guard) on hand + seed 1 + MMLU: at each model's best threshold
   with wrong hits ≤ 1%, the paraphrase hit rate; plus per-query time and install size.
   Baseline in the same run: character-trigram hashing (no model).
2. Threshold sweep with and without the guard (same sets).
3. The cache as shipped, on the real Redis, once per seed: every stored prompt in its tenant's
   partition (three tenants), queries through ``get_many`` 64 at a time; right and wrong hits
   per kind and prompt size; every paraphrase also asked by another tenant (a hit answered
   from another tenant's entry would be a cross-tenant hit; must be 0). Wrong-hit rate = wrong
   hits / (paraphrase + near-miss queries). Last line: ``cache_wrong_hit_rate=<value>``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
import zlib
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, result, settings_with_stack
from cache_paraphrases import Pair, generate

from spendstream.cache import CacheConfig, CacheRequest, SemanticCache, mismatch
from spendstream.cache.embedders import LocalEmbedder, normalise
from spendstream.cache.guard import _tokens
from spendstream.router.train import load_mmlu

HERE = Path(__file__).resolve().parent


def pairs(name: str) -> list[tuple[str, str]]:
    rows = (HERE / "data" / name).read_text().splitlines()
    return [tuple(r.split("\t")) for r in rows if r and not r.startswith("#")]  # type: ignore[misc]


def mmlu_near_duplicates(folder: Path, emb: LocalEmbedder, n: int = 300) -> list[tuple[str, str]]:
    """The most similar pairs of different questions, per subject (whole prompt, as sent)."""
    ds = load_mmlu(folder)
    stems = [p.strip() for p in ds.prompts]
    found: list[tuple[float, str, str]] = []
    subjects = sorted(set(ds.subjects))
    for subj in subjects:
        rows = [i for i, s in enumerate(ds.subjects) if s == subj]
        texts = [stems[i] for i in rows]
        v = emb.embed(texts)
        sim = v @ v.T
        np.fill_diagonal(sim, -1)
        for _ in range(8):
            i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
            sim[i, j] = sim[j, i] = -1
            a, b = texts[int(i)], texts[int(j)]
            if same_words(a, b):
                continue  # MMLU repeats some questions (punctuation aside): same answer
            found.append((float(v[i] @ v[j]), a, b))
    found.sort(key=lambda t: -t[0])
    out: list[tuple[str, str]] = []
    used: set[str] = set()
    for _, a, b in found:  # each prompt in one pair only: no query is also a stored prompt
        if a not in used and b not in used and len(out) < n:
            out.append((a, b))
            used.update((a, b))
    return out


def same_words(a: str, b: str) -> bool:
    return _tokens(a) == _tokens(b)


class TrigramHash:
    """No-model baseline: hashed character trigrams, 1024 buckets."""

    name, dim = "char-trigram-hash", 1024

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            t = f"  {t.lower()} "
            for k in range(len(t) - 2):
                out[i, zlib.crc32(t[k : k + 3].encode()) % self.dim] += 1
        return normalise(out)


def best_match(stored_v: np.ndarray, q_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sim = q_v @ stored_v.T
    return sim.argmax(axis=1), sim.max(axis=1)


def rates(
    stored: list[str],
    para: list[tuple[str, str]],
    near: list[tuple[str, str]],
    sv: np.ndarray,
    pv: np.ndarray,
    nv: np.ndarray,
    thr: float,
    guard: bool,
) -> tuple[float, float]:
    """(paraphrase hit rate, wrong-hit rate) when each query takes its best candidates ≥ thr."""
    sim_p, sim_n = pv @ sv.T, nv @ sv.T
    hits = wrong = 0
    index = {s: i for i, s in enumerate(stored)}
    for queries, sims, is_para in ((para, sim_p, True), (near, sim_n, False)):
        for (orig, q), row in zip(queries, sims, strict=True):
            got = None
            for j in np.argsort(-row)[:4]:
                if row[j] < thr:
                    break
                if guard and mismatch(q, stored[j]) is not None:
                    continue
                got = j
                break
            if got is None:
                continue
            if is_para and got == index[orig]:
                hits += 1
            else:
                wrong += 1
    return hits / len(para), wrong / (len(para) + len(near))


def install_mb(dist: str) -> float:
    from importlib.metadata import files

    return sum(f.locate().stat().st_size for f in files(dist) or [] if f.locate().exists()) / 1e6


@dataclass(frozen=True)
class Query:
    tenant: str
    text: str
    expect: str | None
    """The stored prompt whose answer is right (``None``: any hit is wrong)."""
    label: str


TENANTS = ("tenant-a", "tenant-b", "tenant-c")
HAND_NEAR = 40
"""The first ``HAND_NEAR`` near-duplicate pairs are the hand-written file's; MMLU's follow."""


def tenant_of(prompt: str) -> str:
    return TENANTS[zlib.crc32(prompt.encode()) % len(TENANTS)]


async def on_redis(
    redis_url: str, stored: list[str], queries: list[Query], similarity: float
) -> dict[str, Any]:
    """Every stored prompt in its tenant's partition; queries looked up 64 at a time."""
    cfg = CacheConfig(namespace=f"bench-{uuid.uuid4().hex[:8]}", similarity=similarity)
    cache = SemanticCache(redis_url, cfg)
    await cache.start()

    def req(tenant: str, q: str) -> CacheRequest:
        return CacheRequest(
            tenant, "gpt-4o-mini", [{"role": "user", "content": q}], {"temperature": 0}
        )

    owner = {p: tenant_of(p) for p in stored}
    try:
        items = [(req(owner[p], p), f"{owner[p]}|{p}", Decimal("0.001")) for p in stored]
        for i in range(0, len(items), 1000):
            await cache.put_many(items[i : i + 1000])
        tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # right, wrong, n
        cross = 0
        for i in range(0, len(queries), 64):
            chunk = queries[i : i + 64]
            hits = await cache.get_many([req(q.tenant, q.text) for q in chunk])
            for q, h in zip(chunk, hits, strict=True):
                t = tally[q.label]
                t[2] += 1
                if h is None:
                    continue
                tenant, prompt = h.response.split("|", 1)
                cross += tenant != q.tenant
                right = q.expect is not None and prompt == q.expect and tenant == q.tenant
                t[0 if right else 1] += 1
        return {"tally": dict(tally), "cross": cross, "rejections": cache.stats.guard_rejections}
    finally:
        await cache.clear()
        await cache.close()


def build_queries(
    hand_para: list[tuple[str, str]],
    hand_near: list[tuple[str, str]],
    gen_para: list[Pair],
    gen_near: list[Pair],
) -> tuple[list[str], list[Query]]:
    """Stored prompts and labelled queries; each query also asked by another tenant."""
    stored = list(
        dict.fromkeys([a for a, _ in hand_para + hand_near] + [p.stored for p in gen_para])
    )
    stored_set = set(stored)
    qs = [Query(tenant_of(a), q, a, "para hand") for a, q in hand_para]
    qs += [Query(tenant_of(a), q, None, "near hand" if k < HAND_NEAR else "near mmlu")
           for k, (a, q) in enumerate(hand_near) if q not in stored_set]  # fmt: skip
    qs += [Query(tenant_of(p.stored), p.query, p.stored, f"para {p.size} {p.kind}")
           for p in gen_para if p.query not in stored_set]  # fmt: skip
    qs += [Query(tenant_of(p.stored), p.query, None, f"near {p.size} {p.kind}")
           for p in gen_near if p.query not in stored_set]  # fmt: skip
    others = [
        Query(TENANTS[(TENANTS.index(q.tenant) + 1) % len(TENANTS)], q.text, None, "cross-tenant")
        for q in qs
        if q.expect is not None
    ]
    return stored, qs + others


def summarise(tally: dict[str, list[int]]) -> dict[str, float]:
    """Hit rate of paraphrases, wrong-hit rate over every query that has a right answer or none."""
    para = [v for k, v in tally.items() if k.startswith("para")]
    near = [v for k, v in tally.items() if k.startswith("near")]
    n_para = sum(v[2] for v in para)
    n_all = n_para + sum(v[2] for v in near)
    return {
        "hit_rate": sum(v[0] for v in para) / n_para,
        "wrong_rate": sum(v[1] for v in para + near) / n_all,
        "n_para": n_para,
        "n_near": n_all - n_para,
    }


SEEDS = (1, 2, 3, 4, 5)
PER_FAMILY = 8


def main() -> None:
    root = HERE.parent
    mmlu = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/datasets/routellm-mmlu"
    print(f"# cache_quality on {machine()}")
    t = time.perf_counter()
    local = LocalEmbedder(256)
    load_s = time.perf_counter() - t
    para = pairs("paraphrases.tsv")
    near = pairs("near_duplicates.tsv")
    assert len(near) == HAND_NEAR
    mm = mmlu_near_duplicates(mmlu, local) if mmlu.exists() else []
    near_all = near + mm
    gen = {seed: generate(seed, PER_FAMILY) for seed in SEEDS}
    g_para, g_near = gen[SEEDS[0]]
    print(
        f"sets: {len(para)} hand paraphrase pairs, {len(near)} hand near-duplicates, "
        f"{len(mm)} MMLU near-duplicate pairs"
        + ("" if mm else f" (no MMLU at {mmlu})")
        + f"; generated per seed (seeds {SEEDS}, {PER_FAMILY} per family): "
        + ", ".join(f"{len(p)} paraphrase + {len(n)} near-miss pairs" for p, n in gen.values())
    )
    e_para = para + [(p.stored, p.query) for p in g_para]
    e_near = near_all + [(p.stored, p.query) for p in g_near]
    stored = list(dict.fromkeys([a for a, _ in e_para] + [a for a, _ in e_near]))
    kept = set(stored)  # a generated near miss can be another instance's prompt: not a miss
    e_para = [(a, q) for a, q in e_para if q not in kept]
    e_near = [(a, q) for a, q in e_near if q not in kept]
    compare_embedders(stored, e_para, e_near, local, load_s)
    sweep(stored, e_para, e_near, local)

    sim = float(CacheConfig().similarity)
    s = settings_with_stack()  # outside the event loop: its checks run their own
    print(f"\n3. SemanticCache on Redis (cos>={sim}, guard on, {len(TENANTS)} tenants), per seed:")
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    cross = n_cross = 0
    for seed, (gp, gn) in gen.items():
        st, qs = build_queries(para, near_all, gp, gn)
        res = asyncio.run(on_redis(s.redis_url, st, qs, sim))
        for k, v in res["tally"].items():
            total[k] = [a + b for a, b in zip(total[k], v, strict=True)]
        cross += res["cross"]
        n_cross += res["tally"]["cross-tenant"][2]
        one = summarise({k: v for k, v in res["tally"].items() if k != "cross-tenant"})
        print(
            f"  seed {seed}: paraphrase hit rate {one['hit_rate']:.3f} ({one['n_para']} pairs), "
            f"wrong-hit rate {one['wrong_rate']:.4f} (of {one['n_para'] + one['n_near']}), "
            f"cross-tenant hits {res['cross']}, guard rejections {res['rejections']}"
        )
    print("  per kind, all seeds (right hits / wrong hits / queries):")
    for k in sorted(total):
        r, w, n = total[k]
        print(f"    {k:32s} {r:5d} {w:5d} {n:6d}   hit {r / n:.3f}  wrong {w / n:.4f}")
    agg = summarise({k: v for k, v in total.items() if k != "cross-tenant"})
    gen_only = summarise({k: v for k, v in total.items() if " short " in k or " long " in k})
    print(
        f"  all seeds: paraphrase hit rate {agg['hit_rate']:.3f} ({agg['n_para']}), generated "
        f"only {gen_only['hit_rate']:.3f}; wrong-hit rate {agg['wrong_rate']:.4f}; cross-tenant "
        f"hits {cross} of {n_cross} other-tenant queries"
    )
    _, no_guard = rates(stored, e_para, e_near, *embed3(local, stored, e_para, e_near), sim, False)
    result("cache wrong-hit rate", agg["wrong_rate"], "share", "≤ 0.01", no_guard,
           "same threshold without the guard (seed 1 + hand + MMLU)")  # fmt: skip
    result("cache paraphrase hit rate", agg["hit_rate"], "share", "≥ 0.7")
    result("cache cross-tenant hits", cross, "hits", "0")
    print(f"cache_paraphrase_hit_rate={agg['hit_rate']:.4f}")
    print(f"cache_cross_tenant_hits={cross}")
    print(f"cache_wrong_hit_rate={agg['wrong_rate']:.4f}")


def embed3(
    emb: Any, stored: list[str], para: list[tuple[str, str]], near: list[tuple[str, str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    e = emb.embed
    return e(stored), e([q for _, q in para]), e([q for _, q in near])


def compare_embedders(
    stored: list[str],
    para: list[tuple[str, str]],
    near: list[tuple[str, str]],
    local: LocalEmbedder,
    load_s: float,
) -> None:
    print("\n1. embedders (with the guard): best paraphrase hit rate with wrong hits <= 1%")
    models: list[tuple[str, object]] = [
        ("char-trigram-hash (baseline, no model)", TrigramHash()),
        *[(f"wordllama l2_supercat {d}d", LocalEmbedder(d)) for d in (64, 128, 256)],
    ]
    for name, emb in models:
        sv, pv, nv = embed3(emb, stored, para, near)
        best = (0.0, 1.0, 0.0)
        for thr in np.arange(0.50, 0.995, 0.025):
            h, w = rates(stored, para, near, sv, pv, nv, float(thr), guard=True)
            if w <= 0.01 and h > best[0]:
                best = (h, float(thr), w)
        q1 = ["How do I reset my password for the account?"]
        e = emb.embed  # type: ignore[attr-defined]
        e(q1)
        t0 = time.perf_counter()
        for _ in range(500):
            e(q1)
        per_q = (time.perf_counter() - t0) / 500 * 1e6
        print(
            f"  {name:40s} hit {best[0]:.3f} at cos>={best[1]:.2f} (wrong {best[2]:.3f}); "
            f"{per_q:.0f} µs/query"
        )
    print(
        f"  wordllama: load {load_s:.2f} s, installed {install_mb('wordllama'):.0f} MB "
        f"(+ tokenizers {install_mb('tokenizers'):.0f} MB, safetensors)"
    )


def sweep(
    stored: list[str],
    para: list[tuple[str, str]],
    near: list[tuple[str, str]],
    local: LocalEmbedder,
) -> None:
    print("\n2. with the guard (256d), threshold sweep (hand + seed 1 + MMLU):")
    sv, pv, nv = embed3(local, stored, para, near)
    for thr in (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.95):
        h0, w0 = rates(stored, para, near, sv, pv, nv, thr, guard=False)
        h1, w1 = rates(stored, para, near, sv, pv, nv, thr, guard=True)
        print(
            f"  cos>={thr:.2f}: no guard hit {h0:.3f} wrong {w0:.3f} | guard hit {h1:.3f} "
            f"wrong {w1:.3f}"
        )


if __name__ == "__main__":
    main()
