"""Alert records on the alerts topic: one incident is one ``firing`` plus one ``resolved``.

Both records of an incident share ``alert_id``, derived from (rule family, scope, first
window), so a re-evaluation after a worker restart produces the same id and consumers can drop
repeats by ``(alert_id, status)``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from .scopes import minute_dt as minute_dt  # re-exported: the alert modules import it from here

_NS = uuid.UUID("0b6f3c52-77a4-4f0e-9a43-6b1c2b8d5e01")

Rule = Literal[
    "spend_spike",
    "model_mix",
    "error_storm",
    "call_storm",
    "budget",
    "price_unknown",
    "runaway_session",
]
Severity = Literal["info", "warning", "critical"]


def alert_id(family: str, scope: str, first_minute: int) -> uuid.UUID:
    return uuid.uuid5(_NS, f"{family}|{scope}|{first_minute}")


class Contributor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    spend_usd: Decimal
    share: float


class Alert(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: uuid.UUID
    rule: Rule
    status: Literal["firing", "resolved"]
    severity: Severity
    scope: str
    """``endpoint:…``, ``model:…``, ``service:…``, ``team:…`` or ``global:all``."""
    window_start: AwareDatetime
    window_end: AwareDatetime
    """The 1-minute window (event time) that triggered this record."""
    first_seen: AwareDatetime
    """Start of the first window of the incident."""
    observed_usd: Decimal
    baseline_usd: Decimal
    ratio: float | None = None
    top_contributors: dict[str, list[Contributor]] = Field(default_factory=dict)
    """Top models, users and prompt versions by spend in the triggering window."""
    message: str
    details: dict[str, str] = Field(default_factory=dict)
    schema_version: Literal[1] = 1

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Alert:
        return cls.model_validate_json(data)

    @property
    def dedup_key(self) -> tuple[uuid.UUID, str]:
        return (self.alert_id, self.status)
