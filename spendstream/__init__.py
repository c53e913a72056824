"""spendstream: real-time LLM spend observability on Kafka."""

__version__ = "0.1.0"
