"""Event-time windows: what is aggregated, per scope and minute, and how partials merge.

Scopes (named in :mod:`spendstream.scopes`): ``endpoint:<service>/<endpoint>``,
``model:<provider>/<request_model>``, ``service:<service>``, ``team:<team>`` and ``global:all``.
Windows are 1-minute tumbling windows keyed by event time (epoch minute,
:func:`~spendstream.scopes.minute_of`); hour and day totals are sums of minutes.

Money is integer picodollars (10⁻¹² USD) end to end, so totals are exact. Aggregation happens
twice: inside one Kafka record (events are first grouped by their few distinct
(endpoint, model, service, team, minute) signatures, then expanded to scopes), and across
records in the stage-1 table, where each key remembers the last record offset applied to it
(``thru``) so a record replayed after a crash is never counted twice.

Bounded by design: a window's name maps (models, prompt versions, users) keep their top
:data:`TOP_NAMES` / :data:`TOP_USERS` entries by spend whenever they are serialised; models
and prompt versions fold the rest into one :data:`OTHER` entry, so the map still sums to the
window's spend (users are contributors only: the rest is dropped). With names capped by the
schema (model ≤ 128, prompt version ≤ 256 characters), one scope's serialised window stays under
~50 KB whatever the traffic; before this, 1,500 distinct long prompt versions in one
partition-minute made a 1 MiB changelog record and crashed every worker (issue 13).
Per-name figures beyond the top are therefore approximate across partitions (a name in one
partition's top may sit in another's ``OTHER``); every total stays exact.

Sessions (issue 17, the runaway-session rule of :mod:`.runaway`): endpoint windows only keep
``sessions`` (session id → [spend, calls]) for their top :data:`TOP_SESSIONS` sessions by spend
and fold the rest into ``srest`` = [sessions, spend, calls]. The raw topic is keyed by
service/endpoint, so all sessions of an endpoint meet in one stage-1 partition and the top is
exact there. Bound: 16 × (id ≤ 256 characters + ~30 B) ≤ ~4.6 KB per endpoint-minute (~1 KB with
UUID ids) whatever the number of sessions; other scopes carry none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..events import Status
from ..scopes import MINUTE as MINUTE
from ..scopes import call_scopes, minute_of

if TYPE_CHECKING:
    from .enrich import EnrichedCall

TOP_USERS = 10
"""Users kept per window partial (by spend); contributor lists are approximate beyond that."""
TOP_SESSIONS = 16
"""Sessions kept per endpoint window partial (by spend); the rest are counted in ``srest``."""
TOP_NAMES = 20
"""Models and prompt versions kept per window partial (by spend); the rest goes to OTHER."""
OTHER = "(other)"
"""The bucket holding the spend of the models/prompt versions beyond the top."""


def top_with_other(d: dict[str, int], k: int) -> dict[str, int]:
    """The ``k`` largest entries of ``d`` (ties by name) plus OTHER holding the rest's sum."""
    ranked = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))
    out = dict(kv for kv in ranked if kv[0] != OTHER)
    rest = d.get(OTHER, 0)
    if len(out) > k:
        kept = list(out.items())[:k]
        rest += sum(v for _, v in list(out.items())[k:])
        out = dict(kept)
    if rest:
        out[OTHER] = rest
    return out


