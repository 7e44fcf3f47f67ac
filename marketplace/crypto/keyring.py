"""Master keys: the key ring, and the protocol a KMS can implement instead.

The envelope layer needs only :class:`MasterKeyProvider`: the id of the active key, ``seal`` under it,
and ``open`` under a named key. :class:`KeyRing` implements it with local AES-256-GCM keys held in a
JSON file (the embedded default, ``var/keyring.json``, created 0600 on first run) or in an environment
variable / secret store value (production). A KMS-backed provider would map ``seal``/``open`` onto the
KMS's Encrypt/Decrypt with ``context`` as the encryption context, and never expose key material.

Rotation (CR-04): ``add_key()`` makes a new active key and turns the previous one *retiring* (still used
to open, never to seal); the re-wrap job moves every wrapped data key to the active key
(``envelope.rewrap``); only when no wrapped key names the old id does ``retire()`` drop its secret.
Mutations of a file-backed ring are saved at once. Other processes keep the ring they loaded until they
reload it, so restart (or reload) them after ``add_key`` and before running the re-wrap job.

File format::

    {"format": 1, "keys": [{"id": "mk-2026-11-22-ab12", "status": "active",
                            "created_at": "2026-11-22T04:00:00+00:00", "secret": "<base64 of 32 bytes>"}]}

Retired keys keep their id, status and creation time, but no ``secret``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from marketplace.crypto._aead import KEY_SIZE, BytesLike, encode_aad, open_sealed, seal
from marketplace.crypto.errors import DecryptionFailed, KeyRingError, UnknownMasterKey
from marketplace.storage.local import write_atomic

FILE_FORMAT = 1
SEALED_VERSION = 1
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


class MasterKeyProvider(Protocol):
    """What the envelope layer needs from whatever holds the master keys (this ring, or a KMS)."""

    @property
    def active_key_id(self) -> str:
        """The key new seals go under."""
        ...

    def seal(self, plaintext: BytesLike, *, context: bytes) -> tuple[str, bytes]:
        """Encrypt under the active key; return ``(key_id, sealed)``. The sealed bytes must be bound
        to both ``context`` and the key id."""
        ...

    def open(self, key_id: str, sealed: BytesLike, *, context: bytes) -> bytes:
        """Decrypt with the named key. Any failure (unknown or retired key, wrong context, tampering)
        raises ``DecryptionFailed``."""
        ...


class KeyStatus(StrEnum):
    ACTIVE = "active"  # seals and opens; exactly one per ring
    RETIRING = "retiring"  # opens only, until the re-wrap job has moved everything off it
    RETIRED = "retired"  # key material destroyed


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    secret: bytes | None = field(repr=False)  # None once retired; never in repr or logs
    status: KeyStatus
    created_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or _KEY_ID.fullmatch(self.key_id) is None:
            raise KeyRingError("master key id has the wrong format")
        if self.status is KeyStatus.RETIRED:
            if self.secret is not None:
                raise KeyRingError(f"retired master key {self.key_id} still holds key material")
        elif not isinstance(self.secret, bytes) or len(self.secret) != KEY_SIZE:
            raise KeyRingError(f"master key {self.key_id} must be {KEY_SIZE} bytes")
        if self.created_at.tzinfo is None:
            raise KeyRingError("created_at must be timezone-aware")


def _new_key_id(taken: set[str], now: datetime) -> str:
    while True:
        key_id = f"mk-{now:%Y-%m-%d}-{secrets.token_hex(2)}"
        if key_id not in taken:
            return key_id


class KeyRing:
    """Local master keys; implements :class:`MasterKeyProvider`. Thread-safe."""

    def __init__(self, keys: list[MasterKey], *, path: Path | None = None) -> None:
        by_id: dict[str, MasterKey] = {}
        for key in keys:
            if key.key_id in by_id:
                raise KeyRingError(f"duplicate master key id {key.key_id}")
            by_id[key.key_id] = key
        active = [key.key_id for key in keys if key.status is KeyStatus.ACTIVE]
        if len(active) != 1:
            raise KeyRingError(f"a key ring needs exactly one active key, found {len(active)}")
        self._keys = by_id
        self._active_id = active[0]
        self._path = path
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"KeyRing(active={self._active_id!r}, keys={len(self._keys)}, path={self._path!r})"

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def generate(cls, *, path: Path | None = None) -> KeyRing:
        """A new ring with one fresh active key, in memory (nothing is written)."""
        now = datetime.now(UTC)
        key = MasterKey(_new_key_id(set(), now), secrets.token_bytes(KEY_SIZE), KeyStatus.ACTIVE, now)
        return cls([key], path=path)

    @classmethod
    def load(cls, path: Path, *, create: bool) -> KeyRing:
        """Read the ring from ``path``. With ``create=True`` a missing file is created (mode 0600)
        holding one new active key; if another process creates it first, that one is loaded."""
        path = Path(path)
        try:
            text = _read_private(path)
        except FileNotFoundError:
            if not create:
                raise KeyRingError(f"key ring file {path} does not exist") from None
            ring = cls.generate(path=path)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                write_atomic(path, ring.to_json().encode(), overwrite=False)
            except FileExistsError:
                return cls.load(path, create=False)
            return ring
        return cls.from_json(text, path=path)

    @classmethod
    def from_env_value(cls, value: str) -> KeyRing:
        """A ring from an environment variable or secret-store value: the JSON document itself, or
        that document base64-encoded. The ring has no file: ``save()`` refuses."""
        text = value.strip()
        if not text.startswith("{"):
            try:
                text = base64.b64decode(
                    text + "=" * (-len(text) % 4), altchars=b"-_", validate=False
                ).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise KeyRingError("key ring value is neither JSON nor base64 JSON") from None
        return cls.from_json(text)

    @classmethod
    def from_json(cls, text: str, *, path: Path | None = None) -> KeyRing:
        # error messages never quote the input: it holds key material
        try:
            doc = json.loads(text)
        except ValueError:
            raise KeyRingError("key ring is not valid JSON") from None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FILE_FORMAT
            or not isinstance(doc.get("keys"), list)
        ):
            raise KeyRingError(f"key ring must be an object with format {FILE_FORMAT} and a keys list")
        return cls([_key_from_json(item) for item in doc["keys"]], path=path)

    def to_json(self) -> str:
        """The serialised ring, secrets included: write it only to a 0600 file or a secret store."""
        with self._lock:
            keys = [_key_to_json(key) for key in self._keys.values()]
        return json.dumps({"format": FILE_FORMAT, "keys": keys}, indent=2) + "\n"

    # -- reading --------------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def active(self) -> MasterKey:
        with self._lock:
            return self._keys[self._active_id]

    @property
    def active_key_id(self) -> str:
        return self._active_id

    @property
    def keys(self) -> tuple[MasterKey, ...]:
        with self._lock:
            return tuple(sorted(self._keys.values(), key=lambda key: key.created_at))

    def get(self, key_id: str) -> MasterKey:
        """The key with this id, whatever its status; ``UnknownMasterKey`` if the ring never held it."""
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownMasterKey(key_id) from None

    # -- rotation -------------------------------------------------------------------------------

    def add_key(self) -> MasterKey:
        """Create a new active key; the previous active key becomes retiring. Saved at once if the
        ring has a file."""
        with self._lock:
            now = datetime.now(UTC)
            key = MasterKey(
                _new_key_id(set(self._keys), now), secrets.token_bytes(KEY_SIZE), KeyStatus.ACTIVE, now
            )
            previous = self._keys[self._active_id]
            updated = dict(self._keys)
            updated[previous.key_id] = replace(previous, status=KeyStatus.RETIRING)
            updated[key.key_id] = key
            self._commit(updated, key.key_id)
            return key

    def retire(self, key_id: str) -> MasterKey:
        """Destroy a non-active key's material; anything still wrapped under it becomes unreadable.
        Call it only after the re-wrap job reports no wrapped key left on ``key_id``."""
        with self._lock:
            key = self.get(key_id)
            if key.status is KeyStatus.ACTIVE:
                raise KeyRingError("the active key cannot be retired; add a new key first")
            if key.status is KeyStatus.RETIRED:
                return key
            retired = replace(key, secret=None, status=KeyStatus.RETIRED)
            self._commit({**self._keys, key_id: retired}, self._active_id)
            return retired

    def save(self) -> None:
        """Write the ring to its file atomically (temp file in the same directory, fsync, rename)."""
        if self._path is None:
            raise KeyRingError("this key ring has no file (it came from the environment); export to_json()")
        with self._lock:
            write_atomic(self._path, self.to_json().encode())

    def _commit(self, keys: dict[str, MasterKey], active_id: str) -> None:
        previous = (self._keys, self._active_id)
        self._keys, self._active_id = keys, active_id
        if self._path is not None:
            try:
                self.save()
            except BaseException:
                self._keys, self._active_id = previous
                raise

    # -- MasterKeyProvider ----------------------------------------------------------------------

    def seal(self, plaintext: BytesLike, *, context: bytes) -> tuple[str, bytes]:
        key = self.active
        if key.secret is None:  # impossible: MasterKey refuses an active key without material
            raise KeyRingError("the active key has no material")
        sealed = seal(key.secret, plaintext, _sealed_aad(key.key_id, context))
        return key.key_id, bytes((SEALED_VERSION,)) + sealed

    def open(self, key_id: str, sealed: BytesLike, *, context: bytes) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            raise DecryptionFailed("unknown_master_key")
        if key.secret is None:
            raise DecryptionFailed("retired_master_key")
        view = memoryview(sealed)
        if len(view) < 1 or view[0] != SEALED_VERSION:
            raise DecryptionFailed("unknown_version")
        return open_sealed(key.secret, view[1:], _sealed_aad(key_id, context))


def _sealed_aad(key_id: str, context: bytes) -> bytes:
    return encode_aad("master-key", key_id, context)


def _read_private(path: Path) -> str:
    """Read the ring file, refusing one that group or others can read or write."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise KeyRingError(f"key ring {path} is not a regular file")
        if os.name == "posix" and mode & 0o077:
            raise KeyRingError(f"key ring {path} is accessible to group or others; chmod 600 it")
        try:
            return handle.read().decode("utf-8")
        except UnicodeDecodeError:
            raise KeyRingError(f"key ring {path} is not UTF-8 JSON") from None


def _key_from_json(item: Any) -> MasterKey:
    if not isinstance(item, dict):
        raise KeyRingError("each key must be an object")
    try:
        status = KeyStatus(item["status"])
        created_at = datetime.fromisoformat(item["created_at"])
        encoded = item.get("secret")
        secret = None if encoded is None else base64.b64decode(encoded, validate=True)
        return MasterKey(str(item["id"]), secret, status, created_at)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise KeyRingError("a key entry is malformed (id, status, created_at, secret)") from None


def _key_to_json(key: MasterKey) -> dict[str, str]:
    out = {"id": key.key_id, "status": key.status.value, "created_at": key.created_at.isoformat()}
    if key.secret is not None:
        out["secret"] = base64.b64encode(key.secret).decode("ascii")
    return out
