"""Synthetic LLM traffic: realistic, seeded, with named incidents at chosen simulated times.

Used by `spendstream produce --synthetic`, the tests, the benchmarks and the demo. The same
seed and options give the same events, byte for byte (event ids come from the seeded RNG and
the default start time is fixed), so a file can be regenerated instead of stored.

Shape of the traffic: several services x endpoints x models x teams; users per team drawn from
a Zipf law; token counts log-normal (heavy right tail); a diurnal rate (trough at 04:00 UTC,
peak mid-afternoon); ~1.5% errors, timeouts and rate limits; provider prompt-cache reads on
endpoints with long shared prompts; spendstream cache hits; reasoning tokens on o3-mini; about
1% of calls report no usage but carry prompt/response text (the worker estimates those).
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from ..events import CacheKind, LLMCallEvent, Operation, Status, Usage

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
"""A fixed Monday 00:00 UTC, so that a seed alone determines the output."""


@dataclass(frozen=True, slots=True)
class EndpointProfile:
    service: str
    endpoint: str
    team: str
    provider: str
    model: str
    weight: float
    """Share of traffic (relative)."""
    input_median: int
    output_median: int
    input_sigma: float = 0.8
    output_sigma: float = 0.7
    prompt_cache_rate: float = 0.0
    """Share of calls whose prompt prefix is read from the provider's cache."""
    cache_hit_rate: float = 0.0
    """Share of calls answered by spendstream's response cache (no provider call)."""
    prompt_version: str = "v1"
    operation: Operation = Operation.CHAT
    routed_from: str | None = None
    """The model callers ask for when a router picks ``model`` instead."""

    @property
    def scope(self) -> str:
        return f"{self.service}{self.endpoint}"


CATALOG: tuple[EndpointProfile, ...] = (
    EndpointProfile(
        "support-bot",
        "/v1/answer",
        "customer-success",
        "openai",
        "gpt-4o-mini",
        30,
        1800,
        250,
        prompt_cache_rate=0.55,
        cache_hit_rate=0.06,
        prompt_version="answer-v7",
        routed_from="gpt-4o",
    ),
    EndpointProfile(
        "support-bot",
        "/v1/summarize",
        "customer-success",
        "anthropic",
        "claude-3-5-haiku-latest",
        12,
        3500,
        300,
        prompt_version="summ-v3",
    ),
    EndpointProfile(
        "search",
        "/query",
        "search",
        "openai",
        "gpt-4.1-mini",
        22,
        900,
        120,
        cache_hit_rate=0.10,
        prompt_version="q-v12",
    ),
    EndpointProfile(
        "search",
        "/embed",
        "search",
        "openai",
        "text-embedding-3-small",
        25,
        300,
        0,
        input_sigma=0.6,
        operation=Operation.EMBEDDINGS,
        prompt_version="emb-v1",
    ),
    EndpointProfile(
        "billing-assistant",
        "/explain-invoice",
        "finance",
        "anthropic",
        "claude-sonnet-4-0",
        4,
        2600,
        450,
        prompt_cache_rate=0.4,
        prompt_version="inv-v2",
    ),
    EndpointProfile(
        "billing-assistant",
        "/forecast",
        "finance",
        "openai",
        "o3-mini",
        1.5,
        1500,
        1800,
        prompt_version="fc-v1",
    ),
    EndpointProfile(
        "growth",
        "/email-draft",
        "marketing",
        "google",
        "gemini-2.5-flash",
        5,
        1200,
        600,
        prompt_version="mail-v4",
    ),
    EndpointProfile(
        "growth",
        "/ad-copy",
        "marketing",
        "google",
        "gemini-2.5-pro",
        0.8,
        1600,
        700,
        prompt_version="ad-v2",
    ),
)

PRICIER = {
    "gpt-4o-mini": "gpt-4o",
    "gpt-4.1-mini": "gpt-4.1",
    "claude-3-5-haiku-latest": "claude-sonnet-4-0",
    "claude-sonnet-4-0": "claude-opus-4-1",
    "gemini-2.5-flash": "gemini-2.5-pro",
    "o3-mini": "o3",
    "text-embedding-3-small": "text-embedding-3-large",
}
"""The model an endpoint "silently switches to" in a model-switch incident."""

TEAM_USERS = {"customer-success": 1200, "search": 3000, "finance": 150, "marketing": 300}

# --- incidents ------------------------------------------------------------------------------

