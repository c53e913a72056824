"""Routing policies, per endpoint, from a YAML or TOML file.

    models:                      # names used below → provider model, context window
      cheap:  {provider: openai, model: gpt-4o-mini, context_tokens: 128000}
      strong: {provider: openai, model: gpt-4o, context_tokens: 128000}
    default:                     # endpoints not listed below
      cheap: cheap
      strong: strong
      complexity: learned        # learned | heuristic | off
      target_quality: 0.95
      fallback: strong           # out of the learned model's domain: strong | cheap | heuristic
    endpoints:
      "support/chat":            # "<service>/<endpoint>" or just "<endpoint>"
        premium_tiers: [enterprise]
        escalate_after_retries: 1
        forced: {model: strong, share: 0.1}     # A/B: 10% of keys always get it
        budget: {scope: team, daily_usd: "50", downgrade_at: 0.8, refuse_at: 1.0}

An endpoint's block is merged over ``default`` field by field.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Conf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Conf):
    provider: str
    model: str
    context_tokens: int | None = Field(default=None, gt=0)
    """Largest prompt + completion the model takes; unknown means unlimited."""


class Forced(_Conf):
    """A/B: a stable share of keys (user, else team) always gets ``model``."""

    model: str
    share: float = Field(default=1.0, ge=0, le=1)


class Budget(_Conf):
    """Downgrade to the cheap model, then refuse, as live spend nears the budget."""

    scope: Literal["team", "endpoint", "service", "global"] = "team"
    hourly_usd: Decimal | None = Field(default=None, gt=0)
    daily_usd: Decimal | None = Field(default=None, gt=0)
    downgrade_at: float = Field(default=0.8, gt=0)
    refuse_at: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _has_limit(self) -> Budget:
        if self.hourly_usd is None and self.daily_usd is None:
            raise ValueError("a budget needs hourly_usd or daily_usd")
        return self


class EndpointPolicy(_Conf):
    cheap: str = "cheap"
    strong: str = "strong"
    complexity: Literal["learned", "heuristic", "off"] = "learned"
    target_quality: float = Field(default=0.95, gt=0, le=1)
    heuristic_cut: float = Field(default=0.5, ge=0, le=1)
    fallback: Literal["strong", "cheap", "heuristic"] = "strong"
    """What decides a prompt the learned model cannot judge (out of its training domain);
    strong is quality-safe, cheap and heuristic are not calibrated for the target."""
    premium_tiers: tuple[str, ...] = ()
    escalate_after_retries: int | None = Field(default=1, ge=1)
    forced: Forced | None = None
    budget: Budget | None = None


class RouterConfig(_Conf):
    models: dict[str, ModelSpec]
    default: EndpointPolicy = EndpointPolicy()
    endpoints: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self) -> RouterConfig:
        for name in self.endpoints:
            pol = self.policy_for(name)
            used = [pol.cheap, pol.strong] + ([pol.forced.model] if pol.forced else [])
            unknown = [m for m in used if m not in self.models]
            if unknown:
                raise ValueError(f"endpoint {name!r} names unknown models {unknown}")
        missing = [m for m in (self.default.cheap, self.default.strong) if m not in self.models]
        if missing:
            raise ValueError(f"default names unknown models {missing}")
        return self

    def policy_for(self, endpoint: str, service: str | None = None) -> EndpointPolicy:
        """``service/endpoint`` first, then the bare endpoint, else the default."""
        sep = "" if endpoint.startswith("/") else "/"
        for key in ((f"{service}{sep}{endpoint}" if service else None), endpoint):
            if key is not None and key in self.endpoints:
                merged = {**self.default.model_dump(), **self.endpoints[key]}
                return EndpointPolicy.model_validate(merged)
        return self.default


def load_config(path: str | Path) -> RouterConfig:
    """Read ``.yaml``/``.yml`` or ``.toml``; errors name the bad field."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif p.suffix == ".toml":
        data = tomllib.loads(text)
    else:
        raise ValueError(f"router config must be .yaml, .yml or .toml, not {p.name}")
    return RouterConfig.model_validate(data)
