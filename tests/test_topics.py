"""The topic declarations: topics.py names every topic, the tables' changelogs included."""

from __future__ import annotations

from typing import Any

from spendstream.config import Settings
from spendstream.stream import app
from spendstream.topics import changelog_topic_name, changelog_topics


def test_changelog_topics_are_the_workers_own() -> None:
    """What topics.py declares for an app id is what the worker creates before Faust starts
    (same names, partitions, replication and configs), so the lead can switch app.py to it."""
    s = Settings()

    def shape(specs: list[Any]) -> list[tuple[str, int, int, dict[str, str]]]:
        return [(t.name, t.partitions, t.replication_factor, t.config) for t in specs]

    assert shape(changelog_topics(s)) == shape(app.changelog_topics(s))


def test_changelog_topics_of_another_app_id() -> None:
    s = Settings()
    names = [t.name for t in changelog_topics(s, "spendstream-x")]
    assert names == ["spendstream-x-stage1-changelog", "spendstream-x-stage2-changelog"]
    assert changelog_topic_name("a", "stage2") == "a-stage2-changelog"
    parts = [t.partitions for t in changelog_topics(s, "spendstream-x")]
    assert parts == [s.raw_partitions, s.stage2_partitions]
