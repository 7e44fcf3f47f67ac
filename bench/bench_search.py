"""Availability search under load, next to a bare endpoint, on PostgreSQL and SQLite (PERFORMANCE.md, P-14).

    .venv/bin/python bench/bench_search.py [--vehicles 100000] [--small 10000] [--per-car 10]
        [--duration 10] [--connections 32] [--db sqlite,postgres]

For each database and for 100,000 and 10,000 vehicles it:

1. creates a scratch database (PostgreSQL: ``cj_bench_<pid>_<n>`` on 127.0.0.1 as user postgres; SQLite: a file
   in a temporary directory), migrates it with the project's migrations, and seeds agencies (2% suspended, 1%
   pending), vehicles in nine cities with a realistic skew (Dubai 22% of the fleet) and ``--per-car`` bookings
   per car (1,000,000 occupancy rows at full size) with bulk SQL. Periods never overlap within a car, so the
   exclusion constraint accepts them all; on PostgreSQL it is dropped for the COPY and added back afterwards (a
   bulk GiST build, about 3x faster than checking row by row; the constraint then validates every row);
2. times the search query alone (``fleet.service.search`` for the largest city, 20 results, rotating periods):
   p50 and p95 over a few hundred calls, in-process, before any load;
3. serves the app with gunicorn (gthread, 2 workers x 4 threads) on a free 127.0.0.1 port and drives
   ``GET /api/v1/ping`` and ``GET /api/v1/vehicles?city=Dubai&starts_at=..&ends_at=..`` (40 rotating periods)
   with ``wrk -t2 -c<connections>`` for ``<duration>`` seconds each, as ping, search, ping, search halves (a
   Python thread load generator if wrk is missing), so the ratio search / ping comes from the same run;
   The search reads a city's listed cars in price order from the index ``ix_vehicles_search``
   (migration 0005: city, status, daily_price_fils, id); without it a big city is sorted in full.

Prints a table against the PERFORMANCE.md targets and writes bench/out/search.csv. Only 127.0.0.1 is ever
contacted; every run is bounded (about 2 x duration per endpoint and variant); scratch databases are dropped.
Figures on a shared 2-core machine drift (PERFORMANCE.md: about +-15%); wrk, gunicorn and the database share
the cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "search.csv"
HOST = "127.0.0.1"
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
SECRET = "bench-secret-" + "x" * 40
TIME_BUDGET_S = 600

# (city, share of the fleet, centre latitude, centre longitude)
CITIES = [("Dubai", 0.22, 25.2048, 55.2708), ("Abu Dhabi", 0.17, 24.4539, 54.3773),
          ("Sharjah", 0.14, 25.3463, 55.4209), ("Al Ain", 0.11, 24.2075, 55.7447),
          ("Ajman", 0.10, 25.4052, 55.5136), ("Ras Al Khaimah", 0.10, 25.8007, 55.9762),
          ("Fujairah", 0.08, 25.1288, 56.3265), ("Umm Al Quwain", 0.05, 25.5647, 55.5552),
          ("Khor Fakkan", 0.03, 25.3390, 56.3560)]
CATEGORIES = ["mini", "economy", "compact", "sedan", "suv", "luxury", "sports", "van", "pickup"]
AGENCIES = 500

TARGETS = {  # PERFORMANCE.md "Targets"
    "sqlite": {"ratio": 0.18, "query_p95_ms": 3.0},
    "postgresql": {"ratio": 0.11, "query_p95_ms": 5.0},
}
P99_TARGET_MS = 120.0
GROWTH_TARGET = 2.0

WRK_SCRIPT = r"""
local paths = {}
local n = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  n = math.random(#paths)
end
request = function()
  n = n % #paths + 1
  return wrk.format("GET", paths[n])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


# ---- scratch databases ----------------------------------------------------------------------------------


@dataclass
class Scratch:
    kind: str  # "sqlite" | "postgresql"
    url: str  # SQLAlchemy URL for the app
    var_dir: Path
    pg_name: str | None = None
    sqlite_path: Path | None = None

    def drop(self) -> None:
        if self.pg_name:
            _pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        shutil.rmtree(self.var_dir, ignore_errors=True)


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)  # names are generated here, never from input


