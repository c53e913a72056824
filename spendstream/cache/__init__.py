"""Semantic response cache on Redis: exact and semantic tiers, partitioned, guarded."""

from .embedders import Embedder, HttpEmbedder, LocalEmbedder, local_embedder
from .guard import mismatch
from .request import CacheRequest
from .semantic import CacheConfig, CacheHit, CacheStats, SemanticCache

__all__ = [
    "CacheConfig",
    "CacheHit",
    "CacheRequest",
    "CacheStats",
    "Embedder",
    "HttpEmbedder",
    "LocalEmbedder",
    "SemanticCache",
    "local_embedder",
    "mismatch",
]
