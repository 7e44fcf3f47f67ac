"""AES-256-GCM primitives shared by the key ring and the envelope layer (private module).

Nonces are 96 random bits per encryption (NIST SP 800-38D §8.2.2). Under one key the collision chance
stays below 2^-32 up to 2^32 encryptions; every key here encrypts far fewer messages than that: a data key
seals one user's handful of blobs, a master key seals one data key per user plus a few small fields.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from marketplace.crypto.errors import DecryptionFailed
from marketplace.storage.base import BytesLike

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
AAD_VERSION = 1
_AAD_VERSION_BYTE = bytes((AAD_VERSION,))


def encode_aad(label: str, *fields: str | bytes) -> bytes:
    """Canonical associated data: a format version byte, then the label and each field as a 4-byte
    big-endian length followed by its bytes (strings as UTF-8).

    Length prefixes make the encoding injective: ``("ab", "c")`` and ``("a", "bc")`` never collide, and
    the label keeps AAD built for one purpose (blob, data key, field) from verifying for another.
    """
    parts = [_AAD_VERSION_BYTE]
    for item in (label, *fields):
        raw = item.encode("utf-8") if isinstance(item, str) else item
        parts += (len(raw).to_bytes(4, "big"), raw)
    return b"".join(parts)


def seal(key: bytes, plaintext: BytesLike, aad: bytes) -> bytes:
    """``nonce || ciphertext || tag`` for small messages (data keys, fields)."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: BytesLike, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; every failure is ``DecryptionFailed``."""
    view = memoryview(sealed)
    if len(view) < NONCE_SIZE + TAG_SIZE:
        raise DecryptionFailed("malformed")
    try:
        return AESGCM(key).decrypt(view[:NONCE_SIZE], view[NONCE_SIZE:], aad)
    except InvalidTag:
        raise DecryptionFailed("auth_failed") from None
