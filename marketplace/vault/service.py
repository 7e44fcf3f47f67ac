"""The only way images are stored and read: encrypt -> blob store, and back.

Callers pass bytes that already went through ``marketplace.images``; nothing here writes plaintext
anywhere. Reading is for policy functions (``kyc.service.open_image`` and friends) that have already
decided the viewer may see the image and written the audit row.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from marketplace.crypto import (
    BlobContext,
    DecryptionFailed,
    WrappedKey,
    decrypt_blob,
    encrypt_blob,
    new_data_key,
    rewrap,
    unwrap_data_key,
    wrap_data_key,
)
from marketplace.crypto.keyring import MasterKeyProvider
from marketplace.crypto.shred import DestroyedKeyLog
from marketplace.extensions import db, utcnow
from marketplace.modelbase import new_public_id
from marketplace.storage.base import BlobNotFound, BlobStore
from marketplace.vault.models import Blob, DataKey

log = logging.getLogger("marketplace.vault")


def ring() -> MasterKeyProvider:
    value: MasterKeyProvider = current_app.extensions["keyring"]
    return value


def blob_store() -> BlobStore:
    store: BlobStore | None = current_app.extensions.get("blob_store")
    if store is None:
        from marketplace.storage.factory import blob_store_from_url

        settings = current_app.config["SETTINGS"]
        store = blob_store_from_url(settings.blob_store_url, base_dir=Path(settings.var_dir))
        current_app.extensions["blob_store"] = store
    return store


def destroyed_key_log() -> DestroyedKeyLog:
    settings = current_app.config["SETTINGS"]
    return DestroyedKeyLog(Path(settings.var_dir) / "destroyed-keys.jsonl")


def _data_key(owner: str, *, create: bool) -> bytes:
    row = db.session.execute(select(DataKey).where(DataKey.owner == owner)).scalar_one_or_none()
    if row is None:
        if not create:
            raise DecryptionFailed()
        key = new_data_key()
        wrapped = wrap_data_key(ring(), key, owner=owner)
        try:
            with db.session.begin_nested():  # two first uploads at once: one key wins, the other reads it
                db.session.add(DataKey(owner=owner, master_key_id=wrapped.key_id, wrapped=wrapped.blob,
                                       created_at=utcnow()))
        except IntegrityError:
            return _data_key(owner, create=False)
        return key
    if row.wrapped is None or row.master_key_id is None:
        raise DecryptionFailed()  # shredded
    return unwrap_data_key(ring(), WrappedKey(row.master_key_id, row.wrapped), owner=owner)


def store(owner: str, kind: str, data: bytes, *, mime: str, width: int, height: int,
          user_id: int | None = None) -> Blob:
    key = _data_key(owner, create=True)
    public_id = new_public_id()
    ciphertext = bytes(encrypt_blob(key, data, BlobContext(owner=owner, kind=kind, blob_id=public_id)))
    storage_key = blob_store().put(ciphertext)
    blob = Blob(public_id=public_id, owner=owner, user_id=user_id, kind=kind, storage_key=storage_key,
                mime=mime, size=len(ciphertext), width=width, height=height, created_at=utcnow())
    db.session.add(blob)
    db.session.flush()
    return blob


def dimensions(blob_id: int) -> tuple[int, int]:
    """Pixel size of a stored image (what a page needs to frame it), without reading the image."""
    blob = db.session.get(Blob, blob_id)
    if blob is None:
        raise BlobNotFound(str(blob_id))
    return blob.width, blob.height


def read(blob: Blob) -> bytes:
    """Decrypt one blob. Any mismatch (swapped row, relabelled kind, tampering) fails closed."""
    if blob.deleted_at is not None:
        raise DecryptionFailed()
    try:
        key = _data_key(blob.owner, create=False)
        envelope = blob_store().get(blob.storage_key)
        return decrypt_blob(key, envelope, BlobContext(owner=blob.owner, kind=blob.kind, blob_id=blob.public_id))
    except (DecryptionFailed, BlobNotFound) as exc:
        log.error("blob failed to decrypt", extra={"event": {"alert": "blob_integrity", "blob": blob.public_id,
                                                             "error": type(exc).__name__}})
        raise DecryptionFailed() from exc


def delete(blob: Blob) -> None:
    """Mark the blob deleted; its ciphertext file goes once that is committed (never before: a rolled-back
    request must not leave a row pointing at a missing file)."""
    from marketplace import jobs

    blob.deleted_at = utcnow()
    db.session.flush()
    jobs.run_after_commit(blob_store().delete, blob.storage_key)


def shred_owner(owner: str) -> None:
    """Crypto-shred: destroy the owner's data key (logged for re-application after restores)."""
    row = db.session.execute(select(DataKey).where(DataKey.owner == owner).with_for_update()).scalar_one_or_none()
    if row is None or row.destroyed_at is not None:
        return
    destroyed_key_log().record(owner=owner, key_ref=str(row.id))
    row.wrapped = None
    row.master_key_id = None
    row.destroyed_at = utcnow()
    for blob in db.session.execute(select(Blob).where(Blob.owner == owner, Blob.deleted_at.is_(None))).scalars():
        delete(blob)
    db.session.flush()


def rewrap_batch(limit: int = 200) -> int:
    """Re-wrap data keys that are not under the active master key; returns how many moved."""
    active = ring().active_key_id
    rows = db.session.execute(
        select(DataKey).where(DataKey.wrapped.is_not(None), DataKey.master_key_id != active)
        .order_by(DataKey.id).limit(limit).with_for_update(skip_locked=True)
    ).scalars().all()
    for row in rows:
        assert row.wrapped is not None and row.master_key_id is not None
        moved = rewrap(ring(), WrappedKey(row.master_key_id, row.wrapped), owner=row.owner)
        row.master_key_id = moved.key_id
        row.wrapped = moved.blob
        row.rewrapped_at = utcnow()
    db.session.flush()
    return len(rows)


def keys_on(master_key_id: str) -> int:
    from sqlalchemy import func

    return int(db.session.execute(
        select(func.count()).select_from(DataKey).where(DataKey.master_key_id == master_key_id)
    ).scalar_one())
