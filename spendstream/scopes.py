"""Scope names and event-time minutes: one definition each for the worker, sinks and router.

A *scope* is what spend is totalled, alerted and budgeted by: ``endpoint:<service>/<path>``,
``model:<provider>/<request model>``, ``service:<service>``, ``team:<team>`` and
``global:all``. The worker writes these names to the windows topic, PostgreSQL and Redis, and
the router reads Redis by the same names, so a builder written twice is two spellings of one
budget.

Windows are 1-minute tumbling windows on event time, numbered by the epoch minute
(:func:`minute_of`); :func:`minute_dt` is a minute's start as an aware UTC datetime.
"""

from __future__ import annotations

from datetime import UTC, datetime

MINUTE = 60
"""Seconds per window."""
GLOBAL = "global:all"
"""The one scope every call is in."""
NO_TEAM = "-"
"""The team of a call that names none."""
SCOPE_KINDS = ("endpoint", "model", "service", "team", "global")


def endpoint_scope(service: str, endpoint: str) -> str:
    """``endpoint:<service>/<path>``, one name per (service, endpoint).

    The first ``/`` ends the service, so a ``/`` (and the escape character ``%``) inside a
    service name is percent-encoded: without it ``("a/v1", "/x")`` and ``("a", "/v1/x")``
    shared a scope — one service's spend and alerts counted as another's. Service names
    without ``/`` or ``%`` (all the usual ones) read as before. An endpoint without a leading
    ``/`` is the same endpoint as with one.
    """
    if "/" in service or "%" in service:
        service = service.replace("%", "%25").replace("/", "%2F")
    sep = "" if endpoint.startswith("/") else "/"
    return f"endpoint:{service}{sep}{endpoint}"


def endpoint_service(scope: str) -> str:
    """The service of an ``endpoint:`` scope, unescaped: ``service_scope(endpoint_service(s))``
    is that endpoint's service scope (splitting at the first ``/`` alone leaves ``%2F`` in)."""
    escaped = scope.removeprefix("endpoint:").split("/", 1)[0]
    return escaped.replace("%2F", "/").replace("%25", "%") if "%" in escaped else escaped


def model_scope(provider: str, model: str) -> str:
    """``model:<provider>/<request model>``."""
    return f"model:{provider}/{model}"


def service_scope(service: str) -> str:
    """``service:<service>``."""
    return f"service:{service}"


def team_scope(team: str | None) -> str:
    """``team:<team>``; a call without a team is in ``team:-`` (so its spend is not lost)."""
    return f"team:{team or NO_TEAM}"


def call_scopes(
    service: str, endpoint: str, provider: str, model: str, team: str | None
) -> tuple[str, str, str, str, str]:
    """Every scope one call's spend counts in, in :data:`SCOPE_KINDS` order."""
    return (
        endpoint_scope(service, endpoint),
        model_scope(provider, model),
        service_scope(service),
        team_scope(team),
        GLOBAL,
    )


def minute_of(ts: float) -> int:
    """The epoch minute (window number) containing epoch second ``ts``.

    Seconds, not a datetime: this runs once per event in the record aggregation (a datetime
    caller passes ``dt.timestamp()``).
    """
    return int(ts // MINUTE)


def minute_dt(minute: int) -> datetime:
    """The start of epoch minute ``minute`` as an aware UTC datetime."""
    return datetime.fromtimestamp(minute * MINUTE, UTC)
