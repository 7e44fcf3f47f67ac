"""Every key and every cipher call: the only package that imports ``cryptography``.

- ``keyring``: master keys (``KeyRing`` from a 0600 file or an env value; ``MasterKeyProvider`` for a KMS)
- ``envelope``: per-user data keys wrapped by the master key; AES-256-GCM blob envelopes bound to
  (owner, kind, blob id); small encrypted fields and values; rotation helpers
- ``shred``: crypto-shredding and the destroyed-key log replayed after restores
"""

from marketplace.crypto.envelope import (
    ENVELOPE_VERSION,
    HEADER_SIZE,
    OVERHEAD,
    BlobContext,
    WrappedKey,
    decrypt_blob,
    decrypt_blob_into,
    decrypt_field,
    decrypt_value,
    encrypt_blob,
    encrypt_blob_into,
    encrypt_field,
    encrypt_value,
    field_key_id,
    new_data_key,
    opened_size,
    reencrypt_field,
    rewrap,
    sealed_size,
    unwrap_data_key,
    wrap_data_key,
)
from marketplace.crypto.errors import DecryptionFailed, KeyRingError, UnknownMasterKey
from marketplace.crypto.keyring import KeyRing, KeyStatus, MasterKey, MasterKeyProvider
from marketplace.crypto.shred import DestroyedKey, DestroyedKeyLog, shred_data_key

__all__ = [
    "ENVELOPE_VERSION",
    "HEADER_SIZE",
    "OVERHEAD",
    "BlobContext",
    "DecryptionFailed",
    "DestroyedKey",
    "DestroyedKeyLog",
    "KeyRing",
    "KeyRingError",
    "KeyStatus",
    "MasterKey",
    "MasterKeyProvider",
    "UnknownMasterKey",
    "WrappedKey",
    "decrypt_blob",
    "decrypt_blob_into",
    "decrypt_field",
    "decrypt_value",
    "encrypt_blob",
    "encrypt_blob_into",
    "encrypt_field",
    "encrypt_value",
    "field_key_id",
    "new_data_key",
    "opened_size",
    "reencrypt_field",
    "rewrap",
    "sealed_size",
    "shred_data_key",
    "unwrap_data_key",
    "wrap_data_key",
]
