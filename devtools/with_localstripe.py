"""Run a command with localstripe beside it: what ``make run`` uses to give the demo its Stripe.

    python -m devtools.with_localstripe [--port 8420] [--webhook-url URL] -- COMMAND [ARGS...]

1. Starts ``devtools/localstripe_server.py`` (localstripe 1.15.10 with the same extension the tests use; bound
   to 127.0.0.1 only; in memory, or kept in ``--store PATH`` so a restart still knows the ids the app saved) as a
   child process and waits until it answers.
2. Registers the app's webhook with it (localstripe's ``POST /_config/webhooks/<name>``, with a signing secret),
   so payment events reach ``/api/v1/payments/stripe/webhook`` as they would from Stripe.
3. Runs COMMAND with ``STRIPE_API_BASE`` and ``STRIPE_WEBHOOK_SECRET`` set to match, and returns its exit code.
4. Stops localstripe (by its pid) when COMMAND ends, on Ctrl-C and on SIGTERM. COMMAND runs in its own process
   group, and Ctrl-C or SIGTERM is passed on to that whole group (make, the seed, gunicorn and its workers).

When ``STRIPE_SECRET_KEY`` is set (a real Stripe test or live key), nothing is started: COMMAND runs as is.
Standard library only: it runs before the app is importable and never imports localstripe itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import FrameType
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 8420  # marketplace/config.py: the default STRIPE_API_BASE outside production
DEMO_SECRET_KEY = "sk_test_localstripe"  # marketplace/config.py: the key used when STRIPE_SECRET_KEY is empty
DEMO_WEBHOOK_SECRET = "whsec_demo_localstripe_" + "0" * 16  # local demo only; never a real Stripe secret
WEBHOOK_NAME = "carejar-demo"
START_TIMEOUT = 30.0


class Stopped(Exception):
    """SIGTERM arrived: unwind so the ``finally`` stops localstripe."""


def _answers(base_url: str) -> bool:
    request = urllib.request.Request(  # noqa: S310 - our loopback child
        f"{base_url}/v1/customers", headers={"Authorization": f"Bearer {DEMO_SECRET_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 - our loopback child
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def spawn(port: int, log: IO[bytes], store: str | None = None) -> subprocess.Popen[bytes]:
    """localstripe with the extension on 127.0.0.1:port (refused if something already answers there)."""
    base_url = f"http://127.0.0.1:{port}"
    if _answers(base_url):
        raise RuntimeError(f"something already answers on {base_url}: stop it (or set STRIPE_API_BASE and "
                           f"run the app yourself)")
    return subprocess.Popen(
        [sys.executable, "-m", "devtools.localstripe_server", str(port), *(["--store", store] if store else [])],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        stdout=subprocess.DEVNULL, stderr=log)


def wait_ready(process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
    """Until it answers; raises if it exits or does not answer in time."""
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"localstripe exited with {process.returncode}: "
                               f"{log.read().decode(errors='replace')[-2000:]}")
        if _answers(base_url):
            return
        time.sleep(0.05)
    raise RuntimeError(f"localstripe did not answer on {base_url} within {START_TIMEOUT} s")


def register_webhook(port: int, url: str, secret: str) -> None:
    """localstripe signs and POSTs every event to ``url`` with ``secret`` (as a Stripe webhook endpoint)."""
    data = urllib.parse.urlencode({"url": url, "secret": secret}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_config/webhooks/{WEBHOOK_NAME}", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our loopback child
        if response.status != 200:
            raise RuntimeError(f"localstripe refused the webhook registration: {response.status}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the child we started, by its pid (never by name)."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def _stop_group(child: subprocess.Popen[bytes], first: signal.Signals) -> int:
    """Signal the command's process group (ours: it was started in a new session), then SIGKILL after 30 s."""
    for sig, wait in ((first, 30.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:  # the group is gone already
            break
        try:
            child.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    code = child.wait()
    with contextlib.suppress(ProcessLookupError):  # what the command left in its group (a shell's orphan)
        os.killpg(child.pid, signal.SIGTERM)
    return code


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.with_localstripe", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--webhook-url", default="http://127.0.0.1:5000/api/v1/payments/stripe/webhook")
    parser.add_argument("--store", help="keep localstripe's data in this file across runs (make run: "
                                        "var/localstripe.pickle, next to the database that holds its ids)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    if os.environ.get("STRIPE_SECRET_KEY"):
        print("with_localstripe: STRIPE_SECRET_KEY is set, so Stripe itself is used; localstripe not started",
              file=sys.stderr)
        return subprocess.call(command)
    signal.signal(signal.SIGTERM, _on_sigterm)
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET") or DEMO_WEBHOOK_SECRET
    base_url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "STRIPE_API_BASE": base_url, "STRIPE_WEBHOOK_SECRET": secret}
    child: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryFile() as log:
        process = spawn(args.port, log, args.store)
        try:
            wait_ready(process, args.port, log)
            register_webhook(args.port, args.webhook_url, secret)
            print(f"with_localstripe: localstripe on {base_url} (pid {process.pid}), webhooks to {args.webhook_url}",
                  file=sys.stderr, flush=True)
            # its own process group, so a stop reaches everything it started (make -> flask, gunicorn workers)
            child = subprocess.Popen(command, env=env, start_new_session=True)
            return child.wait()
        except KeyboardInterrupt:  # Ctrl-C: pass it on to the command's group and let it finish exiting
            return _stop_group(child, signal.SIGINT) if child is not None else 130
        except Stopped:
            if child is not None:
                _stop_group(child, signal.SIGTERM)
            return 143
        finally:
            stop(process)
            print("with_localstripe: localstripe stopped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
