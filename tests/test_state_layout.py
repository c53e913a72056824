"""The tables' layout is versioned: state written by another layout is refused by name, never
read as zeros."""

from __future__ import annotations

from typing import Any

import pytest

from spendstream.stream import state as layout
from spendstream.stream.pipeline import DictState, Snapshot, Stage1, Stage2
from spendstream.stream.rules import RuleConfig
from spendstream.stream.windows import RecordAggregate


def test_a_fresh_partition_records_the_layout_version_it_was_written_with() -> None:
    t = DictState()
    Stage1(t).apply_batch([(3, 0, RecordAggregate())])
    assert t[layout.s1_version(3)] == layout.STATE_VERSION
    t2: dict[str, Any] = {}
    Stage2(t2, RuleConfig(), 1).apply_snapshots(1, [])
    assert t2[layout.s2_version(1)] == layout.STATE_VERSION


def test_stage1_refuses_a_partition_written_by_another_layout() -> None:
    t = DictState({layout.s1_version(0): layout.STATE_VERSION - 1})
    with pytest.raises(layout.StateVersionError, match="stage1 partition 0: state layout version"):
        Stage1(t).apply_batch([(0, 0, RecordAggregate())])
    # other partitions are unaffected
    Stage1(t).apply_batch([(1, 0, RecordAggregate())])


def test_stage2_refuses_a_partition_written_by_another_layout() -> None:
    t2: dict[str, Any] = {layout.s2_version(0): 99}
    s2 = Stage2(t2, RuleConfig(), 1)
    with pytest.raises(layout.StateVersionError, match="WORKER_APP_ID"):
        s2.apply_snapshots(0, [Snapshot(0, "global:all", 1, 0, {"calls": 1})])
    with pytest.raises(layout.StateVersionError):
        s2.close(0)


def test_window_keys_of_a_partition_exclude_its_watermark_and_version() -> None:
    t = DictState()
    s1 = Stage1(t)
    s1.apply_batch([(0, 0, RecordAggregate())])
    assert s1.keys_of(0) == []
    assert s1.prune(0) == 0


def test_event_id_keys_are_outside_the_window_prefix_and_a_version_3_partition_is_refused() -> None:
    assert layout.STATE_VERSION == 4
    key = layout.s1_seen(0, 29_000_000, "7.0")
    assert key.startswith(layout.s1_seen_prefix(0))
    assert not key.startswith(layout.s1_prefix(0))
    t = DictState({layout.s1_version(0): 3, key: {"7": "00" * 16}})
    with pytest.raises(layout.StateVersionError, match="version 3"):
        Stage1(t).apply_batch([(0, 8, RecordAggregate())])
