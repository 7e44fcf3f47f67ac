"""Errors raised by the crypto layer.

``DecryptionFailed`` is the only error a reader of encrypted data ever sees, whatever went wrong
(tampered or truncated ciphertext, a blob moved to another owner or kind, an unknown or retired master
key, an unknown format version). The API shows it as 410 ``document_unavailable`` with no detail; the
internal ``reason`` is for the alert and the log only and is never put in the response.
"""

from __future__ import annotations

from marketplace.errors import AppError


class DecryptionFailed(AppError):
    """Authenticated decryption failed; fail closed and raise an alert."""

    status = 410
    code = "document_unavailable"
    message = "This document is not available."

    def __init__(self, reason: str = "auth_failed") -> None:
        super().__init__()
        #: internal cause for alerts and logs: auth_failed, malformed, unknown_version,
        #: unknown_master_key, retired_master_key. Never sent to the client.
        self.reason = reason


class KeyRingError(Exception):
    """The key ring is missing, malformed, unsafe (file readable by others) or misused."""


class UnknownMasterKey(LookupError):
    """``KeyRing.get`` was asked for a key id the ring has never held."""
