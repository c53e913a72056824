"""Semantic response cache on Redis: exact and semantic tiers, partitioned, guarded."""

from .embedders import Embedder, HttpEmbedder, LocalEmbedder, local_embedder
from .guard import Mismatch, check, mismatch
from .request import CacheRequest
from .semantic import (
    CacheConfig,
    CacheHit,
    CacheStats,
    CandidateCheck,
    Explanation,
    SemanticCache,
)

__all__ = [
    "CacheConfig",
    "CacheHit",
    "CacheRequest",
    "CacheStats",
    "CandidateCheck",
    "Embedder",
    "Explanation",
    "HttpEmbedder",
    "LocalEmbedder",
    "Mismatch",
    "SemanticCache",
    "check",
    "local_embedder",
    "mismatch",
]
