"""The key ring: file creation (0600, atomic, race-safe), reload, rotation states, env values."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from marketplace.crypto import (
    BlobContext,
    DecryptionFailed,
    KeyRing,
    KeyRingError,
    KeyStatus,
    MasterKey,
    MasterKeyProvider,
    UnknownMasterKey,
    decrypt_blob,
    encrypt_blob,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)

KEY_ID = re.compile(r"mk-\d{4}-\d{2}-\d{2}-[0-9a-f]{4}")


def b64(secret: bytes | None) -> str:
    assert secret is not None
    return base64.b64encode(secret).decode()


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]


def test_created_0600_on_first_run_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "var" / "keyring.json"
    ring = KeyRing.load(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert KEY_ID.fullmatch(ring.active_key_id)
    assert ring.active.status is KeyStatus.ACTIVE
    assert ring.active.secret is not None
    assert len(ring.active.secret) == 32
    doc = json.loads(path.read_text())
    assert doc["format"] == 1
    assert [key["id"] for key in doc["keys"]] == [ring.active_key_id]
    assert no_temp_files(path.parent)

    again = KeyRing.load(path, create=True)  # second run: loads, does not regenerate
    assert again.active == ring.active
    # something sealed by one process opens in the next
    wrapped = wrap_data_key(ring, new_data_key(), owner="A")
    assert unwrap_data_key(again, wrapped, owner="A")


def test_missing_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist"):
        KeyRing.load(tmp_path / "keyring.json", create=False)
    assert not (tmp_path / "keyring.json").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_a_ring_file_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    KeyRing.load(path, create=True)
    path.chmod(mode)
    with pytest.raises(KeyRingError, match="chmod 600"):
        KeyRing.load(path, create=False)


def test_concurrent_first_runs_agree_on_one_ring(tmp_path: Path) -> None:
    # several workers starting at once must not each create (and half of them lose) a master key
    path = tmp_path / "keyring.json"
    barrier = threading.Barrier(8)
    results: list[str] = []

    def start() -> None:
        barrier.wait()
        results.append(KeyRing.load(path, create=True).active_key_id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert set(results) == {KeyRing.load(path, create=False).active_key_id}
    assert no_temp_files(tmp_path)


def test_add_key_and_retire_are_saved_and_retire_destroys_material(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = KeyRing.load(path, create=True)
    v1 = ring.active
    v2 = ring.add_key()
    assert KEY_ID.fullmatch(v2.key_id)
    assert v2.key_id != v1.key_id
    assert ring.active == v2
    assert ring.get(v1.key_id).status is KeyStatus.RETIRING

    reloaded = KeyRing.load(path, create=False)
    assert reloaded.active_key_id == v2.key_id
    assert [key.key_id for key in reloaded.keys] == [v1.key_id, v2.key_id]
    assert reloaded.get(v1.key_id) == ring.get(v1.key_id)

    with pytest.raises(KeyRingError, match="active"):
        ring.retire(v2.key_id)
    retired = ring.retire(v1.key_id)
    assert retired.status is KeyStatus.RETIRED
    assert retired.secret is None
    assert ring.retire(v1.key_id) == retired  # idempotent
    text = path.read_text()
    assert b64(v1.secret) not in text  # key material removed from the file
    assert b64(v2.secret) in text
    reloaded = KeyRing.load(path, create=False)
    assert reloaded.get(v1.key_id).status is KeyStatus.RETIRED
    assert reloaded.get(v1.key_id).secret is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert no_temp_files(tmp_path)

    with pytest.raises(UnknownMasterKey):
        ring.get("mk-1999-01-01-0000")
    with pytest.raises(UnknownMasterKey):
        ring.retire("mk-1999-01-01-0000")


def test_failed_save_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keyring.json"
    ring = KeyRing.load(path, create=True)
    before = path.read_bytes()
    active = ring.active_key_id

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        ring.add_key()
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file is intact
    assert ring.active_key_id == active  # and the ring in memory did not move on without it
    assert len(ring.keys) == 1
    assert no_temp_files(tmp_path)


def test_from_env_value_json_and_base64(tmp_path: Path) -> None:
    ring = KeyRing.load(tmp_path / "keyring.json", create=True)
    ring.add_key()
    text = ring.to_json()
    for value in (
        text,
        base64.b64encode(text.encode()).decode(),
        base64.urlsafe_b64encode(text.encode()).decode().rstrip("="),
        "  " + base64.b64encode(text.encode()).decode() + "\n",
    ):
        from_env = KeyRing.from_env_value(value)
        assert from_env.path is None
        assert from_env.keys == ring.keys
    with pytest.raises(KeyRingError, match="no file"):
        from_env.save()


def test_bad_env_values_never_echo_the_input() -> None:
    secret_looking = base64.b64encode(b"\x01" * 32).decode()
    for value in (
        "not a ring",
        secret_looking,
        "{",
        '{"format": 2, "keys": []}',
        '{"format": 1, "keys": []}',
        json.dumps({"format": 1, "keys": [{"id": "mk-a", "status": "active", "created_at": "x"}]}),
        json.dumps(
            {
                "format": 1,
                "keys": [
                    {
                        "id": "mk-a",
                        "status": "active",
                        "created_at": "2026-01-01T00:00:00+00:00",
                        "secret": "AAAA",
                    }
                ],
            }
        ),
    ):
        with pytest.raises(KeyRingError) as info:
            KeyRing.from_env_value(value)
        assert secret_looking not in str(info.value)
        assert "AAAA" not in str(info.value)


def test_ring_invariants() -> None:
    now = datetime.now(UTC)
    a = MasterKey("mk-a", os.urandom(32), KeyStatus.ACTIVE, now)
    b = MasterKey("mk-b", os.urandom(32), KeyStatus.ACTIVE, now)
    with pytest.raises(KeyRingError, match="exactly one active"):
        KeyRing([a, b])
    with pytest.raises(KeyRingError, match="exactly one active"):
        KeyRing([])
    with pytest.raises(KeyRingError, match="duplicate"):
        KeyRing([a, a])
    with pytest.raises(KeyRingError):
        MasterKey("mk-c", os.urandom(16), KeyStatus.ACTIVE, now)
    with pytest.raises(KeyRingError):
        MasterKey("mk-c", None, KeyStatus.RETIRING, now)
    with pytest.raises(KeyRingError):
        MasterKey("mk-c", os.urandom(32), KeyStatus.RETIRED, now)
    with pytest.raises(KeyRingError):
        MasterKey("../etc", os.urandom(32), KeyStatus.ACTIVE, now)
    with pytest.raises(KeyRingError):
        MasterKey("mk-c", os.urandom(32), KeyStatus.ACTIVE, datetime(2026, 1, 1))  # naive time


def test_key_material_never_in_repr(tmp_path: Path) -> None:
    # CR-06: keys come only from the ring; nothing prints them
    ring = KeyRing.load(tmp_path / "keyring.json", create=True)
    secret = ring.active.secret
    assert secret is not None
    for text in (repr(ring), repr(ring.active), str(ring.keys)):
        assert b64(secret) not in text
        assert repr(secret) not in text
        assert secret.hex() not in text


def test_ring_is_a_master_key_provider() -> None:
    # the envelope layer only needs the protocol; a KMS-backed provider can replace the ring
    ring: MasterKeyProvider = KeyRing.generate()
    key_id, sealed = ring.seal(b"data key", context=b"ctx")
    assert key_id == ring.active_key_id
    assert ring.open(key_id, sealed, context=b"ctx") == b"data key"
    with pytest.raises(DecryptionFailed):
        ring.open(key_id, sealed, context=b"other")
    with pytest.raises(DecryptionFailed) as info:
        ring.open(key_id, b"\x02" + sealed[1:], context=b"ctx")
    assert info.value.reason == "unknown_version"


def test_blobs_outlive_process_restarts(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = KeyRing.load(path, create=True)
    data_key = new_data_key()
    wrapped = wrap_data_key(ring, data_key, owner="A")
    ctx = BlobContext("A", "selfie", "doc-1")
    envelope = encrypt_blob(data_key, b"\xff\xd8\xff pixels", ctx)
    restarted = KeyRing.load(path, create=False)
    assert (
        decrypt_blob(unwrap_data_key(restarted, wrapped, owner="A"), envelope, ctx) == b"\xff\xd8\xff pixels"
    )
