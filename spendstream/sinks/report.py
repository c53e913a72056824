"""`spendstream report`: who spent what, from the per-call log in PostgreSQL.

Names in a report come from producers, so they are untrusted: the table escapes control and
bidirectional-override characters (an ESC sequence in a name would drive the terminal; the
schema refuses control characters now, older rows may hold them), and CSV cells that a
spreadsheet would read as a formula (starting with ``= + - @``, tab or CR) get a leading ``'``
as the OWASP CSV-injection guidance says (a lone ``-``, the report's "none", is left as is).
Groups are the columns themselves (``service, endpoint``), never their concatenation, so
``("a/v1", "/x")`` and ``("a", "/v1/x")`` stay two rows.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

BY = {
    "endpoint": "service || endpoint",  # display only: grouped by GROUP_BY's columns
    "model": "provider || '/' || request_model",
    "team": "coalesce(team, '-')",
    "user": "coalesce(user_id, '-')",
    "prompt_version": "coalesce(prompt_version, '-')",
    "service": "service",
}
GROUP_BY = {"endpoint": "service, endpoint", "model": "provider, request_model"}
"""Groups by the columns when the key joins several: a join alone can collide."""

_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))} | {
    c: f"\\u{c:04x}"
    for c in (0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F), *range(0x2066, 0x206A))
}


def printable(text: str) -> str:
    """``text`` safe to print to a terminal: control and bidi characters as escapes."""
    return text.translate(_ESCAPES)


def csv_cell(text: str) -> str:
    """A CSV cell a spreadsheet shows as text, never runs as a formula (OWASP)."""
    text = printable(text)
    if text != "-" and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


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
        GROUP BY {GROUP_BY.get(by, "1")} ORDER BY cost DESC, key
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
                csv_cell(r.key),
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
    keys = [printable(r.key) for r in rows]
    width = max([len(by), 5, *(len(k) for k in keys)])
    lines = [
        f"{by:<{width}} {'cost USD':>14} {'calls':>9} {'in tokens':>12} {'out tokens':>11} "
        f"{'p95 ms':>8} {'share':>7}"
    ]
    for key, r in zip(keys, rows, strict=True):
        p95 = "-" if r.p95_latency_ms is None else f"{r.p95_latency_ms:.0f}"
        unpriced = f"  ({r.unpriced_calls} unpriced)" if r.unpriced_calls else ""
        lines.append(
            f"{key:<{width}} {r.cost_usd:>14.6f} {r.calls:>9,} {r.input_tokens:>12,} "
            f"{r.output_tokens:>11,} {p95:>8} {r.share:>7.1%}{unpriced}"
        )
    lines.append(f"{'total':<{width}} {total:>14.6f} {calls:>9,}")
    return "\n".join(lines)
