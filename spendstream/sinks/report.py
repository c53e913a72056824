"""`spendstream report`: who spent what, from the per-call log in PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

BY = {
    "endpoint": "service || endpoint",
    "model": "provider || '/' || request_model",
    "team": "coalesce(team, '-')",
    "user": "coalesce(user_id, '-')",
    "prompt_version": "coalesce(prompt_version, '-')",
    "service": "service",
}


@dataclass(frozen=True, slots=True)
class ReportRow:
    key: str
    cost_usd: Decimal
    calls: int
    input_tokens: int
    output_tokens: int
    p95_latency_ms: float | None
    share: float
    unpriced_calls: int


async def report(
    conn: Any, since: datetime, until: datetime, by: str, tags: dict[str, str] | None = None
) -> list[ReportRow]:
    """Rows by ``by`` for calls in [since, until), most expensive first; ``tags`` keeps only
    calls carrying all of those tags (a run, an experiment, a feature flag)."""
    if by not in BY:
        raise ValueError(f"--by must be one of {', '.join(BY)}")
    rows = await conn.fetch(
        f"""
        SELECT {BY[by]} AS key, coalesce(sum(cost_usd), 0) AS cost, count(*) AS calls,
               sum(input_tokens) AS inp, sum(output_tokens) AS out,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
               count(*) FILTER (WHERE price_unknown) AS unpriced
        FROM llm_calls WHERE ts >= $1 AND ts < $2 AND tags @> $3::jsonb
        GROUP BY 1 ORDER BY cost DESC, key
        """,
        since,
        until,
        json.dumps(tags or {}),
    )
    total = sum((r["cost"] for r in rows), Decimal(0))
    return [
        ReportRow(
            key=r["key"],
            cost_usd=r["cost"],
            calls=r["calls"],
            input_tokens=int(r["inp"] or 0),
            output_tokens=int(r["out"] or 0),
            p95_latency_ms=r["p95"],
            share=float(r["cost"] / total) if total else 0.0,
            unpriced_calls=r["unpriced"],
        )
        for r in rows
    ]


HEADER = ("key", "cost_usd", "calls", "input_tokens", "output_tokens", "p95_latency_ms", "share")


def to_csv(rows: list[ReportRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow((*HEADER, "unpriced_calls"))
    for r in rows:
        w.writerow(
            (
                r.key,
                r.cost_usd,
                r.calls,
                r.input_tokens,
                r.output_tokens,
                "" if r.p95_latency_ms is None else f"{r.p95_latency_ms:.1f}",
                f"{r.share:.4f}",
                r.unpriced_calls,
            )
        )
    return out.getvalue()


def to_table(rows: list[ReportRow], by: str) -> str:
    total = sum((r.cost_usd for r in rows), Decimal(0))
    calls = sum(r.calls for r in rows)
    width = max([len(by), 5, *(len(r.key) for r in rows)])
    lines = [
        f"{by:<{width}} {'cost USD':>14} {'calls':>9} {'in tokens':>12} {'out tokens':>11} "
        f"{'p95 ms':>8} {'share':>7}"
    ]
    for r in rows:
        p95 = "-" if r.p95_latency_ms is None else f"{r.p95_latency_ms:.0f}"
        unpriced = f"  ({r.unpriced_calls} unpriced)" if r.unpriced_calls else ""
        lines.append(
            f"{r.key:<{width}} {r.cost_usd:>14.6f} {r.calls:>9,} {r.input_tokens:>12,} "
            f"{r.output_tokens:>11,} {p95:>8} {r.share:>7.1%}{unpriced}"
        )
    lines.append(f"{'total':<{width}} {total:>14.6f} {calls:>9,}")
    return "\n".join(lines)
