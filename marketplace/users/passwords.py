"""Password hashing (argon2id) in a bounded pool, and the password policy.

One default argon2 verification costs about 250 ms of CPU (as much as ~500 bare requests). Run on the
request threads without a bound, eight concurrent logins took every thread of both workers and ping fell
from ~2,500 to 16 requests/s (issue 7 item 16). Hashes therefore run on ``PASSWORD_HASH_WORKERS`` (1)
thread per process, at a lower CPU priority, with at most ``PASSWORD_HASH_WAITING`` (1) more sign-ins
waiting: with gunicorn's 4 threads per worker, at least two stay free for other requests. A sign-in that
finds the pool full, or waits longer than ``PASSWORD_HASH_WAIT_SECONDS``, gets ``503 service_unavailable``
with ``Retry-After`` at once. argon2-cffi releases the GIL while hashing, so the pool thread does not
stall the others.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import lru_cache
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import current_app

from marketplace.errors import ServiceUnavailable, Unprocessable

T = TypeVar("T")
# CFS weight of nice 5 is about a third of nice 0's: requests go first, logins still progress under load
HASH_THREAD_NICENESS = 5


class HashingBusy(ServiceUnavailable):
    message = "Too many sign-ins at once. Try again in a moment."


class HashPool:
    """A few hashing threads and a bounded number of waiters; everyone else is refused at once."""

    def __init__(self, workers: int, waiting: int, wait_seconds: float) -> None:
        self.workers, self.waiting, self.wait_seconds = workers, waiting, wait_seconds
        self._admission = threading.BoundedSemaphore(workers + waiting)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2",
                                            initializer=_lower_priority)

    def run(self, func: Callable[..., T], *args: object) -> T:
        if not self._admission.acquire(blocking=False):
            raise HashingBusy(headers={"Retry-After": "1"})
        try:
            future: Future[T] = self._executor.submit(func, *args)
        except BaseException:
            self._admission.release()
            raise
        # the slot is freed when the hash ends, not when the caller stops waiting: a caller that timed out
        # must not let a new one in while its hash still holds the thread
        future.add_done_callback(lambda _done: self._admission.release())
        try:
            return future.result(timeout=self.wait_seconds)
        except FutureTimeout:
            future.cancel()  # not started yet: never hash for a caller who has gone (frees the slot too)
            raise HashingBusy(headers={"Retry-After": "1"}) from None


def _lower_priority() -> None:
    # Linux niceness is per thread (and inherited by argon2's lane threads): requests waiting for a CPU run
    # before hashing does, so a burst of logins slows logins rather than everything else
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: the pool bound still holds
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


_pools: dict[tuple[int, int, int, float], HashPool] = {}
_pools_lock = threading.Lock()


def pool() -> HashPool:
    """This process's pool (a forked worker builds its own: threads do not survive a fork)."""
    settings = current_app.config["SETTINGS"]
    key = (os.getpid(), settings.password_hash_workers, settings.password_hash_waiting,
           settings.password_hash_wait.total_seconds())
    found = _pools.get(key)
    if found is None:
        with _pools_lock:
            found = _pools.get(key)
            if found is None:
                found = _pools[key] = HashPool(*key[1:])
    return found


class WeakPassword(Unprocessable):
    code = "weak_password"
    message = "The password does not meet the password policy."


MIN_LENGTH = 12
MAX_LENGTH = 128
# A short list of the most common passwords that pass the length rule; a real deployment can extend it.
_COMMON = frozenset(
    {
        "password1234", "123456789012", "qwertyuiop12", "iloveyou1234", "password123!", "welcome12345",
        "administrator", "letmein12345", "passw0rd1234", "qwerty123456", "1q2w3e4r5t6y", "abc123456789",
        "changeme1234", "aaaaaaaaaaaa", "carrental123", "dubai1234567", "password12345",
    }
)

@lru_cache(maxsize=4)
def _hasher(profile: str) -> PasswordHasher:
    if profile == "fast":
        # Test-only profile: same algorithm (argon2id), tiny cost so the suite runs quickly.
        return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return PasswordHasher()  # argon2-cffi defaults (RFC 9106 low-memory profile)


def hasher() -> PasswordHasher:
    return _hasher(current_app.config.get("PASSWORD_HASH_PROFILE", "default"))


def hash_password(password: str) -> str:
    return pool().run(hasher().hash, password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-work check: an unknown account still costs one hash verification (no enumeration)."""
    target = stored_hash or _dummy_hash()
    try:
        ok = pool().run(hasher().verify, target, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and stored_hash is not None


def needs_rehash(stored_hash: str) -> bool:
    return hasher().check_needs_rehash(stored_hash)


def _dummy_hash() -> str:
    profile = current_app.config.get("PASSWORD_HASH_PROFILE", "default")
    return _dummy_for(profile)


@lru_cache(maxsize=4)
def _dummy_for(profile: str) -> str:
    # once per process, at the first unknown account: off the pool, since it is not a request's own work
    return _hasher(profile).hash("not-a-real-password-for-timing-equality")


def check_policy(password: str, *, email: str | None = None, name: str | None = None) -> None:
    problems: list[str] = []
    if len(password) < MIN_LENGTH:
        problems.append(f"at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        problems.append(f"at most {MAX_LENGTH} characters")
    if len(set(password)) < 5:
        problems.append("at least 5 different characters")
    lowered = password.lower()
    if lowered in _COMMON:
        problems.append("not a commonly used password")
    if email:
        local = email.split("@", 1)[0].lower()
        if len(local) >= 4 and local in lowered:
            problems.append("must not contain your e-mail address")
    if name:
        for part in name.lower().split():
            if len(part) >= 4 and part in lowered:
                problems.append("must not contain your name")
                break
    if problems:
        raise WeakPassword(details={"fields": {"password": problems}})
