"""Sinks: Prometheus metrics, PostgreSQL per-call log and rollups, alert delivery."""
