"""The worker's /metrics on the real broker: counts and costs agree with the enriched topic,
labels stay bounded, and promtool accepts the exposition."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendstream.config import Settings
from spendstream.events import EnrichedEvent
from spendstream.livespend import LiveSpend
from spendstream.money import pico_to_usd
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.scopes import minute_dt, minute_of, team_scope
from tests.stream_helpers import (
    TopicReader,
    latest_windows,
    private_settings,
    replay,
    wait_for,
    workers,
)

pytestmark = [pytest.mark.stack]

BOUNDED = {"service", "endpoint", "provider", "model", "team", "status", "type", "partition",
           "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
           "gen_ai_token_type", "le", "family"}  # fmt: skip


def test_worker_metrics_match_the_enriched_events(stack: Settings, tmp_path: Path) -> None:
    events = list(SyntheticTraffic(TrafficConfig(seed=17, rate=20)).events(count=5_000))
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    s, env = private_settings(stack, "metrics")
    enriched = TopicReader(s, s.topic_enriched)
    windows = TopicReader(s, s.topic_windows)
    with workers(env, 1, tmp_path):
        replay(env, path)
        lines: list[EnrichedEvent] = []

        def read() -> None:
            enriched.poll(0.5)
            lines[:] = [
                EnrichedEvent.from_json(x) for m in enriched.records for x in m.value().split(b"\n")
            ]

        wait_for(lambda: len(lines) >= 5_000, 120, "5000 enriched events", every=read)
        log = next(tmp_path.glob("worker-*.log"))
        wait_for(lambda: b"metrics on :" in log.read_bytes(), 30, "the metrics port")
        port = int(re.search(rb"metrics on :(\d+)", log.read_bytes()).group(1))  # type: ignore[union-attr]

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                return str(resp.read().decode())

        def value(text: str, name: str, **match: str) -> float:
            total = 0.0
            for fam in text_string_to_metric_families(text):
                for smp in fam.samples:
                    if smp.name == name and all(smp.labels.get(k) == v for k, v in match.items()):
                        total += smp.value
            return total

        wait_for(
            lambda: value(scrape(), "spendstream_llm_requests_total") >= 5_000,
            60,
            "the metrics to count every call",
        )
        text = scrape()
        minutes = {minute_of(e.timestamp.timestamp()) for e in events}
        team_minutes = {(team_scope(e.team), minute_of(e.timestamp.timestamp())) for e in events}

        def all_closed() -> bool:
            # every closed minute's team windows too: they sit on other partitions of the
            # windows topic and may be read after the global ones
            got = latest_windows(windows)
            closed = {int(k.split("|")[1]) for k in got if k.startswith("global:all|")}
            need = {f"{t}|{m}" for t, m in team_minutes if m in closed}
            return len(closed) >= len(minutes) - 1 and need <= got.keys()

        wait_for(all_closed, 120, "the closed minutes", every=lambda: windows.poll(0.5))
    enriched.close()
    windows.close()

    # live spend in Redis: each team's hour and day so far, equal to its closed windows
    got = latest_windows(windows)
    live = LiveSpend(s.redis_url)
    teams = {k.split("|")[0] for k in got if k.startswith("team:")}
    assert teams
    for team in teams:
        last = max(int(k.split("|")[1]) for k in got if k.startswith(team + "|"))
        at = minute_dt(last)
        hour = sum(
            v["spend_pico"]
            for k, v in got.items()
            if k.startswith(team + "|") and int(k.split("|")[1]) // 60 == last // 60
        )
        day = sum(v["spend_pico"] for k, v in got.items() if k.startswith(team + "|"))
        assert live.spend(team, at) == (pico_to_usd(hour), pico_to_usd(day))
    live.close()
    assert value(text, "spendstream_llm_requests_total") == len(lines) == 5_000
    cost = sum((e.cost.total for e in lines if e.cost), Decimal(0))
    assert abs(Decimal(str(value(text, "spendstream_llm_cost_usd_total"))) - cost) < Decimal(
        "0.005"
    )
    for typ, attr in (("input", "input_tokens"), ("output", "output_tokens"),
                      ("cache_read", "cache_read_tokens")):  # fmt: skip
        assert value(text, "spendstream_llm_tokens_total", type=typ) == sum(
            getattr(e.tokens, attr) for e in lines
        )
    with_latency = sum(1 for e in lines if e.event.latency_ms is not None)
    assert value(text, "gen_ai_client_operation_duration_seconds_count") == with_latency
    assert value(text, "spendstream_llm_latency_seconds_count") == with_latency
    assert value(text, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == len(lines)
    labels = {k for fam in text_string_to_metric_families(text) for smp in fam.samples
              for k in smp.labels}  # fmt: skip
    assert labels <= BOUNDED, labels - BOUNDED
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
