"""Events/s of the cost stage alone (cached price row + integer picodollar arithmetic) against
genai-prices ``calc_price`` per event, in the same run, on the same events.

The cost stage is what the worker runs per event after tokens are final (with the event time
in epoch seconds, which the windows need too): look up the cached :class:`PriceRow` for
(provider, model, day) and compute the five cost parts. Both paths must agree on every total
(checked). Best of 5 passes. Run: ``python bench/cost_enrich.py [N]``. Last line:
``cost_enrich_eps=<events per second of the cost stage>``.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from _common import machine, result
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.stream.enrich import final_tokens
from spendstream.stream.prices import PriceBook, pico_to_usd


def main(n: int = 200_000) -> None:
    events = [
        e
        for e in SyntheticTraffic(TrafficConfig(seed=5)).events(count=n)
        if e.usage.input_tokens is not None
    ]
    rows = [
        (e.provider, e.response_model or e.request_model, e.timestamp.timestamp(), final_tokens(e))
        for e in events
    ]
    book = PriceBook()
    for p, m, ts, _ in rows[:1000]:
        book.row_at(p, m, ts)  # warm the cache, as a running worker has

    # best of 5 passes: this shared VM's speed varies by ±50% from second to second
    ours_s = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        totals = []
        for p, m, ts, tok in rows:
            row = book.row_at(p, m, ts)
            totals.append(sum(row.cost_pico(tok)) if row is not None else None)
        ours_s = min(ours_s, time.perf_counter() - t0)

    k = min(len(rows), 5_000)  # calc_price is slow: time a sample, check agreement on it
    t0 = time.perf_counter()
    ref = []
    for p, m, ts, tok in rows[:k]:
        r = calc_price(
            GPUsage(
                input_tokens=tok.input_tokens,
                output_tokens=tok.output_tokens,
                cache_read_tokens=tok.cache_read_tokens,
                cache_write_tokens=tok.cache_creation_tokens,
                output_reasoning_tokens=tok.reasoning_tokens,
            ),
            m,
            provider_id=p,
            genai_request_timestamp=datetime.fromtimestamp(ts, UTC),
        )
        ref.append(r.total_price)
    ref_s = time.perf_counter() - t0
    mismatches = sum(
        1 for a, b in zip(totals[:k], ref, strict=True) if a is None or pico_to_usd(a) != b
    )

    eps, ref_eps = len(rows) / ours_s, k / ref_s
    print(f"cost_enrich: {len(rows)} events; {machine()}")
    print(f"{'path':<34} {'events/s':>12}")
    print(f"{'cached row + integer picodollars':<34} {eps:>12,.0f}")
    print(f"{'genai-prices calc_price per event':<34} {ref_eps:>12,.0f}")
    print(
        f"speed-up {eps / ref_eps:,.0f}x; price lookups {book.lookups}; "
        f"totals differing from calc_price: {mismatches} of {k}"
    )
    print("goal: >= 1,000,000 events/s")
    result(
        "cost enrichment",
        eps,
        "events/s",
        "≥ 1,000,000/s",
        ref_eps,
        "genai-prices calc_price per event",
    )
    print(f"cost_enrich_eps={eps:.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
