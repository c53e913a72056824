"""`spendstream demo` end to end: the README's first command, checked from outside the demo."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendstream.alerts import Alert
from spendstream.config import Settings
from spendstream.demo import PREFIX, RAG_AT, TAG, DemoPlan, plan_events, rag_request, run_demo
from spendstream.demo_otlp import SERVICE, export_body, via_gateway
from spendstream.ingest.otlp import decode_json, map_spans
from spendstream.money import pico_to_usd
from spendstream.stream.enrich import Enricher
from tests.books import query
from tests.stream_helpers import TopicReader, wait_for


def test_the_demo_spans_map_back_to_the_calls_they_were_made_from() -> None:
    """The OTLP share of the demo (one service's calls with complete usage) read by the
    gateway's own mapping: same calls, same priced usage, same total cost."""
    plan = DemoPlan()
    events = plan_events(plan, "t1", datetime.now(UTC))
    sent = [e for e in events if via_gateway(e)]
    assert len(sent) > 300 and {e.service for e in sent} == {SERVICE}
    res = map_spans(decode_json(export_body(sent)))
    assert (len(res.events), res.rejected, res.ignored) == (len(sent), 0, 0)
    for a, b in zip(sent, res.events, strict=True):
        assert (b.service, b.endpoint, b.team, b.user_id, b.provider) == (
            a.service, a.endpoint, a.team, a.user_id, a.provider,
        )  # fmt: skip
        assert (b.request_model, b.status, b.tags, b.usage) == (
            a.request_model, a.status, a.tags, a.usage,
        )  # fmt: skip
        assert b.timestamp == a.timestamp
    enricher = Enricher()
    assert enricher.total_pico(res.events) == enricher.total_pico(sent) > 0


@pytest.mark.stack
@pytest.mark.slow
def test_demo_catches_the_model_switch_and_its_books_equal_the_emitted_costs(
    stack: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = DemoPlan()
    res = run_demo(stack, plan, keep=True)
    out = capsys.readouterr().out
    assert res.ok, (res.problems, out[-3000:])

    # the run's events, regenerated and priced here, not by the demo
    events = plan_events(plan, res.run_id, res.start + plan.span)
    assert len(events) == res.emitted > 5_000
    expected = pico_to_usd(Enricher().total_pico(events))
    run = json.dumps({TAG: res.run_id})
    assert query(stack, "SELECT count(*) FROM llm_calls WHERE tags @> $1::jsonb", run) == len(
        events
    )
    stored = query(stack, "SELECT sum(cost_usd) FROM llm_calls WHERE tags @> $1::jsonb", run)
    assert Decimal(stored) == expected
    assert f"total ${expected}" in out

    # one service's calls came as OTLP spans through the ingest gateway: its rows carry the
    # span ids the gateway derived, the SDK's rows of that service none
    sent = [e for e in events if via_gateway(e)]
    assert res.via_gateway == len(sent) > 300
    assert f"the gateway accepted {len(sent):,} of {len(sent):,} spans" in out
    spans = "SELECT count(*) FROM llm_calls WHERE tags @> $1::jsonb AND service = $2 AND {}"
    assert query(stack, spans.format("span_id IS NOT NULL"), run, SERVICE) == len(sent)
    assert query(stack, spans.format("span_id IS NULL"), run, SERVICE) == sum(
        1 for e in events if e.service == SERVICE and not via_gateway(e)
    )

    # the multi-service request: one trace across three services, its summed cost printed
    request = rag_request(res.run_id, res.start + RAG_AT)
    assert {e.service for e in request} == {"search", "ranker", "support-bot"}
    assert all(e in events for e in request)
    trace = request[0].trace_id
    # 40 x $0.02/M + 6000 x $0.003/M + 5200 x $0.15/M + 420 x $0.60/M
    assert res.request_usd == Decimal("0.0010508") == pico_to_usd(Enricher().total_pico(request))
    assert query(stack, "SELECT sum(cost_usd) FROM llm_calls WHERE trace_id = $1", trace) == (
        Decimal("0.0010508")
    )
    assert f"{trace}       0.001051       3       2040.0" in out  # 140 ms + 1900 ms
    assert "the request's three calls priced in this process: $0.001050800000 -> equal" in out

    # the alerts topic of the run: the target endpoint fired during the incident and resolved
    # after it, once each; the webhook receiver printed both
    ds, _ = stack.isolated(PREFIX + res.run_id)
    reader = TopicReader(ds, ds.topic_alerts)
    alerts: list[Alert] = []

    def both() -> bool:
        alerts[:] = [Alert.from_json(m.value()) for m in reader.records]
        return {a.status for a in alerts if a.scope == "endpoint:" + plan.target} == {
            "firing",
            "resolved",
        }

    wait_for(both, 30, "the target's firing and resolved alerts", every=lambda: reader.poll(0.5))
    reader.close()
    on_target = [a for a in alerts if a.scope == "endpoint:" + plan.target]
    assert sorted(a.status for a in on_target) == ["firing", "resolved"]
    firing = next(a for a in on_target if a.status == "firing")
    resolved = next(a for a in on_target if a.status == "resolved")
    incident_from = res.start + timedelta(minutes=plan.warmup_min)
    incident_to = incident_from + timedelta(minutes=plan.incident_min)
    assert incident_from <= firing.window_start < incident_from + timedelta(minutes=5)
    assert incident_to <= resolved.window_start < incident_to + timedelta(minutes=10)
    assert firing.alert_id == resolved.alert_id
    assert firing.top_contributors["model"][0].name.endswith("gpt-4o")
    assert out.count(f"webhook <- [FIRING] {firing.severity} {firing.rule} {firing.scope}") == 1
    assert out.count(f"webhook <- [resolved] info {resolved.rule} {resolved.scope}") == 1

    # Prometheus, as the demo queried it while both workers ran: every call counted once,
    # although the second worker's join moved partitions (and re-read records) mid-stream
    assert res.prom_calls == len(events)
