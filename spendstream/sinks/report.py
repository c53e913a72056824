"""`spendstream report`: who spent what, from the per-call log in PostgreSQL.

Names in a report come from producers, so they are untrusted: the table escapes control and
bidirectional-override characters (an ESC sequence in a name would drive the terminal; the
schema refuses control characters now, older rows may hold them), and CSV cells that a
spreadsheet would read as a formula (starting with ``= + - @``, tab or CR) get a leading ``'``
as the OWASP CSV-injection guidance says (a lone ``-``, the report's "none", is left as is).
Groups are the columns themselves (``service, endpoint``), never their concatenation, so
``("a/v1", "/x")`` and ``("a", "/v1/x")`` stay two rows.

``--by session`` and ``--by trace`` are the "most expensive sessions / requests" view
(:func:`top_groups`): per session or trace the cost, calls, the services involved and the
duration from the first call's start to the last call's end, the ``top`` dearest first. A RAG
request is an embedding call, a rerank and a generation in three services: only a shared
trace id sums them into one request's cost. Calls without a session (trace) id are not a
group there. A session or trace that straddles ``--since``/``--until`` is counted for the calls
inside the window only.
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


GROUP_COLUMNS = {"session": "session_id", "trace": "trace_id"}
"""The groupings of :func:`top_groups` and their columns (indexed: migration 0005)."""


@dataclass(frozen=True, slots=True)
class GroupRow:
    """One session or trace (request across services): what it cost and what it involved."""

    key: str
    cost_usd: Decimal
    calls: int
    services: tuple[str, ...]
    first_ts: datetime
    duration_ms: float
    """First call's start to the last call's end (start + latency)."""
    unpriced_calls: int


@dataclass(frozen=True, slots=True)
class TopGroups:
    """The ``top`` dearest groups of a window and the totals they are the top of."""

    by: str
    rows: list[GroupRow]
    groups: int
    """Sessions (traces) in the window, not only the ones shown."""
    cost_usd: Decimal
    """Their summed cost (the share of spend the shown ones are)."""


async def top_groups(
    conn: Any,
    since: datetime,
    until: datetime,
    by: str,
    top: int = 20,
    tags: dict[str, str] | None = None,
) -> TopGroups:
    """The ``top`` most expensive sessions or traces of calls in [since, until)."""
    if by not in GROUP_COLUMNS:
        raise ValueError(f"top_groups groups by {' or '.join(GROUP_COLUMNS)}, not {by!r}")
    col = GROUP_COLUMNS[by]
    rows = await conn.fetch(
        f"""
        SELECT {col} AS key, coalesce(sum(cost_usd), 0) AS cost, count(*) AS calls,
               array_agg(DISTINCT service ORDER BY service) AS services, min(ts) AS first_ts,
               extract(epoch FROM max(ts + coalesce(latency_ms, 0) * interval '1 millisecond')
                                  - min(ts)) * 1000 AS duration_ms,
               count(*) FILTER (WHERE price_unknown) AS unpriced,
               count(*) OVER () AS groups, sum(coalesce(sum(cost_usd), 0)) OVER () AS all_cost
        FROM llm_calls
        WHERE ts >= $1 AND ts < $2 AND {col} IS NOT NULL AND tags @> $3::jsonb
        GROUP BY {col} ORDER BY cost DESC, key LIMIT $4
        """,
        since,
        until,
        json.dumps(tags or {}),
        top,
    )
    out = [
        GroupRow(
            key=r["key"],
            cost_usd=r["cost"],
            calls=r["calls"],
            services=tuple(r["services"]),
            first_ts=r["first_ts"],
            duration_ms=float(r["duration_ms"]),
            unpriced_calls=r["unpriced"],
        )
        for r in rows
    ]
    groups = rows[0]["groups"] if rows else 0
    return TopGroups(by, out, groups, rows[0]["all_cost"] if rows else Decimal(0))


def groups_csv(top: TopGroups) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(
        ("key", "cost_usd", "calls", "services", "first_ts", "duration_ms", "unpriced_calls")
    )
    for r in top.rows:
        w.writerow(
            (
                csv_cell(r.key),
                r.cost_usd,
                r.calls,
                csv_cell(" ".join(r.services)),
                r.first_ts.isoformat(),
                f"{r.duration_ms:.1f}",
                r.unpriced_calls,
            )
        )
    return out.getvalue()


def groups_table(top: TopGroups) -> str:
    """The dearest sessions/requests, then how much of the window's grouped spend they are."""
    keys = [printable(r.key) for r in top.rows]
    services = [printable(", ".join(r.services)) for r in top.rows]
    width = max([len(top.by), 5, *(len(k) for k in keys)])
    lines = [
        f"{top.by:<{width}} {'cost USD':>14} {'calls':>7} {'duration ms':>12}  "
        f"{'first call (UTC)':<19}  services"
    ]
    for key, svc, r in zip(keys, services, top.rows, strict=True):
        unpriced = f"  ({r.unpriced_calls} unpriced)" if r.unpriced_calls else ""
        lines.append(
            f"{key:<{width}} {r.cost_usd:>14.6f} {r.calls:>7,} {r.duration_ms:>12.1f}  "
            f"{r.first_ts:%Y-%m-%d %H:%M:%S}  {svc}{unpriced}"
        )
    shown = sum((r.cost_usd for r in top.rows), Decimal(0))
    name = {"session": "sessions", "trace": "traces"}.get(top.by, top.by)
    lines.append(
        f"top {len(top.rows)} of {top.groups:,} {name}: {shown:.6f} of {top.cost_usd:.6f} USD"
    )
    return "\n".join(lines)


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
