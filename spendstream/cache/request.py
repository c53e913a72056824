"""What a cache entry is keyed by: the normalised request and its partition.

A partition is everything that must match before two requests may share an answer: tenant,
model, system prompt, sampling parameters and the earlier turns of the conversation. Lookups
never cross partitions, so tenant A can't be served tenant B's answer even for the same words.
Inside a partition the exact tier keys on the last user message (whitespace-normalised) and
the semantic tier compares its embedding.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

_SPACE = re.compile(r"\s+")
SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "n",
)
"""Request parameters that change the answer; anything else (user ids, timeouts) is ignored."""


def normalise_text(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _content(m: Mapping[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "" if c is None else json.dumps(c, sort_keys=True)


def _digest(obj: Any) -> str:
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


@dataclass(frozen=True)
class CacheRequest:
    tenant: str
    model: str
    messages: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def query(self) -> str:
        """The last user message: what the semantic tier embeds and the guard compares."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return normalise_text(_content(m))
        return ""

    @cached_property
    def sampling(self) -> dict[str, Any]:
        """Answer-changing parameters; numbers as floats so ``0`` and ``0.0`` match."""
        out: dict[str, Any] = {}
        for k in SAMPLING_KEYS:
            v = self.params.get(k)
            if v is None:
                continue
            out[k] = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        return out

    @property
    def temperature(self) -> float:
        t = self.sampling.get("temperature")
        return 1.0 if t is None else float(t)  # providers default to 1

    @cached_property
    def partition(self) -> str:
        system = [normalise_text(_content(m)) for m in self.messages if m.get("role") == "system"]
        last_user = max(
            (i for i, m in enumerate(self.messages) if m.get("role") == "user"), default=-1
        )
        earlier = [
            (m.get("role"), normalise_text(_content(m)))
            for i, m in enumerate(self.messages)
            if m.get("role") != "system" and i != last_user
        ]
        return _digest(
            {
                "tenant": self.tenant,
                "model": self.model,
                "system": _digest(system),
                "sampling": self.sampling,
                "earlier": _digest(earlier),
            }
        )

    @cached_property
    def exact_key(self) -> str:
        return _digest([self.partition, self.query])
