"""The topic declarations: topics.py names every topic, the tables' changelogs included."""

from __future__ import annotations

from pathlib import Path

from spendstream.config import Settings
from spendstream.stream.app import build_app
from spendstream.topics import changelog_topic_name, changelog_topics


def test_changelog_topics_are_the_ones_faust_derives_for_the_workers_tables(
    tmp_path: Path,
) -> None:
    """topics.py creates the tables' changelogs before Faust starts (compacted, co-partitioned):
    its names and partition counts must be the ones Faust derives for the app's tables."""
    s = Settings(_env_file=None, stack_dir=tmp_path)
    faust_app = build_app(s)
    derived = [
        (faust_app.tables[name].changelog_topic.get_topic_name(), faust_app.tables[name].partitions)
        for name in ("stage1", "stage2")
    ]
    assert [(t.name, t.partitions) for t in changelog_topics(s)] == derived
    assert all(t.config == {"cleanup.policy": "compact"} for t in changelog_topics(s))


def test_changelog_topics_of_another_app_id() -> None:
    s = Settings()
    names = [t.name for t in changelog_topics(s, "spendstream-x")]
    assert names == ["spendstream-x-stage1-changelog", "spendstream-x-stage2-changelog"]
    assert changelog_topic_name("a", "stage2") == "a-stage2-changelog"
    parts = [t.partitions for t in changelog_topics(s, "spendstream-x")]
    assert parts == [s.raw_partitions, s.stage2_partitions]
