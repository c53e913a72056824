"""PostgreSQL schema management: migrations, daily partitions, retention.

Migrations are the numbered ``migrations/*.sql`` files, applied in order inside one
transaction each and recorded in ``spendstream_migrations``; an advisory lock keeps two
processes (``stack up`` and a sink) from applying the same one twice.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

MIGRATION_LOCK = 0x5350454E  # advisory lock id ("SPEN")
_PARTITION = re.compile(r"^llm_calls_(\d{8})$")


def migrations() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped with the package, in order."""
    files = resources.files("spendstream.sinks") / "migrations"
    return sorted(
        (f.name, f.read_text(encoding="utf-8")) for f in files.iterdir() if f.name.endswith(".sql")
    )


async def migrate(conn: Any) -> list[str]:
    """Apply the migrations not applied yet; returns their names."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS spendstream_migrations "
        "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        done = {r["name"] for r in await conn.fetch("SELECT name FROM spendstream_migrations")}
        for name, sql in migrations():
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO spendstream_migrations (name) VALUES ($1)", name)
            applied.append(name)
    return applied


def partition_name(day: date) -> str:
    return f"llm_calls_{day:%Y%m%d}"


async def ensure_partitions(conn: Any, days: set[date]) -> None:
    """Create the daily partitions for ``days`` (no-op for existing ones)."""
    for day in sorted(days):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF llm_calls "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
        )


async def prune(conn: Any, older_than: timedelta, now: datetime | None = None) -> list[str]:
    """Drop whole daily partitions whose day ended more than ``older_than`` ago."""
    cutoff = ((now or datetime.now(UTC)) - older_than).date()
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'llm_calls'"
    )
    dropped = []
    for r in rows:
        m = _PARTITION.match(r["relname"])
        if m is None:
            continue
        day = datetime.strptime(m.group(1), "%Y%m%d").date()
        if day < cutoff:
            await conn.execute(f"DROP TABLE {r['relname']}")
            dropped.append(r["relname"])
    return sorted(dropped)


MAX_AGE = timedelta(days=36_500)
"""Ages beyond 100 years are refused: the schema's events start in 2000, and a larger age
(``999999999d``) overflowed ``datetime`` into a traceback."""


def parse_age(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m`` → timedelta, at most :data:`MAX_AGE`; ValueError otherwise."""
    m = re.fullmatch(r"(\d{1,12})([dhm])", text.strip())
    if m is None:
        raise ValueError(f"age must look like 90d, 12h or 30m, got {text[:40]!r}")
    n, unit = int(m.group(1)), m.group(2)
    per = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}[unit]
    if n > MAX_AGE // per:  # checked before multiplying: timedelta itself overflows
        raise ValueError(f"age {text.strip()} is more than 100 years ({MAX_AGE.days}d)")
    return n * per
