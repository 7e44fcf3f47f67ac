"""Read endpoints under load next to ping, on SQLite and PostgreSQL (PERFORMANCE.md "Read endpoints").

    .venv/bin/python bench/bench_reads.py [--rounds 5] [--duration 5] [--connections 32] [--db sqlite,postgres]
        [--vehicles 2000] [--customers 200] [--report-only]

For each database it creates a scratch database (PostgreSQL: a throwaway ``cj_bench_...`` database, dropped at
the end; SQLite: a file in a temporary directory), migrates it, seeds demo-like data (20 agencies, ``--vehicles``
listed cars with 3-8 photos each, ``--customers`` customers with 5 bookings each and their history), signs 32 of
the customers in, serves the app with gunicorn (gthread, 2 workers x 4 threads, as ``make run``) and drives

- ``GET /api/v1/ping`` (the baseline),
- ``GET /api/v1/vehicles/{id}`` (rotating over the cars),
- ``GET /api/v1/bookings/{reference}`` (each signed-in customer's own bookings),
- ``GET /api/v1/me`` (bearer tokens of the 32 customers)

with ``wrk -t2 -c<connections>`` for ``--duration`` seconds each, in alternating rounds (ping, then the three
endpoints in rotating order). Each ratio is endpoint / that round's ping; the median of the rounds must reach
the target: SQLite >= 0.33 x ping, PostgreSQL >= 0.22 x ping; every answer must be 200. Writes bench/out/reads.csv.
"""

from __future__ import annotations

import random
import time
from typing import Any

import demo_data
import harness
import webload
from webload import Req

TARGETS = {"sqlite": 0.33, "postgresql": 0.22}  # PERFORMANCE.md: read endpoints, x ping
SIGNED_IN = 32


def seed(app: Any, args: Any) -> dict[str, list[Req]]:
    rng = random.Random(3)
    fleet = demo_data.seed_fleet(app, agencies=20, vehicles=args.vehicles, rng=rng)
    customers = demo_data.seed_customers(app, args.customers)
    references = demo_data.seed_bookings(app, customers, fleet, per_customer=5, rng=rng)
    signed_in = customers[:SIGNED_IN]
    tokens = demo_data.issue_tokens(app, signed_in)
    shown = rng.sample(fleet.public_ids, min(500, len(fleet.public_ids)))
    vehicles = [Req.get(f"/api/v1/vehicles/{pid}") for pid in shown]
    bookings = [Req.get(f"/api/v1/bookings/{ref}", token) for uid, token in zip(signed_in, tokens, strict=True)
                for ref in references[uid]]
    rng.shuffle(bookings)
    me = [Req.get("/api/v1/me", token) for token in tokens]
    return {"ping": [Req.get("/api/v1/ping")], "vehicle detail": vehicles, "booking detail": bookings, "/me": me}


def check(server: webload.Server, requests: dict[str, list[Req]]) -> None:
    """Every request a bench is about to load answers 200 once, before any load."""
    for name, items in requests.items():
        for r in items[:3]:
            token = dict(r.headers).get("Authorization", "").removeprefix("Bearer ") or None
            status, body = webload.get_json(server.base, r.path, token)
            if status != 200:
                raise RuntimeError(f"{name}: {r.path} answered {status}: {body}")


def run_db(kind: str, args: Any, bench: harness.Bench) -> None:
    scratch = webload.create_scratch(kind, "reads")
    scratch.extra["ACCESS_TOKEN_TTL_SECONDS"] = "86400"  # noqa: S105 - tokens issued at seeding outlive the run
    try:
        started = time.perf_counter()
        app = webload.make_app(scratch)
        webload.migrate(app)
        requests = seed(app, args)
        webload.dispose(app)
        print(f"{kind}: seeded {args.vehicles:,} cars, {args.customers:,} customers x 5 bookings in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        with webload.Server(scratch) as server:
            check(server, requests)

            def runner(items: list[Req]) -> Any:
                return lambda: webload.load(server.base, items, args.duration, args.connections,
                                            scratch.var_dir).figures()

            for items in requests.values():  # warm up: connections, caches, query plans
                webload.load(server.base, items, 1, args.connections, scratch.var_dir)
            rounds = harness.alternate(args.rounds, runner(requests["ping"]),
                                       {name: runner(items) for name, items in requests.items() if name != "ping"},
                                       progress=lambda text: print(f"  {kind} {text}", flush=True))
    finally:
        scratch.drop()
    bench.add(kind, "ping", "req/s", rounds.values("", "req_s"))
    bench.add(kind, "ping", "5xx+errors", [m["5xx"] + m["errors"] for m in rounds.baseline], target=0, op="==",
              agg="sum")
    for name in rounds.figures:
        bench.add(kind, name, "req/s", rounds.values(name, "req_s"))
        bench.add(kind, name, "x ping", rounds.ratios(name, "req_s"), target=TARGETS[kind])
        bench.add(kind, name, "p99", rounds.values(name, "p99_ms"), unit="ms")
        bench.add(kind, name, "non-200+errors", [m["non_2xx"] + m["errors"] for m in rounds.figures[name]],
                  target=0, op="==", agg="sum")


def main() -> int:
    p = harness.parser(__doc__)
    p.add_argument("--duration", type=float, default=5, help="seconds of load per endpoint and round")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--vehicles", type=int, default=2000)
    p.add_argument("--customers", type=int, default=200)
    p.add_argument("--db", default="sqlite,postgres")
    args = p.parse_args()
    print(f"{harness.machine_line()}; load: {webload.loader_name()}, {args.connections} connections, "
          f"{args.rounds} rounds x {args.duration:g} s per endpoint", flush=True)
    bench = harness.Bench("reads", args)
    for kind in webload.kinds(args.db):
        run_db(kind, args, bench)
    bench.note("x ping: the endpoint's requests/s over ping's in the same round (median of rounds, min-max); "
               "targets from PERFORMANCE.md (SQLite >= 0.33, PostgreSQL >= 0.22). wrk, gunicorn and the database "
               "share the machine's cores.")
    return bench.finish()


if __name__ == "__main__":
    raise SystemExit(main())
