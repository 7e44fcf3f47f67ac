"""Envelope encryption of face images and documents (ARCHITECTURE.md, "Face data and documents").

Each user has one 256-bit *data key* (:func:`new_data_key`). It is stored only wrapped by the active
master key (:func:`wrap_data_key`, AES-256-GCM, bound to the owner and the master key id), in a key store
kept apart from the blobs and the main database. Each blob is sealed under its owner's data key with a
fresh 96-bit nonce and its :class:`BlobContext` (owner, kind, blob id) as associated data, so a blob
copied to another user's row, relabelled as another kind, flipped by one bit or truncated does not
decrypt (CR-02). Master-key rotation re-wraps the data keys only (:func:`rewrap`); blob ciphertext is
never touched (CR-04). Destroying a data key crypto-shreds every copy of its blobs (see ``shred``).

Blob envelope, format 1::

    version (1 byte, 0x01) || nonce (12 bytes) || ciphertext || tag (16 bytes)

Performance (PERFORMANCE.md): the envelope is written by one ``AESGCM.encrypt_into`` call into a single
preallocated buffer, so a 2 MB blob costs one 2 MB allocation and no copy; concatenating the header and
the ciphertext costs a second large allocation and a copy, which measured about 10x slower at 512 KB
and 2 MB because of page faults. That is why :func:`encrypt_blob` returns the ``bytearray`` it filled
(turning it into ``bytes`` would copy it again). ``*_into`` variants let a caller reuse its own buffer.
Each call also pays a fixed 3-6 µs (key setup, a fresh nonce, the AAD): noise at 512 KB and up, about a
third of the cipher time at 64 KB (bench/bench_crypto.py).

Small secrets (TOTP seeds, KYC metadata fields) use :func:`encrypt_field` directly under the master
key, with the key id inside the token so rotation can re-encrypt them (:func:`reencrypt_field`).
Small values that must die with a data key (a customer's identity numbers, an audit month's client
addresses) use :func:`encrypt_value` under that data key instead, bound to (owner, field): destroying
the data key makes them unreadable together with the owner's blobs, and master-key rotation never
touches them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from marketplace.crypto._aead import KEY_SIZE, NONCE_SIZE, TAG_SIZE, BytesLike, encode_aad, open_sealed, seal
from marketplace.crypto.errors import DecryptionFailed
from marketplace.crypto.keyring import MasterKeyProvider

ENVELOPE_VERSION = 1
HEADER_SIZE = 1 + NONCE_SIZE
OVERHEAD = HEADER_SIZE + TAG_SIZE
FIELD_VERSION = 1
VALUE_VERSION = 1


# -- data keys ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key sealed under a master key: store ``key_id`` in its own (indexed) column so the
    re-wrap job can find every key still on an old master key."""

    key_id: str
    blob: bytes = field(repr=False)


def new_data_key() -> bytes:
    """A fresh 256-bit data key. Keep it only in memory; store it wrapped."""
    return secrets.token_bytes(KEY_SIZE)


def _data_key_context(owner: str) -> bytes:
    return encode_aad("data-key", owner)


def wrap_data_key(ring: MasterKeyProvider, data_key: bytes, *, owner: str) -> WrappedKey:
    """Seal ``data_key`` under the active master key, bound to ``owner`` (and, by the ring, to the
    master key id)."""
    _check_data_key(data_key)
    key_id, blob = ring.seal(data_key, context=_data_key_context(owner))
    return WrappedKey(key_id, blob)


def unwrap_data_key(ring: MasterKeyProvider, wrapped: WrappedKey, *, owner: str) -> bytes:
    """The data key; ``DecryptionFailed`` if it was tampered with, belongs to another owner, or its
    master key is unknown or retired."""
    data_key = ring.open(wrapped.key_id, wrapped.blob, context=_data_key_context(owner))
    if len(data_key) != KEY_SIZE:
        raise DecryptionFailed("malformed")
    return data_key


