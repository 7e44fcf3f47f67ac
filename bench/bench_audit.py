"""Audited writes from concurrent clients on PostgreSQL, before and after the chains (issue 8 item 5).

    .venv/bin/python bench/bench_audit.py [--clients 16] [--seconds 3] [--rounds 5] [--report-only]

On a scratch PostgreSQL database (``cj_bench_audit_<pid>`` on 127.0.0.1 as user postgres, migrated with the
project's migrations, dropped at the end) ``--clients`` threads, each with its own app context and database
session, run short write transactions for ``--seconds`` per cell, in three variants:

- ``unaudited``: insert one row into a scratch table and commit (the baseline);
- ``before``: the same plus ``audit.record`` as it was before: one global advisory lock held until commit
  and one chain (reimplemented here by swapping ``audit._claim``);
- ``after``: the same plus ``audit.record`` as it is: 32 chains, each with its own lock.

Every transaction runs in a request context with a client address, so audited rows also seal it under the
month key, as in production. Variants alternate within each round (their order rotates) and the figures
are medians over ``--rounds`` rounds, with the spread; the ratios are audited / unaudited transactions per
second, per round, then the median. After the run ``verify_chain`` must pass (the bench fails otherwise).

Target: ``after`` >= 0.5 x unaudited. Exits 1 when a target is missed unless ``--report-only``. Writes
bench/out/audit.csv. Only 127.0.0.1 is contacted; figures on the shared 2-core machine drift.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "audit.csv"
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
TARGET_AFTER = 0.5
VARIANTS = ("unaudited", "before", "after")
OLD_LOCK = 0x61756469  # the single key every audited write used to take


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)  # names are generated here, never from input


@contextmanager
def scratch_app() -> Any:
    from marketplace import create_app

    name = f"cj_bench_audit_{os.getpid()}"
    var_dir = Path(tempfile.mkdtemp(prefix="cj-bench-audit-"))
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        app = create_app({
            "MARKETPLACE_ENV": "development", "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1/{name}",
            "VAR_DIR": str(var_dir), "SECRET_KEY": "bench-secret-" + "x" * 40, "JOBS_MODE": "sync",
            "RATELIMIT_STORAGE_URI": "memory://", "LOG_LEVEL": "WARNING", "REDIS_URL": None,
            "MASTER_KEYRING": None, "KEYRING_PATH": str(var_dir / "keyring.json"), "TRUSTED_PROXY_COUNT": "0",
        }, start_background=False)
        migrate(app)
        yield app
        from marketplace.extensions import db

        with app.app_context():
            db.engine.dispose()
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(var_dir, ignore_errors=True)


def migrate(app: Any) -> None:
    import logging

    from flask_migrate import upgrade
    from sqlalchemy import text

    from marketplace.extensions import db

    logging.disable(logging.INFO)  # the migrations' own progress lines and one audit log line per write
    with app.app_context():
        upgrade()
        db.session.execute(text("CREATE TABLE bench_writes (id bigserial PRIMARY KEY, client int, n int, "
                                "payload text)"))
        db.session.commit()


def _old_claim(session: Any, event: Any) -> tuple[int, int, str]:
    """The scheme before the chains, round trip for round trip: every append takes one global lock,
    then reads the tail of the one chain."""
    from sqlalchemy import text

    from marketplace import audit

    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": OLD_LOCK})
    return (0, *audit._chain_tail(session, 0))


@contextmanager
def variant_scheme(variant: str) -> Any:
    from marketplace import audit

    real = audit._claim
    if variant == "before":
        audit._claim = _old_claim  # type: ignore[assignment]
    try:
        yield
    finally:
        audit._claim = real  # type: ignore[assignment]


def transaction(variant: str, client: int, n: int) -> None:
    from sqlalchemy import text

    from marketplace import audit
    from marketplace.extensions import db

    row_id = db.session.execute(text("INSERT INTO bench_writes (client, n, payload) VALUES (:c, :n, :p) "
                                     "RETURNING id"), {"c": client, "n": n, "p": "x" * 64}).scalar_one()
    if variant != "unaudited":
        audit.record(None, "bench:write", ("bench_writes", str(row_id)), client=client, n=n)
    db.session.commit()


def run_cell(app: Any, variant: str, clients: int, seconds: float) -> float:
    """Committed transactions per second from ``clients`` threads for about ``seconds``."""
    from marketplace.extensions import db

    start_line = threading.Barrier(clients + 1)
    done = [0] * clients
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(number: int) -> None:
        try:
            with app.app_context():
                start_line.wait()
                n = 0
                while not stop.is_set():
                    address = f"198.51.{number}.{n % 250 + 1}"
                    with app.test_request_context("/bench", environ_base={"REMOTE_ADDR": address}):
                        transaction(variant, number, n)
                    n += 1
                done[number] = n
                db.session.remove()
        except BaseException as exc:  # reported below
            errors.append(exc)
            stop.set()

    with variant_scheme(variant):
        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
        for t in threads:
            t.start()
        start_line.wait()
        began = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{variant}: a client failed: {errors[0]!r}") from errors[0]
    return sum(done) / elapsed


@dataclass
class Figures:
    tps: dict[str, list[float]]

    def median(self, variant: str) -> float:
        return statistics.median(self.tps[variant])

    def ratios(self, variant: str) -> list[float]:
        return [a / b for a, b in zip(self.tps[variant], self.tps["unaudited"], strict=True)]

    def ratio(self, variant: str) -> float:
        return statistics.median(self.ratios(variant))


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def measure(app: Any, args: argparse.Namespace, log: Callable[[str], None]) -> Figures:
    tps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    run_cell(app, "after", args.clients, min(1.0, args.seconds))  # warm-up: pool, month key, caches
    for round_no in range(args.rounds):
        order = VARIANTS[round_no % 3:] + VARIANTS[:round_no % 3]
        for variant in order:
            tps[variant].append(run_cell(app, variant, args.clients, args.seconds))
        log(f"round {round_no + 1}: " + ", ".join(f"{v} {tps[v][-1]:.0f}/s" for v in VARIANTS))
    return Figures(tps)


def check_chain(app: Any) -> tuple[bool, int, int]:
    from marketplace import audit
    from marketplace.extensions import db

    with app.app_context():
        report = audit.verify_chain(db.session)
    return report.ok, report.checked, report.chains


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--report-only", action="store_true", help="never exit non-zero on a missed target")
    args = parser.parse_args()

    def log(line: str) -> None:
        print(line, flush=True)

    with scratch_app() as app:
        figures = measure(app, args, log)
        chain_ok, rows, chains = check_chain(app)

    after, before = figures.ratio("after"), figures.ratio("before")
    ok_after = after >= TARGET_AFTER
    print()
    print(f"audited writes, {args.clients} clients, PostgreSQL, {args.rounds} rounds x {args.seconds:g} s "
          "(medians; spread in brackets)")
    print(f"{'variant':<10} {'tx/s':>8} {'spread':>14} {'x unaudited':>12} {'spread':>12} target")
    print(f"{'unaudited':<10} {figures.median('unaudited'):>8.0f} "
          f"{spread(figures.tps['unaudited']):>14} {1.0:>12.2f} {'':>12}")
    print(f"{'before':<10} {figures.median('before'):>8.0f} {spread(figures.tps['before']):>14} "
          f"{before:>12.2f} {spread(figures.ratios('before')):>12} (the single global lock)")
    print(f"{'after':<10} {figures.median('after'):>8.0f} {spread(figures.tps['after']):>14} "
          f"{after:>12.2f} {spread(figures.ratios('after')):>12} >= {TARGET_AFTER} {'OK' if ok_after else 'NO'}")
    print(f"after / before: {after / before:.2f}x; chain check over {rows} rows in {chains} chains: "
          f"{'ok' if chain_ok else 'BROKEN'}")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "round", "tx_per_s", "ratio_to_unaudited"])
        for variant in VARIANTS:
            for n, (value, ratio) in enumerate(zip(figures.tps[variant], figures.ratios(variant), strict=True)):
                writer.writerow([variant, n + 1, f"{value:.1f}", f"{ratio:.3f}"])
    if not chain_ok:
        print("FAILED: the audit chain does not verify after the run")
        return 1
    if not ok_after and not args.report_only:
        print(f"FAILED: audited writes reach {after:.2f} x unaudited, target {TARGET_AFTER}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
