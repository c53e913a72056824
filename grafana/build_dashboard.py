"""Writes grafana/spendstream.json (run after editing the panel list; the JSON is committed).

Every panel's queries are evaluated against a real Prometheus in tests/test_dashboard.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DS = {"type": "prometheus", "uid": "spendstream-prometheus"}
COST = "spendstream_llm_cost_usd_total"

PANELS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    # (title, type, unit, [(expr, legend)])
    ("Projected monthly cost (last hour's rate)", "stat", "currencyUSD",
     [(f"sum(rate({COST}[1h])) * 3600 * 730", "USD / month")]),
    ("Spend, last hour", "stat", "currencyUSD", [(f"sum(increase({COST}[1h]))", "USD")]),
    ("Spend by endpoint (USD/h)", "timeseries", "currencyUSD",
     [(f"sum by (service, endpoint) (rate({COST}[5m])) * 3600", "{{service}}{{endpoint}}")]),
    ("Spend by model (USD/h)", "timeseries", "currencyUSD",
     [(f"sum by (provider, model) (rate({COST}[5m])) * 3600", "{{provider}}/{{model}}")]),
    ("Spend by team (USD/h)", "timeseries", "currencyUSD",
     [(f"sum by (team) (rate({COST}[5m])) * 3600", "{{team}}")]),
    ("Model mix (share of spend)", "timeseries", "percentunit",
     [(f"sum by (model) (rate({COST}[15m])) / ignoring(model) group_left "
       f"sum(rate({COST}[15m]))", "{{model}}")]),
    ("Tokens per second by type", "timeseries", "short",
     [("sum by (type) (rate(spendstream_llm_tokens_total[5m]))", "{{type}}")]),
    ("Requests per second by status", "timeseries", "reqps",
     [("sum by (status) (rate(spendstream_llm_requests_total[5m]))", "{{status}}")]),
    ("Latency P50 / P95 / P99", "timeseries", "s",
     [(f"histogram_quantile({q}, sum by (le) "
       f"(rate(spendstream_llm_latency_seconds_bucket[5m])))", f"p{int(q * 100)}")
      for q in (0.5, 0.95, 0.99)]),
    ("Response-cache hit rate", "timeseries", "percentunit",
     [("sum(rate(spendstream_llm_cache_hits_total[15m])) / "
       "sum(rate(spendstream_llm_requests_total[15m]))", "hit rate")]),
    ("Calls with unknown prices (last hour)", "stat", "short",
     [("sum by (provider, model) "
       "(increase(spendstream_llm_price_unknown_calls_total[1h]))", "{{provider}}/{{model}}")]),
    ("Dead letters (last hour)", "stat", "short",
     [("sum(increase(spendstream_dead_letters_total[1h]))", "dead letters")]),
    ("Consumer lag (raw records)", "timeseries", "short",
     [("sum(spendstream_consumer_lag_records)", "lag")]),
]  # fmt: skip


def dashboard() -> dict[str, Any]:
    panels = []
    for i, (title, kind, unit, targets) in enumerate(PANELS):
        w = 6 if kind == "stat" else 12
        panels.append(
            {
                "id": i + 1,
                "title": title,
                "type": kind,
                "datasource": DS,
                "gridPos": {"h": 8, "w": w, "x": (i * w) % 24, "y": (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": leg}
                    for j, (e, leg) in enumerate(targets)
                ],
            }
        )
    return {
        "uid": "spendstream",
        "title": "spendstream — LLM spend",
        "tags": ["spendstream", "llm", "cost"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
        "templating": {"list": []},
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("spendstream.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
