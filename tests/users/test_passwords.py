"""Password hashing runs in a bounded pool (issue 7 item 16), and unknown accounts still cost one hash (AN-04).

No timings here (the bench measures ping under a login burst, bench/bench_logins.py): these tests check
the bound itself, with the pool held busy by a real blocking call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask

from marketplace.users import passwords
from tests.factories import PASSWORD, make_customer

LOGIN = "/api/v1/auth/login"


@pytest.fixture
def small_pool(app: Flask) -> Iterator[passwords.HashPool]:
    """One hashing thread, no waiting room, a short wait: the smallest bound, easy to fill."""
    old = app.config["SETTINGS"]
    app.config["SETTINGS"] = dataclasses.replace(old, password_hash_workers=1, password_hash_waiting=0,
                                                 password_hash_wait=timedelta(seconds=2))
    with app.app_context():
        yield passwords.pool()
    app.config["SETTINGS"] = old


def _occupy(pool: passwords.HashPool) -> tuple[threading.Event, threading.Thread]:
    """Hold the pool's only slot until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(30)

    def caller() -> None:
        # this caller may stop waiting; its work still holds the slot until released
        with contextlib.suppress(passwords.HashingBusy):
            pool.run(hold)

    holder = threading.Thread(target=caller)
    holder.start()
    assert started.wait(10)
    return release, holder


def _once_free(attempt: Any) -> Any:
    """``attempt()`` once the pool has finished the work it held (the slot frees when the hash ends)."""
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            return attempt()
        except passwords.HashingBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_a_full_hashing_pool_answers_503_at_once_and_recovers(app, client, app_ctx, small_pool):  # issue 7 item 16
    person = make_customer()
    release, holder = _occupy(small_pool)
    try:
        busy = client.post(LOGIN, json={"email": person.email, "password": PASSWORD})
        assert busy.status_code == 503, busy.get_json()
        assert busy.get_json()["error"]["code"] == "service_unavailable"
        # 1 s from the pool; Flask-Limiter raises it to the login window's reset on limited routes
        assert busy.headers["Retry-After"].isdigit() and int(busy.headers["Retry-After"]) >= 1
        # a refusal for load is not a wrong password: the account throttle does not count it
        for _ in range(6):
            assert client.post(LOGIN, json={"email": person.email, "password": PASSWORD}).status_code == 503
        assert client.get("/api/v1/ping").status_code == 200  # everything else is served meanwhile
    finally:
        release.set()
        holder.join(10)
    assert _once_free(lambda: small_pool.run(lambda: "free")) == "free"
    assert client.post(LOGIN, json={"email": person.email, "password": PASSWORD}).status_code == 200


def test_a_sign_in_waits_for_a_free_hashing_thread_within_the_bound(app, app_ctx):  # issue 7 item 16
    pool = passwords.HashPool(workers=1, waiting=1, wait_seconds=10)
    release, holder = _occupy(pool)
    answers: list[Any] = []
    waiter = threading.Thread(target=lambda: answers.append(pool.run(lambda: "hashed")))
    waiter.start()
    with pytest.raises(passwords.HashingBusy):  # slot and waiting room are both taken
        pool.run(lambda: "refused")
    release.set()
    holder.join(10)
    waiter.join(10)
    assert answers == ["hashed"]
    assert pool.run(lambda: "again") == "again"


def test_a_waiter_gives_up_after_the_wait_and_its_slot_frees_when_the_hash_ends(app, app_ctx):  # issue 7 item 16
    pool = passwords.HashPool(workers=1, waiting=1, wait_seconds=0.2)
    release, holder = _occupy(pool)
    with pytest.raises(passwords.HashingBusy):
        pool.run(lambda: "too late")  # waited 0.2 s behind the held slot
    release.set()
    holder.join(10)
    assert _once_free(lambda: pool.run(lambda: "next")) == "next"


def test_errors_of_the_hash_reach_the_caller(app, app_ctx):  # issue 7 item 16
    pool = passwords.HashPool(workers=1, waiting=0, wait_seconds=5)

    def boom() -> None:
        raise ValueError("bad hash")

    with pytest.raises(ValueError, match="bad hash"):
        pool.run(boom)
    assert pool.run(lambda: 1) == 1  # the slot came back


def test_unknown_accounts_still_cost_one_verification_through_the_pool(app, client, app_ctx, monkeypatch):  # AN-04
    calls: list[str] = []
    real_verify = PasswordHasher.verify

    def counting_verify(self: PasswordHasher, hash: Any, password: Any) -> Any:
        calls.append(threading.current_thread().name)
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)
    known = make_customer()
    known_answer = client.post(LOGIN, json={"email": known.email, "password": "Wrong-Password-000"})
    unknown_answer = client.post(LOGIN, json={"email": "nobody-here@example.com", "password": "Wrong-Password-000"})
    assert known_answer.status_code == unknown_answer.status_code == 401
    assert known_answer.get_json()["error"]["code"] == unknown_answer.get_json()["error"]["code"]
    assert len(calls) == 2  # one each
    assert all(name.startswith("argon2") for name in calls)  # on the pool's thread, not the request's
