"""Semantic cache quality: paraphrases that should hit, near-duplicates that must not.

    python bench/cache_quality.py [MMLU_DIR]

Sets (README "Semantic cache"): ``bench/data/paraphrases.tsv`` (55 hand-written pairs with one
intent), ``bench/data/near_duplicates.tsv`` (40 pairs differing in a number, an entity, a
negation or a direction — some lower-case), and MMLU near-duplicates: for each subject, the
most similar pairs of *different* questions (by the local model's cosine), 300 in all.

1. Embedder comparison (with the guard): at each model's best threshold with wrong hits
   ≤ 1%, the paraphrase hit rate; plus load time, per-query time and install size. Baseline
   in the same run: character-trigram hashing (no model).
2. The cache as shipped, on the real Redis: every stored prompt in one tenant's partition;
   paraphrase hit rate, wrong-hit rate on the near-duplicates (with the guard), and the same
   prompts asked by a second tenant (cross-tenant hits must be 0). A sweep shows the threshold
   choice. Last line: ``cache_wrong_hit_rate=<value>``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
import zlib
from decimal import Decimal
from pathlib import Path

import numpy as np
from _common import machine, result, settings_with_stack

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


async def on_redis(
    redis_url: str,
    stored: list[str],
    para: list[tuple[str, str]],
    near: list[tuple[str, str]],
    similarity: float,
) -> dict[str, float]:
    cfg = CacheConfig(namespace=f"bench-{uuid.uuid4().hex[:8]}", similarity=similarity)
    cache = SemanticCache(redis_url, cfg)
    await cache.start()

    def req(tenant: str, q: str) -> CacheRequest:
        return CacheRequest(
            tenant, "gpt-4o-mini", [{"role": "user", "content": q}], {"temperature": 0}
        )

    try:
        answer = {p: f"answer-{i}" for i, p in enumerate(stored)}
        for p in stored:
            await cache.put(req("tenant-a", p), answer[p], Decimal("0.001"))
        hits = wrong = 0
        for orig, q in para:
            h = await cache.get(req("tenant-a", q))
            if h is not None:
                hits += h.response == answer[orig]
                wrong += h.response != answer[orig]
        for _, q in near:
            wrong += (await cache.get(req("tenant-a", q))) is not None
        cross = 0
        for q in [*stored, *(q for _, q in para)]:
            cross += (await cache.get(req("tenant-b", q))) is not None
        return {
            "hit_rate": hits / len(para),
            "wrong_rate": wrong / (len(para) + len(near)),
            "cross_tenant_hits": cross,
            "guard_rejections": cache.stats.guard_rejections,
            "cross_queries": len(stored) + len(para),
        }
    finally:
        await cache.clear()
        await cache.close()


def main() -> None:
    root = HERE.parent
    mmlu = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/datasets/routellm-mmlu"
    print(f"# cache_quality on {machine()}")
    t = time.perf_counter()
    local = LocalEmbedder(256)
    load_s = time.perf_counter() - t
    para = pairs("paraphrases.tsv")
    near = pairs("near_duplicates.tsv")
    mm = mmlu_near_duplicates(mmlu, local) if mmlu.exists() else []
    near_all = near + mm
    print(
        f"sets: {len(para)} paraphrase pairs, {len(near)} hand near-duplicates, "
        f"{len(mm)} MMLU near-duplicate pairs" + ("" if mm else f" (no MMLU at {mmlu})")
    )
    stored = list(dict.fromkeys([a for a, _ in para] + [a for a, _ in near_all]))

    print("\n1. embedders (with the guard): best paraphrase hit rate with wrong hits <= 1%")
    models: list[tuple[str, object, float]] = [
        ("char-trigram-hash (baseline, no model)", TrigramHash(), 0.0),
        *[(f"wordllama l2_supercat {d}d", LocalEmbedder(d), load_s) for d in (64, 128, 256)],
    ]
    for name, emb, _ in models:
        e = emb.embed  # type: ignore[attr-defined]
        sv, pv, nv = e(stored), e([q for _, q in para]), e([q for _, q in near_all])
        best = (0.0, 1.0, 0.0)
        for thr in np.arange(0.50, 0.995, 0.025):
            h, w = rates(stored, para, near_all, sv, pv, nv, float(thr), guard=True)
            if w <= 0.01 and h > best[0]:
                best = (h, float(thr), w)
        q1 = ["How do I reset my password for the account?"]
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

    print("\n2. with the guard (256d), threshold sweep:")
    sv, pv, nv = (
        local.embed(stored),
        local.embed([q for _, q in para]),
        local.embed([q for _, q in near_all]),
    )
    for thr in (0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.95):
        h0, w0 = rates(stored, para, near_all, sv, pv, nv, thr, guard=False)
        h1, w1 = rates(stored, para, near_all, sv, pv, nv, thr, guard=True)
        print(
            f"  cos>={thr:.2f}: no guard hit {h0:.3f} wrong {w0:.3f} | guard hit {h1:.3f} "
            f"wrong {w1:.3f}"
        )
    sim = float(CacheConfig().similarity)
    s = settings_with_stack()  # outside the event loop: its checks run their own
    res = asyncio.run(on_redis(s.redis_url, stored, para, near_all, sim))
    print(
        f"\n3. SemanticCache on Redis (default cos>={sim}, guard on): paraphrase hit rate "
        f"{res['hit_rate']:.3f}, wrong-hit rate {res['wrong_rate']:.4f}, guard rejections "
        f"{res['guard_rejections']}, cross-tenant hits {res['cross_tenant_hits']} of "
        f"{res['cross_queries']} queries"
    )
    _, no_guard = rates(stored, para, near_all, sv, pv, nv, sim, guard=False)
    result(
        "cache wrong-hit rate",
        res["wrong_rate"],
        "share",
        "≤ 0.01",
        no_guard,
        "same threshold without the guard",
    )
    result("cache paraphrase hit rate", res["hit_rate"], "share", "")
    result("cache cross-tenant hits", res["cross_tenant_hits"], "hits", "0")
    print(f"cache_paraphrase_hit_rate={res['hit_rate']:.4f}")
    print(f"cache_cross_tenant_hits={res['cross_tenant_hits']}")
    print(f"cache_wrong_hit_rate={res['wrong_rate']:.4f}")


if __name__ == "__main__":
    main()
