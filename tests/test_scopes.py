"""spendstream.scopes: one spelling of every scope name, and of event-time minutes."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from spendstream.scopes import (
    GLOBAL,
    MINUTE,
    SCOPE_KINDS,
    call_scopes,
    endpoint_scope,
    endpoint_service,
    minute_dt,
    minute_of,
    model_scope,
    service_scope,
    team_scope,
)


def test_scope_names() -> None:
    assert endpoint_scope("checkout", "/v1/chat") == "endpoint:checkout/v1/chat"
    assert endpoint_scope("checkout", "v1/chat") == "endpoint:checkout/v1/chat"
    assert model_scope("openai", "gpt-4o-mini") == "model:openai/gpt-4o-mini"
    assert service_scope("checkout") == "service:checkout"
    assert team_scope("search") == "team:search"
    assert team_scope(None) == team_scope("") == "team:-"
    assert GLOBAL == "global:all"


def test_endpoint_scope_escapes_the_service() -> None:
    """A ``/`` in a service name must not make two (service, endpoint) pairs one scope."""
    assert endpoint_scope("a/v1", "/x") == "endpoint:a%2Fv1/x"
    assert endpoint_scope("a", "/v1/x") == "endpoint:a/v1/x"
    assert endpoint_scope("50%", "/x") == "endpoint:50%25/x"
    assert endpoint_scope("a%2Fv1", "/x") != endpoint_scope("a/v1", "/x")


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20),
       st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))  # fmt: skip
def test_endpoint_scope_is_injective(s1: str, e1: str, s2: str, e2: str) -> None:
    e1, e2 = "/" + e1.lstrip("/"), "/" + e2.lstrip("/")
    if (s1, e1) != (s2, e2):
        assert endpoint_scope(s1, e1) != endpoint_scope(s2, e2)


@given(st.text(min_size=1, max_size=20), st.text(max_size=20))
def test_endpoint_service_inverts_the_escape(service: str, endpoint: str) -> None:
    assert endpoint_service(endpoint_scope(service, endpoint)) == service


def test_endpoint_service_examples() -> None:
    assert endpoint_service("endpoint:checkout/v1/chat") == "checkout"
    assert endpoint_service("endpoint:a%2Fv1/x") == "a/v1"
    assert endpoint_service("endpoint:50%25%2F2/x") == "50%/2"


def test_call_scopes_in_kind_order() -> None:
    got = call_scopes("svc", "/e", "openai", "gpt-4o", None)
    assert got == ("endpoint:svc/e", "model:openai/gpt-4o", "service:svc", "team:-", "global:all")
    assert tuple(s.split(":", 1)[0] for s in got) == SCOPE_KINDS


def test_minutes() -> None:
    assert MINUTE == 60
    assert minute_of(0) == 0
    assert minute_of(59.999) == 0
    assert minute_of(60) == 1
    assert minute_of(-0.5) == -1  # floor, not truncation: before 1970 is the previous minute
    t = datetime(2026, 12, 2, 1, 30, 59, 999_000, tzinfo=UTC)
    m = minute_of(t.timestamp())
    assert minute_dt(m) == datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    assert minute_dt(m).tzinfo is UTC
    assert minute_dt(m + 1) == datetime(2026, 12, 2, 1, 31, tzinfo=UTC)


@given(st.integers(min_value=0, max_value=10**8))
def test_minute_round_trip(m: int) -> None:
    start = minute_dt(m).timestamp()
    assert minute_of(start) == m
    assert minute_of(start + 59.5) == m
    assert minute_of(start - 0.5) == m - 1
