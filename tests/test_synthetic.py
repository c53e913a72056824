"""Synthetic traffic: deterministic by seed, realistic shape, incidents where they are asked."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from spendstream.events import LLMCallEvent, Status
from spendstream.producers.synthetic import (
    DEFAULT_START,
    Incident,
    SyntheticTraffic,
    TrafficConfig,
    with_incidents,
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_same_seed_gives_identical_100k_files(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    for out, seed in ((a, "7"), (b, "7"), (c, "8")):
        r = cli("produce", "--synthetic", "--count", "100000", "--seed", seed, "--out", str(out))
        assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    lines = a.read_bytes().splitlines()
    assert len(lines) == 100_000
    events = [LLMCallEvent.model_validate_json(ln) for ln in lines[:2000]]
    assert len({e.event_id for e in events}) == 2000
    assert events == sorted(events, key=lambda e: e.timestamp)


def gen(count: int | None = None, hours: float | None = None, **kw: object) -> list[LLMCallEvent]:
    cfg = TrafficConfig(**kw)  # type: ignore[arg-type]
    until = DEFAULT_START + timedelta(hours=hours) if hours else None
    return list(SyntheticTraffic(cfg).events(count=count, until=until))


def test_traffic_has_the_documented_shape() -> None:
    events = gen(count=30_000, rate=50.0, time_scale=1.0)
    scopes = Counter(f"{e.service}{e.endpoint}" for e in events)
    assert len(scopes) == 8 and len({e.team for e in events}) == 4
    errors = sum(e.status is not Status.OK for e in events) / len(events)
    assert 0.005 < errors < 0.03
    assert 0.02 < sum(e.cache_hit for e in events) / len(events) < 0.10
    inputs = [e.usage.input_tokens for e in events if e.usage.input_tokens]
    assert max(inputs) > 8 * statistics.median(inputs)  # heavy right tail
    assert any(e.usage.cache_read_tokens for e in events)
    assert any(e.usage.reasoning_tokens for e in events)
    no_usage = [e for e in events if e.usage.input_tokens is None and e.status is Status.OK]
    assert no_usage and all(e.prompt_text for e in no_usage)
    users = Counter(e.user_id for e in events if e.team == "search")
    top = users.most_common(1)[0][1]
    assert top > 20 * statistics.median(users.values())  # Zipf: a few heavy users


def test_rate_follows_the_day() -> None:
    # 1 event/s of simulated time on average, over one simulated day
    events = gen(hours=24, rate=1.0, time_scale=1.0)
    per_hour = Counter(e.timestamp.hour for e in events)
    assert 70_000 < len(events) < 100_000
    assert per_hour[16] > 2.2 * per_hour[4]


def test_time_scale_compresses_event_time() -> None:
    # rate is per wall second: at time-scale 3600, 100 ev/s means 100 events per simulated
    # hour on average over the day, i.e. 2400 a day (Poisson: sd ~ 49)
    events = gen(hours=24, rate=100.0, time_scale=3600.0)
    assert 2200 < len(events) < 2600


def window(
    events: list[LLMCallEvent], target: str, start_h: float, end_h: float
) -> list[LLMCallEvent]:
    lo, hi = DEFAULT_START + timedelta(hours=start_h), DEFAULT_START + timedelta(hours=end_h)
    return [e for e in events if f"{e.service}{e.endpoint}" == target and lo <= e.timestamp < hi]


def test_model_switch_hits_only_its_endpoint_and_only_while_active() -> None:
    cfg = with_incidents(TrafficConfig(rate=2.0), ["model-switch@2h+1h"])
    events = list(SyntheticTraffic(cfg).events(until=DEFAULT_START + timedelta(hours=4)))
    during = window(events, "support-bot/v1/answer", 2, 3)
    assert during and {e.request_model for e in during} == {"gpt-4o"}
    assert all(e.tags.get("incident") == "model-switch" for e in during)
    for h0, h1 in ((0, 2), (3, 4)):
        assert {e.request_model for e in window(events, "support-bot/v1/answer", h0, h1)} == {
            "gpt-4o-mini"
        }
    others = [e for e in events if e.endpoint != "/v1/answer"]
    assert not any("incident" in e.tags for e in others)


def test_retry_storm_prompt_bloat_and_ramp() -> None:
    cfg = with_incidents(
        TrafficConfig(rate=2.0), ["retry-storm@1h+1h", "prompt-bloat@1h+1h", "slow-ramp@1h+2h"]
    )
    events = list(SyntheticTraffic(cfg).events(until=DEFAULT_START + timedelta(hours=3)))
    q_before, q_during = window(events, "search/query", 0, 1), window(events, "search/query", 1, 2)
    assert len(q_during) > 4 * len(q_before)
    assert sum(e.status is not Status.OK for e in q_during) / len(q_during) > 0.4
    s_before = window(events, "support-bot/v1/summarize", 0, 1)
    s_during = window(events, "support-bot/v1/summarize", 1, 2)
    med = lambda es: statistics.median(e.usage.input_tokens for e in es if e.usage.input_tokens)  # noqa: E731
    assert med(s_during) > 4 * med(s_before)
    assert {e.prompt_version for e in s_during} == {"summ-v3-bloated"}
    r_first = window(events, "growth/email-draft", 1, 1.5)
    r_last = window(events, "growth/email-draft", 2.5, 3)
    assert len(r_last) > 2 * len(r_first)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("meltdown@1h", "NAME@START"),
        ("model-switch@soon", "bad duration"),
        ("model-switch@1h:nope/x", "unknown incident target"),
    ],
)
def test_bad_incident_spec_is_a_clear_error(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Incident.parse(spec)
    r = cli("produce", "--synthetic", "--count", "10", "--out", "/dev/null", "--incident", spec)
    assert r.returncode == 2 and match.split("@")[0] in r.stderr
