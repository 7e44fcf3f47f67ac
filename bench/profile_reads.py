"""Where a read endpoint's time goes: the bench_reads data in-process, timed and profiled (pyinstrument).

    .venv/bin/python bench/profile_reads.py [--db sqlite|postgres] [--requests 500] [--endpoint "vehicle detail"]

Seeds a scratch database like bench_reads.py (smaller), then serves each endpoint through Flask's test client in
this process: CPU ms per request (best of five batches; ping first, as the floor every request pays), and a
pyinstrument call tree of ``--endpoint`` written to bench/out/profile-<db>-<endpoint>.txt. No HTTP server, no
load generator: this says what a request costs the Python process, bench_reads.py says what it costs under load.
"""

from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

import bench_reads
import harness
import webload
from webload import Req


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default="sqlite")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--endpoint", default="vehicle detail", help='"vehicle detail", "booking detail", "/me" or "ping"')
    args = p.parse_args()
    from pyinstrument import Profiler

    kind = webload.kinds(args.db)[0]
    scratch = webload.create_scratch(kind, "profile")
    scratch.extra["ACCESS_TOKEN_TTL_SECONDS"] = "86400"  # noqa: S105 - tokens issued at seeding outlive the run
    try:
        app = webload.make_app(scratch)
        webload.migrate(app)
        requests = bench_reads.seed(app, SimpleNamespace(vehicles=300, customers=40))
        webload.dispose(app)
        from marketplace import create_app

        os.environ.update(scratch.settings())  # the app as gunicorn builds it (wsgi.py reads the environment)
        app = create_app({"REDIS_URL": None, "MASTER_KEYRING": None}, start_background=False)
        client = app.test_client()

        def run(items: list[Req], n: int) -> None:
            for i in range(n):
                r = items[i % len(items)]
                answer = client.open(r.path, method=r.method, headers=dict(r.headers))
                assert answer.status_code == 200, answer.get_data(as_text=True)[:300]

        def batch(items: list[Req], n: int) -> float:
            started = time.process_time()
            run(items, n)
            return (time.process_time() - started) / n * 1000

        print(harness.machine_line())
        for name, items in requests.items():
            run(items, 50)
            print(f"{name:16} {min(batch(items, 200) for _ in range(5)):6.2f} ms CPU per request (best of 5 x 200)")
        profiler = Profiler(interval=0.0005)
        profiler.start()
        run(requests[args.endpoint], args.requests)
        profiler.stop()
        harness.OUT_DIR.mkdir(parents=True, exist_ok=True)
        slug = args.endpoint.strip("/").replace(" ", "-")
        path = harness.OUT_DIR / f"profile-{kind}-{slug}.txt"
        path.write_text(profiler.output_text(unicode=False, color=False))
        print(f"wrote {path}")
        webload.dispose(app)
    finally:
        scratch.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