def create_scratch(kind: str, label: str) -> Scratch:
    var_dir = Path(tempfile.mkdtemp(prefix=f"cj-bench-{label}-"))
    if kind == "sqlite":
        path = var_dir / "bench.db"
        return Scratch(kind, f"sqlite:///{path}", var_dir, sqlite_path=path)
    name = f"cj_bench_{os.getpid()}_{label}"
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    return Scratch(kind, f"postgresql+psycopg://postgres@{HOST}/{name}", var_dir, pg_name=name)


def app_settings(scratch: Scratch) -> dict[str, str]:
    return {"MARKETPLACE_ENV": "development", "DATABASE_URL": scratch.url, "VAR_DIR": str(scratch.var_dir),
            "SECRET_KEY": SECRET, "JOBS_MODE": "sync", "RATELIMIT_STORAGE_URI": "memory://", "LOG_LEVEL": "WARNING",
            "KEYRING_PATH": str(scratch.var_dir / "keyring.json"), "TRUSTED_PROXY_COUNT": "0"}


def make_app(scratch: Scratch) -> Any:
    from marketplace import create_app

    overrides: dict[str, Any] = {**app_settings(scratch), "REDIS_URL": None, "MASTER_KEYRING": None}
    return create_app(overrides, start_background=False)


def migrate(app: Any) -> None:
    import logging

    from flask_migrate import upgrade

    logging.disable(logging.INFO)  # the migrations' own progress lines (alembic.ini re-enables them)
    try:
        with app.app_context():
            upgrade()
    finally:
        logging.disable(logging.NOTSET)


# ---- data ------------------------------------------------------------------------------------------------


@dataclass
class Fleet:
    vehicles: list[tuple[Any, ...]] = field(default_factory=list)
    occupancies: int = 0


NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def generate_vehicles(total: int, rng: random.Random) -> list[tuple[Any, ...]]:
    """(id, agency_id, city, lat, lng, price, status, category, turnaround, deleted)"""
    rows = []
    vid = 0
    for city, share, lat, lng in CITIES:
        for _ in range(round(total * share)):
            vid += 1
            r = rng.random()
            status = "listed" if r < 0.90 else ("unlisted" if r < 0.95 else "maintenance")
            rows.append((vid, rng.randint(1, AGENCIES), city, round(lat + rng.uniform(-0.2, 0.2), 6),
                         round(lng + rng.uniform(-0.2, 0.2), 6), rng.randint(60, 2500) * 100, status,
                         rng.choice(CATEGORIES), rng.choice([0, 60, 120, 120, 120, 180]), rng.random() < 0.01))
    return rows


