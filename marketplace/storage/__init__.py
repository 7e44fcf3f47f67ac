"""Blob storage: opaque ciphertext under random keys, on the local disk or S3-compatible storage."""

from marketplace.storage.base import (
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    InvalidBlobKey,
    StoredObject,
    check_key,
    new_key,
)
from marketplace.storage.factory import BlobStoreConfigError, blob_store_from_url
from marketplace.storage.local import LocalBlobStore

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "BlobStoreConfigError",
    "BlobStoreError",
    "InvalidBlobKey",
    "LocalBlobStore",
    "StoredObject",
    "blob_store_from_url",
    "check_key",
    "new_key",
]
