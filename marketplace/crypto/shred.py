"""Crypto-shredding: erasing a user by destroying their data key (P-27, CR-05).

Every blob of a user is sealed under that user's data key, and the data key exists only wrapped by a
master key. Deleting the wrapped data key therefore makes *every* copy of the user's blobs unreadable:
the live store, replicas, object-storage versions and backups of the blob store alike. Two things keep
that true:

1. Wrapped data keys live in their own key store (a separate database or a KMS), backed up apart from
   the blobs and the main database, so one backup never holds both a blob and the key that opens it.
2. A backup of the key store taken before an erasure still holds the erased user's wrapped key. So every
   erasure is first appended to a :class:`DestroyedKeyLog` (fsync'd), *then* the wrapped key is deleted;
   after any restore of the key store, the restore procedure replays the log and deletes every key it
   names again (:func:`shred_data_key` fixes that order; replaying is idempotent).

The log holds ids only (owner public id, key reference, time), never key material. Keep it with the
key store's configuration, outside the backups it is meant to correct.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from marketplace.storage.local import fsync_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DestroyedKey:
    owner: str
    key_ref: str
    destroyed_at: datetime


class DestroyedKeyLog:
    """Append-only file of destroyed data keys, one JSON object per line, each append fsync'd.

    Appends from several processes are serialised with ``flock``. A line torn by a crash mid-append
    belongs to a ``record`` call that never returned, so its erasure had not happened yet and will be
    retried; ``iter`` skips such a line (with a warning) rather than refusing the whole log.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def record(self, owner: str, key_ref: str, *, at: datetime | None = None) -> DestroyedKey:
        if not owner or not key_ref:
            raise ValueError("owner and key_ref are required")
        entry = DestroyedKey(owner, key_ref, at or datetime.now(UTC))
        line = json.dumps(
            {"owner": entry.owner, "key_ref": entry.key_ref, "destroyed_at": entry.destroyed_at.isoformat()},
            sort_keys=True,
            separators=(",", ":"),
        ).encode("utf-8")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            # after a torn append, start on a fresh line so the torn one cannot swallow this record
            prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
            data = memoryview(prefix + line + b"\n")
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        if created:
            fsync_dir(self.path.parent)
        return entry

    def iter(self) -> Iterator[DestroyedKey]:
        """Every recorded erasure, oldest first. A missing file is an empty log."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                yield DestroyedKey(
                    str(item["owner"]), str(item["key_ref"]), datetime.fromisoformat(item["destroyed_at"])
                )
            except (ValueError, KeyError, TypeError):
                log.warning("destroyed-key log %s: skipping unreadable line %d", self.path, number)

    __iter__ = iter


def shred_data_key(
    log_: DestroyedKeyLog, *, owner: str, key_ref: str, destroy: Callable[[], None]
) -> DestroyedKey:
    """Erase one data key: record the erasure durably, then call ``destroy`` (which deletes the
    wrapped key from the key store). In that order, a crash between the two leaves a logged erasure
    that replaying the log completes; the reverse order could lose an erasure to a restore."""
    entry = log_.record(owner, key_ref)
    destroy()
    return entry
