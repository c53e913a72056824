"""Session fixtures: settings, and the real local stack (started when it is not up).

Integration tests never mock Kafka, PostgreSQL, Redis or Prometheus: the `stack` fixture makes
sure the real services run, and leaves them running for the next test run (`make stack-down`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spendstream import stack as local_stack
from spendstream.config import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Settings]:
    if not all(s.ready for s in local_stack.status(settings)):
        local_stack.up(settings)
    yield settings
