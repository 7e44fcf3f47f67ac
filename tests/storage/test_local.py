"""The local blob store: random sharded keys, path containment, atomic 0600 writes; the URL factory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from marketplace.crypto import BlobContext, decrypt_blob, encrypt_blob, new_data_key
from marketplace.storage import (
    BlobNotFound,
    BlobStore,
    BlobStoreConfigError,
    InvalidBlobKey,
    LocalBlobStore,
    blob_store_from_url,
    check_key,
    new_key,
)
from marketplace.storage.base import KEY_PATTERN
from marketplace.storage.local import write_atomic

HOSTILE_KEYS = [
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "/" + "a" * 31,
    "ab/cd/" + "a" * 26,
    "..",
    "",
    "a" * 31,
    "a" * 33,
    "A" * 32,  # uppercase is not the generated format
    "g" * 32,
    "0" * 31 + "\x00",
    "0" * 16 + "\x00" + "0" * 15,
    "0" * 32 + "\n",
    "x.jpg\x00.php",  # UP-06 client file names
    "CON",
    "\u202egpj.exe",
    "ü" * 4096,
    "\uff10" * 32,  # full-width digits: str.isdigit-style checks would pass them
]


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def all_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_put_get_delete_exists_iter(store: LocalBlobStore) -> None:
    assert isinstance(store, BlobStore)
    keys = {store.put(f"blob {n}".encode()) for n in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert KEY_PATTERN.fullmatch(key)
        assert check_key(key) == key
        assert store.exists(key)
        assert (store.root / key[:2] / key[2:4] / key).is_file()  # sharded ab/cd/abcd...
    assert set(store.iter_keys()) == keys
    key = sorted(keys)[0]
    assert store.get(key).startswith(b"blob ")
    store.delete(key)
    store.delete(key)  # idempotent
    assert not store.exists(key)
    with pytest.raises(BlobNotFound):
        store.get(key)
    assert set(store.iter_keys()) == keys - {key}


def test_put_at_replaces_and_accepts_buffers(store: LocalBlobStore) -> None:
    key = new_key()
    store.put_at(key, b"first")
    store.put_at(key, bytearray(b"second"))
    assert store.get(key) == b"second"
    store.put_at(key, memoryview(b"xxthird")[2:])
    assert store.get(key) == b"third"
    assert store.get(store.put(b"")) == b""
    big = os.urandom(3 * 1024 * 1024)
    assert store.get(store.put(big)) == big


def test_files_and_directories_are_private(store: LocalBlobStore) -> None:
    key = store.put(b"x")
    path = store.root / key[:2] / key[2:4] / key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_refuses_keys_of_the_wrong_format(store: LocalBlobStore, key: str) -> None:
    # UP-06: the store refuses any path outside its root, and any key it did not generate
    for call in (
        lambda: store.put_at(key, b"x"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.exists(key),
    ):
        with pytest.raises(InvalidBlobKey) as info:
            call()
        assert key not in str(info.value) or not key  # never echoes the key
    assert all_files(store.root) == []


def test_refuses_non_string_keys(store: LocalBlobStore) -> None:
    for key in (b"0" * 32, None, 12345, Path("a" * 32)):
        with pytest.raises(InvalidBlobKey):
            store.get(key)  # type: ignore[arg-type]


def test_refuses_a_shard_directory_that_escapes_the_root(store: LocalBlobStore, tmp_path: Path) -> None:
    # containment is checked on the resolved path, so a symlinked shard cannot redirect writes
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "ab").symlink_to(outside, target_is_directory=True)
    key = "ab" + "0" * 30
    with pytest.raises(InvalidBlobKey):
        store.put_at(key, b"x")
    with pytest.raises(InvalidBlobKey):
        store.get(key)
    assert list(outside.rglob("*")) == []


def test_atomic_writes_leave_no_temp_files(store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(50):
        store.put(os.urandom(n * 100))
    assert all(KEY_PATTERN.fullmatch(path.name) for path in all_files(store.root))

    key = new_key()
    store.put_at(key, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        store.put_at(key, b"new")
    with pytest.raises(OSError, match="I/O error"):
        store.put(b"never")
    monkeypatch.undo()
    assert store.get(key) == b"old"  # the old blob is intact, not half-replaced
    assert len(all_files(store.root)) == 51
    assert not [path for path in all_files(store.root) if path.name.startswith(".tmp-")]


def test_failed_rename_cleans_up(store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="Read-only"):
        store.put(b"x")
    monkeypatch.undo()
    assert all_files(store.root) == []


def test_iter_keys_skips_temp_files_and_strays(store: LocalBlobStore) -> None:
    key = store.put(b"x")
    shard = store.root / key[:2] / key[2:4]
    (shard / ".tmp-0123456789abcdef").write_bytes(b"half")  # a crash mid-write
    (shard / ("f" * 32)).write_bytes(b"wrong shard")
    (store.root / "README").write_text("stray")
    (store.root / "zz").mkdir()
    assert list(store.iter_keys()) == [key]


def test_write_atomic_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "file"
    write_atomic(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_store_holds_only_ciphertext(store: LocalBlobStore) -> None:
    # enforces P-08 (CR-03 for the blob store): callers encrypt first; no image magic, no plaintext
    data_key = new_data_key()
    plaintext = b"\xff\xd8\xff\xe0" + b"JFIF fixture-pii-Jane-Doe-784-1990-1234567-1" + os.urandom(2000)
    ctx = BlobContext("A", "selfie", "doc-1")
    key = store.put(encrypt_blob(data_key, plaintext, ctx))
    (raw,) = [path.read_bytes() for path in all_files(store.root)]
    assert not raw[13:].startswith(b"\xff\xd8\xff")
    assert b"Jane-Doe" not in raw
    assert b"JFIF" not in raw
    assert decrypt_blob(data_key, store.get(key), ctx) == plaintext


# -- factory ------------------------------------------------------------------------------------


def test_factory_file_urls(tmp_path: Path) -> None:
    relative = blob_store_from_url("file:var/blobs", base_dir=tmp_path)
    assert isinstance(relative, LocalBlobStore)
    assert relative.root == (tmp_path / "var" / "blobs").resolve()
    absolute = blob_store_from_url(f"file://{tmp_path}/abs", base_dir=Path("/nonexistent"))
    assert isinstance(absolute, LocalBlobStore)
    assert absolute.root == (tmp_path / "abs").resolve()
    assert blob_store_from_url(f"file:{tmp_path}/abs", base_dir=Path("/nonexistent")).root == absolute.root
    key = relative.put(b"x")
    assert relative.get(key) == b"x"


@pytest.mark.parametrize(
    "url",
    [
        "file://otherhost/var/blobs",
        "file:",
        "file:var/blobs?x=1",
        "http://example.com/blobs",
        "ftp://example.com/blobs",
        "var/blobs",
        "s3://",
        "s3://Bad_Bucket/x",
        "s3://key:secret@bucket/x",
        "s3://bucket/x?endpoint=http://127.0.0.1:9000&unknown=1",
        "s3://bucket/x?endpoint=ftp://127.0.0.1",
        "s3://bucket/x?region=a&region=b",
    ],
)
def test_factory_rejects_bad_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(BlobStoreConfigError):
        blob_store_from_url(url, base_dir=tmp_path)
