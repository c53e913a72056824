"""`spendstream demo` (`make demo`): the whole job on one machine, in about two minutes.

The real stack comes up; two stream workers, the PostgreSQL sink and the alert relay start as
the processes a deployment would run; synthetic traffic from four services is emitted through
the SDK — and one service's as OTLP spans through the ingest gateway (:mod:`.demo_otlp`) — with
time compressed (one simulated minute per wall second by default). Half an hour
in, one endpoint silently switches from a cheap model to an expensive one. The demo prints the
closed per-endpoint minutes as they arrive, the alerts as a webhook receiver gets them (firing,
then resolved), a report from PostgreSQL checked against the emitted events priced in this
process, and the dashboard's Prometheus queries.

One request in the warm-up is a RAG request across three services — an embedding call in
``search``, a rerank in ``ranker``, the answer in ``support-bot`` — sharing one trace id
(:func:`rag_request`); the demo prints its cost from PostgreSQL (``report --by trace``) and
checks it against the three calls priced in this process.

Each run uses its own topics and worker group (``spendstream-demo-<run>``), so a rerun starts
from fresh event-time state; its calls carry the tag ``demo_run=<run>`` in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from .alerts import Alert
from .config import Settings
from .demo_otlp import SERVICE, GatewayFeed, free_port, via_gateway
from .events import LLMCallEvent
from .money import pico_to_usd
from .probes import pg_value, prom_query, prom_value
from .producers.synthetic import EndpointProfile
from .scopes import GLOBAL, endpoint_scope, minute_dt, minute_of

PREFIX = "spendstream-demo-"
TAG = "demo_run"


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """What the demo emits; event time ends at about the wall time the run starts."""

    rate: float = 300.0
    """Events per wall second."""
    time_scale: float = 60.0
    """Simulated seconds per wall second."""
    warmup_min: int = 30
    """Normal traffic before the incident (the spike rule needs 15 minutes of baseline)."""
    incident_min: int = 20
    after_min: int = 20
    target: str = "support-bot/v1/answer"
    seed: int = 7
    workers: int = 2

    @property
    def span(self) -> timedelta:
        return timedelta(minutes=self.warmup_min + self.incident_min + self.after_min)

    @property
    def incident(self) -> str:
        return f"model-switch@{self.warmup_min}m+{self.incident_min}m:{self.target}"


def plan_events(plan: DemoPlan, run_id: str, end: datetime) -> list[LLMCallEvent]:
    """The run's events, in event-time order, tagged ``demo_run=<run_id>``."""
    from .producers.synthetic import SyntheticTraffic, TrafficConfig, with_incidents

    start = end.replace(second=0, microsecond=0) - plan.span
    cfg = with_incidents(
        TrafficConfig(seed=plan.seed, rate=plan.rate, time_scale=plan.time_scale, start=start),
        [plan.incident],
    )
    events = [
        e.model_copy(update={"tags": {**e.tags, TAG: run_id}})
        for e in SyntheticTraffic(cfg).events(until=start + plan.span)
    ]
    return sorted([*events, *rag_request(run_id, start + RAG_AT)], key=lambda e: e.timestamp)


RAG_AT: Final = timedelta(minutes=10, seconds=7)
REQUEST_TAG: Final = "demo_request"
"""Tags the request's calls (``demo_request=rag``): every OTLP call of the demo is a trace of its
own too, and one of them may cost more than the whole request."""
"""When the multi-service request happens, from the first simulated minute (in the warm-up)."""


def rag_request(run_id: str, at: datetime) -> list[LLMCallEvent]:
    """One request's calls in three services sharing a trace id (ids derived from the run, so
    ``plan_events`` regenerates them): embed the question, rerank the passages, answer."""
    trace = uuid.uuid5(uuid.NAMESPACE_URL, f"spendstream-demo/{run_id}/trace").hex
    calls = [  # (service, endpoint, provider, model, operation, ms after start, latency, usage)
        ("search", "/embed", "openai", "text-embedding-3-small", "embeddings", 0, 60.0,
         {"input_tokens": 40, "output_tokens": 0}),
        ("ranker", "/rerank", "cloudflare", "@cf/baai/bge-reranker-base", "rerank", 80, 45.0,
         {"input_tokens": 6000, "output_tokens": 0}),
        ("support-bot", "/v1/answer", "openai", "gpt-4o-mini", "chat", 140, 1900.0,
         {"input_tokens": 5200, "output_tokens": 420}),
    ]  # fmt: skip
    return [
        LLMCallEvent(
            event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"spendstream-demo/{run_id}/{i}"),
            timestamp=at + timedelta(milliseconds=after),
            service=svc,
            endpoint=ep,
            provider=prov,
            request_model=model,
            operation=op,
            usage=usage,
            latency_ms=latency,
            tags={TAG: run_id, REQUEST_TAG: "rag"},
            trace_id=trace,
            span_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{trace}/{i}").hex[:16],
            session_id=f"demo-chat-{run_id}" if op == "chat" else None,
        )
        for i, (svc, ep, prov, model, op, after, latency, usage) in enumerate(calls)
    ]


