"""Availability search and booking reads under load, next to ping, on PostgreSQL and SQLite (PERFORMANCE.md, P-14).

    .venv/bin/python bench/bench_search.py [--scale 1] [--per-car 10] [--rounds 5] [--duration 5]
        [--connections 32] [--db sqlite,postgres] [--report-only]

For each database and for 100,000 and 10,000 vehicles (times ``--scale``, at least 2,000 and 1,000: ``--scale 0.1``
is a quick run) it:

1. creates a scratch database (PostgreSQL: a throwaway ``cj_bench_...`` database on 127.0.0.1 as user postgres,
   dropped at the end; SQLite: a file in a temporary directory), migrates it with the project's migrations, and
   seeds with bulk SQL: agencies (2% suspended, 1% pending), vehicles in nine cities with a realistic skew (Dubai
   22% of the fleet), customers (50 bookings each) and ``--per-car`` real bookings per car (1,000,000 at full
   size), each with its occupancy row. Bookings that ended are ``completed``, the others ``confirmed``. A
   customer's bookings share one rental-terms and one mandate consent row (a booking made through the API records
   its own: the reads measured here do not read consents). Periods never overlap within a car, so the exclusion
   constraint accepts them all; on PostgreSQL it is dropped for the COPY and added back afterwards (a bulk GiST
   build, about 3x faster than checking row by row; the constraint then validates every row);
2. times the search query alone (``fleet.service.search`` for the largest city, 20 results, rotating periods):
   p50 and p95 over a few hundred calls, in-process, before any load;
3. serves the app with gunicorn (gthread, 2 workers x 4 threads) and drives, in alternating rounds with
   ``wrk -t2 -c<connections>`` for ``--duration`` seconds each (bench/harness.py): ``GET /api/v1/ping`` (the
   baseline), ``GET /api/v1/vehicles?city=Dubai&starts_at=..&ends_at=..`` (40 rotating periods), and for 32
   signed-in customers ``GET /api/v1/bookings/{reference}`` and ``GET /api/v1/bookings`` (their newest 20).

Targets (PERFORMANCE.md): search >= 0.18 x ping (SQLite) / 0.11 (PostgreSQL) with p99 <= 120 ms; the query alone
p95 <= 3 ms / 5 ms; from 10k to 100k vehicles the search latency grows < 2x; booking detail >= 0.33 / 0.22 x ping
(the read-endpoint target, here at full data); every answer 200. The booking list is reported without a target.
The median of the rounds must meet each target (exit status 1 otherwise, unless --report-only). Writes
bench/out/search.csv. Only 127.0.0.1 is ever contacted; scratch databases are dropped.
"""

from __future__ import annotations

import io
import random
import sqlite3
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import demo_data
import harness
import webload
from webload import Req

# (city, share of the fleet, centre latitude, centre longitude)
CITIES = [("Dubai", 0.22, 25.2048, 55.2708), ("Abu Dhabi", 0.17, 24.4539, 54.3773),
          ("Sharjah", 0.14, 25.3463, 55.4209), ("Al Ain", 0.11, 24.2075, 55.7447),
          ("Ajman", 0.10, 25.4052, 55.5136), ("Ras Al Khaimah", 0.10, 25.8007, 55.9762),
          ("Fujairah", 0.08, 25.1288, 56.3265), ("Umm Al Quwain", 0.05, 25.5647, 55.5552),
          ("Khor Fakkan", 0.03, 25.3390, 56.3560)]
CATEGORIES = ["mini", "economy", "compact", "sedan", "suv", "luxury", "sports", "van", "pickup"]
AGENCIES = 500

TARGETS = {  # PERFORMANCE.md "Targets"
    "sqlite": {"ratio": 0.18, "query_p95_ms": 3.0, "read": 0.33},
    "postgresql": {"ratio": 0.11, "query_p95_ms": 5.0, "read": 0.22},
}
P99_TARGET_MS = 120.0
GROWTH_TARGET = 2.0
BOOKINGS_PER_CUSTOMER = 50
SIGNED_IN = 32
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2VlZGVkLWZvci1iZW5jaA$bm9ib2R5LXNpZ25zLWluLXdpdGgtdGhpcw"  # noqa: S105 - a well-formed hash of nothing anyone types


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



BOOKING_COLUMNS = ("id, reference, customer_id, vehicle_id, agency_id, status, starts_at, ends_at, pickup_place, "
                   "dropoff_place, days, daily_rate_fils, rental_fils, platform_fee_fils, vat_fils, total_fils, "
                   "deposit_fils, currency, terms_version, terms_consent_id, mandate_version, mandate_consent_id, "
                   "public_id, created_at, updated_at")


