"""Prometheus metrics of a stream worker, updated once per batch and rendered at scrape time.

The worker adds each batch's enriched calls to plain counters and bucket arrays here (no
prometheus_client call per event); a custom collector turns them into metric families when
Prometheus scrapes. Labels are bounded: service, endpoint, provider, model, team, status —
never user ids or prompt text. The ``gen_ai_*`` histograms follow the OTel GenAI metric
conventions (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``) with the
spec's advisory bucket boundaries, under Prometheus-legal names.

Label sets are capped (``metrics_max_label_sets``, default 2,000, per family group): label
values come from producers, and 20,000 endpoints made a 146 MB scrape rendered in 35 s
holding the GIL (issue 13). Once the cap is reached, a call with a label set not seen yet is
counted under ``other`` for every free-text label (service, endpoint, provider, model, team;
status is an enum and kept), and in ``spendstream_metric_labels_overflow_total{family}``. So
each ``spendstream_llm_*`` family has at most cap + one ``other`` set per status (the token
family × 13 token types), each ``gen_ai_*`` family at most cap + 1 (× 2 token types); the sums
over a family stay exact. The check is one dict lookup per call.
"""

from __future__ import annotations

import socket
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..money import PICO, usd_to_pico_rounded

if TYPE_CHECKING:
    from .enrich import EnrichedCall

LABELS = ("service", "endpoint", "provider", "model", "team", "status")
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning", "cache_write_1h",
               "audio_input", "audio_cache_read", "audio_output", "image_input", "image_output",
               "web_searches", "image_cache_read")  # fmt: skip
"""``spendstream_llm_tokens_total{type}``: the five counts, then the priced units (each a part
of a count above: ``cache_write_1h`` of ``cache_write``, ``audio_input``/``image_input`` of
``input``, ``audio_cache_read`` of ``cache_read``, ``audio_output``/``image_output`` of
``output``, ``image_cache_read`` of ``cache_read`` and ``image_input``; ``web_searches`` counts
searches, not tokens). Thirteen, fixed."""
_EXTRA_TYPES = TOKEN_TYPES[5:]  # in the order of FinalTokens.extra (prices.EXTRA_FIELDS)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip
"""OTel ``gen_ai.client.token.usage`` advisory boundaries."""
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
"""OTel ``gen_ai.client.operation.duration`` advisory boundaries (seconds)."""

Key = tuple[str, ...]
OTHER = "other"


class LabelCap:
    """At most ``limit`` distinct label sets; later new ones fold into ``other`` values."""

    __slots__ = ("keep", "limit", "overflow", "seen")

    def __init__(self, limit: int, keep: tuple[int, ...] = ()) -> None:
        self.limit = limit
        self.keep = keep
        """Positions of bounded labels (kept as they are when folding)."""
        self.seen: set[Key] = set()
        self.overflow = 0
        """Calls counted under ``other`` because the cap was reached."""

    def key(self, k: Key, calls: int = 1) -> Key:
        """The label set to count ``calls`` calls of label set ``k`` under."""
        if k in self.seen:
            return k
        if len(self.seen) < self.limit:
            self.seen.add(k)
            return k
        self.overflow += calls
        return tuple(v if i in self.keep else OTHER for i, v in enumerate(k))


class _Hist:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self, n: int) -> None:
        self.buckets = [0] * (n + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, bounds: tuple[float, ...], v: float) -> None:
        self.buckets[bisect_left(bounds, v)] += 1
        self.sum += v
        self.count += 1

    def merge(self, o: _Hist) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, o.buckets, strict=True)]
        self.sum += o.sum
        self.count += o.count

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for b, n in zip((*[str(float(x)) for x in bounds], "+Inf"), self.buckets, strict=True):
            acc += n
            out.append((b, acc))
        return out


def _bump(d: dict[Any, int], k: Any, n: int) -> None:
    d[k] = d.get(k, 0) + n