def drop_old_runs(s: Settings, keep: str) -> list[str]:
    """Delete the topics of earlier demo runs (their data stays in PostgreSQL)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(s.librdkafka())
    old = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith(PREFIX) and not t.startswith(PREFIX + keep)
    ]
    if old:
        for fut in admin.delete_topics(old, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result()
    return old


class Console:
    """Timestamped, thread-safe progress lines (the receiver prints from its own thread)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def say(self, text: str = "", stamp: bool = True) -> None:
        prefix = f"[{time.monotonic() - self.t0:6.1f}s] " if stamp else ""
        with self.lock:
            print(prefix + text, flush=True)


@dataclass
class AlertReceiver:
    """A local webhook receiver: the relay POSTs alerts here and it prints each one."""

    console: Console
    alerts: list[Alert] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    a = Alert.from_json(body)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.received(a)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def received(self, a: Alert) -> None:
        from .sinks.alert_relay import line_of

        self.alerts.append(a)
        self.console.say(f"  webhook <- {line_of(a)}")

    def seen(self, scope: str, status: str) -> bool:
        return any(a.scope == scope and a.status == status for a in list(self.alerts))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Children:
    """The processes a deployment runs (workers, sink, relay), stopped together."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-m", "spendstream.cli", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append((name, proc))

    def dead(self) -> list[str]:
        return [name for name, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


class LiveTable:
    """Closed 1-minute spend per endpoint, read from the windows topic and printed as rows."""

    def __init__(self, s: Settings, console: Console, profiles: Sequence[EndpointProfile]) -> None:
        from confluent_kafka import Consumer

        self.console = console
        self.profiles = profiles
        self.endpoints = [endpoint_scope(p.service, p.endpoint) for p in profiles]
        self.labels = [p.endpoint.rsplit("/", 1)[-1] for p in profiles]
        self.spend: dict[tuple[str, int], int] = {}
        self.closed_global: set[int] = set()
        self.printed = -1
        self.c = Consumer(
            s.librdkafka(
                **{
                    "group.id": f"{PREFIX}live-{uuid.uuid4().hex[:8]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
        )
        self.c.subscribe([s.topic_windows])

    def header(self) -> None:
        """A legend (column → endpoint and its model), then the column titles."""
        for p, lab in zip(self.profiles, self.labels, strict=True):
            self.console.say(f"  {lab:<16} {p.scope} ({p.provider}/{p.model})", stamp=False)
        cols = " ".join(f"{lab:>{max(len(lab), 8)}}" for lab in self.labels)
        self.console.say(f"{'minute':>6} {cols} {'total':>9}", stamp=False)

    def poll(self, seconds: float) -> None:
        from .stream.pipeline import WindowSummary

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.c.poll(0.1)
            value = None if msg is None or msg.error() is not None else msg.value()
            if value is None:
                continue
            w = WindowSummary.from_json(value)
            self.spend[(w.scope, w.minute)] = w.spend_pico
            if w.scope == GLOBAL:
                self.closed_global.add(w.minute)

    def print_rows(self, show: Callable[[int], str | None]) -> None:
        """Rows for every closed minute not yet printed that ``show`` picks (its note is
        appended); a minute is printed once the next one has closed, so all its scopes are in."""
        closed = self.closed_global
        ready = sorted(m for m in closed if m > self.printed and m + 1 in closed)
        for m in ready:
            self.printed = m
            note = show(m)
            if note is None:
                continue
            cells = []
            for ep, lab in zip(self.endpoints, self.labels, strict=True):
                v = self.spend.get((ep, m))
                cells.append(f"{'-' if v is None else f'{pico_to_usd(v):.4f}':>{max(len(lab), 8)}}")
            total = pico_to_usd(self.spend.get((GLOBAL, m), 0))
            hhmm = minute_dt(m).strftime("%H:%M")
            self.console.say(f"{hhmm:>6} {' '.join(cells)} {total:>9.4f}{note}", stamp=False)

    def close(self) -> None:
        self.c.close()


@dataclass
class DemoResult:
    run_id: str
    start: datetime
    """Event time of the first simulated minute (``plan_events(plan, run_id, start + span)``
    reproduces the run's events)."""
    emitted: int
    expected_usd: Decimal
    rows: int = 0
    prom_calls: int = 0
    stored_usd: Decimal = Decimal(0)
    fired: bool = False
    resolved: bool = False
    request_usd: Decimal | None = None
    """The multi-service request's cost in PostgreSQL (``report --by trace``)."""
    via_gateway: int = 0
    """Calls the ingest gateway accepted as OTLP spans (:mod:`.demo_otlp`)."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _wait(check: Callable[[], bool], seconds: float, every: Callable[[], None]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        every()
    return check()


async def _report(s: Settings, run_id: str, since: datetime, until: datetime) -> str:
    from .sinks.postgres import connect
    from .sinks.report import report, to_table

    conn = await connect(s)
    try:
        rows = await report(conn, since, until, "endpoint", {TAG: run_id})
    finally:
        await conn.close()
    return to_table(rows, "endpoint")


async def _request_cost(
    s: Settings, run_id: str, since: datetime, until: datetime
) -> tuple[str, Decimal | None, str | None]:
    """The run's multi-service request (``report --by trace``) and its calls, from the rows."""
    from .sinks.postgres import connect
    from .sinks.report import groups_table, top_groups

    conn = await connect(s)
    try:
        top = await top_groups(conn, since, until, "trace", 1, {TAG: run_id, REQUEST_TAG: "rag"})
        rows = await conn.fetch(
            "SELECT service, operation, provider || '/' || request_model AS model, cost_usd "
            "FROM llm_calls WHERE trace_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts",
            top.rows[0].key if top.rows else "",
            since,
            until,
        )
    finally:
        await conn.close()
    calls = [
        f"    {r['service']:<12} {r['operation']:<11} {r['model']:<38} ${r['cost_usd']:.7f}"
        for r in rows
    ]
    top_row = top.rows[0] if top.rows else None
    table = "\n".join([groups_table(top), *calls])
    if top_row is None:
        return table, None, None
    return table, top_row.cost_usd, top_row.key


PROM_QUERIES = (
    ("spend by endpoint, USD (counters of the running workers)",
     "sum by (service, endpoint) (spendstream_llm_cost_usd_total)"),
    ("dashboard 'Spend, last hour'", "sum(increase(spendstream_llm_cost_usd_total[1h]))"),
    ("dashboard 'Model mix (share of spend)'",
     "sum by (model) (rate(spendstream_llm_cost_usd_total[15m])) / ignoring(model) "
     "group_left sum(rate(spendstream_llm_cost_usd_total[15m]))"),
    ("dashboard 'Dead letters (last hour)'", "sum(increase(spendstream_dead_letters_total[1h]))"),
    ("dashboard 'Consumer lag (raw records)'", "sum(spendstream_consumer_lag_records)"),
)  # fmt: skip


def _series(r: dict[str, Any]) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k != "__name__")
    return labels or "value"


