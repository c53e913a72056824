"""The one `spendstream` command; each room adds its subcommands here."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import __version__
from .config import Settings


def _stack(args: argparse.Namespace, s: Settings) -> int:
    from . import stack

    names = args.services or None
    if args.action == "up":
        t0 = time.monotonic()
        rows = stack.up(s, names)
        _print_status(rows)
        print(f"stack up in {time.monotonic() - t0:.1f}s (dir {s.stack_dir})")
        return 0
    if args.action == "down":
        stopped = stack.down(s, names)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    rows = stack.status(s, names)
    _print_status(rows)
    return 0 if all(r.ready for r in rows) else 3


def _print_status(rows: Sequence[object]) -> None:
    print(f"{'service':<11} {'state':<9} {'address':<16} pid")
    for r in rows:
        pid = getattr(r, "pid", None)
        print(f"{r.name:<11} {r.state:<9} 127.0.0.1:{r.port:<6} {pid or '-'}")  # type: ignore[attr-defined]


def _topics(args: argparse.Namespace, s: Settings) -> int:
    from .topics import declared_topics, ensure_topics, topic_partitions

    if args.action == "create":
        ensure_topics(s)
    have = topic_partitions(s)
    for t in declared_topics(s):
        print(f"{t.name:<32} partitions={have.get(t.name, 0):<3} {t.purpose}")
    return 0


def _demo(args: argparse.Namespace, s: Settings) -> int:
    from .demo import DemoPlan, run_demo

    plan = DemoPlan(rate=args.rate, time_scale=args.time_scale, workers=args.workers)
    return 0 if run_demo(s, plan, keep=args.keep).ok else 1


def _price(args: argparse.Namespace, s: Settings) -> int:
    """``spendstream price FILE``: the cost of each call in FILE and the total, no Kafka.
    Exit 2 when an item could not be read (it is named on stderr; the rest are priced)."""
    from .pricing import price_lines, total_usd
    from .stream.prices import PriceBook

    book = PriceBook.from_file(args.prices or s.price_overrides_file)
    results = list(price_lines(args.file, book))
    print(f"{'#':>5} {'provider':<12} {'model':<32} {'tier':<8} {'in':>9} {'out':>8} cost_usd")
    for r in results:
        if r.enriched is None:
            print(f"spendstream price: {args.file}: item {r.number}: {r.error}", file=sys.stderr)
            continue
        e, t = r.enriched, r.enriched.tokens
        ev = e.event
        cost = (
            str(e.cost.total)
            if e.cost
            else f"unknown ({e.price_unknown_reason or 'no price for the model'})"
        )
        tier = ev.service_tier.value if ev.service_tier else "standard"
        model = ev.response_model or ev.request_model
        est = "~" if t.estimated else ""
        print(
            f"{r.number:>5} {ev.provider:<12} {model[:32]:<32} {tier:<8} "
            f"{est}{t.input_tokens:>9} {est}{t.output_tokens:>8} {cost}"
        )
    total, unknown = total_usd(results)
    bad = sum(1 for r in results if r.enriched is None)
    print(
        f"total {total} USD over {len(results) - bad - unknown} priced calls"
        + (f"; {unknown} of unknown price (not in the total)" if unknown else "")
        + (f"; {bad} unreadable" if bad else "")
    )
    return 2 if bad else 0


def _start_time(text: str) -> datetime:
    from .producers.synthetic import DEFAULT_START

    if text == "now":
        return datetime.now(UTC).replace(microsecond=0)
    if text == "default":
        return DEFAULT_START
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _produce(args: argparse.Namespace, s: Settings) -> int:
    from .producers.emitter import Emitter
    from .producers.replay import Progress, publish
    from .producers.synthetic import SyntheticTraffic, TrafficConfig, with_incidents

    if not args.synthetic:
        print("spendstream produce: only --synthetic is supported", file=sys.stderr)
        return 2
    if (args.count is None) == (args.duration is None):
        print("spendstream produce: give exactly one of --count and --duration", file=sys.stderr)
        return 2
    try:
        cfg = with_incidents(
            TrafficConfig(
                seed=args.seed,
                rate=args.rate,
                time_scale=args.time_scale,
                start=_start_time(args.start),
            ),
            args.incident,
        )
    except ValueError as exc:
        print(f"spendstream produce: {exc}", file=sys.stderr)
        return 2
    until = None
    if args.duration is not None:
        until = cfg.start + timedelta(seconds=args.duration * cfg.time_scale)
    events = SyntheticTraffic(cfg).events(count=args.count, until=until)
    if args.out:
        n = 0
        with open(args.out, "wb") as f:
            for ev in events:
                f.write(ev.to_json() + b"\n")
                n += 1
        print(f"wrote {n} events to {args.out}")
        return 0
    with Emitter(s, register_atexit=False) as emitter:
        res = publish(
            events,
            emitter,
            speed=None if args.max_speed else cfg.time_scale,
            progress=Progress(args.count, enabled=not args.no_progress),
        )
    print(
        f"published {res.published} events to {emitter.topic} in {res.seconds:.1f}s "
        f"({res.dropped} dropped)"
    )
    return 0 if res.dropped == 0 else 1


def _replay(args: argparse.Namespace, s: Settings) -> int:
    from pathlib import Path

    from .producers.emitter import Emitter
    from .producers.replay import Progress, count_lines, publish, read_jsonl

    path = Path(args.file)
    if not path.is_file():
        print(f"spendstream replay: no such file {path}", file=sys.stderr)
        return 2
    bad: list[tuple[int, str]] = []
    with Emitter(s, register_atexit=False) as emitter:
        res = publish(
            read_jsonl(path, bad),
            emitter,
            speed=None if args.max_speed else args.speed,
            progress=Progress(count_lines(path), enabled=not args.no_progress),
        )
    for no, reason in bad:
        print(f"{path}:{no}: skipped: {reason}", file=sys.stderr)
    print(
        f"published {res.published} events to {emitter.topic} in {res.seconds:.1f}s; "
        f"{len(bad)} malformed lines skipped; {res.dropped} dropped"
    )
    return 0 if res.dropped == 0 else 1


def _worker(args: argparse.Namespace, s: Settings) -> int:
    from .stream.app import run_worker

    run_worker(s, loglevel=args.loglevel)
    return 0


def _age_arg(text: str) -> timedelta:
    """argparse type of an age (``90d``): a bad or absurd one is a usage error (exit 2)."""
    from .sinks.db import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when_arg(text: str) -> datetime:
    """argparse type of ``--since``/``--until``: an age back from now or an ISO time."""
    from .sinks.db import parse_age

    try:
        return datetime.now(UTC) - parse_age(text)
    except ValueError as exc:
        if text.strip()[-1:] in ("d", "h", "m") and text.strip()[:-1].isdigit():
            raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        t = _start_time(text).astimezone(UTC)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"want an age (24h, 7d, 30m) or an ISO time, got {text[:40]!r}"
        ) from None
    if not 1900 <= t.year < 3000:  # PostgreSQL and the arithmetic around it stay in range
        raise argparse.ArgumentTypeError(f"time {text[:40]!r} is outside 1900..2999")
    return t


def _db(args: argparse.Namespace, s: Settings) -> int:
    import asyncio

    from .sinks.db import prune
    from .sinks.postgres import connect, migrate_db

    if args.action == "migrate":
        applied = asyncio.run(migrate_db(s))
        print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
        return 0
    if not args.older_than:
        print("spendstream db prune: --older-than is required (e.g. 90d)", file=sys.stderr)
        return 2
    age = args.older_than

    async def go() -> list[str]:
        conn = await connect(s)
        try:
            return await prune(conn, age)
        finally:
            await conn.close()

    dropped = asyncio.run(go())
    print(f"dropped {len(dropped)} partitions" + (": " + ", ".join(dropped) if dropped else ""))
    return 0


def _top_arg(text: str) -> int:
    """``--top N``: 1..100000 (a LIMIT, never a negative or unbounded one)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--top wants a count, got {text[:40]!r}") from None
    if not 1 <= n <= 100_000:
        raise argparse.ArgumentTypeError(f"--top must be 1..100000, got {n}")
    return n