INCIDENTS = ("model-switch", "retry-storm", "prompt-bloat", "slow-ramp")
_DEFAULT_TARGET = {
    "model-switch": "support-bot/v1/answer",
    "retry-storm": "search/query",
    "prompt-bloat": "support-bot/v1/summarize",
    "slow-ramp": "growth/email-draft",
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``1.5d`` → timedelta."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: use a number and s, m, h or d (e.g. 30m)")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True, slots=True)
class Incident:
    """A named anomaly on one endpoint from ``start`` (offset into the run) for ``duration``."""

    name: str
    start: timedelta
    duration: timedelta
    target: str
    """``service/endpoint``, e.g. ``support-bot/v1/answer``."""

    @classmethod
    def parse(cls, spec: str) -> Incident:
        """``NAME@START[+DURATION][:SERVICE/ENDPOINT]``, e.g. ``model-switch@2h+1h``."""
        m = re.match(r"^([a-z-]+)@([^+:]+)(?:\+([^:]+))?(?::(.+))?$", spec.strip())
        if not m or m.group(1) not in INCIDENTS:
            raise ValueError(
                f"bad incident {spec!r}: use NAME@START[+DURATION][:SERVICE/ENDPOINT] with NAME "
                f"one of {', '.join(INCIDENTS)} (e.g. model-switch@2h+1h)"
            )
        name = m.group(1)
        target = m.group(4) or _DEFAULT_TARGET[name]
        if not any(p.scope == target for p in CATALOG):
            known = ", ".join(p.scope for p in CATALOG)
            raise ValueError(f"unknown incident target {target!r}; known: {known}")
        duration = parse_duration(m.group(3)) if m.group(3) else timedelta(hours=1)
        return cls(name, parse_duration(m.group(2)), duration, target)

    def active(self, offset: timedelta) -> bool:
        return self.start <= offset < self.start + self.duration

    def rate_factor(self, offset: timedelta) -> float:
        if not self.active(offset):
            return 1.0
        if self.name == "retry-storm":
            return 8.0
        if self.name == "slow-ramp":
            return 1.0 + 4.0 * (offset - self.start) / self.duration
        return 1.0


# --- the generator --------------------------------------------------------------------------


def diurnal(t: datetime) -> float:
    """Relative traffic at ``t``: 0.35 at 04:00 UTC, 1.0 at 16:00 UTC."""
    hour = t.hour + t.minute / 60 + t.second / 3600
    return 0.35 + 0.65 * (0.5 - 0.5 * math.cos(2 * math.pi * (hour - 4) / 24))


_DIURNAL_MEAN = 0.675  # mean of diurnal() over a day


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    seed: int = 7
    rate: float = 200.0
    """Mean events per second of *wall* time (the simulated rate is rate / time_scale)."""
    time_scale: float = 1.0
    """Simulated seconds per wall second (3600: an hour of event time passes each second)."""
    start: datetime = DEFAULT_START
    incidents: tuple[Incident, ...] = ()
    daily_cycle: bool = True
    """Vary the rate over the UTC day (0.35x at 04:00, 1x at 16:00); False: a flat ``rate``."""
    catalog: tuple[EndpointProfile, ...] = CATALOG


_WORDS = (
    "invoice refund account order shipping delay charge plan upgrade cancel password login "
    "error report summary customer billing forecast trend weekly campaign draft product feature "
    "search result ranking query email subject policy"
)


