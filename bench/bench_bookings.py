"""Booking creation over HTTP under a race, next to ping, on SQLite and PostgreSQL (PERFORMANCE.md, issue 8).

    .venv/bin/python bench/bench_bookings.py [--rounds 5] [--duration 5] [--connections 32] [--db sqlite,postgres]
        [--vehicles 2000] [--customers 64] [--report-only]

For each database: a scratch database (PostgreSQL: a throwaway ``cj_bench_...`` database, dropped at the end),
migrated and seeded with ``--vehicles`` listed cars and ``--customers`` customers cleared to drive (identity,
face-data consent, an approved case), each signed in; gunicorn (gthread, 2 workers x 4 threads, as ``make run``);
then alternating rounds of ``GET /api/v1/ping`` and ``POST /api/v1/bookings`` with ``wrk -t2 -c<connections>``.

Every booking request asks for a fresh car and period, except that one request in ten asks for exactly the
period the other load thread asks for at the same position: a race two customers can both try to win. Answers
201 (booked) and 409 ``vehicle_unavailable`` (lost the race) are expected; anything else is counted.

Targets (PERFORMANCE.md): created bookings/s >= 0.12 x ping in the same round, zero 5xx, and after the run zero
double bookings (two live bookings of one car overlapping, or two overlapping occupancy rows) and as many booking
rows as 201 answers. Writes bench/out/bookings.csv. Disk syncs here are fast (PERFORMANCE.md: ~43 us): figures on
cloud disks would be lower.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import demo_data
import harness
import webload
from webload import Req

TARGET = 0.12  # PERFORMANCE.md: booking creation over HTTP >= 0.12 x ping
RACE_EVERY = 10
RENTAL = timedelta(days=2)
SLOT = timedelta(days=6)  # one thread's periods on a car: 2 days + the turnaround never reach the next slot


class Slots:
    """Hands out (car, period) pairs never asked for before, so every round books fresh periods."""

    def __init__(self, vehicles: list[str]) -> None:
        from marketplace.extensions import utcnow

        self.vehicles = vehicles
        self.base = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
        self.used = 0

    def take(self, count: int) -> list[tuple[str, Any, Any]]:
        out = []
        for n in range(self.used, self.used + count):
            start = self.base + SLOT * (n // len(self.vehicles))
            out.append((self.vehicles[n % len(self.vehicles)], start, start + RENTAL))
        self.used += count
        if self.base + SLOT * (self.used // len(self.vehicles)) > self.base + timedelta(days=360):
            raise RuntimeError("out of fresh periods within the booking horizon: give more --vehicles")
        return out


def booking_requests(slots: Slots, tokens: list[str], per_thread: int) -> list[list[Req]]:
    """Two lists, one per load thread; every RACE_EVERY-th request of the second repeats the first's."""
    from marketplace.users.consent_texts import CURRENT
    from marketplace.users.models import ConsentKind

    terms = CURRENT[ConsentKind.RENTAL_TERMS].version
    mandate = CURRENT[ConsentKind.MIT_MANDATE].version

    def req(slot: tuple[str, Any, Any], n: int) -> Req:
        vehicle, start, end = slot
        return Req.post_json("/api/v1/bookings", {
            "vehicle_id": vehicle, "starts_at": demo_data.iso(start), "ends_at": demo_data.iso(end),
            "accept_rental_terms_version": terms, "accept_mit_mandate_version": mandate}, tokens[n % len(tokens)])

    first = slots.take(per_thread)
    second = slots.take(per_thread)
    lists: list[list[Req]] = [[], []]
    for i in range(per_thread):
        lists[0].append(req(first[i], i))
        lists[1].append(req(first[i] if i % RACE_EVERY == 0 else second[i], i + len(tokens) // 2))
    return lists


def audit_bookings(app: Any) -> tuple[int, int, int, int]:
    """(live bookings of one car that overlap, occupancy rows of one car that overlap, live bookings without their
    occupancy row, booking rows)."""
    from sqlalchemy import text

    from marketplace.bookings.states import ACTIVE
    from marketplace.extensions import db

    live = ", ".join(f"'{s}'" for s in sorted(ACTIVE))  # fixed vocabulary, not input
    with app.app_context():
        overlapping_bookings = db.session.execute(text(
            "SELECT count(*) FROM bookings a JOIN bookings b ON a.vehicle_id = b.vehicle_id AND a.id < b.id "  # noqa: S608
            f"AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at WHERE a.status IN ({live}) "
            f"AND b.status IN ({live})")).scalar_one()
        overlapping_occupancies = db.session.execute(text(
            "SELECT count(*) FROM vehicle_occupancies a JOIN vehicle_occupancies b ON a.vehicle_id = b.vehicle_id "
            "AND a.id < b.id AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at")).scalar_one()
        unheld = db.session.execute(text(
            f"SELECT count(*) FROM bookings b WHERE b.status IN ({live}) AND NOT EXISTS "  # noqa: S608
            "(SELECT 1 FROM vehicle_occupancies o WHERE o.booking_id = b.id)")).scalar_one()
        rows = db.session.execute(text("SELECT count(*) FROM bookings")).scalar_one()
        db.session.remove()
    return int(overlapping_bookings), int(overlapping_occupancies), int(unheld), int(rows)


def run_db(kind: str, args: Any, bench: harness.Bench) -> None:
    scratch = webload.create_scratch(kind, "bookings")
    scratch.extra["ACCESS_TOKEN_TTL_SECONDS"] = "86400"  # noqa: S105 - tokens issued at seeding outlive the run
    try:
        started = time.perf_counter()
        app = webload.make_app(scratch)
        webload.migrate(app)
        fleet = demo_data.seed_fleet(app, agencies=20, vehicles=args.vehicles, photos=(0, 1))
        tokens = demo_data.issue_tokens(app, demo_data.seed_customers(app, args.customers, verified=True))
        with app.app_context():
            slots = Slots(fleet.public_ids)
        webload.dispose(app)
        print(f"{kind}: seeded {args.vehicles:,} cars and {args.customers} cleared customers in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        per_thread = max(200, int(args.duration * args.max_rate / 2))
        created = [0]
        with webload.Server(scratch) as server:
            ping = [Req.get("/api/v1/ping")]

            def bookings() -> dict[str, float]:
                with app.app_context():
                    lists = booking_requests(slots, tokens, per_thread)
                load = webload.load(server.base, lists, args.duration, args.connections, scratch.var_dir)
                created[0] += load.codes.get("201", 0)
                print(f"    answers: {dict(sorted(load.codes.items()))}, errors {load.errors}", flush=True)
                figures = load.figures()
                figures["unexpected"] = float(sum(n for code, n in load.codes.items() if code not in ("201", "409"))
                                              + load.errors)
                return figures

            webload.load(server.base, ping, 1, args.connections, scratch.var_dir)  # warm up
            bookings()
            rounds = harness.alternate(
                args.rounds, lambda: webload.load(server.base, ping, args.duration, args.connections,
                                                  scratch.var_dir).figures(),
                {"create booking": bookings}, progress=lambda text: print(f"  {kind} {text}", flush=True))
            tail = server.log_tail(5)
        audit = audit_bookings(app)
        webload.dispose(app)
    finally:
        scratch.drop()
    report(kind, rounds, audit, created[0], args=args, bench=bench)
    if any(m["5xx"] for m in rounds.figures["create booking"]) and tail:
        bench.note(f"{kind} server log (last lines):\n{tail}")


def report(kind: str, rounds: harness.Rounds, audit: tuple[int, int, int, int], created: int, *, args: Any,
           bench: harness.Bench) -> None:
    double_bookings, double_occupancies, unheld, rows = audit
    name = "create booking"
    answers = rounds.figures[name]
    bench.add(kind, "ping", "req/s", rounds.values("", "req_s"))
    for m in answers:  # a status never seen has no figure of its own
        m.setdefault("r201", 0.0)
        m.setdefault("n409", 0.0)
    bench.add(kind, name, "created/s", rounds.values(name, "r201"))
    bench.add(kind, name, "created x ping", rounds.ratios(name, "r201", "req_s"), target=TARGET)
    bench.add(kind, name, "p50", rounds.values(name, "p50_ms"), unit="ms")
    bench.add(kind, name, "p99", rounds.values(name, "p99_ms"), unit="ms")
    bench.add(kind, name, "409 lost races", rounds.values(name, "n409"), agg="sum")
    bench.add(kind, name, "5xx", [m["5xx"] for m in answers], target=0, op="==", agg="sum")
    bench.add(kind, name, "other non-201/409", [m["unexpected"] - m["5xx"] for m in answers], target=0, op="==",
              agg="sum")
    bench.add(kind, name, "double bookings", double_bookings + double_occupancies, target=0, op="==", agg="sum")
    bench.add(kind, name, "live without occupancy", unheld, target=0, op="==", agg="sum")
    # requests still in flight when wrk stops are answered unseen: at most one per connection and run
    bench.add(kind, name, "rows - 201s", rows - created, target=args.connections * (args.rounds + 1), op="<=",
              agg="sum", note="booking rows beyond the 201s seen: at most the requests in flight at each stop")
    bench.add(kind, name, "rows < 201s", max(0, created - rows), target=0, op="==", agg="sum",
              note="a 201 without its row would be a lost booking")


def main() -> int:
    p = harness.parser(__doc__)
    p.add_argument("--duration", type=float, default=5, help="seconds of load per endpoint and round")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--vehicles", type=int, default=2000)
    p.add_argument("--customers", type=int, default=64)
    p.add_argument("--max-rate", type=float, default=800, help="bookings/s the request lists are sized for")
    p.add_argument("--db", default="sqlite,postgres")
    args = p.parse_args()
    print(f"{harness.machine_line()}; load: {webload.loader_name()}, {args.connections} connections, "
          f"{args.rounds} rounds x {args.duration:g} s per endpoint", flush=True)
    bench = harness.Bench("bookings", args)
    for kind in webload.kinds(args.db):
        run_db(kind, args, bench)
    bench.note("created x ping: 201 answers/s over ping's requests/s in the same round (median of rounds, "
               "min-max); 409s are races lost on purpose (one request in ten repeats another thread's period).")
    return bench.finish()


if __name__ == "__main__":
    raise SystemExit(main())
