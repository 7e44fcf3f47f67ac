"""The app served by a real gunicorn (gthread, 2 workers x 4 threads, as ``make run`` serves it).

Started from the project directory, so ``gunicorn.conf.py`` applies as it does for ``make run``; it
shares the test session's database, key ring, blob store and secret key, so rows made with the
factories are visible to it. Each server runs in its own process group and is stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# the Makefile's `serve` format, with the worker's pid (%(p)s) so tests can see which worker answered
ACCESS_LOG_FORMAT = '%(p)s %(h)s "%(r)s" "%(m)s %(U)s" %(s)s %(b)s "%(f)s" %(M)sms'


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    base: str
    access_log: Path
    error_log: Path

    def access_lines(self) -> list[str]:
        return self.access_log.read_text(errors="replace").splitlines() if self.access_log.exists() else []


def server_env(app_overrides: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in app_overrides}
    env.update({k: str(v) for k, v in app_overrides.items() if v is not None})
    env.pop("PASSWORD_HASH_PROFILE", None)  # read from create_app()'s overrides only: gunicorn hashes for real
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


@contextmanager
def gunicorn(app_overrides: Mapping[str, Any], workdir: Path, *, env: Mapping[str, str] | None = None,
             workers: int = 2, threads: int = 4) -> Iterator[LiveServer]:
    port = free_port()
    access_log, error_log = workdir / f"access-{port}.log", workdir / f"error-{port}.log"
    command = [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}",
               "--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads),
               "--access-logfile", str(access_log), "--access-logformat", ACCESS_LOG_FORMAT,
               "--error-logfile", str(error_log), "wsgi:app"]
    with open(workdir / f"stdio-{port}.log", "wb") as stdio:
        proc = subprocess.Popen(command, cwd=ROOT, env=server_env(app_overrides, env), stdout=stdio,  # noqa: S603
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(proc, base, error_log)
            yield LiveServer(base, access_log, error_log)
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], base: str, error_log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited: " + (error_log.read_text() if error_log.exists() else ""))
        try:
            with urllib.request.urlopen(base + "/api/v1/ping", timeout=2) as answer:  # noqa: S310 - loopback
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer within 60 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group we started, by its id
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def request(base: str, method: str, path: str, *, json_body: Any = None,
            headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (so gunicorn's workers take turns accepting)."""
    import json

    data = json.dumps(json_body).encode() if json_body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,  # noqa: S310 - loopback only
                                 headers={**({"Content-Type": "application/json"} if data else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
