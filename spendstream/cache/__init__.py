"""Semantic response cache on Redis with numpy similarity."""
