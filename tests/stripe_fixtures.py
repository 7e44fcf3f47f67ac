"""localstripe for the tests: one process per test session (per xdist worker), on a free loopback port.

``tests/payments/conftest.py`` imports the fixtures; later areas (bookings, charges) can import them the same
way. The server is ``devtools/localstripe_server.py`` (in memory, 127.0.0.1 only, with the extension
that closes localstripe's gaps); ``--stock`` runs the same launcher without the extension, for the tests that
show the gateway reads localstripe's own shapes too. Nothing here talks to the internet (TESTING.md §6 rule 2).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from marketplace.payments.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "sk_test_localstripe_tests"  # any sk_ key over 5 characters; a pk_ key gets 401
WEBHOOK_SECRET = "whsec_tests_" + "0" * 24
START_TIMEOUT = 30.0  # generous: the machine is shared; a normal start takes about a second


@dataclass
class LocalStripe:
    base_url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def reset(self) -> None:
        """Empty the store (and, with the extension, the idempotency keys and webhooks)."""
        request = urllib.request.Request(f"{self.base_url}/_config/data", method="DELETE")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our loopback server
            assert response.status == 200

    def gateway(self, **overrides: object) -> Gateway:
        options: dict[str, object] = {"secret_key": SECRET_KEY, "api_base": self.base_url,
                                      "webhook_secret": WEBHOOK_SECRET, "max_network_retries": 0}
        options.update(overrides)
        return Gateway(**options)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(base_url: str) -> bool:
    request = urllib.request.Request(  # noqa: S310 - our loopback server
        f"{base_url}/v1/customers", headers={"Authorization": f"Bearer {SECRET_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - our loopback server
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_localstripe(*, stock: bool = False) -> LocalStripe:
    port = _free_port()
    args = [sys.executable, "-m", "devtools.localstripe_server", str(port)] + (["--stock"] if stock else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # stderr to a file, not a pipe: a pipe nobody reads would fill and stall the server
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop_localstripe
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)  # noqa: S603
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            error = log.read().decode(errors="replace")
            log.close()
            raise RuntimeError(f"localstripe exited with {process.returncode}: {error}")
        if _ready(base_url):
            return LocalStripe(base_url=base_url, process=process, log=log)
        time.sleep(0.05)
    stop_localstripe(LocalStripe(base_url=base_url, process=process, log=log))
    raise RuntimeError(f"localstripe did not answer on {base_url} within {START_TIMEOUT} s")


def stop_localstripe(server: LocalStripe) -> None:
    """Stop the process this fixture started, by its pid (never by name)."""
    process = server.process
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    server.log.close()


@pytest.fixture(scope="session")
def localstripe_server() -> Iterator[LocalStripe]:
    """localstripe with the extension, for the whole session of this (xdist) worker."""
    server = start_localstripe()
    try:
        yield server
    finally:
        stop_localstripe(server)


@pytest.fixture
def localstripe(localstripe_server: LocalStripe) -> LocalStripe:
    """The session's localstripe with an empty store for this test."""
    localstripe_server.reset()
    return localstripe_server


@pytest.fixture(scope="session")
def stock_localstripe_server() -> Iterator[LocalStripe]:
    """Plain localstripe 1.15.10 (in memory, loopback, no extension): the shapes the gateway must also read."""
    server = start_localstripe(stock=True)
    try:
        yield server
    finally:
        stop_localstripe(server)


@pytest.fixture
def stock_localstripe(stock_localstripe_server: LocalStripe) -> LocalStripe:
    stock_localstripe_server.reset()
    return stock_localstripe_server


@pytest.fixture
def stripe_gateway(app: Any, localstripe: LocalStripe) -> Iterator[LocalStripe]:
    """The app's gateway pointed at this test's (emptied) localstripe; the previous one restored after."""
    previous = app.extensions.get("payments_gateway")
    app.extensions["payments_gateway"] = localstripe.gateway()
    try:
        yield localstripe
    finally:
        if previous is None:
            app.extensions.pop("payments_gateway", None)
        else:
            app.extensions["payments_gateway"] = previous
