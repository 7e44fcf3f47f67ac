"""A server killed mid-upload leaves no ciphertext behind for good (issue 7 item 6).

The app runs under gunicorn in a subprocess, on a scratch database, key ring and blob store of this test's own
(the session's SQLite file is not shared with processes that get killed: another test reads that file with
plain open/close, which drops this process's POSIX locks on it, and a subprocess closing its connection could
then take itself for the last one and remove the WAL under us). A test-only pause
(``MARKETPLACE_TEST_PAUSE_AFTER_BLOB_WRITE``, see ``vault._test_pause_after_write``; honoured only while a file
``armed`` exists in the directory it names, and never in production) holds the upload right after the
ciphertext file is written and before its row commits, and tells the test the key through a file. The test
SIGKILLs the server's process group there, then runs the real sweeper (``flask jobs sweeper --once``) with the
grace period moved to zero, and checks that the orphan is gone and the legitimate blob is untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select

from marketplace.extensions import db
from marketplace.storage import LocalBlobStore
from marketplace.vault import service as vault
from marketplace.vault.models import Blob
from tests.factories import auth_headers, make_customer
from tests.kyc.helpers import noisy_photo
from tests.live_server import ROOT, gunicorn_server, server_env


def _upload(url: str, headers: dict[str, str], seed: int) -> requests.Response:
    return requests.post(
        f"{url}/api/v1/me/kyc/documents", headers=headers, data={"kind": "id_front"},
        files={"image": ("id.jpg", noisy_photo(seed=seed), "image/jpeg")}, timeout=60,
    )


@pytest.fixture
def scratch_overrides(app_overrides: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    var = tmp_path / "var"
    overrides = {**app_overrides, "VAR_DIR": str(var), "KEYRING_PATH": str(var / "keyring.json"),
                 "BLOB_STORE_URL": f"file://{var / 'blobs'}", "JOBS_MODE": "sync", "REDIS_URL": None}
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield {**overrides, "DATABASE_URL": f"sqlite:///{tmp_path / 'crash.db'}"}
        return
    from tests.pg import temporary_database

    with temporary_database(base, f"cj_crash_{os.getpid()}") as url:
        yield {**overrides, "DATABASE_URL": url}


@pytest.fixture
def scratch_app(scratch_overrides: dict[str, Any]) -> Iterator[Flask]:
    from flask_migrate import upgrade

    from marketplace import create_app

    scratch = create_app(scratch_overrides, start_background=False)
    scratch.config["TESTING"] = True
    with scratch.app_context():
        upgrade()
    try:
        yield scratch
    finally:
        with scratch.app_context():
            db.session.remove()
            db.engine.dispose()


def test_killing_the_server_mid_upload_leaves_no_orphan_after_the_sweep(  # issue 7 item 6
    scratch_app: Flask, scratch_overrides: dict[str, Any], tmp_path: Path
) -> None:
    app = scratch_app
    control = tmp_path / "pause"
    control.mkdir()
    # the server may reconcile on its own clock; its default grace period keeps it off this fresh orphan
    env = server_env(scratch_overrides, {vault.PAUSE_ENV: str(control), "BLOB_RECONCILE_MINUTES": "60"})
    with app.app_context():
        person = make_customer()
        headers = auth_headers(app.test_client(), person)
        store = vault.blob_store()
        assert isinstance(store, LocalBlobStore)

    with gunicorn_server(env, tmp_path) as server:
        first = _upload(server.url, headers, seed=1)
        assert first.status_code == 201, first.text
        (control / "armed").touch()
        answers: list[Any] = []
        request = threading.Thread(target=lambda: answers.append(_try_upload(server.url, headers)), daemon=True)
        request.start()
        deadline = time.monotonic() + 30
        while not (control / "written").exists():
            assert time.monotonic() < deadline, server.log.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(0.1)  # let the hook finish writing the key
        orphan_key = (control / "written").read_text()
        server.kill()  # SIGKILL master and worker while the upload waits between the file and the commit
        request.join(timeout=30)
    assert answers and answers[0] is None  # the client saw the connection die, not an answer

    with app.app_context():
        legit = db.session.execute(select(Blob).where(Blob.user_id == person.user_id)).scalar_one()
        assert legit.storage_key != orphan_key
        assert db.session.execute(select(Blob).where(Blob.storage_key == orphan_key)).first() is None
        assert store.exists(orphan_key)  # the crash left a file that no row names
        assert store.exists(legit.storage_key)

    sweep = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "jobs", "sweeper", "--once"],
        cwd=ROOT, env={**env, "BLOB_ORPHAN_GRACE_SECONDS": "0", vault.PAUSE_ENV: ""},
        capture_output=True, timeout=120, check=False,
    )
    assert sweep.returncode == 0, sweep.stderr.decode()[-3000:]

    with app.app_context():
        assert not store.exists(orphan_key)
        legit = db.session.execute(select(Blob).where(Blob.user_id == person.user_id)).scalar_one()
        assert store.exists(legit.storage_key)
        assert vault.read(legit).startswith(b"\xff\xd8\xff")  # the legitimate blob still decrypts


def _try_upload(url: str, headers: dict[str, str]) -> int | None:
    try:
        return _upload(url, headers, seed=2).status_code
    except requests.ConnectionError:
        return None


@pytest.fixture(autouse=True)
def _needs_gunicorn() -> None:
    pytest.importorskip("gunicorn", reason="the crash test serves the app with gunicorn")
