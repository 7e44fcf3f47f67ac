"""Blobs as files under one root directory (the embedded default: ``var/blobs``).

Layout: key ``abcdef0123...`` lives at ``<root>/ab/cd/abcdef0123...``. Every write goes to a temporary
file in the target directory (created with ``O_EXCL`` and mode 0600), is fsync'd and then renamed over
the target with ``os.replace``, so a crash leaves either the old blob or the new one, never half of one.
Files only ever hold ciphertext: callers encrypt before calling ``put`` (see ``marketplace.crypto``).

Only keys of the generated format are accepted, and the resolved path must stay inside the root, so a
key can never name ``../x``, an absolute path, or escape through a symlinked shard directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from marketplace.storage.base import (
    KEY_PATTERN,
    BlobNotFound,
    BytesLike,
    InvalidBlobKey,
    StoredObject,
    check_key,
    new_key,
)

_TMP_PREFIX = ".tmp-"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_atomic(path: Path, data: BytesLike, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably, with mode 0600.

    With ``overwrite=False`` the file is published with ``os.link``, which fails with
    ``FileExistsError`` if ``path`` already exists: two processes creating the same file at once cannot
    both win (used when the key ring is created on first run).
    """
    directory = path.parent
    tmp = directory / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore:
    """A ``BlobStore`` on the local filesystem."""

    def __init__(self, root: Path) -> None:
        root = Path(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root.resolve(strict=True)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        check_key(key)
        path = (self.root / key[:2] / key[2:4] / key).resolve()
        if not path.is_relative_to(self.root):  # a shard directory replaced by a symlink, say
            raise InvalidBlobKey("blob key resolves outside the store root")
        return path

    def put(self, data: BytesLike) -> str:
        key = new_key()
        self.put_at(key, data)
        return key

    def put_at(self, key: str, data: BytesLike) -> None:
        path = self._path(key)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, data)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound("no blob under this key") from None
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_keys(self) -> Iterator[str]:
        for entry in self._entries():
            yield entry.name

    def iter_objects(self) -> Iterator[StoredObject]:
        for entry in self._entries():
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:  # deleted since the directory was read
                continue
            yield StoredObject(entry.name, datetime.fromtimestamp(mtime, UTC))

    def remove_stale_temp_files(self, before: datetime) -> int:
        """Remove the temporary files of writes that died (a crash between create and rename) last
        written before ``before``; a write still in progress is younger than that. Returns how many."""
        removed = 0
        for shard in self._shards():
            with os.scandir(shard) as entries:
                for entry in entries:
                    if not entry.name.startswith(_TMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if datetime.fromtimestamp(entry.stat(follow_symlinks=False).st_mtime, UTC) < before:
                            os.unlink(entry.path)
                            removed += 1
        return removed

    def _shards(self) -> Iterator[Path]:
        for first in sorted(self.root.iterdir()):
            if not first.is_dir() or first.is_symlink():
                continue
            for second in sorted(first.iterdir()):
                if second.is_dir() and not second.is_symlink():
                    yield second

    def _entries(self) -> Iterator[os.DirEntry[str]]:
        for shard in self._shards():
            first, second = shard.parent.name, shard.name
            with os.scandir(shard) as entries:
                for entry in entries:
                    name = entry.name
                    # temp files of unfinished writes and anything else that is not a blob are skipped
                    if (
                        KEY_PATTERN.fullmatch(name)
                        and name[:2] == first
                        and name[2:4] == second
                        and entry.is_file(follow_symlinks=False)
                    ):
                        yield entry