def _report(args: argparse.Namespace, s: Settings) -> int:
    import asyncio

    from .sinks.postgres import connect
    from .sinks.report import (
        GROUP_COLUMNS,
        groups_csv,
        groups_table,
        report,
        to_csv,
        to_table,
        top_groups,
    )

    since: datetime = args.since  # parsed by _when_arg: a bad one was a usage error
    until: datetime = args.until or datetime.now(UTC)
    tags: dict[str, str] = {}
    for item in args.tag:
        k, sep, v = item.partition("=")
        if not sep or not k:
            print(f"spendstream report: --tag wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        tags[k] = v

    async def go() -> str:
        conn = await connect(s)
        try:
            if args.by in GROUP_COLUMNS:
                top = await top_groups(conn, since, until, args.by, args.top, tags)
            else:
                rows = await report(conn, since, until, args.by, tags)
        finally:
            await conn.close()
        head = f"calls from {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC by {args.by}"
        if args.by in GROUP_COLUMNS:
            return groups_csv(top) if args.csv else head + "\n" + groups_table(top)
        if args.csv:
            return to_csv(rows)
        return head + "\n" + to_table(rows, args.by)

    print(asyncio.run(go()), end="" if args.csv else "\n")
    return 0


def _webhook_url(args: argparse.Namespace, s: Settings) -> str:
    """--webhook, else --webhook-file, else SPENDSTREAM_ALERT_WEBHOOK_URL (the last two keep a
    Slack webhook's secret out of the process list)."""
    from pathlib import Path

    if args.webhook:
        logging.getLogger("spendstream.alerts").warning(
            "--webhook shows the URL (and any secret in it) to every local user via ps; "
            "prefer --webhook-file or SPENDSTREAM_ALERT_WEBHOOK_URL"
        )
        return str(args.webhook)
    if args.webhook_file:
        try:
            return Path(args.webhook_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"spendstream alerts relay: --webhook-file: {exc}") from None
    if s.alert_webhook_url is not None:
        return s.alert_webhook_url.get_secret_value().strip()
    raise SystemExit(
        "spendstream alerts relay: give --webhook-file PATH, SPENDSTREAM_ALERT_WEBHOOK_URL "
        "or --webhook URL"
    )


def _alerts(args: argparse.Namespace, s: Settings) -> int:
    import asyncio
    import signal

    from .sinks.alert_relay import relay, tail

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.action == "tail":
            await tail(s, args.json, args.from_beginning, stop)
            return
        url = _webhook_url(args, s)
        try:
            st = await relay(s, url, fmt=args.format, group=args.group, stop=stop)
        except ValueError as exc:
            raise SystemExit(f"spendstream alerts relay: {exc}") from None
        logging.getLogger("spendstream.alerts").info("stopped: %s", st)

    asyncio.run(go())
    return 0


def _sink(args: argparse.Namespace, s: Settings) -> int:
    import asyncio
    import signal

    from .sinks.postgres import SinkStats, run
    from .sinks.sink_metrics import SinkCollector
    from .stream.metrics import serve

    stats = SinkStats()
    try:
        port = serve(SinkCollector(stats), s.metrics_port, s.metrics_targets)
        logging.getLogger("spendstream.sink").info("metrics on :%d/metrics", port)
    except OSError as exc:  # metrics are for alerting; storing rows must not wait on a port
        logging.getLogger("spendstream.sink").warning("no /metrics: %s", exc)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        st = await run(s, group=args.group, stop=stop, stats=stats)
        logging.getLogger("spendstream.sink").info("stopped: %s", st)

    asyncio.run(go())
    return 0


def _ingest(args: argparse.Namespace, s: Settings) -> int:
    import asyncio
    import signal
    from dataclasses import replace

    from .ingest.keys import KeyStore
    from .ingest.otlp import MappingConfig
    from .ingest.server import Gateway, GatewayConfig, serve
    from .producers import Emitter

    d = MappingConfig()
    mapping = replace(
        d,
        endpoint_attributes=tuple(args.endpoint_attr) or d.endpoint_attributes,
        team_attributes=tuple(args.team_attr) or d.team_attributes,
        user_attributes=tuple(args.user_attr) or d.user_attributes,
        session_attributes=tuple(args.session_attr) or d.session_attributes,
    )
    config = GatewayConfig(max_body_bytes=args.max_body_bytes, mapping=mapping)
    gateway = Gateway(Emitter(s), KeyStore(Path(args.keys_file)), config)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(gateway, args.host, args.port, stop)

    asyncio.run(go())
    return 0


def _ingest_key(args: argparse.Namespace, s: Settings) -> int:
    from .ingest.keys import add_key

    print(add_key(Path(args.keys_file), args.service, args.team))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spendstream", description=__doc__)
    p.add_argument("--version", action="version", version=f"spendstream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    st = sub.add_parser("stack", help="run the local Kafka/PostgreSQL/Redis/Prometheus stack")
    st.add_argument("action", choices=["up", "down", "status"])
    st.add_argument("services", nargs="*", help="kafka, postgres, redis, prometheus (default all)")
    st.set_defaults(func=_stack)

    tp = sub.add_parser("topics", help="create or list the pipeline's Kafka topics")
    tp.add_argument("action", choices=["create", "list"])
    tp.set_defaults(func=_topics)

    pr = sub.add_parser("produce", help="publish synthetic traffic (or write it to a file)")
    pr.add_argument("--synthetic", action="store_true", help="generate realistic synthetic calls")
    pr.add_argument("--rate", type=float, default=200.0, help="mean events per wall second")
    pr.add_argument("--count", type=int, help="stop after this many events")
    pr.add_argument("--duration", type=float, help="stop after this many wall seconds")
    pr.add_argument("--seed", type=int, default=7)
    pr.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="simulated seconds per wall second (3600: an hour per second)",
    )
    pr.add_argument(
        "--start",
        default="default",
        help="simulated start: ISO time, 'now', or 'default' (2026-01-05T00:00Z)",
    )
    pr.add_argument(
        "--incident",
        action="append",
        default=[],
        metavar="NAME@START[+DURATION][:SERVICE/ENDPOINT]",
        help="model-switch, retry-storm, prompt-bloat or slow-ramp, e.g. "
        "model-switch@2h+1h (offsets in simulated time)",
    )
    pr.add_argument("--out", help="write JSONL here instead of producing to Kafka")
    pr.add_argument("--max-speed", action="store_true", help="do not pace by time")
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(func=_produce)

    rp = sub.add_parser("replay", help="publish a recorded JSONL file, keeping event timestamps")
    rp.add_argument("file")
    speed = rp.add_mutually_exclusive_group()
    speed.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="X times faster than the recorded event time (default 1)",
    )
    speed.add_argument("--max-speed", action="store_true", help="as fast as possible")
    rp.add_argument("--no-progress", action="store_true")
    rp.set_defaults(func=_replay)

    wk = sub.add_parser("worker", help="run a stream worker (start several to scale out)")
    wk.add_argument(
        "--loglevel", default="warn", choices=["crit", "error", "warn", "info", "debug"]
    )
    wk.set_defaults(func=_worker)

    db = sub.add_parser("db", help="PostgreSQL schema: apply migrations, drop old partitions")
    db.add_argument("action", choices=["migrate", "prune"])
    db.add_argument(
        "--older-than", type=_age_arg, help="prune: drop days older than this (90d, 12h)"
    )
    db.set_defaults(func=_db)

    rpt = sub.add_parser("report", help="spend by endpoint, model, team, user, session, trace ...")
    rpt.add_argument(
        "--since", default="24h", type=_when_arg, help="24h, 7d, or an ISO time (default 24h)"
    )
    rpt.add_argument("--until", type=_when_arg, help="same forms; default now")
    rpt.add_argument(
        "--by",
        default="endpoint",
        choices=[
            "endpoint",
            "model",
            "team",
            "user",
            "prompt_version",
            "service",
            "session",
            "trace",
        ],
        help="session/trace: the most expensive sessions or requests across services",
    )
    rpt.add_argument(
        "--top",
        type=_top_arg,
        default=20,
        metavar="N",
        help="--by session/trace: show the N dearest (default 20)",
    )
    rpt.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only calls carrying this tag (repeatable; all must match)",
    )
    rpt.add_argument("--csv", action="store_true", help="CSV for export")
    rpt.set_defaults(func=_report)

    al = sub.add_parser("alerts", help="print alerts, or relay them to a webhook")
    al.add_argument("action", choices=["tail", "relay"])
    al.add_argument("--json", action="store_true", help="tail: one JSON alert per line")
    al.add_argument("--from-beginning", action="store_true", help="tail: from the oldest alert")
    al.add_argument("--webhook", help="relay: POST each alert to this URL (visible in ps)")
    al.add_argument("--webhook-file", help="relay: read the webhook URL from this file")
    al.add_argument("--format", choices=["json", "slack"], default="json", help="relay body")
    al.add_argument("--group", default="spendstream-alert-relay", help="relay consumer group")
    al.set_defaults(func=_alerts)

    sk = sub.add_parser("sink", help="run a sink consumer of the enriched topic")
    sk.add_argument("target", choices=["postgres"])
    sk.add_argument("--group", default="spendstream-sink-postgres", help="consumer group")
    sk.set_defaults(func=_sink)

    dm = sub.add_parser(
        "demo", help="the main job: traffic from several services, an incident, its alert"
    )
    dm.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    dm.add_argument("--rate", type=float, default=300.0, help="events per wall second")
    dm.add_argument(
        "--time-scale", type=float, default=60.0, help="simulated seconds per wall second"
    )
    dm.add_argument("--workers", type=int, default=2, help="stream workers to start")
    dm.set_defaults(func=_demo)
    _add_price_parser(sub)
    _add_ingest_parsers(sub)
    _add_router_parsers(sub)
    return p


