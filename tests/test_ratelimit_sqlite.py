"""The SQLite rate-limit storage (the embedded default): the ``limits`` semantics, and one count across processes.

Issue 7 item 4: under `make run` each gunicorn worker counted in its own memory, doubling every limit.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import time_machine
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from marketplace.ratelimit_sqlite import SQLiteStorage


def _storage(path: Path) -> SQLiteStorage:
    storage = storage_from_string(f"sqlite:///{path}")
    assert isinstance(storage, SQLiteStorage)
    return storage


def test_moving_window_allows_exactly_the_limit_then_slides(tmp_path):  # issue 7 item 4
    limiter = MovingWindowRateLimiter(_storage(tmp_path / "rl.db"))
    five = parse("5 per minute")
    with time_machine.travel(1_800_000_000, tick=False) as clock:
        assert [limiter.hit(five, "k") for _ in range(6)] == [True] * 5 + [False]
        assert limiter.hit(five, "other")  # keys are independent
        stats = limiter.get_window_stats(five, "k")
        assert stats.remaining == 0 and 1_800_000_000 < stats.reset_time <= 1_800_000_060
        clock.shift(61)
        assert limiter.test(five, "k") and limiter.hit(five, "k")


def test_fixed_window_counts_and_expires(tmp_path):  # issue 7 item 4
    storage = _storage(tmp_path / "rl.db")
    limiter = FixedWindowRateLimiter(storage)
    three = parse("3 per minute")
    with time_machine.travel(1_800_000_000, tick=False) as clock:
        assert [limiter.hit(three, "k") for _ in range(4)] == [True, True, True, False]
        clock.shift(61)
        assert limiter.hit(three, "k")
    storage.clear(three.key_for("k"))
    assert storage.reset() is not None and storage.keys() == []
    assert storage.check()


def _hammer(uri: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    limiter = MovingWindowRateLimiter(storage_from_string(uri))
    limit = parse("100 per hour")
    results.put(sum(limiter.hit(limit, "shared") for _ in range(50)))


def test_processes_share_one_count(tmp_path):  # issue 7 item 4
    """Four processes, 50 attempts each, one limit of 100: exactly 100 get through (BEGIN IMMEDIATE)."""
    uri = f"sqlite:///{tmp_path / 'rl.db'}"
    _storage(tmp_path / "rl.db")  # the schema exists before the race
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_hammer, args=(uri, results)) for _ in range(4)]
    for process in processes:
        process.start()
    allowed = sum(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert allowed == 100


def _boot(path: str, barrier: object, out: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    try:
        SQLiteStorage(f"sqlite:///{path}")
        out.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:
        out.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_workers_booting_at_once_on_a_fresh_file_all_start(tmp_path):  # issue 7 item 4
    # `make run`'s two gunicorn workers open the fresh counter file at the same moment; switching it to WAL
    # needs the file alone and SQLite answered "database is locked" at once: a worker failed to boot (CI saw it;
    # without the retry this test fails a few boots in a hundred)
    ctx = multiprocessing.get_context("fork")
    outcomes: list[str] = []
    for round_ in range(30):
        path = str(tmp_path / f"boot-{round_}.db")
        barrier, out = ctx.Barrier(4), ctx.Queue()
        children = [ctx.Process(target=_boot, args=(path, barrier, out)) for _ in range(4)]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout=60)
        outcomes += [out.get(timeout=5) for _ in children]
    assert outcomes == ["ok"] * len(outcomes), [o for o in outcomes if o != "ok"][:3]