@dataclass
class People:
    """Customers with their two consents: ``consents[customer_id] = (rental terms id, mandate id)``."""

    customer_ids: list[int]
    consents: dict[int, tuple[int, int]]
    terms_version: str
    mandate_version: str


def seed_customers(app: Any, count: int) -> People:
    """Customers and one rental-terms and one mandate consent each, in bulk (nobody signs in with a password)."""
    from sqlalchemy import insert, select

    from marketplace.extensions import db, utcnow
    from marketplace.users.consent_texts import CURRENT
    from marketplace.users.models import AccountStatus, AccountType, Consent, ConsentKind, User

    terms, mandate = CURRENT[ConsentKind.RENTAL_TERMS], CURRENT[ConsentKind.MIT_MANDATE]
    with app.app_context():
        now = utcnow()
        db.session.execute(insert(User), [
            {"account_type": AccountType.CUSTOMER, "status": AccountStatus.ACTIVE, "email": f"c{n}@bench.example",
             "email_verified_at": now, "password_hash": PASSWORD_HASH, "full_name": f"Customer {n}",
             "address_city": "Dubai", "address_country": "AE", "public_id": str(uuid.uuid4())}
            for n in range(count)])
        ids = list(db.session.execute(select(User.id).order_by(User.id)).scalars())
        db.session.execute(insert(Consent), [
            {"user_id": uid, "kind": kind, "text_version": text.version, "text_sha256": text.sha256,
             "granted_at": now, "public_id": str(uuid.uuid4())}
            for uid in ids for kind, text in ((ConsentKind.RENTAL_TERMS, terms), (ConsentKind.MIT_MANDATE, mandate))])
        pairs: dict[int, dict[str, int]] = {}
        for cid, uid, kind in db.session.execute(select(Consent.id, Consent.user_id, Consent.kind)):
            pairs.setdefault(uid, {})[kind] = cid
        db.session.commit()
    return People(ids, {uid: (p[ConsentKind.RENTAL_TERMS], p[ConsentKind.MIT_MANDATE]) for uid, p in pairs.items()},
                  terms.version, mandate.version)


