"""The one `spendstream` command; each room adds its subcommands here."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

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
    from .demo import run_demo

    return run_demo(s, n=args.count)


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

    dm = sub.add_parser("demo", help="the main job: stack up and events through the pipeline")
    dm.add_argument("--count", type=int, default=1000)
    dm.set_defaults(func=_demo)
    return p


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
