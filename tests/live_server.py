"""The app served by a real gunicorn in a subprocess, on the test run's database, key ring and blob store.

The server gets its settings from the environment (the session's ``app_overrides`` plus ``extra``), runs in a
process group of its own, and is stopped by that group's id, so a test can also SIGKILL it (master and
workers at once) to stand for a crash. Only processes this helper started are ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def server_env(overrides: Mapping[str, Any], extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """``os.environ`` with the app settings applied (None removes a variable, as in ``create_app``)."""
    env = dict(os.environ)
    for key, value in {**overrides, **(extra or {})}.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the whole server (master and workers), as a crash or an OOM kill would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@contextmanager
def gunicorn_server(env: Mapping[str, str], log_dir: Path, *, workers: int = 1, threads: int = 4,
                    timeout: float = 30) -> Iterator[LiveServer]:
    port = free_port()
    log = log_dir / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
             "--workers", str(workers), "--threads", str(threads), "--graceful-timeout", "2", "wsgi:app"],
            cwd=ROOT, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{server.url}/api/v1/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still importing the app
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