def _hist(d: dict[Any, _Hist], k: Any, n: int) -> _Hist:
    h = d.get(k)
    if h is None:
        h = d[k] = _Hist(n)
    return h


class _Group:
    """One batch's calls of one raw label set, summed (see :meth:`PipelineMetrics.add_calls`).

    Measured (py-spy, bench/pipeline_throughput, 100k events): per-call updates of the label
    maps (a label-cap lookup, then ~10 dict updates keyed by label tuples per call) were ~7%
    of the worker's CPU; a batch of ~1,800 calls has a few dozen label sets, so summing per
    set first leaves per call only attribute additions and the histogram bisects.
    """

    __slots__ = (
        "cache_hits",
        "cache_saved",
        "calls",
        "cost",
        "estimated",
        "genai_in",
        "genai_out",
        "latency",
        "price_unknown",
        "tokens",
        "ttft",
        "unreadable",
    )

    def __init__(self) -> None:
        self.calls = self.cost = self.unreadable = self.cache_hits = self.cache_saved = 0
        self.estimated = self.price_unknown = 0
        self.tokens = [0] * len(TOKEN_TYPES)
        self.genai_in, self.genai_out = _Hist(len(TOKEN_BUCKETS)), _Hist(len(TOKEN_BUCKETS))
        self.latency, self.ttft = _Hist(len(DURATION_BUCKETS)), _Hist(len(DURATION_BUCKETS))

    def add(self, c: EnrichedCall) -> None:
        ev, t = c.event, c.tokens
        self.calls += 1
        self.cost += c.cost_pico
        tok = self.tokens
        tok[0] += t.input_tokens
        tok[1] += t.output_tokens
        tok[2] += t.cache_read_tokens
        tok[3] += t.cache_creation_tokens
        tok[4] += t.reasoning_tokens
        if t.extra is not None:
            for i, n in enumerate(t.extra, 5):
                tok[i] += n
        if ev.usage_error is not None:
            self.unreadable += 1
        if ev.cache_hit:
            self.cache_hits += 1
            if ev.cache_saved_usd:
                self.cache_saved += usd_to_pico_rounded(ev.cache_saved_usd)
        self.estimated += bool(t.estimated)
        self.price_unknown += c.parts_pico is None
        self.genai_in.observe(TOKEN_BUCKETS, t.input_tokens)
        self.genai_out.observe(TOKEN_BUCKETS, t.output_tokens)
        if ev.latency_ms is not None:
            self.latency.observe(DURATION_BUCKETS, ev.latency_ms / 1000)
        if ev.ttft_ms is not None:
            self.ttft.observe(DURATION_BUCKETS, ev.ttft_ms / 1000)