def _add_ingest_parsers(sub: Any) -> None:
    ig = sub.add_parser("ingest", help="HTTP gateway: OTLP traces and JSON events to Kafka")
    ig.add_argument("--host", default="127.0.0.1")
    ig.add_argument("--port", type=int, default=4318, help="default 4318, the OTLP/HTTP port")
    ig.add_argument("--keys-file", required=True, help="JSON Lines of sha256-hashed API keys")
    ig.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    ig.add_argument(
        "--endpoint-attr",
        action="append",
        default=[],
        metavar="ATTRIBUTE",
        help="span attribute naming the endpoint, in order (repeatable; default http.route, "
        "url.template, url.path, ...)",
    )
    ig.add_argument(
        "--team-attr",
        action="append",
        default=[],
        metavar="ATTRIBUTE",
        help="span/resource attribute naming the team (repeatable; default spendstream.team, "
        "team, tenant.id)",
    )
    ig.add_argument(
        "--user-attr",
        action="append",
        default=[],
        metavar="ATTRIBUTE",
        help="attribute naming the end user (repeatable; default user.id, enduser.id)",
    )
    ig.add_argument(
        "--session-attr",
        action="append",
        default=[],
        metavar="ATTRIBUTE",
        help="attribute naming the session (repeatable; default session.id, "
        "gen_ai.conversation.id, traceloop.association.properties.session_id, ...)",
    )
    ig.set_defaults(func=_ingest)
    ik = sub.add_parser("ingest-key", help="add an API key of the ingest gateway")
    ik.add_argument("action", choices=["add"])
    ik.add_argument("--keys-file", required=True)
    ik.add_argument("--service", required=True)
    ik.add_argument("--team")
    ik.set_defaults(func=_ingest_key)


