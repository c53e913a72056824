"""Prometheus view of a cache's stats; register it in the host app's registry.

    REGISTRY.register(CacheCollector(cache))

Read at scrape time, so lookups do no metric work. Labels are bounded (tier/outcome only).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .semantic import SemanticCache


class CacheCollector(Collector):
    def __init__(self, cache: SemanticCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        st = self.cache.stats
        lookups = CounterMetricFamily(
            "spendstream_cache_lookups", "Response cache lookups by result.", labels=["result"]
        )
        lookups.add_metric(["exact"], st.hits_exact)
        lookups.add_metric(["semantic"], st.hits_semantic)
        lookups.add_metric(["miss"], st.misses)
        yield lookups
        for name, doc, value in (
            (
                "spendstream_cache_guard_rejections",
                "Semantic candidates the guard refused (a meaning-carrying token differs).",
                st.guard_rejections,
            ),
            (
                "spendstream_cache_stale_candidates",
                "Index candidates already gone from Redis.",
                st.stale,
            ),
            ("spendstream_cache_puts", "Answers stored.", st.puts),
            ("spendstream_cache_evictions", "Entries evicted by the size bound.", st.evictions),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        saved = CounterMetricFamily(
            "spendstream_cache_saved_usd", "Estimated spend avoided by hits (cached calls' cost)."
        )
        saved.add_metric([], float(st.saved_usd))
        yield saved
        entries = GaugeMetricFamily(
            "spendstream_cache_index_entries", "Entries in this instance's semantic index."
        )
        entries.add_metric([], self.cache.entries())
        yield entries
