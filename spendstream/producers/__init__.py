"""Producer SDK: one event per LLM call, published to Kafka without blocking the host."""
