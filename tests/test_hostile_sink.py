"""Hostile input on the real stack: a poison pill goes to the dead-letter topic with its reason,
without its prompt text, and everything around it is processed exactly once.

The sink's poison pills are written straight into the enriched topic (what a worker of an older
schema, or anyone with write access to the topic, could put there): the worker is bypassed, so
the sink's own checks are what is tested."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from spendstream import wire
from spendstream.config import Settings
from spendstream.events import LLMCallEvent, example_event
from spendstream.money import usd_to_pico
from spendstream.stream.enrich import Enricher
from tests.books import migrated_db, on_pg, query
from tests.stream_helpers import TopicReader, sink_process, wait_for, workers

pytestmark = [pytest.mark.stack]

T0 = datetime(2026, 3, 4, 12, tzinfo=UTC)
SECRET = "SECRET-PROMPT-do-not-store"


def produce(s: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Write (key, value) records to ``topic`` and wait until the broker has them all."""
    prod = Producer(s.librdkafka())
    for key, value in records:
        prod.produce(topic, value=value, key=key, headers=wire.HEADERS)
    assert prod.flush(30) == 0


def events(n: int, minute: int = 0) -> list[LLMCallEvent]:
    return [
        example_event(event_id=uuid.uuid4(), timestamp=T0 + timedelta(minutes=minute, seconds=i))
        for i in range(n)
    ]


def headers(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in msg.headers() or []}


