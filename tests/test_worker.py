"""The stream worker on the real broker: replayed incidents, dead letters, agreement with the
in-process computation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.producers.synthetic import (
    DEFAULT_START,
    SyntheticTraffic,
    TrafficConfig,
    with_incidents,
)
from spendstream.stream.offline import records_of, run
from tests.stream_helpers import (
    TopicReader,
    alerts_of,
    latest_windows,
    private_settings,
    replay,
    wait_for,
    workers,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SWITCH_AT = DEFAULT_START + timedelta(hours=10)
SWITCH_END = SWITCH_AT + timedelta(hours=1)
TARGET = "endpoint:support-bot/v1/answer"


@pytest.fixture(scope="module")
def day_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    cfg = with_incidents(TrafficConfig(seed=11, rate=1.5), ["model-switch@10h+1h"])
    events = list(SyntheticTraffic(cfg).events(until=DEFAULT_START + timedelta(days=1)))
    path = tmp_path_factory.mktemp("day") / "day.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    return path, events


def replay_through_worker(
    stack: Settings,
    path: Path,
    expected_windows: int,
    speed_args: list[str],
    tmp: Path,
    n_workers: int = 1,
) -> tuple[list[Any], dict[str, Any]]:
    """Replay the file into private topics with ``n_workers`` workers running; return the alerts and
    the latest revision of every window once as many windows as expected have closed."""
    s, env = private_settings(stack, "day")
    alerts = TopicReader(s, s.topic_alerts)
    windows = TopicReader(s, s.topic_windows)
    with workers(env, n_workers, tmp):
        replay(env, path, *speed_args)
        try:
            wait_for(
                lambda: len(latest_windows(windows)) >= expected_windows,
                400,
                f"{expected_windows} windows to close",
                every=lambda: (alerts.poll(0.2), windows.poll(0.3)),
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {len(latest_windows(windows))} closed") from None
        alerts.poll(2.0)
        windows.poll(1.0)
    out = alerts_of(alerts), latest_windows(windows)
    alerts.close()
    windows.close()
    return out


def key(a: Any) -> tuple[Any, ...]:
    return (
        str(a.alert_id),
        a.status,
        a.rule,
        a.scope,
        a.window_start,
        a.first_seen,
        a.observed_usd,
        a.baseline_usd,
        a.severity,
    )


def test_model_switch_fires_once_resolves_and_replays_identically(
    stack: Settings, day_file: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    path, events = day_file
    # the same computation in one process, without Kafka: the reference
    offline = run(records_of(events, 12))
    fast_alerts, fast_windows = replay_through_worker(
        stack, path, len(offline.windows), ["--max-speed"], tmp_path, n_workers=2
    )

    on_target = [a for a in fast_alerts if a.scope == TARGET]
    firing = [a for a in on_target if a.status == "firing"]
    resolved = [a for a in on_target if a.status == "resolved"]
    assert len(firing) == 1 and len(resolved) == 1
    assert abs((firing[0].first_seen - SWITCH_AT).total_seconds()) <= 120
    assert firing[0].window_start - SWITCH_AT <= timedelta(minutes=2)
    assert resolved[0].window_start >= SWITCH_END
    assert resolved[0].alert_id == firing[0].alert_id
    assert firing[0].top_contributors["model"][0].name == "gpt-4o"
    untouched = [a for a in fast_alerts if a.scope.startswith("endpoint:") and a.scope != TARGET]
    assert untouched == []

    # distribution, batching and timing change nothing: same alerts, same totals
    assert sorted(map(key, fast_alerts)) == sorted(map(key, offline.alerts))
    assert {k: v["spend_pico"] for k, v in fast_windows.items()} == {
        k: w.agg.spend for k, w in offline.windows.items()
    }

    # replayed paced by event time (a day in 12 s): identical alerts
    paced_alerts, paced_windows = replay_through_worker(
        stack, path, len(offline.windows), ["--speed", "7200"], tmp_path
    )
    assert sorted(map(key, paced_alerts)) == sorted(map(key, fast_alerts))
    assert {k: v["spend_pico"] for k, v in paced_windows.items()} == {
        k: v["spend_pico"] for k, v in fast_windows.items()
    }