def run_demo(s: Settings, plan: DemoPlan | None = None, keep: bool = False) -> DemoResult:
    """Entry point of `spendstream demo`. Stops the stack services it started unless ``keep``."""
    from . import stack
    from .topics import ensure_topics

    plan = plan or DemoPlan()
    con = Console()
    run_id = uuid.uuid4().hex[:8]
    wall = plan.span.total_seconds() / plan.time_scale
    con.say(
        f"spendstream demo, run {run_id}: {plan.span.total_seconds() / 60:.0f} simulated "
        f"minutes of traffic in {wall:.0f} s of wall time ({plan.time_scale:g}x)"
    )
    before = stack.status(s)
    was_up = {st.name for st in before if st.ready}
    con.say(f"bringing the local stack up in {s.stack_dir} (first run downloads Kafka) ...")
    for st in stack.up(s):
        con.say(f"  {st.name:<11} {st.state:<8} 127.0.0.1:{st.port}")
    ds, env = s.isolated(PREFIX + run_id)
    dropped = drop_old_runs(s, run_id)
    if dropped:
        con.say(f"deleted {len(dropped)} topics of earlier demo runs")
    ensure_topics(ds)

    run = _DemoRun(s, ds, env, plan, con, run_id)
    try:
        run.start_services()
        run.emit()
        run.check_alerts()
        run.check_postgres()
        run.check_prometheus()
    except KeyboardInterrupt:
        run.res.problems.append("interrupted")
    except RuntimeError as exc:
        run.res.problems.append(str(exc))
    finally:
        run.close()
        started = [st.name for st in before if st.name not in was_up]
        if not keep and started:
            stack.down(s, started)
            con.say(f"stopped what the demo started ({', '.join(started)}); --keep leaves it up")

    receiver, res = run.receiver, run.res
    fired = sum(1 for a in receiver.alerts if a.status == "firing")
    con.say(
        f"alerts delivered to the webhook: {len(receiver.alerts)} "
        f"({fired} firing, {len(receiver.alerts) - fired} resolved)"
    )
    _next_steps(con, s, ds, run_id, keep or not started)
    con.say("demo OK" if res.ok else "demo FAILED: " + "; ".join(res.problems))
    return res


