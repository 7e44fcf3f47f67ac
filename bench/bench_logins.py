"""Ping under a burst of logins: other requests must keep being served while argon2 runs (issue 7 item 16).

    .venv/bin/python bench/bench_logins.py [--runs 5] [--duration 8] [--connections 32] [--logins 8]
        [--min-ratio 0.5] [--compare-unbounded] [--report-only]

It creates a scratch SQLite database (migrated with the project's migrations) with ``--logins`` customers whose
passwords are hashed with the production argon2 parameters, serves the app with gunicorn (gthread, 2 workers x
4 threads, as ``make run`` does) on a free 127.0.0.1 port, and drives ``GET /api/v1/ping`` with
``wrk -t2 -c<connections>`` (``apt-get install wrk``; a Python thread load generator if wrk is missing) for
``--duration`` seconds, alternately alone and while ``--logins`` clients sign in in a loop (right password,
keep-alive connections). The login rate limits are lifted for the run, so every attempt hashes.

Reported: the median ping requests/s and p99 of each condition with their spread (min-max) over ``--runs``
alternating pairs, the ratio of the medians (burst / alone), and the logins served per second (200) and refused
for load (503 service_unavailable, the hashing pool's bound). Exits 1 if the ratio falls below ``--min-ratio``
(default 0.5) unless ``--report-only``. ``--compare-unbounded`` measures a second server whose hashing pool
admits every login at once (PASSWORD_HASH_WORKERS=8, the old behaviour), for reference only.

Only 127.0.0.1 is contacted; the scratch directory is removed. Figures on a shared 2-core machine drift
(PERFORMANCE.md: about +-15%): wrk, gunicorn and the login clients share the cores, hence ratios from one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SECRET = "bench-secret-" + "x" * 40
PASSWORD = "Saffron-Dune-Falcon-42"  # noqa: S105 - the scratch customers' password, never real
UNLIMITED = "1000000 per minute"

WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Load:
    req_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    non2xx: int


@dataclass
class Logins:
    ok: int = 0
    busy: int = 0
    other: int = 0
    seconds: float = 0.0


@dataclass
class Condition:
    loads: list[Load] = field(default_factory=list)
    logins: list[Logins] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def settings(var_dir: Path) -> dict[str, str]:
    return {"MARKETPLACE_ENV": "development", "DATABASE_URL": f"sqlite:///{var_dir / 'bench.db'}",
            "VAR_DIR": str(var_dir), "SECRET_KEY": SECRET, "JOBS_MODE": "sync", "LOG_LEVEL": "WARNING",
            "KEYRING_PATH": str(var_dir / "keyring.json"), "TRUSTED_PROXY_COUNT": "0",
            "RATELIMIT_LOGIN_ACCOUNT": UNLIMITED, "RATELIMIT_LOGIN_CLIENT": UNLIMITED}


def prepare(var_dir: Path, customers: int) -> list[str]:
    """Migrate the scratch database and add customers with production-cost password hashes."""
    import logging
    from datetime import date

    from flask_migrate import upgrade

    from marketplace import create_app
    from marketplace.extensions import db, utcnow
    from marketplace.users import passwords
    from marketplace.users.models import AccountStatus, AccountType, User

    app = create_app({**settings(var_dir), "REDIS_URL": None, "MASTER_KEYRING": None}, start_background=False)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    emails = [f"bench{i}@example.com" for i in range(customers)]
    with app.app_context():
        upgrade()
        hashed = passwords.hash_password(PASSWORD)  # argon2-cffi defaults, as in production
        for i, email in enumerate(emails):
            db.session.add(User(account_type=AccountType.CUSTOMER, status=AccountStatus.ACTIVE, email=email,
                                email_verified_at=utcnow(), phone=f"+9715{i:08d}", password_hash=hashed,
                                password_changed_at=utcnow(), full_name=f"Bench Customer{i}",
                                date_of_birth=date(1990, 5, 17), nationality="AE", address_line1="1 Bench Street",
                                address_city="Dubai", address_country="AE"))
        db.session.commit()
        db.engine.dispose()
    return emails


class Server:
    """gunicorn (gthread, 2 workers x 4 threads) on 127.0.0.1, in its own process group."""

    def __init__(self, var_dir: Path, extra_env: dict[str, str], label: str) -> None:
        self.port = free_port()
        env = {**os.environ, **settings(var_dir), **extra_env, "PYTHONPATH": str(ROOT)}
        for name in ("REDIS_URL", "MASTER_KEYRING", "RATELIMIT_STORAGE_URI"):
            env.pop(name, None)
        self.log = open(var_dir / f"gunicorn-{label}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"{HOST}:{self.port}", "--worker-class",
             "gthread", "--workers", "2", "--threads", "4", "--log-level", "warning", "wsgi:app"],
            cwd=ROOT, env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        self.base = f"http://{HOST}:{self.port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/api/v1/ping", timeout=2) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn did not start; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the process group we started
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def run_wrk(base: str, seconds: int, connections: int, workdir: Path) -> Load:
    assert base.startswith(f"http://{HOST}:"), "the load generator only ever targets 127.0.0.1"
    script = workdir / "result.lua"
    script.write_text(WRK_SCRIPT)
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
               base + "/api/v1/ping"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    result = json.loads(out.rsplit("RESULT ", 1)[1].strip())
    return Load(result["requests"] / (result["duration_us"] / 1e6), result["p50_us"] / 1000,
                result["p99_us"] / 1000, result["errors"], result["non2xx"])


def run_threads(base: str, seconds: int, connections: int, workdir: Path) -> Load:
    """Fallback load generator: ``connections`` threads on keep-alive connections (weaker than wrk)."""
    port = int(base.rsplit(":", 1)[1])
    latencies: list[float] = []
    counts = {"errors": 0, "non2xx": 0}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        mine: list[float] = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                conn.request("GET", "/api/v1/ping")
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

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    if not latencies:
        return Load(0.0, 0.0, 0.0, counts["errors"], counts["non2xx"])
    return Load(len(latencies) / seconds, latencies[len(latencies) // 2] * 1000,
                latencies[int(len(latencies) * 0.99) - 1] * 1000, counts["errors"], counts["non2xx"])


def login_burst(base: str, emails: list[str], stop: threading.Event, result: Logins) -> list[threading.Thread]:
    """One looping client per e-mail, each on its own keep-alive connection."""
    port = int(base.rsplit(":", 1)[1])
    lock = threading.Lock()

    def client(email: str) -> None:
        body = json.dumps({"email": email, "password": PASSWORD})
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while not stop.is_set():
            try:
                conn.request("POST", "/api/v1/auth/login", body=body, headers={"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                status = answer.status
            except OSError:
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            with lock:
                if status == 200:
                    result.ok += 1
                elif status == 503:
                    result.busy += 1
                else:
                    result.other += 1
            if status == 503:
                time.sleep(0.05)  # a polite client; Retry-After would say longer
        conn.close()

    threads = [threading.Thread(target=client, args=(e,), daemon=True) for e in emails]
    for t in threads:
        t.start()
    return threads


def measure(server: Server, emails: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, Condition]:
    load = run_wrk if shutil.which("wrk") else run_threads
    conditions = {"alone": Condition(), "burst": Condition()}
    load(server.base, 2, args.connections, workdir)  # warm-up: imports, connections, caches
    for run in range(args.runs):
        order = ["alone", "burst"] if run % 2 == 0 else ["burst", "alone"]
        for name in order:
            if name == "alone":
                conditions[name].loads.append(load(server.base, args.duration, args.connections, workdir))
                continue
            stop, logins = threading.Event(), Logins()
            threads = login_burst(server.base, emails, stop, logins)
            time.sleep(1.0)  # the burst is running before ping is measured
            started = time.perf_counter()
            conditions[name].loads.append(load(server.base, args.duration, args.connections, workdir))
            logins.seconds = time.perf_counter() - started + 1.0
            stop.set()
            for t in threads:
                t.join(timeout=35)
            conditions[name].logins.append(logins)
            time.sleep(0.5)
    return conditions


def summarise(label: str, conditions: dict[str, Condition]) -> float:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    alone, burst = conditions["alone"].loads, conditions["burst"].loads
    ratio = med([x.req_s for x in burst]) / max(med([x.req_s for x in alone]), 1e-9)
    print(f"\n{label}")
    print(f"  {'condition':<22}{'ping req/s median':>18}{'(min-max)':>18}{'p99 ms median':>15}{'(min-max)':>16}")
    for name, loads in (("ping alone", alone), ("ping + login burst", burst)):
        rps, p99 = [x.req_s for x in loads], [x.p99_ms for x in loads]
        print(f"  {name:<22}{med(rps):>18,.0f}{f'{min(rps):,.0f}-{max(rps):,.0f}':>18}"
              f"{med(p99):>15.1f}{f'{min(p99):.1f}-{max(p99):.1f}':>16}")
        bad = sum(x.errors for x in loads), sum(x.non2xx for x in loads)
        if any(bad):
            print(f"    ! {bad[0]} socket errors, {bad[1]} non-2xx answers to ping")
    logins = conditions["burst"].logins
    ok = med([x.ok / x.seconds for x in logins])
    busy = med([x.busy / x.seconds for x in logins])
    other = sum(x.other for x in logins)
    print(f"  logins during the burst: {ok:.1f}/s served (200), {busy:.1f}/s refused for load (503)"
          + (f", {other} other answers" if other else ""))
    print(f"  ratio ping under burst / alone (medians): {ratio:.2f}")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="alternating pairs (alone, burst)")
    parser.add_argument("--duration", type=int, default=8, help="seconds of wrk per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--logins", type=int, default=8, help="concurrent looping login clients")
    parser.add_argument("--min-ratio", type=float, default=0.5, help="target: ping under burst / alone")
    parser.add_argument("--compare-unbounded", action="store_true",
                        help="also measure with every login admitted to hashing at once (reference only)")
    parser.add_argument("--report-only", action="store_true", help="never exit non-zero on a missed target")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="cj-bench-logins-"))
    try:
        emails = prepare(scratch, args.logins)
        print(f"ping vs ping under {args.logins} looping logins; gunicorn gthread 2x4 on SQLite; "
              f"wrk -t2 -c{args.connections} -d{args.duration}s; {args.runs} alternating runs"
              + ("" if shutil.which("wrk") else " (wrk missing: Python load generator, weaker)"))
        variants: list[tuple[str, dict[str, str]]] = [("bounded hashing pool (the default)", {})]
        if args.compare_unbounded:
            variants.append(("unbounded: every login hashes at once (reference, not a target)",
                             {"PASSWORD_HASH_WORKERS": "8", "PASSWORD_HASH_WAITING": "8"}))
        ratios = []
        for label, extra in variants:
            server = Server(scratch, extra, label.split()[0])
            try:
                ratios.append(summarise(label, measure(server, emails, args, scratch)))
            finally:
                server.stop()
        ratio = ratios[0]
        met = ratio >= args.min_ratio
        print(f"\ntarget: ping under a login burst >= {args.min_ratio:.2f} x ping alone: "
              f"{'met' if met else 'MISSED'} ({ratio:.2f})")
        return 0 if met or args.report_only else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
