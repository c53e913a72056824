"""Overshoot of one team budget under 8 processes x 16 concurrent callers, with crashes.

    python bench/budget_overshoot.py [--seed N]

Every caller loops: estimate a random cost (1-40 cents), ``reserve`` it against the team's
daily budget ($50), "call the provider" (1-5 ms), then ``settle`` the actual — uniform in
[estimate/2, estimate], except 10 % of calls that cost 1.2 x their estimate (a wrong price
book). Three of the eight processes are set to ``os._exit`` mid-call after a random number of
calls (5-60), leaving their in-flight reservations unsettled; one refused before its crash
point ends normally, so a run has up to three crashes (exit codes are printed). Each caller
logs ``S id estimate actual`` before its call and ``D id`` after its settle (one ``write``
each, ``O_APPEND``), so the parent knows every settled call and every call a crash left in
flight (counted as billed: the provider finished it).

Checks, from the module docstring of :mod:`spendstream.budget`:

- counted (Redis ``settled``) == Σ settled actuals (nothing lost or double counted);
- counted ≤ limit + Σ (actual − estimate)⁺;
- billed = counted + Σ crashed in-flight actuals ≤ limit + Σ (actual − estimate)⁺ + that sum;
- after the reservation TTL the reaper leaves ``reserved == 0`` and no open reservation.

Last line ``budget_overshoot_usd=<billed − limit>`` (negative: under the limit).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

from _common import machine, result, settings_with_stack

from spendstream.budget import BudgetExceeded, BudgetGuard
from spendstream.money import PICO, pico_to_usd, usd_to_pico

PROCS, THREADS, CALLS = 8, 16, 12
LIMIT = "50"
SCOPE = "team:bench"
TTL_S = 2.0
CRASHING = 3


class Caller:
    """One process's callers, its log file and its (optional) crash point."""

    def __init__(self, url: str, ns: str, seed: int, log: Path, crash_at: int | None) -> None:
        self.guard = BudgetGuard(  # generous timeout: a reserve timing out would fail open
            url, {SCOPE: {"daily": LIMIT}}, namespace=ns, reservation_ttl_s=TTL_S,
            socket_timeout_s=10,
        )  # fmt: skip
        self.seed, self.crash_at = seed, crash_at
        self.fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.started = 0
        self.lock = threading.Lock()
        self.settling = 0
        self.gate = threading.Condition()
        """A crash waits for settles in progress (a settle and its ``D`` line are one step for
        the books: else a settle could land in Redis and its line be lost with the process)."""

    def call(self, rng: random.Random) -> None:
        est = rng.randint(1, 40) * PICO // 100
        actual = est * 6 // 5 if rng.random() < 0.1 else rng.randint(est // 2, est)
        try:
            res = self.guard.reserve([SCOPE], est)
        except BudgetExceeded:
            return
        cid = uuid.uuid4().hex
        os.write(self.fd, f"S {cid} {est} {actual}\n".encode())
        with self.lock:
            self.started += 1
            crash = self.crash_at is not None and self.started >= self.crash_at
        if crash:
            with self.gate:
                self.gate.wait_for(lambda: self.settling == 0)
                os._exit(1)  # mid-call: this and every other in-flight call are never settled
        time.sleep(rng.uniform(0.001, 0.005))  # the provider call
        with self.gate:
            self.settling += 1
        res.settle(actual)
        os.write(self.fd, f"D {cid}\n".encode())
        with self.gate:
            self.settling -= 1
            self.gate.notify_all()

    def run(self) -> None:
        def loop(k: int) -> None:
            rng = random.Random(self.seed * 1000 + k)
            for _ in range(CALLS):
                self.call(rng)

        ts = [threading.Thread(target=loop, args=(k,)) for k in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        os.close(self.fd)


def child(url: str, ns: str, seed: int, log: Path, crash_at: int | None) -> None:
    Caller(url, ns, seed, log, crash_at).run()


def read_logs(paths: list[Path]) -> tuple[int, int, int, int]:
    """(settled actual, overrun of settled calls, crashed in-flight actual, calls)."""
    started: dict[str, tuple[int, int]] = {}
    done: set[str] = set()
    for p in paths:
        for line in p.read_text().splitlines():
            parts = line.split()
            if parts[0] == "S":
                started[parts[1]] = (int(parts[2]), int(parts[3]))
            else:
                done.add(parts[1])
    settled = sum(a for c, (_, a) in started.items() if c in done)
    over = sum(max(0, a - e) for c, (e, a) in started.items() if c in done)
    lost = sum(a for c, (_, a) in started.items() if c not in done)
    return settled, over, lost, len(started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=7)
    seed = ap.parse_args().seed
    s = settings_with_stack()
    print(f"# budget_overshoot on {machine()}")
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    guard = BudgetGuard(s.redis_url, {SCOPE: {"daily": LIMIT}}, namespace=ns)
    rng = random.Random(seed)
    crashers = set(rng.sample(range(PROCS), CRASHING))
    tmp = Path(tempfile.mkdtemp(prefix="budget-overshoot-"))
    logs = [tmp / f"p{i}.log" for i in range(PROCS)]
    # spawn, not fork: a forked child collecting the parent's garbage librdkafka handles (the
    # stack check's admin client) segfaulted before writing a line (exit -11, 2026-12-06)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=child,
            args=(
                s.redis_url,
                ns,
                seed * 100 + i,
                logs[i],
                rng.randint(5, 60) if i in crashers else None,
            ),
        )
        for i in range(PROCS)
    ]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.monotonic() - t0
    codes = [p.exitcode for p in procs]
    if any(c not in (0, 1) for c in codes):  # 1: a planned crash (os._exit)
        raise SystemExit(f"a caller process died unplanned: exit codes {codes}")
    settled, over, lost, calls = read_logs(logs)
    counted, reserved_before = guard.state(SCOPE, "day")
    deadline = time.monotonic() + TTL_S + 30
    while guard.redis.zcard(guard.zset) and time.monotonic() < deadline:
        guard.reap()
        time.sleep(0.2)  # between polls: the holds expire TTL_S after their reserve
    _, reserved_after = guard.state(SCOPE, "day")
    open_left = guard.redis.zcard(guard.zset)
    limit = usd_to_pico(LIMIT)
    billed = counted + lost
    exits = sorted(p.exitcode or 0 for p in procs)
    print(
        f"{PROCS} processes x {THREADS} callers, {calls} calls reserved in {wall:.1f} s; "
        f"exit codes {exits}"
    )
    print(
        f"limit ${LIMIT}; counted ${pico_to_usd(counted):f} (settled by callers "
        f"${pico_to_usd(settled):f}); overrun of settled calls ${pico_to_usd(over):f}; crashed "
        f"in flight ${pico_to_usd(lost):f}; billed ${pico_to_usd(billed):f}"
    )
    print(
        f"reserved right after the run ${pico_to_usd(reserved_before):f}; after TTL + reaper "
        f"${pico_to_usd(reserved_after):f}, open reservations {open_left}"
    )
    ok = {
        "counted == settled": counted == settled,
        "counted <= limit + overrun": counted <= limit + over,
        "billed <= limit + overrun + crashed": billed <= limit + over + lost,
        "no leak after TTL": reserved_after == 0 and open_left == 0,
    }
    print("checks: " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in ok.items()))
    keys = guard.redis.keys(f"{guard.prefix}*")
    if keys:
        guard.redis.delete(*keys)
    overshoot = pico_to_usd(billed - limit)
    result(
        "budget overshoot (billed − limit), 8 proc x 16 callers, crashes",
        float(overshoot),
        "USD",
        "≤ Σ(actual−estimate)⁺ + crashed in-flight",
        float(pico_to_usd(over + lost)),
        "stated bound",
    )
    if not all(ok.values()):
        raise SystemExit("a budget bound failed: " + str(ok))
    print(f"budget_overshoot_usd={overshoot.quantize(Decimal('0.000001'))}")


if __name__ == "__main__":
    main()