class _DemoRun:
    """One demo run's moving parts — its events, child processes, webhook receiver, gateway
    feed and live table — and its phases in order, each adding what it finds to ``res``."""

    def __init__(
        self, s: Settings, ds: Settings, env: dict[str, str], plan: DemoPlan, con: Console,
        run_id: str,
    ) -> None:  # fmt: skip
        from .producers.synthetic import CATALOG
        from .stream.enrich import Enricher

        self.s, self.ds, self.plan, self.con, self.run_id = s, ds, plan, con, run_id
        self.events = plan_events(plan, run_id, datetime.now(UTC))
        expected = pico_to_usd(Enricher().total_pico(self.events))
        self.start = self.events[0].timestamp.replace(second=0, microsecond=0)
        self.res = DemoResult(run_id, self.start, len(self.events), expected)
        self.inc_from = minute_of((self.start + timedelta(minutes=plan.warmup_min)).timestamp())
        self.inc_to = self.inc_from + plan.incident_min
        self.profile = next(p for p in CATALOG if p.scope == plan.target)
        self.target_scope = endpoint_scope(self.profile.service, self.profile.endpoint)
        self.log_dir = s.stack_dir / "demo" / run_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.receiver = AlertReceiver(con)
        # the webhook URL travels in the environment, not in argv (``ps`` shows argv)
        self.kids = Children(
            {**env, "SPENDSTREAM_ALERT_WEBHOOK_URL": self.receiver.url}, self.log_dir
        )
        self.feed: GatewayFeed  # made in start_services: its port is picked then
        self.live: LiveTable | None = None

    def start_services(self) -> None:
        """The processes a deployment runs: workers, the sink, the gateway, the alert relay."""
        from .ingest.keys import add_key

        plan, kids, run_id = self.plan, self.kids, self.run_id
        for i in range(plan.workers):
            kids.start(f"worker-{i}", "worker")
        kids.start("sink-postgres", "sink", "postgres", "--group", f"{PREFIX}{run_id}-sink")
        port, keys = free_port(), self.log_dir / "ingest-keys.jsonl"
        self.feed = feed = GatewayFeed(
            f"http://127.0.0.1:{port}",
            add_key(keys, SERVICE),
            [e for e in self.events if via_gateway(e)],
            plan.time_scale,
        )
        kids.start("ingest", "ingest", "--port", str(port), "--keys-file", str(keys))
        kids.start(
            "alert-relay", "alerts", "relay", "--group", f"{PREFIX}{run_id}-relay",
        )  # fmt: skip
        if not _wait(feed.healthy, 60, lambda: time.sleep(0.5)):
            raise RuntimeError(f"the ingest gateway did not start; see {self.log_dir}/ingest.log")
        self.con.say(
            f"started {plan.workers} stream workers, the PostgreSQL sink, the alert relay and "
            f"the ingest gateway on {feed.url} (logs in {self.log_dir}); alerts go to a local "
            f"webhook receiver at {self.receiver.url}"
        )

    def emit(self) -> None:
        """Send the traffic (SDK and OTLP gateway, in real time scaled) while printing the
        closed minutes as they arrive."""
        from .producers.emitter import Emitter
        from .producers.replay import publish
        from .producers.synthetic import CATALOG, PRICIER

        con, plan, events, feed = self.con, self.plan, self.events, self.feed
        services = sorted({p.service for p in CATALOG})
        con.say(
            f"emitting {len(events):,} calls from {len(services)} services "
            f"({', '.join(services)}), {plan.rate:g}/s: {len(feed.events):,} of {SERVICE}'s "
            "as OTLP spans through the ingest gateway, the rest through the SDK"
        )
        con.say(
            f"incident at {minute_dt(self.inc_from):%H:%M} (simulated): "
            f"{plan.target} silently switches {self.profile.model} -> "
            f"{PRICIER[self.profile.model]} for {plan.incident_min} minutes"
        )
        self.live = LiveTable(self.ds, con, CATALOG)
        con.say("closed minutes, spend per endpoint in USD (simulated time, UTC):")
        self.live.header()
        out: dict[str, Any] = {}

        def produce() -> None:
            with Emitter(self.ds, register_atexit=False) as emitter:
                sdk = [e for e in events if not via_gateway(e)]
                out["res"] = publish(sdk, emitter, speed=plan.time_scale)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        exporter = threading.Thread(target=feed.run, daemon=True)
        exporter.start()
        while producer.is_alive() or exporter.is_alive():
            self.tick()
        pub, res = out.get("res"), self.res
        if pub is None or pub.dropped:
            res.problems.append(f"the emitter dropped events: {pub}")
        res.via_gateway = feed.accepted
        res.problems += feed.problems
        con.say(
            f"the gateway accepted {feed.accepted:,} of {len(feed.events):,} spans "
            f"({feed.retries} retried exports)"
        )

    def show(self, m: int) -> str | None:
        """The live table's note for minute ``m`` (None: the row is not printed)."""
        if m == self.inc_from:
            return "  <- model switch"
        if m == self.inc_to:
            return "  <- switched back"
        inside = self.inc_from <= m < self.inc_to
        if inside or min(abs(m - self.inc_from), abs(m - self.inc_to)) <= 3:
            return "  *" if inside else ""
        return "" if m % 5 == 0 else None

    def tick(self) -> None:
        """Print the newly closed minutes; stop the run if a child process died."""
        assert self.live is not None
        self.live.poll(0.5)
        self.live.print_rows(self.show)
        dead = self.kids.dead()
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited early; see the logs in {self.log_dir}")

    def check_alerts(self) -> None:
        """The incident's alert must reach the webhook firing, then resolved."""
        res, receiver, scope = self.res, self.receiver, self.target_scope
        self.con.say(f"emitted {len(self.events):,} calls; checking the incident's alerts ...")
        res.fired = _wait(lambda: receiver.seen(scope, "firing"), 60, self.tick)
        res.resolved = _wait(lambda: receiver.seen(scope, "resolved"), 90, self.tick)
        if not res.fired:
            res.problems.append(f"no firing alert for {scope} reached the webhook")
        elif not res.resolved:
            res.problems.append(f"the alert for {scope} did not resolve")

    def check_postgres(self) -> None:
        """Every call stored, and the stored total equal to the emitted calls priced here."""
        con, s, res, events, start = self.con, self.s, self.res, self.events, self.start
        con.say("waiting for the PostgreSQL sink to store every call ...")
        run = json.dumps({TAG: self.run_id})

        def stored() -> bool:
            res.rows = pg_value(s, "SELECT count(*) FROM llm_calls WHERE tags @> $1::jsonb", run)
            return res.rows >= len(events)

        _wait(stored, 120, lambda: time.sleep(0.5))
        res.stored_usd = Decimal(
            pg_value(
                s, "SELECT coalesce(sum(cost_usd), 0) FROM llm_calls WHERE tags @> $1::jsonb", run
            )
        )
        until = events[-1].timestamp + timedelta(seconds=1)
        con.say(
            "report from PostgreSQL (the same as `spendstream report --by endpoint "
            f"--since {start:%Y-%m-%dT%H:%M}Z --until {until:%Y-%m-%dT%H:%M:%S}Z "
            f"--tag {TAG}={self.run_id}`):"
        )
        con.say(asyncio.run(_report(s, self.run_id, start, until)), stamp=False)
        expected = res.expected_usd
        same = res.rows == len(events) and res.stored_usd == expected
        con.say(
            f"PostgreSQL: {res.rows:,} rows, total ${res.stored_usd}; the {len(events):,} "
            f"emitted calls priced in this process: ${expected} -> "
            + ("equal" if same else "DIFFERENT")
        )
        if not same:
            res.problems.append(
                f"PostgreSQL has {res.rows} rows / ${res.stored_usd}, "
                f"emitted {len(events)} / ${expected}"
            )
        _show_request(con, s, res, start, until)

    def check_prometheus(self) -> None:
        """The dashboard's queries, and the counters agreeing with PostgreSQL's books."""
        con, s, res, n = self.con, self.s, self.res, len(self.events)
        calls_q, cost_q = (
            "sum(spendstream_llm_requests_total)",
            "sum(spendstream_llm_cost_usd_total)",
        )
        _wait(lambda: prom_value(s, calls_q) >= n, 30, lambda: time.sleep(1))
        res.prom_calls, prom_usd = int(prom_value(s, calls_q)), prom_value(s, cost_q)
        con.say(f"Prometheus ({s.prometheus_url}), the queries behind the dashboard:")
        for title, expr in PROM_QUERIES:
            con.say(f"  {title}:  {expr}", stamp=False)
            try:
                rows = prom_query(s, expr)
            except OSError as exc:
                con.say(f"      unavailable: {exc}", stamp=False)
                continue
            for r in sorted(rows, key=lambda r: -float(r["value"][1]))[:8]:
                con.say(f"      {_series(r):<58} {float(r['value'][1]):.6g}", stamp=False)
        agree = res.prom_calls == n and abs(prom_usd - float(res.expected_usd)) < 1e-6
        con.say(
            f"Prometheus counters: {res.prom_calls:,} calls, ${prom_usd:.6f} (float) -> "
            + ("agree with PostgreSQL" if agree else "DISAGREE with PostgreSQL")
        )
        if not agree:
            res.problems.append(f"Prometheus counts {res.prom_calls} calls / ${prom_usd}")

    def close(self) -> None:
        if self.live is not None:
            self.live.close()
        self.kids.stop()
        self.receiver.close()