class Agg:
    """Totals of one scope in one minute (or of one signature inside a record)."""

    __slots__ = (
        "calls",
        "cr",
        "cw",
        "errors",
        "est",
        "inp",
        "models",
        "out",
        "pv",
        "rs",
        "sessions",
        "spend",
        "srest",
        "unknown",
        "users",
    )

    def __init__(self) -> None:
        self.spend = 0
        self.calls = 0
        self.errors = 0
        self.inp = 0
        self.out = 0
        self.cr = 0
        self.cw = 0
        self.rs = 0
        self.unknown = 0
        self.est = 0
        self.models: dict[str, int] = {}
        self.pv: dict[str, int] = {}
        self.users: dict[str, int] = {}
        self.sessions: dict[str, list[int]] = {}
        """Session id → [spend, calls] (endpoint scopes only; top TOP_SESSIONS when stored)."""
        self.srest: list[int] = [0, 0, 0]
        """[sessions, spend, calls] of the sessions folded out of ``sessions``."""

    def add_call(self, c: EnrichedCall) -> None:
        ev, t = c.event, c.tokens
        cost = c.cost_pico
        self.spend += cost
        self.calls += 1
        if ev.status is not Status.OK:
            self.errors += 1
        self.inp += t.input_tokens
        self.out += t.output_tokens
        self.cr += t.cache_read_tokens
        self.cw += t.cache_creation_tokens
        self.rs += t.reasoning_tokens
        if c.parts_pico is None:
            self.unknown += 1
        if t.estimated:
            self.est += 1
        m = ev.request_model
        self.models[m] = self.models.get(m, 0) + cost
        if ev.prompt_version:
            self.pv[ev.prompt_version] = self.pv.get(ev.prompt_version, 0) + cost
        if ev.user_id:
            self.users[ev.user_id] = self.users.get(ev.user_id, 0) + cost
        sid = ev.session_id
        if sid:
            cur = self.sessions.get(sid)
            if cur is None:
                self.sessions[sid] = [cost, 1]
            else:
                cur[0] += cost
                cur[1] += 1

    def merge(self, o: Agg, sessions: bool = True) -> None:
        """Add ``o``; ``sessions=False`` leaves its sessions out (scopes other than endpoints)."""
        self.spend += o.spend
        self.calls += o.calls
        self.errors += o.errors
        self.inp += o.inp
        self.out += o.out
        self.cr += o.cr
        self.cw += o.cw
        self.rs += o.rs
        self.unknown += o.unknown
        self.est += o.est
        for src, dst in ((o.models, self.models), (o.pv, self.pv), (o.users, self.users)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        if sessions and (o.sessions or o.srest[0]):
            self._merge_sessions(o)

    def _merge_sessions(self, o: Agg) -> None:
        for k, (sp, n) in o.sessions.items():
            cur = self.sessions.get(k)
            if cur is None:
                self.sessions[k] = [sp, n]
            else:
                cur[0] += sp
                cur[1] += n
        self.srest = [a + b for a, b in zip(self.srest, o.srest, strict=True)]

    def trim(self) -> None:
        if len(self.models) > TOP_NAMES:
            self.models = top_with_other(self.models, TOP_NAMES)
        if len(self.pv) > TOP_NAMES:
            self.pv = top_with_other(self.pv, TOP_NAMES)
        if len(self.users) > TOP_USERS:
            top = sorted(self.users.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_USERS]
            self.users = dict(top)
        if len(self.sessions) > TOP_SESSIONS:
            ranked = sorted(self.sessions.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
            rest = ranked[TOP_SESSIONS:]
            self.sessions = dict(ranked[:TOP_SESSIONS])
            n, sp, c = self.srest
            self.srest = [
                n + len(rest),
                sp + sum(v[0] for _, v in rest),
                c + sum(v[1] for _, v in rest),
            ]

    def to_dict(self) -> dict[str, Any]:
        self.trim()
        out: dict[str, Any] = {
            "spend": self.spend,
            "calls": self.calls,
            "errors": self.errors,
            "inp": self.inp,
            "out": self.out,
            "cr": self.cr,
            "cw": self.cw,
            "rs": self.rs,
            "unknown": self.unknown,
            "est": self.est,
            "models": self.models,
            "pv": self.pv,
            "users": self.users,
        }
        if self.sessions or self.srest[0]:  # absent when untracked: old records read the same
            out["ss"] = self.sessions
            out["sr"] = self.srest
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Agg:
        a = cls()
        for k in ("spend", "calls", "errors", "inp", "out", "cr", "cw", "rs", "unknown", "est"):
            setattr(a, k, int(d.get(k, 0)))
        a.models = {str(k): int(v) for k, v in d.get("models", {}).items()}
        a.pv = {str(k): int(v) for k, v in d.get("pv", {}).items()}
        a.users = {str(k): int(v) for k, v in d.get("users", {}).items()}
        a.sessions = {str(k): [int(v[0]), int(v[1])] for k, v in d.get("ss", {}).items()}
        a.srest = [int(v) for v in d.get("sr", (0, 0, 0))]
        return a

    def copy(self, sessions: bool = True) -> Agg:
        a = Agg.__new__(Agg)
        a.spend, a.calls, a.errors = self.spend, self.calls, self.errors
        a.inp, a.out, a.cr, a.cw, a.rs = self.inp, self.out, self.cr, self.cw, self.rs
        a.unknown, a.est = self.unknown, self.est
        a.models, a.pv, a.users = dict(self.models), dict(self.pv), dict(self.users)
        a.sessions = {k: list(v) for k, v in self.sessions.items()} if sessions else {}
        a.srest = list(self.srest) if sessions else [0, 0, 0]
        return a


@dataclass
class RecordAggregate:
    """Aggregates of one record by (scope, minute); built per signature for speed."""

    by_key: dict[tuple[str, int], Agg] = field(default_factory=dict)
    max_ts: float = 0.0
    """Largest event time in the record (seconds): the partition's watermark candidate."""

    def add_calls(self, calls: Iterable[EnrichedCall]) -> None:
        # Signatures are raw field tuples; scope names are built once per signature.
        sigs: dict[tuple[str, str, str, str, str | None, int], Agg] = {}
        max_ts = self.max_ts
        for c in calls:
            ev, ts = c.event, c.ts
            if ts > max_ts:
                max_ts = ts
            sig = (ev.service, ev.endpoint, ev.provider, ev.request_model, ev.team, minute_of(ts))
            agg = sigs.get(sig)
            if agg is None:
                agg = sigs[sig] = Agg()
            agg.add_call(c)
        self.max_ts = max_ts
        for (service, endpoint, provider, model, team, minute), agg in sigs.items():
            # sessions only in the endpoint scope (the first): the runaway rule's
            for i, scope in enumerate(call_scopes(service, endpoint, provider, model, team)):
                key = (scope, minute)
                cur = self.by_key.get(key)
                if cur is None:
                    self.by_key[key] = agg.copy(sessions=i == 0)
                else:
                    cur.merge(agg, sessions=i == 0)

    def items(self) -> Iterator[tuple[tuple[str, int], Agg]]:
        return iter(self.by_key.items())


def total(partials: Iterable[Agg]) -> Agg:
    out = Agg()
    for p in partials:
        out.merge(p)
    return out