def generate_occupancies(vehicles: list[tuple[Any, ...]], per_car: int, rng: random.Random
                         ) -> Iterator[tuple[int, datetime, datetime]]:
    """Non-overlapping bookings (their buffer included) per car, from 60 days ago to about a year ahead."""
    start0 = NOW - timedelta(days=60)
    for v in vehicles:
        t = start0 + timedelta(hours=rng.randint(0, 24 * 20))
        for _ in range(per_car):
            length = timedelta(hours=rng.randint(24, 24 * 7) + v[8] // 60)
            yield v[0], t, t + length
            t = t + length + timedelta(hours=rng.randint(0, 24 * 50))


def _agency_rows() -> Iterator[tuple[Any, ...]]:
    for i in range(1, AGENCIES + 1):
        status = "suspended" if i % 50 == 0 else ("pending_verification" if i % 97 == 0 else "active")
        yield (i, f"Agency {i} LLC", f"DED-{i:07d}", f"100{i:012d}", "Sheikh Zayed Road", "Dubai", "AE", "Rep",
               f"ops{i}@agency.example", f"+9714{i:07d}", status, str(uuid.uuid4()), 120)


AGENCY_COLUMNS = ("id, business_name, trade_licence_number, trn, address_line1, address_city, address_country, "
                  "representative_name, contact_email, contact_phone, status, public_id, turnaround_minutes, "
                  "created_at, updated_at")
VEHICLE_COLUMNS = ("id, agency_id, make, model, year, category, plate, seats, transmission, city, latitude, "
                   "longitude, daily_price_fils, deposit_fils, currency, fuel_policy, status, public_id, fuel_type, "
                   "turnaround_minutes, deleted_at, created_at, updated_at")


def _vehicle_values(v: tuple[Any, ...], deleted: Any) -> tuple[Any, ...]:
    return (v[0], v[1], "Toyota", "Corolla", 2024, v[7], f"DXB A {v[0]}", 5, "automatic", v[2], v[3], v[4], v[5],
            100000, "AED", "full_to_full", v[6], str(uuid.uuid4()), "petrol", v[8], deleted)


def seed_sqlite(path: Path, vehicles: list[tuple[Any, ...]], per_car: int, rng: random.Random) -> int:
    cache: dict[datetime, str] = {}

    def text(when: datetime) -> str:
        value = cache.get(when)
        if value is None:
            value = cache[when] = when.strftime("%Y-%m-%d %H:%M:%S.%f")
        return value

    now = text(NOW)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO agencies ({AGENCY_COLUMNS}) VALUES ({','.join('?' * 15)})",  # noqa: S608
                     [(*row, now, now) for row in _agency_rows()])
    conn.executemany(f"INSERT INTO vehicles ({VEHICLE_COLUMNS}) VALUES ({','.join('?' * 23)})",  # noqa: S608
                     [(*_vehicle_values(v, now if v[9] else None), now, now) for v in vehicles])
    conn.execute("DROP INDEX ix_vehicle_occupancies_vehicle_start")
    rows = [(vid, text(a), text(b)) for vid, a, b in generate_occupancies(vehicles, per_car, rng)]
    conn.executemany("INSERT INTO vehicle_occupancies (vehicle_id, starts_at, ends_at) VALUES (?, ?, ?)", rows)
    conn.execute("CREATE INDEX ix_vehicle_occupancies_vehicle_start ON vehicle_occupancies "
                 "(vehicle_id, starts_at, ends_at)")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return len(rows)