def _show_request(
    con: Console, s: Settings, res: DemoResult, start: datetime, until: datetime
) -> None:
    """Print the multi-service request's cost from PostgreSQL; a problem if it is not the sum
    of its three calls priced in this process."""
    from .stream.enrich import Enricher

    calls = rag_request(res.run_id, start + RAG_AT)
    expected = pico_to_usd(Enricher().total_pico(calls))
    con.say(
        "one request across three services, by its trace id (the same as `spendstream report "
        f"--by trace --top 1 --since {start:%Y-%m-%dT%H:%M}Z --tag {TAG}={res.run_id} "
        f"--tag {REQUEST_TAG}=rag`):"
    )
    table, cost, key = asyncio.run(_request_cost(s, res.run_id, start, until))
    con.say(table, stamp=False)
    res.request_usd = cost
    same = key == calls[0].trace_id and cost == expected
    con.say(
        f"the request's three calls priced in this process: ${expected} -> "
        + ("equal" if same else "DIFFERENT")
    )
    if not same:
        res.problems.append(f"the request {calls[0].trace_id} costs ${cost}, not ${expected}")


def _next_steps(con: Console, s: Settings, ds: Settings, run_id: str, stack_up: bool) -> None:
    up = "" if stack_up else "(after `spendstream stack up`) "
    con.say(f"where to look next {up}:".replace(" :", ":"), stamp=False)
    for line in (
        f"  spendstream report --since 3h --by model --tag {TAG}={run_id}",
        f"  spendstream report --since 3h --by trace --top 10 --tag {TAG}={run_id}",
        f"  SPENDSTREAM_TOPIC_ALERTS={ds.topic_alerts} spendstream alerts tail --from-beginning",
        "  grafana/spendstream.json: import it into Grafana with Prometheus "
        f"{s.prometheus_url} as the data source",
        f"  {s.prometheus_url}/alerts: the Prometheus rules from infra/prometheus/rules",
        "  spendstream stack down: stop the stack (data stays in .stack/)",
    ):
        con.say(line, stamp=False)
