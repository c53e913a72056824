"""The changelog records the worker writes itself are the ones Faust restores a table from.

:class:`~spendstream.stream.faust_adapter.TableState` encodes keys and values with msgspec and
sends them past Faust's own changelog path; a restarted worker rebuilds its tables with Faust's
table codec (JSON keys and values). Checked here against that codec, not against msgspec.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from faust.serializers import codecs

from spendstream.stream.faust_adapter import TableState


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None, bytes | None, int | None]] = field(default_factory=list)

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
        timestamp: float | None, headers: Any,
    ) -> None:  # fmt: skip
        self.sent.append((topic, key, value, partition))


def fake_table() -> Any:
    store = SimpleNamespace(data={})
    topic = SimpleNamespace(get_topic_name=lambda: "app-stage2-changelog")
    return SimpleNamespace(data=store, changelog_topic=topic)


VALUES: dict[str, Any] = {
    "w|3|29000000|7|endpoint:svc/ünï «code»": {
        "thru": 12_345_678_901,
        "agg": {"spend": 2**63 + 12345, "models": {"gpt-4o": 10**15}, "users": {}},
    },
    "wm|3": {"0": [1768175997.420925, True], "1": [None, False]},
    "mins|3": [29000000, 29000001],
    "c|3": 29000001,
    's|team:a\x01\n"quoted"': {"rev": {"29000000": 2}, "hist": [[1, 0.5, 3]]},
}


def test_every_record_decodes_with_fausts_codec_to_the_value_written() -> None:
    table, producer = fake_table(), FakeProducer()
    state = TableState(table)
    for key, value in VALUES.items():
        state.put(3, key, value)
    state.delete(4, "c|3")
    assert state.get("c|3") is None and table.data.data.keys() == VALUES.keys() - {"c|3"}
    assert producer.sent == []  # nothing leaves before the flush
    asyncio.run(state.flush(producer))
    assert [(t, p) for t, _, _, p in producer.sent] == [("app-stage2-changelog", 3)] * len(
        VALUES
    ) + [("app-stage2-changelog", 4)]
    restored: dict[str, Any] = {}
    for _, key, value, _ in producer.sent:  # as Faust's changelog recovery applies them
        assert key is not None
        k = codecs.loads("json", key)
        if value is None:
            restored.pop(k, None)
        else:
            restored[k] = codecs.loads("json", value)
    assert restored == {k: v for k, v in VALUES.items() if k != "c|3"}
    assert state.pending == []
