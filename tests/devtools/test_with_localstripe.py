"""``make run``'s launcher (devtools/with_localstripe.py) really starts localstripe, hands the command the
settings that reach it, delivers signed webhooks to the app's URL, and stops localstripe when the command ends
or the launcher is told to stop. Real processes on loopback ports, nothing mocked."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stripe_fixtures import _free_port

ROOT = Path(__file__).resolve().parents[2]


def _answers(port: int) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/customers", headers={"Authorization": "Bearer sk_test_localstripe"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")}
    env["PYTHONPATH"] = str(ROOT)
    return env


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers.get("Stripe-Signature", ""), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[int, list[tuple[str, bytes]]]]:
    _Hook.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], _Hook.received
    finally:
        server.shutdown()
        server.server_close()


CHILD = textwrap.dedent("""
    import os, sys, time, urllib.request
    base, secret = os.environ["STRIPE_API_BASE"], os.environ["STRIPE_WEBHOOK_SECRET"]
    request = urllib.request.Request(base + "/v1/customers", data=b"email=demo%40example.com", method="POST",
                                     headers={"Authorization": "Bearer sk_test_localstripe"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    print(base, secret, flush=True)
    marker = sys.argv[1]
    deadline = time.monotonic() + 20
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    sys.exit(7)
""")


def test_the_launcher_runs_localstripe_for_the_command_and_stops_it(
        tmp_path: Path, webhook_receiver: tuple[int, list[tuple[str, bytes]]]) -> None:
    hook_port, received = webhook_receiver
    port = _free_port()
    marker = tmp_path / "delivered"

    def mark_when_delivered() -> None:
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.1)
        marker.touch()

    threading.Thread(target=mark_when_delivered, daemon=True).start()
    result = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "devtools.with_localstripe", "--port", str(port),
         "--webhook-url", f"http://127.0.0.1:{hook_port}/api/v1/payments/stripe/webhook",
         "--", sys.executable, "-c", CHILD, str(marker)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 7, result.stderr  # the command's own exit code
    base, secret = result.stdout.split()
    assert base == f"http://127.0.0.1:{port}" and secret.startswith("whsec_")
    # a signed event reached the app's webhook URL, with the secret the command was given (STRIPE.md §1.6)
    assert received, result.stderr
    signature, body = received[0]
    parts = dict(p.split("=", 1) for p in signature.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected)
    assert not _answers(port), "localstripe still running after the command ended"
    assert "localstripe stopped" in result.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("how", "code"), [("SIGTERM", 143), ("Ctrl-C", None)])
def test_a_stop_ends_localstripe_and_everything_the_command_started(tmp_path: Path, how: str,
                                                                    code: int | None) -> None:
    # `make run` stopped: localstripe, make and what make started (the seed, gunicorn) all end
    port = _free_port()
    pidfile = tmp_path / "grandchild.pid"
    grandchild = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    launcher = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "devtools.with_localstripe", "--port", str(port), "--",
         "sh", "-c", f'{sys.executable} -c "{grandchild}"; true'],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)  # its own group, as a terminal's foreground job is
    try:
        deadline = time.monotonic() + 60
        while not (_answers(port) and pidfile.exists() and pidfile.read_text()):
            assert launcher.poll() is None and time.monotonic() < deadline, "never started"
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        if how == "SIGTERM":
            os.kill(launcher.pid, signal.SIGTERM)
        else:  # the terminal sends SIGINT to its foreground process group
            os.killpg(launcher.pid, signal.SIGINT)
        returned = launcher.wait(timeout=60)
        if code is not None:
            assert returned == code
        assert not _answers(port)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the command's own child outlived the stop"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        assert launcher.stderr is not None
        launcher.stderr.close()


def test_the_launcher_leaves_real_stripe_alone() -> None:
    port = _free_port()
    result = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "devtools.with_localstripe", "--port", str(port), "--", sys.executable, "-c",
         "import os; print(os.environ.get('STRIPE_API_BASE', 'unset'))"],
        cwd=ROOT, env={**_env(), "STRIPE_SECRET_KEY": "sk_test_real_account"}, capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "unset"
    assert "not started" in result.stderr and not _answers(port)


def _serve(port: int, store: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "devtools.localstripe_server", str(port), "--store", str(store)],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _answers(port):
        assert server.poll() is None and time.monotonic() < deadline, "localstripe never answered"
        time.sleep(0.1)
    return server


def _stripe(port: int, method: str, path: str, form: dict[str, str] | None = None) -> dict[str, object]:
    import json
    import urllib.parse

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=urllib.parse.urlencode(form).encode() if form is not None else None,
        headers={"Authorization": "Bearer sk_test_localstripe"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return dict(json.loads(response.read()))


def test_with_a_store_a_restarted_localstripe_still_knows_the_ids_the_app_saved(tmp_path: Path) -> None:
    # make run keeps var/localstripe.pickle beside the database, so the cus_/pm_/pi_/acct_ ids it holds stay valid
    store, port = tmp_path / "localstripe.pickle", _free_port()
    server = _serve(port, store)
    try:
        customer = _stripe(port, "POST", "/v1/customers", {"email": "demo@example.com"})
        intent = _stripe(port, "POST", "/v1/payment_intents", {
            "amount": "10500", "currency": "aed", "customer": str(customer["id"]), "payment_method": "pm_card_visa",
            "allowed_payment_method_types[]": "card", "confirm": "true"})
        account = _stripe(port, "POST", "/v1/accounts", {"type": "express", "country": "AE"})
        _stripe(port, "POST", "/v1/account_links", {"account": str(account["id"]), "type": "account_onboarding",
                                                     "refresh_url": "http://x.test/", "return_url": "http://x.test/"})
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert store.exists() and (store.stat().st_mode & 0o777) == 0o600
    server = _serve(port, store)
    try:
        assert _stripe(port, "GET", f"/v1/customers/{customer['id']}")["email"] == "demo@example.com"
        assert _stripe(port, "GET", f"/v1/payment_intents/{intent['id']}")["status"] == "succeeded"
        assert _stripe(port, "GET", f"/v1/accounts/{account['id']}")["payouts_enabled"] is False
    finally:
        server.terminate()
        server.wait(timeout=10)
