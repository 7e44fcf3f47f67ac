"""The only way images are stored and read: encrypt -> blob store, and back.

Callers pass bytes that already went through ``marketplace.images``; nothing here writes plaintext
anywhere. Reading is for policy functions (``kyc.service.open_image`` and friends) that have already
decided the viewer may see the image and written the audit row.

Files and rows stay in agreement (issue 7 item 6), without ever writing to the database outside the
request's own transaction:

- **Writes.** ``store`` writes the ciphertext under a fresh random key, then adds the row, which commits
  (or not) with the caller's transaction. A crash or a rollback between the two leaves a file that no row
  names. Nothing records that intent up front on purpose: a "pending" row committed on a second connection
  would wait behind the request's own write lock on SQLite (every write request holds it from its first
  statement) and deadlock, and a pending row committed in the request's transaction is no record at all.
  Instead ``reconcile_store`` (run by the sweeper, every ``BLOB_RECONCILE_MINUTES``) lists the store and
  removes every file older than ``BLOB_ORPHAN_GRACE_SECONDS`` that no live row names. The grace period
  must exceed the longest request (gunicorn's timeout is far below the default hour), so a file whose
  upload is still in flight is never taken; after it, a file without a committed row can only be an orphan.
  The listing is the source of truth, so this is correct with one commit at the edge or many, on SQLite
  and PostgreSQL, on the local store and S3.
- **Deletes.** ``delete`` marks the row deleted and, in the same transaction, schedules a durable work item
  (``vault.remove_file``) that removes the file; the file is also removed right after the commit, so it
  goes at once in the usual case. A removal that fails (the store is down, the process dies after the
  commit) is retried by the work item with backoff for weeks, and past that the reconciliation removes it
  too: a file whose row is deleted is no live row's file. The file never goes before the commit, so a
  rolled-back request never leaves a row pointing at a missing file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from marketplace import jobs
from marketplace.crypto import (
    BlobContext,
    DecryptionFailed,
    WrappedKey,
    decrypt_blob,
    decrypt_value,
    encrypt_blob,
    encrypt_value,
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
from marketplace.storage.factory import blob_store_from_url
from marketplace.vault.models import Blob, DataKey

log = logging.getLogger("marketplace.vault")


def ring() -> MasterKeyProvider:
    value: MasterKeyProvider = current_app.extensions["keyring"]
    return value


def blob_store() -> BlobStore:
    store: BlobStore | None = current_app.extensions.get("blob_store")
    if store is None:
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
    _test_pause_after_write(storage_key)
    blob = Blob(public_id=public_id, owner=owner, user_id=user_id, kind=kind, storage_key=storage_key,
                mime=mime, size=len(ciphertext), width=width, height=height, created_at=utcnow())
    db.session.add(blob)
    db.session.flush()
    return blob


def get_blob(blob_id: int) -> Blob | None:
    """One blob row by id (deleted ones too: the caller decides what a deleted blob means)."""
    return db.session.get(Blob, blob_id)


def blob_by_storage_key(storage_key: str) -> Blob | None:
    return db.session.execute(select(Blob).where(Blob.storage_key == storage_key)).scalar_one_or_none()


# A person's own uploads are the blobs under their own data key ("user:..."). Blobs another owner keeps that
# name the person (an agency's inspection photos of their rental) do not count against their upload quota.
_OWN = Blob.owner.startswith("user:")


def uploads_since(user_id: int, since: datetime) -> int:
    """How many blobs a person stored after ``since`` (an upload rate)."""
    return int(db.session.execute(
        select(func.count()).select_from(Blob).where(Blob.user_id == user_id, Blob.created_at > since, _OWN)
    ).scalar_one())


def stored_bytes(user_id: int) -> int:
    """What a person keeps in the vault now (ciphertext bytes, deleted blobs not counted)."""
    return int(db.session.execute(
        select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.user_id == user_id, Blob.deleted_at.is_(None), _OWN)
    ).scalar_one())


def mark_attached(blob_id: int, at: datetime) -> None:
    """A blob is claimed by a row that keeps it: it is no longer an orphan upload to sweep."""
    db.session.execute(update(Blob).where(Blob.id == blob_id, Blob.attached_at.is_(None)).values(attached_at=at))


def unattached_before(cutoff: datetime, *, owner_prefix: str) -> list[Blob]:
    """Live blobs of these owners that nothing claimed and that were stored before ``cutoff``."""
    return list(db.session.execute(
        select(Blob).where(Blob.attached_at.is_(None), Blob.deleted_at.is_(None), Blob.created_at < cutoff,
                           Blob.owner.startswith(owner_prefix))
    ).scalars().all())


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


REMOVE_FILE = "vault.remove_file"
# With the backoff capped at an hour this keeps retrying for about six weeks; the reconciliation is the
# backstop after that.
REMOVE_FILE_ATTEMPTS = 1000
# The durable removal runs a little after the inline one, so in the usual case it finds nothing to do.
REMOVE_FILE_DELAY = timedelta(minutes=1)


def seal_value(owner: str, field: str, value: str) -> bytes:
    """A small value (an identity number) under the owner's data key, bound to (owner, field), so the
    owner's erasure by key destruction makes it unreadable with their blobs."""
    return encrypt_value(_data_key(owner, create=True), value.encode("utf-8"), owner=owner, field=field)


def open_value(owner: str, field: str, token: bytes) -> str:
    """The value sealed by :func:`seal_value`; ``DecryptionFailed`` once the key is destroyed, or if the
    token was moved from another owner or field, or tampered with."""
    try:
        return decrypt_value(_data_key(owner, create=False), token, owner=owner, field=field).decode("utf-8")
    except (DecryptionFailed, UnicodeDecodeError) as exc:
        log.error("sealed value failed to decrypt", extra={"event": {"alert": "value_integrity", "field": field,
                                                                     "error": type(exc).__name__}})
        raise DecryptionFailed() from exc


