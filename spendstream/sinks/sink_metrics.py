"""``/metrics`` of the PostgreSQL sink: what it stored and what it had to dead-letter.

Issue 13's rule is that a record that cannot be processed is dead-lettered, *counted and
alerted*. The worker's dead letters already page through ``SpendstreamDeadLettersGrowing``;
the sink's (rows PostgreSQL refuses, enriched lines that do not parse) were only in its log.
So the sink exports the same ``spendstream_dead_letters_total`` family — one more scrape
target, so the existing rule, a ``sum`` over targets, pages on either — plus its own row
counters. The sink takes the first free port of the workers' range, which the local
Prometheus already scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .postgres import SinkStats


class SinkCollector(Collector):
    """Reads :class:`SinkStats` at scrape time (no second copy of the counts to drift)."""

    def __init__(self, stats: SinkStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        st = self.stats
        for name, doc, value in (
            ("spendstream_dead_letters", "Records sent to the dead-letter topic", st.dead_letters),
            ("spendstream_sink_rows_seen", "Enriched events read by the sink", st.rows_seen),
            ("spendstream_sink_rows_new", "Rows inserted (repeats excluded)", st.rows_new),
            ("spendstream_sink_rows_refused", "Rows PostgreSQL refused", st.rows_refused),
            ("spendstream_sink_bad_lines", "Enriched lines that do not parse", st.bad_lines),
        ):
            fam = CounterMetricFamily(name, doc, labels=["stage"])
            fam.add_metric(["sink"], value)
            yield fam