def rewrap(ring: MasterKeyProvider, wrapped: WrappedKey, *, owner: str) -> WrappedKey:
    """Re-seal a data key under the active master key. Returns ``wrapped`` itself when it is already
    there, so a re-wrap job that was interrupted can simply run again."""
    if wrapped.key_id == ring.active_key_id:
        return wrapped
    return wrap_data_key(ring, unwrap_data_key(ring, wrapped, owner=owner), owner=owner)


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes) or len(data_key) != KEY_SIZE:
        raise ValueError(f"a data key is {KEY_SIZE} bytes")


# -- blobs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlobContext:
    """What a blob is bound to: its owner (user public id), kind (``selfie``, ``licence_front`` ...)
    and its own id. Decrypting under any other context fails."""

    owner: str
    kind: str
    blob_id: str

    def __post_init__(self) -> None:
        for name in ("owner", "kind", "blob_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"BlobContext.{name} must be a non-empty string")

    def aad(self) -> bytes:
        """Canonical associated data: format version, label and length-prefixed fields."""
        return encode_aad("blob", self.owner, self.kind, self.blob_id)


def sealed_size(plaintext_size: int) -> int:
    """Envelope size for a plaintext of ``plaintext_size`` bytes."""
    return plaintext_size + OVERHEAD


def opened_size(envelope_size: int) -> int:
    """Plaintext size held by an envelope of ``envelope_size`` bytes (negative if malformed)."""
    return envelope_size - OVERHEAD


def encrypt_blob_into(
    data_key: bytes, plaintext: BytesLike, ctx: BlobContext, out: bytearray | memoryview
) -> int:
    """Write the envelope of ``plaintext`` into the start of ``out`` and return its length
    (``sealed_size(len(plaintext))``). ``out`` may be larger: a buffer the caller reuses."""
    size = sealed_size(_nbytes(plaintext))
    view = memoryview(out)
    if view.nbytes < size:
        raise ValueError("output buffer too small for the envelope")
    _seal_into(data_key, plaintext, ctx, view[:size])
    return size


def encrypt_blob(data_key: bytes, plaintext: BytesLike, ctx: BlobContext) -> bytearray:
    """The envelope of ``plaintext`` (``version || nonce || ciphertext || tag``) in one new buffer."""
    out = bytearray(_nbytes(plaintext) + OVERHEAD)
    _seal_into(data_key, plaintext, ctx, memoryview(out))
    return out


def _nbytes(data: BytesLike) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


def _seal_into(data_key: bytes, plaintext: BytesLike, ctx: BlobContext, view: memoryview) -> None:
    # the hot path: one key setup, one nonce, one AAD, one pass of the cipher straight into ``view``
    _check_data_key(data_key)
    nonce = os.urandom(NONCE_SIZE)
    view[0] = ENVELOPE_VERSION
    view[1:HEADER_SIZE] = nonce
    AESGCM(data_key).encrypt_into(nonce, plaintext, ctx.aad(), view[HEADER_SIZE:])


def _open_envelope(data_key: bytes, envelope: BytesLike) -> tuple[AESGCM, memoryview]:
    view = memoryview(envelope)
    if view.nbytes < OVERHEAD:
        raise DecryptionFailed("malformed")
    if view[0] != ENVELOPE_VERSION:
        raise DecryptionFailed("unknown_version")
    if not isinstance(data_key, bytes) or len(data_key) != KEY_SIZE:
        raise DecryptionFailed("malformed")
    return AESGCM(data_key), view


def decrypt_blob(data_key: bytes, envelope: BytesLike, ctx: BlobContext) -> bytes:
    """The plaintext, or ``DecryptionFailed`` (tampered, truncated, wrong key or wrong context)."""
    aead, view = _open_envelope(data_key, envelope)
    try:
        return aead.decrypt(view[1:HEADER_SIZE], view[HEADER_SIZE:], ctx.aad())
    except InvalidTag:
        raise DecryptionFailed("auth_failed") from None


def decrypt_blob_into(
    data_key: bytes, envelope: BytesLike, ctx: BlobContext, out: bytearray | memoryview
) -> int:
    """Decrypt into ``out`` (at least ``opened_size(len(envelope))`` bytes) and return the plaintext
    length. On failure ``out`` is zeroed: the cipher writes unauthenticated plaintext before it checks
    the tag, and that must not survive in a reused buffer."""
    aead, view = _open_envelope(data_key, envelope)
    size = opened_size(view.nbytes)
    target = memoryview(out)
    if target.nbytes < size:
        raise ValueError("output buffer too small for the plaintext")
    target = target[:size]
    try:
        aead.decrypt_into(view[1:HEADER_SIZE], view[HEADER_SIZE:], ctx.aad(), target)
    except InvalidTag:
        target[:] = bytes(size)
        raise DecryptionFailed("auth_failed") from None
    return size


# -- small fields under the master key ------------------------------------------------------------


def _field_context(aad: bytes) -> bytes:
    return encode_aad("field", aad)


def encrypt_field(ring: MasterKeyProvider, plaintext: BytesLike, *, aad: bytes) -> bytes:
    """Token ``version || len(key_id) || key_id || sealed`` for a small secret, bound to ``aad``
    (e.g. ``b"totp:" + user public id``)."""
    key_id, sealed = ring.seal(plaintext, context=_field_context(aad))
    raw_id = key_id.encode("utf-8")
    if len(raw_id) > 255:
        raise ValueError("master key id longer than 255 bytes")
    return bytes((FIELD_VERSION, len(raw_id))) + raw_id + sealed


def field_key_id(token: BytesLike) -> str:
    """The master key id a field token was sealed under (for the rotation job)."""
    return _split_field(token)[0]


def _split_field(token: BytesLike) -> tuple[str, memoryview]:
    view = memoryview(token)
    if view.nbytes < 2:
        raise DecryptionFailed("malformed")
    if view[0] != FIELD_VERSION:
        raise DecryptionFailed("unknown_version")
    end = 2 + view[1]
    if view.nbytes <= end:
        raise DecryptionFailed("malformed")
    try:
        key_id = bytes(view[2:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionFailed("malformed") from None
    return key_id, view[end:]


def decrypt_field(ring: MasterKeyProvider, token: BytesLike, *, aad: bytes) -> bytes:
    key_id, sealed = _split_field(token)
    return ring.open(key_id, sealed, context=_field_context(aad))


def reencrypt_field(ring: MasterKeyProvider, token: bytes, *, aad: bytes) -> bytes:
    """Re-seal a field token under the active master key; returns ``token`` unchanged if it is
    already there (safe to rerun)."""
    if field_key_id(token) == ring.active_key_id:
        return token
    return encrypt_field(ring, decrypt_field(ring, token, aad=aad), aad=aad)


# -- small values under a data key ------------------------------------------------------------------


def _value_context(owner: str, field: str) -> bytes:
    if not owner or not field:
        raise ValueError("a sealed value needs an owner and a field name")
    return encode_aad("value", owner, field)


def encrypt_value(data_key: bytes, plaintext: BytesLike, *, owner: str, field: str) -> bytes:
    """Token ``version || nonce || ciphertext || tag`` for a small value under ``owner``'s data key,
    bound to ``(owner, field)``: moved to another owner's row or another column, it does not decrypt."""
    _check_data_key(data_key)
    return bytes((VALUE_VERSION,)) + seal(data_key, plaintext, _value_context(owner, field))


def decrypt_value(data_key: bytes, token: BytesLike, *, owner: str, field: str) -> bytes:
    """The value, or ``DecryptionFailed`` (tampered, wrong key, other owner or field)."""
    view = memoryview(token)
    if view.nbytes < 1:
        raise DecryptionFailed("malformed")
    if view[0] != VALUE_VERSION:
        raise DecryptionFailed("unknown_version")
    if not isinstance(data_key, bytes) or len(data_key) != KEY_SIZE:
        raise DecryptionFailed("malformed")
    return open_sealed(data_key, view[1:], _value_context(owner, field))
