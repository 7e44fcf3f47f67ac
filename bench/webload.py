"""Serving the app the way ``make run`` does and loading it over HTTP: scratch databases, gunicorn, wrk.

- ``create_scratch("sqlite" | "postgresql", label)``: an empty database (PostgreSQL: a throwaway
  ``cj_bench_...`` database on 127.0.0.1 as user postgres, dropped by ``Scratch.drop``; SQLite: a file in a
  temporary directory) and the settings the app and its server get;
- ``Server(scratch)``: gunicorn, gthread, 2 workers x 4 threads, on a free 127.0.0.1 port, in its own process
  group (stopped with it);
- ``load(base, requests, seconds, connections, workdir)``: ``wrk -t2 -c<connections>`` rotating through a list
  of requests (any method, headers and body), counting answers by status; a bounded Python thread load
  generator when wrk is missing (weaker: the figures then say so).

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PG_ADMIN = "postgresql://postgres@127.0.0.1/postgres"
SECRET = "bench-secret-" + "x" * 40
KINDS = {"sqlite": "sqlite", "postgres": "postgresql", "postgresql": "postgresql", "pg": "postgresql"}


def kinds(text: str) -> list[str]:
    """``--db sqlite,postgres`` -> ["sqlite", "postgresql"]."""
    return [KINDS[k.strip()] for k in text.split(",") if k.strip()]


# ---- scratch databases ----------------------------------------------------------------------------------


@dataclass
class Scratch:
    kind: str  # "sqlite" | "postgresql"
    url: str  # SQLAlchemy URL for the app
    var_dir: Path
    pg_name: str | None = None
    sqlite_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)  # more settings for the app and its server

    def settings(self) -> dict[str, str]:
        return {"MARKETPLACE_ENV": "development", "DATABASE_URL": self.url, "VAR_DIR": str(self.var_dir),
                "SECRET_KEY": SECRET, "JOBS_MODE": "sync", "RATELIMIT_STORAGE_URI": "memory://",
                "LOG_LEVEL": "WARNING", "KEYRING_PATH": str(self.var_dir / "keyring.json"),
                "TRUSTED_PROXY_COUNT": "0", **self.extra}

    @property
    def pg_dsn(self) -> str:
        assert self.pg_name is not None
        return f"postgresql://postgres@{HOST}/{self.pg_name}"

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
    name = f"cj_bench_{label}_{uuid.uuid4().hex[:8]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    return Scratch(kind, f"postgresql+psycopg://postgres@{HOST}/{name}", var_dir, pg_name=name)


def make_app(scratch: Scratch) -> Any:
    """The app in this process, for migrating and seeding (cheap password hashes: nobody signs in with them)."""
    from marketplace import create_app

    overrides: dict[str, Any] = {**scratch.settings(), "REDIS_URL": None, "MASTER_KEYRING": None,
                                 "PASSWORD_HASH_PROFILE": "fast"}
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


def dispose(app: Any) -> None:
    from marketplace.extensions import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


# ---- serving ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """gunicorn (gthread, 2 workers x 4 threads, as ``make run`` serves) on 127.0.0.1, in its own process group."""

    def __init__(self, scratch: Scratch, *, workers: int = 2, threads: int = 4) -> None:
        self.port = free_port()
        env = {**os.environ, **scratch.settings()}
        env.pop("REDIS_URL", None)
        env.pop("MASTER_KEYRING", None)
        self.log_path = scratch.var_dir / "gunicorn.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"{HOST}:{self.port}", "--worker-class",
             "gthread", "--workers", str(workers), "--threads", str(threads), "--log-level", "warning", "wsgi:app"],
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
        raise RuntimeError(f"gunicorn did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ---- load ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None

    @classmethod
    def get(cls, path: str, token: str | None = None) -> Req:
        return cls("GET", path, (("Authorization", f"Bearer {token}"),) if token else ())

    @classmethod
    def post_json(cls, path: str, payload: Any, token: str | None = None) -> Req:
        headers = [("Content-Type", "application/json")]
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        return cls("POST", path, tuple(headers), json.dumps(payload, separators=(",", ":")))


@dataclass
class Load:
    seconds: float
    requests: int
    codes: dict[str, int]  # answers by status
    errors: int  # connect/read/write/timeout
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds

    def rate(self, *statuses: str) -> float:
        return sum(self.codes.get(s, 0) for s in statuses) / self.seconds

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code.startswith("5"))

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.codes.items() if not code.startswith("2"))

    def figures(self) -> dict[str, float]:
        return {"req_s": self.req_s, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms,
                "errors": float(self.errors), "5xx": float(self.server_errors), "non_2xx": float(self.non_2xx),
                **{f"n{code}": float(n) for code, n in self.codes.items()},
                **{f"r{code}": n / self.seconds for code, n in self.codes.items()}}


WRK_SCRIPT = r"""
local threads = {}
local count = 0
setup = function(thread)
  count = count + 1
  thread:set("tid", count)
  table.insert(threads, thread)