class PipelineMetrics(Collector):
    """What the worker has enriched so far, by bounded labels."""

    def __init__(
        self, lag: Callable[[], dict[int, int]] | None = None, max_label_sets: int = 2000
    ) -> None:
        self.labels = LabelCap(max_label_sets, keep=(LABELS.index("status"),))
        self.genai_labels = LabelCap(max_label_sets, keep=(0,))  # the operation is an enum
        self.calls: dict[Key, int] = {}
        self.cost_pico: dict[Key, int] = {}
        self.tokens: dict[tuple[Key, str], int] = {}
        self.cache_hits: dict[Key, int] = {}
        self.cache_saved_pico: dict[Key, int] = {}
        self.estimated: dict[Key, int] = {}
        self.price_unknown: dict[Key, int] = {}
        self.usage_unreadable: dict[str, int] = {}
        """Calls whose usage the producer could not read, by provider (capped like labels)."""
        self._providers = LabelCap(max_label_sets)
        self.duplicates: dict[str, int] = {}
        """Events whose id was counted before (a retried export), by service (capped)."""
        self._services = LabelCap(max_label_sets)
        self.latency: dict[Key, _Hist] = {}
        self.ttft: dict[Key, _Hist] = {}
        self.genai_tokens: dict[tuple[Key, str], _Hist] = {}
        self.genai_duration: dict[Key, _Hist] = {}
        self.dead_letters = 0
        self.late_dropped = 0
        self.future_skewed = 0
        self.lag = lag

    def add_calls(self, calls: Iterable[EnrichedCall]) -> None:
        """Add a batch of calls: summed per raw label set first (:class:`_Group`), then one
        label-cap lookup and one update of each family per label set, not per call."""
        groups: dict[Key, _Group] = {}
        for c in calls:
            ev = c.event
            raw: Key = (ev.service, ev.endpoint, ev.provider, ev.request_model, ev.team or "",
                   ev.status.value, ev.operation.value)  # fmt: skip
            g = groups.get(raw)
            if g is None:
                g = groups[raw] = _Group()
            g.add(c)
        for raw, g in groups.items():
            self._add_group(raw, g)

    def _add_group(self, raw: Key, g: _Group) -> None:
        key = self.labels.key(raw[:6], g.calls)
        gkey = self.genai_labels.key((raw[6], raw[2], raw[3]), g.calls)
        _bump(self.calls, key, g.calls)
        _bump(self.cost_pico, key, g.cost)
        for typ, n in zip(TOKEN_TYPES, g.tokens, strict=True):
            if n:
                _bump(self.tokens, (key, typ), n)
        if g.unreadable:
            (prov,) = self._providers.key((raw[2],), g.unreadable)
            _bump(self.usage_unreadable, prov, g.unreadable)
        for d, n in (
            (self.cache_hits, g.cache_hits),
            (self.cache_saved_pico, g.cache_saved),
            (self.estimated, g.estimated),
            (self.price_unknown, g.price_unknown),
        ):
            if n:
                _bump(d, key, n)
        for typ, h in (("input", g.genai_in), ("output", g.genai_out)):
            _hist(self.genai_tokens, (gkey, typ), len(TOKEN_BUCKETS)).merge(h)
        if g.latency.count:
            _hist(self.latency, key, len(DURATION_BUCKETS)).merge(g.latency)
            _hist(self.genai_duration, gkey, len(DURATION_BUCKETS)).merge(g.latency)
        if g.ttft.count:
            _hist(self.ttft, key, len(DURATION_BUCKETS)).merge(g.ttft)

    def add_duplicates(self, calls: Iterable[EnrichedCall]) -> None:
        for c in calls:
            (service,) = self._services.key((c.event.service,))
            self.duplicates[service] = self.duplicates.get(service, 0) + 1

    # --- scrape -------------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        """Every family, in the order a scrape shows them: calls, histograms, the process."""
        yield from self._call_families()
        yield from self._histograms()
        yield from self._process_families()

    def _call_families(self) -> Iterator[Any]:
        def counter(name: str, doc: str, data: dict[Key, int], scale: float = 1) -> Any:
            m = CounterMetricFamily(name, doc, labels=LABELS)
            for k, v in sorted(data.items()):
                m.add_metric(list(k), v / scale)
            return m

        yield counter("spendstream_llm_requests", "LLM calls enriched", self.calls)
        yield counter(
            "spendstream_llm_cost_usd", "Cost of LLM calls in USD", self.cost_pico, float(PICO)
        )
        tok = CounterMetricFamily(
            "spendstream_llm_tokens", "Tokens by type", labels=(*LABELS, "type")
        )
        for (k, typ), v in sorted(self.tokens.items()):
            tok.add_metric([*k, typ], v)
        yield tok
        yield counter(
            "spendstream_llm_cache_hits", "Calls answered by the response cache", self.cache_hits
        )
        yield counter(
            "spendstream_llm_cache_saved_usd",
            "Estimated spend avoided by cache hits (the cached calls' cost) in USD",
            self.cache_saved_pico,
            float(PICO),
        )
        yield counter(
            "spendstream_llm_estimated_tokens_calls",
            "Calls whose token counts were estimated",
            self.estimated,
        )
        yield counter(
            "spendstream_llm_price_unknown_calls",
            "Calls of models without a known price",
            self.price_unknown,
        )
        unreadable = CounterMetricFamily(
            "spendstream_usage_unreadable",
            "Calls whose provider usage could not be read (priced as unknown), by provider",
            labels=["provider"],
        )
        for prov, n in sorted(self.usage_unreadable.items()):
            unreadable.add_metric([prov], n)
        yield unreadable
        dup = CounterMetricFamily(
            "spendstream_duplicate_events",
            "Events left out of windows and metrics: their event_id was counted before "
            "(a retried export), by service",
            labels=["service"],
        )
        for service, n in sorted(self.duplicates.items()):
            dup.add_metric([service], n)
        yield dup

    def _histograms(self) -> Iterator[Any]:
        for name, doc, data in (
            ("spendstream_llm_latency_seconds", "Call latency", self.latency),
            ("spendstream_llm_time_to_first_token_seconds", "Time to first token", self.ttft),
        ):
            h = HistogramMetricFamily(name, doc, labels=LABELS)
            for k, hist in sorted(data.items()):
                h.add_metric(list(k), hist.cumulative(DURATION_BUCKETS), hist.sum)
            yield h
        gt = HistogramMetricFamily(
            "gen_ai_client_token_usage",
            "OTel gen_ai.client.token.usage: tokens per call",
            labels=(*GENAI_LABELS, "gen_ai_token_type"),
            unit="",
        )
        for (k, typ), hist in sorted(self.genai_tokens.items()):
            gt.add_metric([*k, typ], hist.cumulative(TOKEN_BUCKETS), hist.sum)
        yield gt
        gd = HistogramMetricFamily(
            "gen_ai_client_operation_duration_seconds",
            "OTel gen_ai.client.operation.duration",
            labels=GENAI_LABELS,
        )
        for k, hist in sorted(self.genai_duration.items()):
            gd.add_metric(list(k), hist.cumulative(DURATION_BUCKETS), hist.sum)
        yield gd

    def _process_families(self) -> Iterator[Any]:
        for name, doc, value in (
            (
                "spendstream_dead_letters",
                "Raw lines and records sent to the dead-letter topic",
                self.dead_letters,
            ),
            (
                "spendstream_late_events_dropped",
                "Events older than the window retention",
                self.late_dropped,
            ),
            (
                "spendstream_events_future_skewed",
                "Events dead-lettered for a timestamp over max_future_skew_s ahead of the "
                "worker clock",
                self.future_skewed,
            ),
        ):
            m = CounterMetricFamily(name, doc)
            m.add_metric([], value)
            yield m
        over = CounterMetricFamily(
            "spendstream_metric_labels_overflow",
            "Calls counted under label value 'other' because the family's label-set cap was hit",
            labels=["family"],
        )
        over.add_metric(["spendstream_llm"], self.labels.overflow)
        over.add_metric(["gen_ai"], self.genai_labels.overflow)
        yield over
        if self.lag is not None:
            lag = GaugeMetricFamily(
                "spendstream_consumer_lag_records",
                "Raw records not yet applied, by raw partition",
                labels=["partition"],
            )
            for p, v in sorted(self.lag().items()):
                lag.add_metric([str(p)], v)
            yield lag


def serve(metrics: Collector, first_port: int, ports: int) -> int:
    """Expose ``/metrics`` on the first free port of ``first_port .. first_port + ports - 1``
    (several workers on one host each take their own); returns the port."""
    registry = CollectorRegistry()
    registry.register(metrics)
    for port in range(first_port, first_port + ports):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        try:
            start_http_server(port, addr="0.0.0.0", registry=registry)
        except OSError:
            continue
        return port
    raise OSError(f"no free metrics port in {first_port}..{first_port + ports - 1}")
