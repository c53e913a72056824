"""Every query of the Grafana dashboard returns data from the real Prometheus scraping a real
worker — a panel with a broken query fails the build."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from spendstream.config import Settings
from spendstream.events import example_event
from spendstream.probes import prom_query
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from tests.stream_helpers import private_settings, replay, wait_for, workers

pytestmark = [pytest.mark.stack, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def panel_queries() -> list[tuple[str, str]]:
    dash = json.loads((ROOT / "grafana" / "spendstream.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def test_the_committed_dashboard_is_what_the_builder_writes() -> None:
    sys.path.insert(0, str(ROOT / "grafana"))
    try:
        from build_dashboard import dashboard
    finally:
        sys.path.pop(0)
    assert json.loads((ROOT / "grafana" / "spendstream.json").read_text()) == dashboard()


def test_every_panel_query_returns_data(stack: Settings, tmp_path: Path) -> None:
    events = list(SyntheticTraffic(TrafficConfig(seed=18, rate=30)).events(count=20_000))
    span = (events[-1].timestamp - events[0].timestamp).total_seconds()
    unknown = [
        example_event(request_model="acme-private-1", response_model=None,
                      timestamp=events[-1].timestamp, event_id=f"00000000-0000-4000-8000-{i:012d}")
        for i in range(5)
    ]  # fmt: skip
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events + unknown) + b"{broken\n")
    s, env = private_settings(stack, "dash")
    queries = panel_queries()
    assert len(queries) >= 15
    with workers(env, 1, tmp_path):
        replay(env, path, "--speed", str(span / 30))
        empty: list[str] = []

        def all_have_data() -> bool:
            empty[:] = [f"{t}: {q}" for t, q in queries if not prom_query(s, q)]
            return not empty

        try:
            wait_for(all_have_data, 120, "every panel to have data")
        except AssertionError:
            raise AssertionError("panels without data:\n" + "\n".join(empty)) from None
