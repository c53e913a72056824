"""Live spend for budget policies, read from Redis off the decision path.

The router must decide in well under a millisecond with no network call, so it reads a
snapshot. ``refresh()`` fetches every scope seen so far in one ``MGET`` (via
:class:`~spendstream.livespend.LiveSpend`); ``start()`` runs it on a daemon thread every few
seconds. A scope the router has not seen yet reads as no spend until the next refresh; Redis
down keeps the last snapshot (logged), which fails open — budgets are a guard rail, the
PostgreSQL books are the record.

With a :class:`~spendstream.budget.BudgetGuard` (``BudgetView(url, guard=guard)``), the scopes
the guard limits are read from its counters instead — settled plus in-flight reservations, in
real time and in the guard's time zone — so the router's downgrade/refuse policy sees the same
spend the guard enforces; other scopes still read live spend.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from decimal import Decimal

from ..budget import BudgetGuard
from ..livespend import LiveSpend

log = logging.getLogger("spendstream.router")
ZERO = Decimal(0)


class BudgetView:
    def __init__(self, redis_url: str, guard: BudgetGuard | None = None) -> None:
        self.live = LiveSpend(redis_url)
        self.guard = guard
        self.spend: dict[str, tuple[Decimal, Decimal]] = {}
        """scope → (this hour, today) USD, as of ``refreshed_at``."""
        self.refreshed_at: datetime | None = None
        self._watched: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, scope: str) -> tuple[Decimal, Decimal]:
        got = self.spend.get(scope)
        if got is None:
            self._watched.add(scope)
            return ZERO, ZERO
        return got

    def watch(self, *scopes: str) -> None:
        self._watched.update(scopes)

    def refresh(self) -> None:
        scopes = sorted(self._watched | set(self.spend))
        if not scopes:
            return
        try:
            at = datetime.now(UTC)
            fresh = {s: self._read(s, at) for s in scopes}
        except Exception as exc:  # keep the last snapshot
            log.warning("live spend not refreshed from Redis: %s", exc)
            return
        self.spend = fresh
        self.refreshed_at = at

    def _read(self, scope: str, at: datetime) -> tuple[Decimal, Decimal]:
        """(hour, day) USD: the guard's committed spend for the scopes it limits."""
        if self.guard is None or scope not in self.guard.limits:
            return self.live.spend(scope, at)
        hour, day = self.live.spend(scope, at)
        got = self.guard.committed(scope, at)
        return got.get("hour", hour), got.get("day", day)

    def start(self, every_s: float = 5.0) -> None:
        def loop() -> None:
            while not self._stop.wait(every_s):
                self.refresh()

        self.refresh()
        self._thread = threading.Thread(target=loop, name="spendstream-budgets", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.live.close()
