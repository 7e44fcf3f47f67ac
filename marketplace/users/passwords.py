"""Password hashing (argon2id) and the password policy."""

from __future__ import annotations

import threading
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import current_app

from marketplace.errors import Unprocessable


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

_lock = threading.Lock()


@lru_cache(maxsize=4)
def _hasher(profile: str) -> PasswordHasher:
    if profile == "fast":
        # Test-only profile: same algorithm (argon2id), tiny cost so the suite runs quickly.
        return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return PasswordHasher()  # argon2-cffi defaults (RFC 9106 low-memory profile)


def hasher() -> PasswordHasher:
    return _hasher(current_app.config.get("PASSWORD_HASH_PROFILE", "default"))


def hash_password(password: str) -> str:
    return hasher().hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-work check: an unknown account still costs one hash verification (no enumeration)."""
    target = stored_hash or _dummy_hash()
    try:
        ok = hasher().verify(target, password)
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