def delete(blob: Blob) -> None:
    """Mark the blob deleted; its ciphertext file goes once that is committed (never before: a rolled-back
    request must not leave a row pointing at a missing file), and is retried until it is gone."""
    if blob.deleted_at is not None:
        return
    blob.deleted_at = utcnow()
    db.session.flush()
    jobs.schedule(REMOVE_FILE, blob.storage_key, due_at=utcnow() + REMOVE_FILE_DELAY,
                  dedupe_key=f"blob-file:{blob.storage_key}", max_attempts=REMOVE_FILE_ATTEMPTS)
    jobs.run_after_commit(blob_store().delete, blob.storage_key)


@jobs.handler(REMOVE_FILE)
def remove_file(storage_key: str) -> None:
    """Durable work: remove the file of a deleted blob (idempotent; raises, and so is retried, on failure)."""
    live = db.session.execute(
        select(Blob.id).where(Blob.storage_key == storage_key, Blob.deleted_at.is_(None))
    ).first()
    if live is not None:  # never take a live blob's file, whatever the work row says
        log.error("refused to remove the file of a live blob", extra={"event": {"alert": "blob_integrity"}})
        return
    blob_store().delete(storage_key)


# ---- reconciling the store with the rows -----------------------------------------------------------

# A listing that would remove more than this in one run stops there: a store pointed at the wrong database
# loses at most one batch before someone reads the alert.
RECONCILE_MAX_REMOVALS = 1000
_RECONCILE_BATCH = 500


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    listed: int = 0
    removed: int = 0
    temp_removed: int = 0
    skipped: str | None = None


def reconcile_store(*, now: datetime | None = None, grace: timedelta | None = None) -> ReconcileResult:
    """Remove stored files that no live blob row names and that are older than the grace period (the
    leftovers of uploads that crashed or rolled back after the file was written, and of deletions whose
    retries gave up). Read-only on the database; safe to run in several processes at once."""
    settings = current_app.config["SETTINGS"]
    cutoff = (now or utcnow()) - (settings.blob_orphan_grace if grace is None else grace)
    store_ = blob_store()
    if db.session.execute(select(func.count()).select_from(Blob)).scalar_one() == 0:
        # an empty table next to a store full of files means a fresh or wrong database, not orphans
        keys = store_.iter_keys()
        try:
            found = next(keys, None) is not None
        finally:
            close = getattr(keys, "close", None)
            if close is not None:
                close()
        if found:
            log.warning("blob store reconciliation skipped: no blob rows", extra={"event": {"alert": "blob_store"}})
            return ReconcileResult(skipped="no_rows")
        return ReconcileResult()
    temp_removed = 0
    remove_temp = getattr(store_, "remove_stale_temp_files", None)
    if remove_temp is not None:
        temp_removed = remove_temp(cutoff)
    listed = removed = 0
    objects = store_.iter_objects()
    while chunk := list(islice(objects, _RECONCILE_BATCH)):
        listed += len(chunk)
        old = [item.key for item in chunk if item.modified_at < cutoff]
        if not old:
            continue
        live = set(db.session.execute(
            select(Blob.storage_key).where(Blob.storage_key.in_(old), Blob.deleted_at.is_(None))
        ).scalars())
        for key in old:
            if key in live:
                continue
            if removed >= RECONCILE_MAX_REMOVALS:
                log.warning("blob store reconciliation stopped at its removal cap",
                            extra={"event": {"alert": "blob_store", "removed": removed}})
                return ReconcileResult(listed, removed, temp_removed, skipped="cap")
            store_.delete(key)
            removed += 1
    if removed or temp_removed:
        log.info("blob store reconciled", extra={"event": {"listed": listed, "removed": removed,
                                                           "temp_removed": temp_removed}})
    return ReconcileResult(listed, removed, temp_removed)


_last_reconcile: float | None = None


@jobs.periodic
def reconcile_store_periodically() -> None:
    """On the sweeper's clock, but listing the whole store only every ``BLOB_RECONCILE_MINUTES``."""
    global _last_reconcile  # noqa: PLW0603 - one clock per process, like the sweeper's own
    interval = current_app.config["SETTINGS"].blob_reconcile_interval
    if interval is None:
        return
    if _last_reconcile is not None and time.monotonic() - _last_reconcile < interval.total_seconds():
        return
    _last_reconcile = time.monotonic()
    reconcile_store()


# ---- a test-only pause (the crash-mid-upload test kills the server here) -----------------------------

PAUSE_ENV = "MARKETPLACE_TEST_PAUSE_AFTER_BLOB_WRITE"


def _test_pause_after_write(storage_key: str) -> None:
    """With ``MARKETPLACE_TEST_PAUSE_AFTER_BLOB_WRITE`` naming a directory that holds a file ``armed``
    (never in production), write the new key to ``written`` and wait (up to a minute) for ``release``:
    the file is on disk and its row is not committed, the moment a crash leaves an orphan."""
    directory = os.environ.get(PAUSE_ENV)
    if not directory or current_app.config["SETTINGS"].production:
        return
    control = Path(directory)
    if not (control / "armed").exists():
        return
    (control / "written").write_text(storage_key)
    deadline = time.monotonic() + 60
    while not (control / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


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
    return int(db.session.execute(
        select(func.count()).select_from(DataKey).where(DataKey.master_key_id == master_key_id)
    ).scalar_one())