def seed_postgres(name: str, vehicles: list[tuple[Any, ...]], per_car: int, rng: random.Random) -> int:
    import psycopg

    cache: dict[datetime, str] = {}

    def text(when: datetime) -> str:
        value = cache.get(when)
        if value is None:
            value = cache[when] = when.strftime("%Y-%m-%d %H:%M:%S+00")
        return value

    with psycopg.connect(f"postgresql://postgres@{HOST}/{name}", autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY agencies ({AGENCY_COLUMNS}) FROM STDIN") as copy:
            for row in _agency_rows():
                copy.write_row((*row, NOW, NOW))
        with cur.copy(f"COPY vehicles ({VEHICLE_COLUMNS}) FROM STDIN") as copy:
            for v in vehicles:
                copy.write_row((*_vehicle_values(v, NOW if v[9] else None), NOW, NOW))
        cur.execute("ALTER TABLE vehicle_occupancies DROP CONSTRAINT ex_vehicle_occupancies_no_overlap")
        cur.execute("DROP INDEX ix_vehicle_occupancies_vehicle_start")
        buffer = io.StringIO()
        count = 0
        for vid, a, b in generate_occupancies(vehicles, per_car, rng):
            buffer.write(f"{vid}\t{text(a)}\t{text(b)}\n")
            count += 1
        with cur.copy("COPY vehicle_occupancies (vehicle_id, starts_at, ends_at) FROM STDIN") as copy:
            copy.write(buffer.getvalue())
        cur.execute("CREATE INDEX ix_vehicle_occupancies_vehicle_start ON vehicle_occupancies "
                    "(vehicle_id, starts_at, ends_at)")
        cur.execute("SET maintenance_work_mem = '512MB'")
        # the same constraint as migration 0003: it validates every seeded row on the way back
        cur.execute("ALTER TABLE vehicle_occupancies ADD CONSTRAINT ex_vehicle_occupancies_no_overlap "
                    "EXCLUDE USING gist (vehicle_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)")
        for table in ("agencies", "vehicles", "vehicle_occupancies"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608 - fixed names
        cur.execute("VACUUM ANALYZE")
    return count


# ---- what is searched ---------------------------------------------------------------------------------------


def periods(count: int, seed: int = 5) -> list[tuple[datetime, datetime]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        start = NOW + timedelta(days=rng.randint(3, 60), hours=rng.randint(0, 23))
        out.append((start, start + timedelta(days=rng.randint(1, 7))))
    return out


def search_paths(city: str, count: int = 40) -> list[str]:
    def iso(when: datetime) -> str:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    return ["/api/v1/vehicles?" + urlencode({"city": city, "starts_at": iso(a), "ends_at": iso(b)})
            for a, b in periods(count)]


def time_query(app: Any, city: str, calls: int) -> tuple[float, float]:
    """p50 and p95 (ms) of ``fleet.service.search`` for one city, 20 results, rotating periods, no load."""
    from marketplace.extensions import db
    from marketplace.fleet import service as fleet

    spans = periods(40)
    timings: list[float] = []
    stop_at = time.perf_counter() + 10  # at most ~10 s: without a price-ordered index one call takes ~0.1 s
    with app.app_context():
        for n in range(calls + 20):
            if n >= 40 and time.perf_counter() > stop_at:
                break
            a, b = spans[n % len(spans)]
            started = time.perf_counter()
            hits = fleet.search(fleet.SearchQuery(city=city, starts_at=a, ends_at=b, limit=20))
            elapsed = (time.perf_counter() - started) * 1000
            db.session.rollback()
            assert len(hits) == 21, len(hits)
            if n >= 20:
                timings.append(elapsed)
        db.session.remove()
        db.engine.dispose()
    timings.sort()
    return statistics.median(timings), timings[int(0.95 * (len(timings) - 1))]


# ---- serving and load ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """gunicorn (gthread, 2 workers x 4 threads) on 127.0.0.1, in its own process group."""

    def __init__(self, scratch: Scratch) -> None:
        self.port = free_port()
        env = {**os.environ, **app_settings(scratch)}
        env.pop("REDIS_URL", None)
        env.pop("MASTER_KEYRING", None)
        self.log = open(scratch.var_dir / "gunicorn.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"{HOST}:{self.port}", "--worker-class",
             "gthread", "--workers", "2", "--threads", "4", "--log-level", "warning", "wsgi:app"],
            cwd=ROOT, env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        self.base = f"http://{HOST}:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/api/v1/ping", timeout=2) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not start; see gunicorn.log in the scratch directory")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@dataclass
class Load:
    req_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    non2xx: int


def combine(runs: list[Load]) -> Load:
    """Equal-length runs as one: mean throughput, the worse of each percentile, summed failures."""
    return Load(statistics.mean(r.req_s for r in runs), max(r.p50_ms for r in runs), max(r.p95_ms for r in runs),
                max(r.p99_ms for r in runs), sum(r.errors for r in runs), sum(r.non2xx for r in runs))


def run_wrk(base: str, paths: list[str], seconds: int, connections: int, workdir: Path) -> Load:
    assert base.startswith(f"http://{HOST}:"), "the load generator only ever targets 127.0.0.1"
    script, listing = workdir / "rotate.lua", workdir / "paths.txt"
    script.write_text(WRK_SCRIPT)
    listing.write_text("\n".join(paths) + "\n")
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), base,
               "--", str(listing)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    result = json.loads(out.rsplit("RESULT ", 1)[1].strip())
    return Load(result["requests"] / (result["duration_us"] / 1e6), result["p50_us"] / 1000,
                result["p95_us"] / 1000, result["p99_us"] / 1000, result["errors"], result["non2xx"])


def run_threads(base: str, paths: list[str], seconds: int, connections: int, workdir: Path) -> Load:
    """Fallback load generator: ``connections`` threads with keep-alive connections (weaker than wrk)."""
    import http.client

    assert base.startswith(f"http://{HOST}:")
    port = int(base.rsplit(":", 1)[1])
    latencies: list[float] = []
    counts = {"errors": 0, "non2xx": 0}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        mine: list[float] = []
        n = offset
        while time.perf_counter() < stop_at:
            n += 1
            started = time.perf_counter()
            try:
                conn.request("GET", paths[n % len(paths)])
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    counts["non2xx"] += 1
            except OSError:
                counts["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[int(p * (len(latencies) - 1))] * 1000 if latencies else float("nan")

    return Load(len(latencies) / elapsed, pct(0.5), pct(0.95), pct(0.99), counts["errors"], counts["non2xx"])


# ---- one configuration -------------------------------------------------------------------------------------


@dataclass
class Row:
    db: str
    vehicles: int
    occupancies: int
    variant: str
    ping: Load
    search: Load
    query_p50_ms: float
    query_p95_ms: float
    seed_s: float

    @property
    def ratio(self) -> float:
        return self.search.req_s / self.ping.req_s


def measure(scratch: Scratch, app: Any, *, vehicles: int, occupancies: int, variant: str, seed_s: float,
            args: argparse.Namespace, load: Callable[..., Load]) -> Row:
    city = CITIES[0][0]
    q50, q95 = time_query(app, city, args.query_calls)
    server = Server(scratch)
    try:
        ping_path = ["/api/v1/ping"]
        paths = search_paths(city)
        load(server.base, paths, 2, args.connections, scratch.var_dir)  # warm up: connections, caches, plans
        # alternate ping and search in two halves, so a neighbour's load drifting in or out during the run
        # weighs on both sides of the ratio alike
        half = max(1, args.duration // 2)
        pings, searches = [], []
        for _ in range(2):
            pings.append(load(server.base, ping_path, half, args.connections, scratch.var_dir))
            searches.append(load(server.base, paths, half, args.connections, scratch.var_dir))
        ping, search = combine(pings), combine(searches)
    finally:
        server.stop()
    row = Row(scratch.kind, vehicles, occupancies, variant, ping, search, q50, q95, seed_s)
    print(f"  {variant:<22} ping {ping.req_s:7.0f}/s   search {search.req_s:6.0f}/s = {row.ratio:.3f} x ping   "
          f"p50/p95/p99 {search.p50_ms:.1f}/{search.p95_ms:.1f}/{search.p99_ms:.1f} ms   "
          f"query p50/p95 {q50:.2f}/{q95:.2f} ms   non-2xx {search.non2xx + ping.non2xx}", flush=True)
    return row


def run_size(kind: str, total: int, args: argparse.Namespace, load: Callable[..., Load]) -> list[Row]:
    label = f"{kind[:2]}{total}"
    scratch = create_scratch(kind, label)
    rows: list[Row] = []
    try:
        started = time.perf_counter()
        app = make_app(scratch)
        migrate(app)
        rng = random.Random(42)
        vehicles = generate_vehicles(total, rng)
        if kind == "sqlite":
            assert scratch.sqlite_path is not None
            occupancies = seed_sqlite(scratch.sqlite_path, vehicles, args.per_car, rng)
        else:
            assert scratch.pg_name is not None
            occupancies = seed_postgres(scratch.pg_name, vehicles, args.per_car, rng)
        seed_s = time.perf_counter() - started
        print(f"{kind}: {len(vehicles):,} vehicles, {occupancies:,} occupancies, seeded in {seed_s:.0f} s",
              flush=True)
        rows.append(measure(scratch, app, vehicles=len(vehicles), occupancies=occupancies, variant="schema",
                            seed_s=seed_s, args=args, load=load))
        with app.app_context():
            from marketplace.extensions import db

            db.engine.dispose()
    finally:
        scratch.drop()
    return rows


# ---- report ------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(rows: list[Row]) -> None:
    header = (f"{'db':<10} {'vehicles':>8} {'variant':<17} {'ping/s':>7} {'search/s':>8} {'x ping':>6} "
              f"{'target':>6} {'p50':>6} {'p95':>6} {'p99':>6} {'q.p50':>6} {'q.p95':>6} {'q.tgt':>5} "
              f"{'growth':>6}  met")
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        target = TARGETS[row.db]
        small = next((r for r in rows if r.db == row.db and r.variant == row.variant and r.vehicles < row.vehicles),
                     None)
        growth = max(row.search.p50_ms / small.search.p50_ms, row.query_p50_ms / small.query_p50_ms) if small else None
        checks = [row.ratio >= target["ratio"], row.search.p99_ms <= P99_TARGET_MS,
                  row.query_p95_ms <= target["query_p95_ms"], row.search.non2xx == 0 and row.search.errors == 0]
        if growth is not None:
            checks.append(growth < GROWTH_TARGET)
        print(f"{row.db:<10} {row.vehicles:>8,} {row.variant:<17} {row.ping.req_s:>7.0f} {row.search.req_s:>8.0f} "
              f"{row.ratio:>6.3f} {target['ratio']:>6.2f} {row.search.p50_ms:>6.1f} {row.search.p95_ms:>6.1f} "
              f"{row.search.p99_ms:>6.1f} {row.query_p50_ms:>6.2f} {row.query_p95_ms:>6.2f} "
              f"{target['query_p95_ms']:>5.1f} {(f'{growth:.2f}x' if growth else '-'):>6}  "
              f"{verdict(all(checks))}")
    print(f"\ntargets: search >= {TARGETS['sqlite']['ratio']} x ping (SQLite), >= {TARGETS['postgresql']['ratio']} "
          f"x ping (PostgreSQL) at the given connections; p99 <= {P99_TARGET_MS:.0f} ms; the query alone p95 <= "
          f"3 ms (SQLite) / 5 ms (PostgreSQL); latency growth 10k -> 100k < {GROWTH_TARGET:.0f}x (the larger of the "
          "under-load p50 and the query-alone p50 ratios); 0 errors and 0 non-2xx. Times in ms.")


def write_csv(rows: list[Row]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["db", "vehicles", "occupancies", "variant", "endpoint", "req_s", "p50_ms", "p95_ms", "p99_ms",
                      "errors", "non2xx", "ratio_x_ping", "query_p50_ms", "query_p95_ms", "seed_s", "measured_at"])
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for r in rows:
            for endpoint, load in (("ping", r.ping), ("search", r.search)):
                out.writerow([r.db, r.vehicles, r.occupancies, r.variant, endpoint, f"{load.req_s:.1f}",
                              f"{load.p50_ms:.2f}", f"{load.p95_ms:.2f}", f"{load.p99_ms:.2f}", load.errors,
                              load.non2xx, f"{r.ratio:.4f}" if endpoint == "search" else "1",
                              f"{r.query_p50_ms:.3f}", f"{r.query_p95_ms:.3f}", f"{r.seed_s:.1f}", stamp])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vehicles", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--per-car", type=int, default=10, help="bookings per car (10 -> 1M at full size)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per endpoint (max 60)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--query-calls", type=int, default=300)
    parser.add_argument("--db", default="sqlite,postgres")
    args = parser.parse_args()
    args.duration = max(1, min(args.duration, 60))
    kinds = [{"postgres": "postgresql", "pg": "postgresql"}.get(k.strip(), k.strip()) for k in args.db.split(",")]
    load = run_wrk if shutil.which("wrk") else run_threads
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, load: "
          f"{'wrk' if load is run_wrk else 'Python threads (install wrk for trustworthy figures)'}, "
          f"{args.connections} connections x {args.duration} s per endpoint", flush=True)

    started = time.perf_counter()
    rows: list[Row] = []
    for kind in kinds:
        for total in (args.vehicles, args.small):
            if time.perf_counter() - started > TIME_BUDGET_S:
                print(f"time budget ({TIME_BUDGET_S} s) spent: skipping {kind} at {total:,} vehicles")
                continue
            rows += run_size(kind, total, args, load)
    report(rows)
    write_csv(rows)
    print(f"\nwrote {OUT.relative_to(ROOT)} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