def _add_price_parser(sub: Any) -> None:
    pc = sub.add_parser(
        "price",
        help="price a JSON/JSONL file of events or provider responses, without Kafka",
        description="Each item is an LLMCallEvent, or {provider, model, response} (plus "
        "track() fields such as timestamp, operation): prints every call's cost and the total. "
        "Exit 2 if an item could not be read (the rest are still priced).",
    )
    pc.add_argument("file", type=Path)
    pc.add_argument("--prices", type=Path, help="price-override TOML (default: the setting)")
    pc.set_defaults(func=_price)


def _router_train(args: argparse.Namespace, s: Settings) -> int:
    from .router import train as T

    out = args.out or s.router_model or Path("router-model.npz")
    ds = T.load_labels(args.labels)
    x, dim, name = T.featurise(ds)
    art = T.train_artefact(ds, x, dim, k=args.folds, seed=args.seed)
    art.meta.update(dataset=str(args.labels), embedder=name)
    art.save(out)
    print(
        f"wrote {out}: {len(ds.prompts)} prompts, {len(set(ds.subjects))} groups; cut at target "
        f"0.95 = {art.cut_for(0.95):.3f}; set SPENDSTREAM_ROUTER_MODEL={out} to use it"
    )
    return 0


def _router_eval(args: argparse.Namespace, s: Settings) -> int:
    from .router import train as T

    ds = T.load_labels(args.labels)
    x, dim, _ = T.featurise(ds)
    targets = args.target or [0.9, 0.95, 0.98]
    print(
        f"{len(ds.prompts)} prompts, {len(set(ds.subjects))} groups, {args.folds}-fold nested "
        f"cross-validation (groups kept together); accuracy cheap {ds.cheap_ok.mean():.4f}, "
        f"strong {ds.strong_ok.mean():.4f}"
    )
    for row in T.evaluate(ds, x, dim, targets, k=args.folds, seed=args.seed):
        print(
            f"target {row.target:.3f}: quality {row.quality:.4f} of always-strong, strong share "
            f"{row.strong_share:.4f}, out of domain {row.out_of_domain:.4f}"
        )
    return 0


def _add_router_parsers(sub: Any) -> None:
    rt = sub.add_parser("router", help="train or evaluate the learned router on your own labels")
    rsub = rt.add_subparsers(dest="router_command", required=True)
    help_labels = "CSV or JSONL: prompt, cheap_correct, strong_correct[, group]"
    tr = rsub.add_parser("train", help="fit and calibrate a router model file")
    tr.add_argument("--labels", type=Path, required=True, help=help_labels)
    tr.add_argument("--out", type=Path, help="default: the router_model setting")
    ev = rsub.add_parser("eval", help="quality reached and strong share at targets (held out)")
    ev.add_argument("--labels", type=Path, required=True, help=help_labels)
    ev.add_argument("--target", type=float, action="append", help="repeatable; default .9 .95 .98")
    for p in (tr, ev):
        p.add_argument("--folds", type=int, default=5)
        p.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=_router_train)
    ev.set_defaults(func=_router_eval)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .stack.process import StackError

    try:
        return int(args.func(args, settings))
    except StackError as exc:
        print(f"spendstream: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