def generate_bookings(vehicles: list[tuple[Any, ...]], people: People, per_car: int, rng: random.Random
                      ) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(booking row, occupancy row) pairs: the occupancy holds the booking's period and the car's turnaround."""
    from marketplace.bookings.service import price

    customers = people.customer_ids
    for n, (vid, start, end) in enumerate(generate_occupancies(vehicles, per_car, rng), start=1):
        v = vehicles[(vid - 1)]
        returns = end - timedelta(minutes=v[8])
        days = max(1, -(-(returns - start) // timedelta(days=1)))
        rental, fee, vat, total = price(v[5], days)
        customer = customers[rng.randrange(len(customers))]
        terms_id, mandate_id = people.consents[customer]
        status = "completed" if returns < NOW else "confirmed"
        yield ((n, f"CJ-B{n // 10000:03d}-{n % 10000:04d}", customer, vid, v[1], status, start, returns,
                f"{v[2]}", f"{v[2]}", days, v[5], rental, fee, vat, total, 100000, "AED", people.terms_version,
                terms_id, people.mandate_version, mandate_id, str(uuid.uuid4())),
               (vid, start, end, n))


def seed_sqlite(path: Path, vehicles: list[tuple[Any, ...]], people: People, per_car: int,
                rng: random.Random) -> int:
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
    bookings, occupancies = [], []
    for b, o in generate_bookings(vehicles, people, per_car, rng):
        bookings.append((*b[:6], text(b[6]), text(b[7]), *b[8:], now, now))
        occupancies.append((o[0], text(o[1]), text(o[2]), o[3]))
    conn.executemany(f"INSERT INTO bookings ({BOOKING_COLUMNS}) VALUES ({','.join('?' * 25)})",  # noqa: S608
                     bookings)
    conn.executemany("INSERT INTO vehicle_occupancies (vehicle_id, starts_at, ends_at, booking_id) "
                     "VALUES (?, ?, ?, ?)", occupancies)
    conn.execute("CREATE INDEX ix_vehicle_occupancies_vehicle_start ON vehicle_occupancies "
                 "(vehicle_id, starts_at, ends_at)")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return len(bookings)


def seed_postgres(dsn: str, vehicles: list[tuple[Any, ...]], people: People, per_car: int,
                  rng: random.Random) -> int:
    import psycopg

    cache: dict[datetime, str] = {}

    def text(when: datetime) -> str:
        value = cache.get(when)
        if value is None:
            value = cache[when] = when.strftime("%Y-%m-%d %H:%M:%S+00")
        return value

    now = text(NOW)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY agencies ({AGENCY_COLUMNS}) FROM STDIN") as copy:
            for row in _agency_rows():
                copy.write_row((*row, NOW, NOW))
        with cur.copy(f"COPY vehicles ({VEHICLE_COLUMNS}) FROM STDIN") as copy:
            for v in vehicles:
                copy.write_row((*_vehicle_values(v, NOW if v[9] else None), NOW, NOW))
        cur.execute("ALTER TABLE vehicle_occupancies DROP CONSTRAINT ex_vehicle_occupancies_no_overlap")
        cur.execute("DROP INDEX ix_vehicle_occupancies_vehicle_start")
        bookings, occupancies = io.StringIO(), io.StringIO()
        count = 0
        for b, o in generate_bookings(vehicles, people, per_car, rng):
            fields = [*map(str, b[:6]), text(b[6]), text(b[7]), *map(str, b[8:]), now, now]
            bookings.write("\t".join(fields) + "\n")
            occupancies.write(f"{o[0]}\t{text(o[1])}\t{text(o[2])}\t{o[3]}\n")
            count += 1
        with cur.copy(f"COPY bookings ({BOOKING_COLUMNS}) FROM STDIN") as copy:
            copy.write(bookings.getvalue())
        with cur.copy("COPY vehicle_occupancies (vehicle_id, starts_at, ends_at, booking_id) FROM STDIN") as copy:
            copy.write(occupancies.getvalue())
        cur.execute("CREATE INDEX ix_vehicle_occupancies_vehicle_start ON vehicle_occupancies "
                    "(vehicle_id, starts_at, ends_at)")
        cur.execute("SET maintenance_work_mem = '512MB'")
        # the same constraint as migration 0003: it validates every seeded row on the way back
        cur.execute("ALTER TABLE vehicle_occupancies ADD CONSTRAINT ex_vehicle_occupancies_no_overlap "
                    "EXCLUDE USING gist (vehicle_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)")
        for table in ("agencies", "vehicles", "bookings", "vehicle_occupancies"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608 - fixed names
        cur.execute("VACUUM ANALYZE")
    return count


# ---- what is searched and read ------------------------------------------------------------------------------


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


def booking_reads(app: Any, people: People) -> dict[str, list[Req]]:
    """Booking detail and the booking list for 32 signed-in customers, each with about 50 bookings."""
    from sqlalchemy import select

    from marketplace.bookings.models import Booking
    from marketplace.extensions import db

    signed_in = people.customer_ids[:: max(1, len(people.customer_ids) // SIGNED_IN)][:SIGNED_IN]
    tokens = demo_data.issue_tokens(app, signed_in)
    with app.app_context():
        refs: dict[int, list[str]] = {}
        for uid, ref in db.session.execute(select(Booking.customer_id, Booking.reference)
                                           .where(Booking.customer_id.in_(signed_in))):
            refs.setdefault(uid, []).append(ref)
        db.session.remove()
    rng = random.Random(9)
    detail = [Req.get(f"/api/v1/bookings/{ref}", token) for uid, token in zip(signed_in, tokens, strict=True)
              for ref in rng.sample(refs.get(uid, []), min(10, len(refs.get(uid, []))))]
    rng.shuffle(detail)
    listing = [Req.get("/api/v1/bookings?limit=20", token) for token in tokens]
    return {"booking detail": detail, "booking list": listing}


@dataclass
class Size:
    db: str
    vehicles: int
    bookings: int
    seed_s: float
    query_p50_ms: float
    query_p95_ms: float
    rounds: harness.Rounds


def run_size(kind: str, total: int, args: Any) -> Size:
    scratch = webload.create_scratch(kind, f"search{total}")
    scratch.extra["ACCESS_TOKEN_TTL_SECONDS"] = "86400"  # noqa: S105 - tokens issued at seeding outlive the run
    try:
        started = time.perf_counter()
        app = webload.make_app(scratch)
        webload.migrate(app)
        rng = random.Random(42)
        vehicles = generate_vehicles(total, rng)
        people = seed_customers(app, max(SIGNED_IN, len(vehicles) * args.per_car // BOOKINGS_PER_CUSTOMER))
        if kind == "sqlite":
            assert scratch.sqlite_path is not None
            bookings = seed_sqlite(scratch.sqlite_path, vehicles, people, args.per_car, rng)
        else:
            bookings = seed_postgres(scratch.pg_dsn, vehicles, people, args.per_car, rng)
        reads = booking_reads(app, people)
        seed_s = time.perf_counter() - started
        print(f"{kind}: {len(vehicles):,} vehicles, {len(people.customer_ids):,} customers, {bookings:,} bookings "
              f"(each with its occupancy row), seeded in {seed_s:.0f} s", flush=True)
        city = CITIES[0][0]
        q50, q95 = time_query(app, city, args.query_calls)
        webload.dispose(app)
        requests = {"search": [Req.get(p) for p in search_paths(city)], **reads}
        ping = [Req.get("/api/v1/ping")]
        with webload.Server(scratch) as server:
            for name, items in requests.items():
                status, body = webload.get_json(server.base, items[0].path,
                                                dict(items[0].headers).get("Authorization", "")[7:] or None)
                if status != 200:
                    raise RuntimeError(f"{name}: {items[0].path} answered {status}: {body}")
                webload.load(server.base, items, 1, args.connections, scratch.var_dir)  # warm up caches and plans

            def runner(items: list[Req]) -> Any:
                return lambda: webload.load(server.base, items, args.duration, args.connections,
                                            scratch.var_dir).figures()

            rounds = harness.alternate(args.rounds, runner(ping), {n: runner(r) for n, r in requests.items()},
                                       progress=lambda text: print(f"  {kind} {total:,} {text}", flush=True))
    finally:
        scratch.drop()
    return Size(kind, len(vehicles), bookings, seed_s, q50, q95, rounds)


def report(sizes: list[Size], bench: harness.Bench) -> None:
    for size in sizes:
        group, r, target = f"{size.db} {size.vehicles:,}", size.rounds, TARGETS[size.db]
        full = size.vehicles == max(s.vehicles for s in sizes if s.db == size.db)
        bench.add(group, "ping", "req/s", r.values("", "req_s"))
        bench.add(group, "search", "req/s", r.values("search", "req_s"))
        bench.add(group, "search", "x ping", r.ratios("search", "req_s"), target=target["ratio"])
        bench.add(group, "search", "p99", r.values("search", "p99_ms"), unit="ms", target=P99_TARGET_MS, op="<=")
        bench.add(group, "search query alone", "p50", size.query_p50_ms, unit="ms")
        bench.add(group, "search query alone", "p95", size.query_p95_ms, unit="ms", target=target["query_p95_ms"],
                  op="<=")
        small = next((s for s in sizes if s.db == size.db and s.vehicles < size.vehicles), None)
        if small is not None:
            # the larger of the under-load p50 and the query-alone p50 ratios
            def ratio(big: float, little: float) -> float:
                return big / little if little > 0 else float("nan")

            growth = max(ratio(statistics.median(r.values("search", "p50_ms")),
                               statistics.median(small.rounds.values("search", "p50_ms"))),
                         ratio(size.query_p50_ms, small.query_p50_ms))
            bench.add(group, "search", f"growth from {small.vehicles:,}", growth, target=GROWTH_TARGET, op="<")
        for name in ("booking detail", "booking list"):
            bench.add(group, name, "req/s", r.values(name, "req_s"))
            bench.add(group, name, "x ping", r.ratios(name, "req_s"),
                      target=target["read"] if name == "booking detail" and full else None)
            bench.add(group, name, "p99", r.values(name, "p99_ms"), unit="ms")
        bench.add(group, "all", "non-200+errors",
                  [m["non_2xx"] + m["errors"] for f in (r.baseline, *r.figures.values()) for m in f],
                  target=0, op="==", agg="sum")
        bench.add(group, "dataset", "bookings", size.bookings, note=f"seeded in {size.seed_s:.0f} s")


def main() -> int:
    p = harness.parser(__doc__)
    p.add_argument("--scale", type=float, default=1.0, help="100,000 and 10,000 vehicles times this")
    p.add_argument("--per-car", type=int, default=10, help="bookings per car (10 -> 1M at full size)")
    p.add_argument("--duration", type=float, default=5, help="seconds of load per endpoint and round")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--query-calls", type=int, default=300)
    p.add_argument("--db", default="sqlite,postgres")
    args = p.parse_args()
    print(f"{harness.machine_line()}; load: {webload.loader_name()}, {args.connections} connections, "
          f"{args.rounds} rounds x {args.duration:g} s per endpoint", flush=True)
    started = time.perf_counter()
    totals = sorted({max(2000, round(100_000 * args.scale)), max(1000, round(10_000 * args.scale))}, reverse=True)
    sizes = [run_size(kind, total, args) for kind in webload.kinds(args.db) for total in totals]
    bench = harness.Bench("search", args)
    report(sizes, bench)
    bench.note("x ping: requests/s over ping's in the same round (median of rounds, min-max). The booking-detail "
               "target applies at the larger size. Times in ms; wrk, gunicorn and the database share the cores. "
               f"{time.perf_counter() - started:.0f} s in all.")
    return bench.finish()


if __name__ == "__main__":
    raise SystemExit(main())