def sink_metrics(env: dict[str, str], log_dir: Path) -> dict[str, float]:
    """The dead-letter counters on the sink's ``/metrics`` (its port is in its log)."""
    log = (log_dir / f"sink-{env['SPENDSTREAM_WORKER_APP_ID']}.log").read_text()
    port = int(re.findall(r"metrics on :(\d+)/metrics", log)[-1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    names = ("spendstream_dead_letters_total", "spendstream_sink_rows_refused_total",
             "spendstream_sink_bad_lines_total")  # fmt: skip
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(names)
    }


def test_rows_the_sink_cannot_store_are_dead_lettered_one_by_one_and_the_batch_is_stored_once(
    stack: Settings, tmp_path: Path
) -> None:
    s, env = migrated_db(stack, "poison")
    # a bound PostgreSQL enforces and the schema cannot know of (a deployment's own constraint)
    query(s, "ALTER TABLE llm_calls ADD CONSTRAINT no_poison CHECK (user_id <> 'poison')")
    en = Enricher()
    good = events(40)
    refused = example_event(event_id=uuid.uuid4(), timestamp=T0, user_id="poison")
    lines = [en.enrich(e, e.to_json()).to_json() for e in good]
    nul = lines[7].replace(b'"user_id":"u-1842"', b'"user_id":"u\\u0000x"')  # COPY cannot
    huge = lines[8].replace(b'"status":"ok"', b'"status":"ok","cache_saved_usd":"1e300"')
    bad = [en.enrich(refused, refused.to_json()).to_json(), nul, huge]
    # one record: the bad lines sit between good ones of the same batch
    value = b"\n".join([*lines[:20], bad[0], *lines[20:30], bad[1], bad[2], *lines[30:]])
    key = good[0].kafka_key()
    produce(s, s.topic_enriched, [(key, value)])
    dlq = TopicReader(s, s.topic_dlq)
    count = "SELECT count(*) FROM llm_calls"
    with sink_process(env, tmp_path) as sink:
        wait_for(lambda: len(dlq.records) >= 3, 60, "3 dead letters", every=lambda: dlq.poll())
        wait_for(lambda: query(s, count) == 40, 30, "the 40 good rows")
        # the sink keeps going: a later record is stored too
        later = events(5, minute=1)
        produce(s, s.topic_enriched, [(key, b"\n".join(en.enrich(e, e.to_json()).to_json()
                                                        for e in later))])  # fmt: skip
        wait_for(lambda: query(s, count) == 45, 30, "the later record's rows")
        assert sink.poll() is None
        # counted where Prometheus alerts on it (the same family as the worker's dead letters)
        assert sink_metrics(env, tmp_path) == {
            'spendstream_dead_letters_total{stage="sink"}': 3.0,
            'spendstream_sink_rows_refused_total{stage="sink"}': 1.0,
            'spendstream_sink_bad_lines_total{stage="sink"}': 2.0,
        }
        dlq.poll(1.0)
    dlq.close()

    assert query(s, "SELECT count(DISTINCT event_id) FROM llm_calls") == 45
    stored = Decimal(query(s, "SELECT sum(cost_usd) FROM llm_calls"))
    assert usd_to_pico(stored) == en.total_pico(good + later)
    assert query(s, "SELECT count(*) FROM llm_calls WHERE user_id = 'poison'") == 0
    got = sorted(dlq.records, key=lambda m: int(headers(m)["spendstream-source-line"]))
    assert [m.value() for m in got] == bad
    h = [headers(m) for m in got]
    assert [x["spendstream-source-line"] for x in h] == ["20", "31", "32"]
    assert {x["spendstream-source-topic"] for x in h} == {s.topic_enriched}
    assert {x["spendstream-source-offset"] for x in h} == {"0"}
    assert "no_poison" in h[0]["spendstream-error"]
    assert h[0]["spendstream-error"].startswith("PostgreSQL refused the row: CheckViolation")
    assert h[1]["spendstream-error"].startswith("unreadable enriched line: event.user_id:")
    assert (
        "cache_saved_usd: Input should be less than or equal to 1000000"
        in (h[2]["spendstream-error"])
    )
    assert got[0].key() == key


def test_a_nul_in_a_row_is_isolated_by_bisection_when_it_reaches_postgresql(
    stack: Settings,
) -> None:
    """A row the schema of the day let through (before NUL was refused) still cannot stop the
    sink: the write finds it and writes the others."""
    from spendstream.events import EnrichedEvent
    from spendstream.sinks.postgres import PostgresSink, row_of

    s, _ = migrated_db(stack, "bisect")
    en = Enricher()
    rows = [row_of(EnrichedEvent.from_json(en.enrich(e, e.to_json()).to_json()))
            for e in events(33)]  # fmt: skip
    user_id = 9  # COLUMNS index
    for i in (3, 17, 32):
        rows[i] = (*rows[i][:user_id], "u\x00x", *rows[i][user_id + 1 :])

    async def go(conn: Any) -> tuple[int, list[tuple[int, str]], int]:
        new, refused = await PostgresSink(conn).write_good(rows)
        return new, refused, await conn.fetchval("SELECT count(*) FROM llm_calls")

    new, refused, stored = on_pg(go, s.postgres_dsn)
    assert (new, stored) == (30, 30)
    assert [i for i, _ in refused] == [3, 17, 32]
    assert all("CharacterNotInRepertoireError" in why for _, why in refused)


def test_worker_dead_letters_nul_duplicate_keys_and_future_dates_without_their_text(
    stack: Settings, tmp_path: Path
) -> None:
    s, env = migrated_db(stack, "hostile-raw")
    now = datetime.now(UTC).replace(microsecond=0)
    good = [
        example_event(event_id=uuid.uuid4(), timestamp=now - timedelta(minutes=5, seconds=i))
        for i in range(12)
    ]
    nul = good[0].model_copy(update={"event_id": uuid.uuid4()}).to_json()
    nul = nul.replace(b'"user_id":"u-1842"', b'"user_id":"u\\u0000x"')
    nul = nul[:-1] + f',"prompt_text":"{SECRET}"}}'.encode()
    dup = good[1].model_copy(update={"event_id": uuid.uuid4()}).to_json()
    dup = dup[:-1] + f',"prompt_text":"{SECRET}","prompt_text":null}}'.encode()
    ahead = example_event(
        event_id=uuid.uuid4(), timestamp=now + timedelta(hours=2), prompt_text=SECRET
    ).to_json()
    lines = [g.to_json() for g in good]
    value = b"\n".join([*lines[:4], nul, *lines[4:8], dup, ahead, *lines[8:]])
    produce(s, s.topic_raw, [(good[0].kafka_key(), value)])
    dlq = TopicReader(s, s.topic_dlq)
    enriched = TopicReader(s, s.topic_enriched)

    def enriched_events() -> list[dict[str, Any]]:
        return [json.loads(x) for m in enriched.records for x in m.value().split(b"\n")]

    def poll() -> None:
        dlq.poll(0.3)
        enriched.poll(0.3)

    with workers(env, 1, tmp_path):
        wait_for(
            lambda: len(dlq.records) >= 3 and len(enriched_events()) >= 12,
            120,
            "3 dead letters and 12 enriched events",
            every=poll,
        )
        poll()
    dlq.close()
    enriched.close()

    assert sorted(e["event"]["event_id"] for e in enriched_events()) == sorted(
        str(g.event_id) for g in good
    )
    by_line = {int(headers(m)["spendstream-source-line"]): m for m in dlq.records}
    assert sorted(by_line) == [4, 9, 10]
    reasons = {i: headers(m)["spendstream-error"] for i, m in by_line.items()}
    assert reasons[4].startswith("user_id: contains a control character")
    assert reasons[9].startswith("duplicate key 'prompt_text'")
    assert reasons[10].startswith(f"timestamp {(now + timedelta(hours=2)).isoformat()} is ahead")
    ahead_s = re.search(r"ahead of the worker clock by (\d+) s", reasons[10])
    assert ahead_s is not None and 7000 < int(ahead_s.group(1)) <= 7200
    for m in dlq.records:  # no prompt text by default, its length instead
        assert SECRET.encode() not in m.value()
        assert json.loads(m.value())["prompt_text_chars"] == len(SECRET)
        assert headers(m)["spendstream-source-topic"] == s.topic_raw