class SyntheticTraffic:
    """Iterates over events in event-time order; each has a simulated ``timestamp``."""

    WORDS: ClassVar[tuple[str, ...]] = tuple(_WORDS.split())

    def __init__(self, config: TrafficConfig) -> None:
        self.c = config
        self.rng = random.Random(config.seed)
        self._weights = [p.weight for p in config.catalog]

    def events(
        self, count: int | None = None, until: datetime | None = None
    ) -> Iterator[LLMCallEvent]:
        """``count`` events, or all events before ``until`` (simulated time)."""
        rng = self.rng
        t = self.c.start
        base = self.c.rate / self.c.time_scale  # simulated events per simulated second
        n = 0
        while count is None or n < count:
            offset = t - self.c.start
            factors = [self._rate_factor(p, offset) for p in self.c.catalog]
            weights = [w * f for w, f in zip(self._weights, factors, strict=True)]
            boost = sum(weights) / sum(self._weights)
            day = diurnal(t) / _DIURNAL_MEAN if self.c.daily_cycle else 1.0
            lam = base * day * boost
            t = t + timedelta(microseconds=round(rng.expovariate(lam) * 1e6))
            if until is not None and t >= until:
                return
            profile = rng.choices(self.c.catalog, weights)[0]
            yield self._event(profile, t, t - self.c.start)
            n += 1

    def _rate_factor(self, p: EndpointProfile, offset: timedelta) -> float:
        f = 1.0
        for inc in self.c.incidents:
            if inc.target == p.scope:
                f *= inc.rate_factor(offset)
        return f

    def _event(self, p: EndpointProfile, t: datetime, offset: timedelta) -> LLMCallEvent:
        rng = self.rng
        active = [i for i in self.c.incidents if i.target == p.scope and i.active(offset)]
        tags = {"synthetic": "1"}
        model = p.model
        prompt_version = p.prompt_version
        input_factor = 1.0
        error_rate = 0.015
        for inc in active:
            tags["incident"] = inc.name
            if inc.name == "model-switch":
                model = PRICIER.get(model, model)
            elif inc.name == "prompt-bloat":
                input_factor = 6.0
                prompt_version = f"{prompt_version}-bloated"
            elif inc.name == "retry-storm":
                error_rate = 0.6
                tags["retry"] = str(rng.randint(1, 5))
        users = TEAM_USERS.get(p.team, 500)
        user = min(users, int(rng.paretovariate(1.1)))
        event_id = uuid.UUID(int=rng.getrandbits(128), version=4)

        cache_hit = rng.random() < p.cache_hit_rate
        roll = rng.random()
        status = Status.OK
        if not cache_hit and roll < error_rate:
            status = rng.choice([Status.ERROR, Status.ERROR, Status.TIMEOUT, Status.RATE_LIMITED])
        inp = max(
            1, int(rng.lognormvariate(math.log(p.input_median * input_factor), p.input_sigma))
        )
        inp = min(inp, 1_000_000)
        out = 0
        if p.operation is not Operation.EMBEDDINGS:
            out = max(1, int(rng.lognormvariate(math.log(max(p.output_median, 1)), p.output_sigma)))
            out = min(out, 64_000)
        reasoning = int(out * rng.uniform(0.4, 0.8)) if model.startswith("o3") else 0
        cached = int(inp * rng.uniform(0.5, 0.9)) if rng.random() < p.prompt_cache_rate else 0
        latency = 120 + out * rng.uniform(8, 20) + inp * 0.02 + rng.expovariate(1 / 80)

        usage: Usage | None
        prompt_text = response_text = None
        if cache_hit:
            usage = Usage(input_tokens=0, output_tokens=0)
            latency = rng.uniform(2, 15)
        elif status is not Status.OK:
            usage = Usage(input_tokens=inp, output_tokens=0) if status is Status.ERROR else None
            if usage is None:
                usage = Usage()
            latency = 30_000.0 if status is Status.TIMEOUT else rng.uniform(50, 900)
        elif rng.random() < 0.01:
            usage = Usage()  # no usage reported: the worker estimates from the text
            prompt_text = " ".join(rng.choice(self.WORDS) for _ in range(min(inp, 400)))
            response_text = " ".join(rng.choice(self.WORDS) for _ in range(min(out, 200)))
        else:
            usage = Usage(
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=cached or None,
                reasoning_tokens=reasoning or None,
            )
        return LLMCallEvent(
            event_id=event_id,
            timestamp=t,
            service=p.service,
            endpoint=p.endpoint,
            provider=p.provider,
            request_model=model,
            response_model=model,
            operation=p.operation,
            team=p.team,
            user_id=f"{p.team[:3]}-u{user:05d}",
            tags=tags,
            prompt_version=prompt_version,
            usage=usage,
            prompt_text=prompt_text,
            response_text=response_text,
            latency_ms=round(latency, 1),
            ttft_ms=round(min(latency, 80 + rng.expovariate(1 / 150)), 1)
            if p.operation is Operation.CHAT and status is Status.OK and not cache_hit
            else None,
            status=status,
            error_type={
                Status.ERROR: "APIError",
                Status.TIMEOUT: "APITimeoutError",
                Status.RATE_LIMITED: "RateLimitError",
            }.get(status),
            cache_hit=cache_hit,
            cache_kind=(CacheKind.SEMANTIC if rng.random() < 0.7 else CacheKind.EXACT)
            if cache_hit
            else None,
            requested_model=p.routed_from,
            routing_reason="complexity policy: cheap model" if p.routed_from else None,
        )


def with_incidents(config: TrafficConfig, specs: list[str]) -> TrafficConfig:
    return replace(config, incidents=tuple(Incident.parse(s) for s in specs))


def sample_events(n: int, run_id: str, seed: int = 0) -> list[LLMCallEvent]:
    """``n`` varied, valid events tagged ``run=<run_id>``, timestamped from now (deterministic
    for a seed apart from the start): a quick load for tests and benchmarks."""
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(microsecond=0)
    services = {
        "support-bot": ["/v1/answer", "/v1/summarize"],
        "search": ["/query"],
        "billing-assistant": ["/explain-invoice"],
    }
    models = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku")]
    events = []
    for i in range(n):
        service = rng.choice(list(services))
        provider, model = rng.choice(models)
        inp = rng.randint(50, 8000)
        cached = rng.choice([0, 0, inp // 2])
        events.append(
            LLMCallEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
                timestamp=start + timedelta(milliseconds=37 * i),
                service=service,
                endpoint=rng.choice(services[service]),
                provider=provider,
                request_model=model,
                team=rng.choice(["search", "support", "finance"]),
                user_id=f"u-{rng.randint(1, 500)}",
                tags={"run": run_id},
                usage=Usage(
                    input_tokens=inp, output_tokens=rng.randint(1, 1500), cache_read_tokens=cached
                ),
                latency_ms=round(rng.uniform(80, 4000), 1),
            )
        )
    return events
