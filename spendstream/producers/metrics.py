"""Prometheus view of an emitter, for hosts that expose /metrics: register it yourself.

    from prometheus_client import REGISTRY
    REGISTRY.register(EmitterCollector(emitter))

Read at scrape time from :meth:`Emitter.stats`, so the emit path does no metric work.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .emitter import DropReason, Emitter
from .repair import RepairReason


class EmitterCollector(Collector):
    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter

    def collect(self) -> Iterator[Metric]:
        st = self.emitter.stats()
        delivered = CounterMetricFamily(
            "spendstream_sdk_events_delivered", "Call events acknowledged by Kafka."
        )
        delivered.add_metric([], st.delivered)
        yield delivered
        dropped = CounterMetricFamily(
            "spendstream_sdk_events_dropped", "Call events dropped, by reason.", labels=["reason"]
        )
        for reason in DropReason:
            dropped.add_metric([reason.value], st.dropped.get(reason.value, 0))
        yield dropped
        queued = GaugeMetricFamily(
            "spendstream_sdk_events_queued", "Accepted call events not yet acknowledged."
        )
        queued.add_metric([], st.queued)
        yield queued
        repaired = CounterMetricFamily(
            "spendstream_sdk_events_repaired",
            "Call events emitted after a refused value was fixed or left out, by reason.",
            labels=["reason"],
        )
        for why in RepairReason:
            repaired.add_metric([why.value], st.repaired.get(why.value, 0))
        yield repaired
        unreadable = CounterMetricFamily(
            "spendstream_sdk_usage_unreadable",
            "Call events sent with a usage_error (the provider's usage payload could not be "
            "read; priced as unknown), by provider.",
            labels=["provider"],
        )
        for provider, n in sorted(st.usage_unreadable.items()):
            unreadable.add_metric([provider], n)
        yield unreadable
        buffered = GaugeMetricFamily(
            "spendstream_sdk_buffered_bytes",
            "Estimated bytes held for undelivered events (bounded by producer_buffer_bytes).",
        )
        buffered.add_metric([], st.buffered_bytes)
        yield buffered
