"""The blob store interface: opaque bytes under random keys.

A store only ever receives ciphertext: callers encrypt with ``marketplace.crypto.encrypt_blob`` first,
so neither the local disk nor object storage holds a plaintext image (P-08). Keys are generated here
(128 random bits as 32 lowercase hex characters) and never derived from a user's file name (UP-06).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

BytesLike = bytes | bytearray | memoryview

KEY_PATTERN = re.compile(r"[0-9a-f]{32}")


class BlobStoreError(Exception):
    """Base class of storage errors."""


class BlobNotFound(BlobStoreError, LookupError):
    """No blob is stored under this key."""


class InvalidBlobKey(BlobStoreError, ValueError):
    """The key is not one this store generates (wrong format, a path, NUL bytes ...)."""


def new_key() -> str:
    """A fresh random blob key: 32 lowercase hex characters."""
    return secrets.token_hex(16)


def check_key(key: object) -> str:
    """Return ``key`` if it has the generated format, else raise ``InvalidBlobKey``.

    The error message never echoes the key: it may be attacker-controlled.
    """
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
        raise InvalidBlobKey("blob key has the wrong format")
    return key


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One stored blob as a listing sees it: its key and when it was last written (aware, UTC)."""

    key: str
    modified_at: datetime


@runtime_checkable
class BlobStore(Protocol):
    """Where encrypted blobs live. Implementations must be safe to share between threads."""

    def put(self, data: BytesLike) -> str:
        """Store ``data`` under a new random key and return the key."""
        ...

    def put_at(self, key: str, data: BytesLike) -> None:
        """Store ``data`` under ``key`` (a generated key, e.g. when copying between stores),
        replacing any blob already there. The write is atomic: readers see the old or the new blob."""
        ...

    def get(self, key: str) -> bytes:
        """The blob's bytes; ``BlobNotFound`` if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing blob is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def iter_keys(self) -> Iterator[str]:
        """Every stored key, in no particular order (for sweeps, audits and migrations)."""
        ...

    def iter_objects(self) -> Iterator[StoredObject]:
        """Every stored blob with its last write time, in no particular order. The vault's reconciliation
        uses the time to leave alone files that an upload still in flight has just written."""
        ...