end
init = function(args)
  prepared = {}
  codes = {}
  for line in io.lines(string.format(args[1], tid)) do
    local method, path, heads, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    for name, value in heads:gmatch("([^\031]+)\030([^\031]*)") do headers[name] = value end
    if body == "" then body = nil end
    prepared[#prepared + 1] = wrk.format(method, path, headers, body)
  end
  n = 0
end
request = function()
  n = n % #prepared + 1
  return prepared[n]
end
response = function(status, headers, body)
  local k = tostring(status)
  codes[k] = (codes[k] or 0) + 1
end
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do total[k] = (total[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(total) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  local e = summary.errors
  io.write(string.format(
    '\nRESULT {"requests": %d, "duration_us": %d, "errors": %d, "codes": {%s}, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, table.concat(parts, ", "),
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""

WRK_THREADS = 2


def _line(r: Req) -> str:
    heads = "".join(f"{k}\x1e{v}\x1f" for k, v in r.headers)
    for text in (r.method, r.path, heads, r.body or ""):
        assert "\t" not in text and "\n" not in text
    return f"{r.method}\t{r.path}\t{heads}\t{r.body or ''}"


def _per_thread(requests: Sequence[Req] | Sequence[Sequence[Req]]) -> list[list[Req]]:
    """One list per load thread: a flat list is shared, each thread starting at another offset."""
    if requests and isinstance(requests[0], Req):
        flat = list(requests)  # type: ignore[arg-type]
        step = max(1, len(flat) // WRK_THREADS)
        return [flat[i * step:] + flat[:i * step] for i in range(WRK_THREADS)]
    lists = [list(x) for x in requests]  # type: ignore[union-attr]
    assert len(lists) == WRK_THREADS, f"give one request list per load thread ({WRK_THREADS})"
    return lists


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def load(base: str, requests: Sequence[Req] | Sequence[Sequence[Req]], seconds: float, connections: int,
         workdir: Path) -> Load:
    """Drive ``requests`` (rotating; one list per load thread, or one shared list) for ``seconds``."""
    assert base.startswith(f"http://{HOST}:"), "the load generator only ever targets 127.0.0.1"
    lists = _per_thread(requests)
    if have_wrk():
        return _wrk(base, lists, seconds, connections, workdir)
    return _threads(base, lists, seconds, connections)


def _wrk(base: str, lists: list[list[Req]], seconds: float, connections: int, workdir: Path) -> Load:
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT)
    stem = f"requests-{uuid.uuid4().hex[:6]}"
    for i, items in enumerate(lists, start=1):
        (workdir / f"{stem}-{i}.txt").write_text("\n".join(_line(r) for r in items) + "\n")
    duration = max(1, round(seconds))
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s",
               str(script), base, "--", str(workdir / f"{stem}-%d.txt")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    if "RESULT " not in done.stdout:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[:500]}")
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1].strip())
    return Load(result["duration_us"] / 1e6, result["requests"], {str(k): int(v) for k, v in result["codes"].items()},
                result["errors"], result["p50_us"] / 1000, result["p95_us"] / 1000, result["p99_us"] / 1000)


def _threads(base: str, lists: list[list[Req]], seconds: float, connections: int) -> Load:
    """Fallback: ``connections`` threads on keep-alive connections (weaker than wrk: the GIL is the client's)."""
    port = int(base.rsplit(":", 1)[1])
    latencies: list[float] = []
    codes: dict[str, int] = {}
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    cursors = [0] * len(lists)

    def next_request(group: int) -> Req:
        with lock:
            cursors[group] += 1
            items = lists[group]
            return items[cursors[group] % len(items)]

    def worker(group: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        mine: list[float] = []
        seen: dict[str, int] = {}
        while time.perf_counter() < stop_at:
            r = next_request(group)
            started = time.perf_counter()
            try:
                conn.request(r.method, r.path, body=r.body, headers=dict(r.headers))
                answer = conn.getresponse()
                answer.read()
            except OSError:
                with lock:
                    errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                continue
            mine.append(time.perf_counter() - started)
            key = str(answer.status)
            seen[key] = seen.get(key, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for k, v in seen.items():
                codes[k] = codes.get(k, 0) + v

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i % len(lists),)) for i in range(connections)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[int(p * (len(latencies) - 1))] * 1000 if latencies else float("nan")

    return Load(elapsed, len(latencies), codes, errors[0], pct(0.5), pct(0.95), pct(0.99))


def loader_name() -> str:
    return "wrk" if have_wrk() else "Python threads (install wrk for trustworthy figures)"


def get_json(base: str, path: str, token: str | None = None) -> tuple[int, Any]:
    """One request (for checking what a bench is about to load before loading it)."""
    assert base.startswith(f"http://{HOST}:")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(base + path, headers=headers)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback only
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
