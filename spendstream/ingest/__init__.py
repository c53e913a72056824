"""``spendstream ingest``: an HTTP gateway taking OTLP traces and JSON events from any
language and publishing them to the raw topic through the SDK's emitter."""
