"""Envelope encryption: per-user data keys, blob envelopes bound to their context, rotation, shredding.

Library-level halves of TESTING.md 3.5 (CR-01, CR-02, CR-04, CR-05); the HTTP halves (error shape
through the API, the alert, the re-wrap job over the database) belong to the services that use these.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import stat
from pathlib import Path

import pytest

from marketplace.crypto import (
    HEADER_SIZE,
    OVERHEAD,
    BlobContext,
    DecryptionFailed,
    DestroyedKeyLog,
    KeyRing,
    KeyStatus,
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
    reencrypt_field,
    rewrap,
    sealed_size,
    shred_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from marketplace.errors import AppError
from marketplace.storage import LocalBlobStore

JPEG_MAGIC = b"\xff\xd8\xff"


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


def fake_jpeg(size: int = 200) -> bytes:
    return JPEG_MAGIC + secrets.token_bytes(size)


def flipped(data: bytes | bytearray, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def assert_unavailable(exc: DecryptionFailed) -> None:
    # the API shape: 410 document_unavailable, a fixed message, no details (CR-02)
    assert isinstance(exc, AppError)
    assert exc.status == 410
    assert exc.code == "document_unavailable"
    assert exc.text == DecryptionFailed.message
    assert exc.details == {}
    assert exc.headers == {}


# -- CR-01 ----------------------------------------------------------------------------------------


def test_one_data_key_per_user_and_a_fresh_nonce_per_blob(ring: KeyRing) -> None:
    # CR-01: 1 000 blobs for 10 users, replaced selfies included
    users = [f"user-{n:02d}" for n in range(10)]
    wrapped = {user: wrap_data_key(ring, new_data_key(), owner=user) for user in users}
    sealed: list[tuple[str, BlobContext, bytes, bytearray]] = []
    for user in users:
        data_key = unwrap_data_key(ring, wrapped[user], owner=user)
        for n in range(90):
            ctx = BlobContext(user, "licence_front" if n % 2 else "selfie", f"doc-{n}")
            plaintext = fake_jpeg(64 + n)
            sealed.append((user, ctx, plaintext, encrypt_blob(data_key, plaintext, ctx)))
        # the selfie is replaced 10 times under the same blob id: a fresh nonce every time
        replaced = BlobContext(user, "selfie", "selfie-current")
        for _ in range(10):
            plaintext = fake_jpeg()
            sealed.append((user, replaced, plaintext, encrypt_blob(data_key, plaintext, replaced)))
    assert len(sealed) == 1000

    data_keys = {user: unwrap_data_key(ring, wrapped[user], owner=user) for user in users}
    assert len(set(data_keys.values())) == 10  # 10 distinct data keys, none shared
    nonces = {bytes(envelope[1:HEADER_SIZE]) for *_, envelope in sealed}
    assert len(nonces) == 1000  # 1 000 distinct nonces

    for user, ctx, plaintext, envelope in sealed:
        assert len(envelope) == len(plaintext) + OVERHEAD
        assert decrypt_blob(data_keys[user], envelope, ctx) == plaintext
        # enforces P-08: the envelope carries no plaintext
        assert not envelope[HEADER_SIZE:].startswith(JPEG_MAGIC)
        assert plaintext[8:40] not in envelope


def test_another_users_data_key_never_opens_a_blob(ring: KeyRing) -> None:
    # CR-01: keys are never shared, so no other user's key opens a blob even with the right context
    keys = [new_data_key() for _ in range(10)]
    ctx = BlobContext("user-00", "selfie", "doc-1")
    envelope = encrypt_blob(keys[0], fake_jpeg(), ctx)
    for other in keys[1:]:
        with pytest.raises(DecryptionFailed):
            decrypt_blob(other, envelope, ctx)


# -- CR-02 ----------------------------------------------------------------------------------------


@pytest.fixture
def two_users(ring: KeyRing) -> dict[str, tuple[WrappedKey, bytes, BlobContext, bytearray]]:
    out = {}
    for user in ("A", "B"):
        wrapped = wrap_data_key(ring, new_data_key(), owner=user)
        data_key = unwrap_data_key(ring, wrapped, owner=user)
        ctx = BlobContext(user, "selfie", f"doc-{user}")
        out[user] = (wrapped, data_key, ctx, encrypt_blob(data_key, fake_jpeg(40), ctx))
    return out


def test_blob_copied_into_another_users_row_fails(two_users: dict) -> None:
    # CR-02: B's blob in A's row; B's image is never shown
    _, key_a, ctx_a, _ = two_users["A"]
    _, key_b, _, envelope_b = two_users["B"]
    for data_key in (key_a, key_b):  # A's row resolves to A's key; even B's key fails in A's context
        with pytest.raises(DecryptionFailed) as info:
            decrypt_blob(data_key, envelope_b, ctx_a)
        assert_unavailable(info.value)
        assert info.value.reason == "auth_failed"


@pytest.mark.parametrize(
    "changed",
    [
        BlobContext("B", "selfie", "doc-B"),  # another owner
        BlobContext("A", "licence", "doc-A"),  # selfie relabelled as a licence
        BlobContext("A", "selfie", "doc-A2"),  # another document's row
        BlobContext("A", "selfi", "edoc-A"),  # the same bytes split differently
    ],
)
def test_blob_bound_to_owner_kind_and_id(two_users: dict, changed: BlobContext) -> None:
    # CR-02: relabelling fails
    _, key_a, ctx_a, envelope_a = two_users["A"]
    assert decrypt_blob(key_a, envelope_a, ctx_a)
    with pytest.raises(DecryptionFailed):
        decrypt_blob(key_a, envelope_a, changed)


def test_every_single_bit_flip_in_the_envelope_fails(two_users: dict) -> None:
    # CR-02: one bit flipped anywhere: version, nonce, ciphertext or tag
    _, key_a, ctx_a, envelope = two_users["A"]
    reasons = set()
    for bit in range(len(envelope) * 8):
        with pytest.raises(DecryptionFailed) as info:
            decrypt_blob(key_a, flipped(envelope, bit), ctx_a)
        reasons.add(info.value.reason)
    assert reasons == {"unknown_version", "auth_failed"}


def test_truncated_or_extended_envelope_fails(two_users: dict) -> None:
    # CR-02: truncation at every length, and bytes appended
    _, key_a, ctx_a, envelope = two_users["A"]
    for length in range(len(envelope)):
        with pytest.raises(DecryptionFailed):
            decrypt_blob(key_a, envelope[:length], ctx_a)
    with pytest.raises(DecryptionFailed):
        decrypt_blob(key_a, bytes(envelope) + b"\x00", ctx_a)
    with pytest.raises(DecryptionFailed) as info:
        decrypt_blob(key_a, b"", ctx_a)
    assert info.value.reason == "malformed"


def test_every_single_bit_flip_in_the_wrapped_key_fails(ring: KeyRing, two_users: dict) -> None:
    # CR-02: flip one bit in the wrapped key
    wrapped, _, _, _ = two_users["A"]
    for bit in range(len(wrapped.blob) * 8):
        with pytest.raises(DecryptionFailed):
            unwrap_data_key(ring, WrappedKey(wrapped.key_id, flipped(wrapped.blob, bit)), owner="A")
    for length in range(len(wrapped.blob)):
        with pytest.raises(DecryptionFailed):
            unwrap_data_key(ring, WrappedKey(wrapped.key_id, wrapped.blob[:length]), owner="A")


def test_wrapped_key_bound_to_owner_and_master_key(ring: KeyRing, two_users: dict) -> None:
    # CR-02: B's wrapped key in A's row; a wrapped key relabelled with another master key id
    wrapped_b = two_users["B"][0]
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(ring, wrapped_b, owner="A")
    with pytest.raises(DecryptionFailed) as info:
        unwrap_data_key(ring, WrappedKey("mk-1999-01-01-0000", wrapped_b.blob), owner="B")
    assert info.value.reason == "unknown_master_key"
    old_id = ring.active_key_id
    ring.add_key()
    rewrapped = rewrap(ring, wrapped_b, owner="B")
    assert rewrapped.key_id != old_id
    # the old master key still exists (retiring), but the blob is bound to the new key id
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(ring, WrappedKey(old_id, rewrapped.blob), owner="B")


def test_decrypt_into_leaves_no_unauthenticated_plaintext(two_users: dict) -> None:
    # CR-02: the cipher writes before it checks the tag; a failed decrypt_into wipes the buffer
    _, key_a, ctx_a, envelope = two_users["A"]
    out = bytearray(b"\xaa" * 100)
    tampered = flipped(envelope, (len(envelope) - 1) * 8)  # last tag byte: the body is decrypted first
    with pytest.raises(DecryptionFailed):
        decrypt_blob_into(key_a, tampered, ctx_a, out)
    assert out[: len(envelope) - OVERHEAD] == bytes(len(envelope) - OVERHEAD)


# -- envelope format and buffers ----------------------------------------------------------------


def test_envelope_layout_and_buffer_variants() -> None:
    data_key = new_data_key()
    ctx = BlobContext("u", "selfie", "d")
    plaintext = fake_jpeg(1000)
    envelope = encrypt_blob(data_key, plaintext, ctx)
    assert envelope[0] == 1
    assert len(envelope) == sealed_size(len(plaintext)) == 1 + 12 + len(plaintext) + 16

    reused = bytearray(5000)  # a larger buffer the caller keeps
    size = encrypt_blob_into(data_key, memoryview(plaintext), ctx, reused)
    assert size == len(envelope)
    opened = bytearray(5000)
    assert decrypt_blob_into(data_key, memoryview(reused)[:size], ctx, opened) == len(plaintext)
    assert opened[: len(plaintext)] == plaintext
    assert decrypt_blob(data_key, bytes(reused[:size]), ctx) == plaintext
    assert decrypt_blob(data_key, encrypt_blob(data_key, b"", ctx), ctx) == b""

    with pytest.raises(ValueError, match="too small"):
        encrypt_blob_into(data_key, plaintext, ctx, bytearray(len(envelope) - 1))
    with pytest.raises(ValueError, match="too small"):
        decrypt_blob_into(data_key, envelope, ctx, bytearray(len(plaintext) - 1))
    with pytest.raises(ValueError):
        encrypt_blob(os.urandom(16), plaintext, ctx)  # AES-128 key: refused, not silently used
    with pytest.raises(DecryptionFailed):
        decrypt_blob(os.urandom(16), envelope, ctx)


def test_blob_context_aad_is_canonical() -> None:
    assert BlobContext("ab", "c", "d").aad() != BlobContext("a", "bc", "d").aad()
    assert BlobContext("a", "b", "c").aad() == BlobContext("a", "b", "c").aad()
    assert BlobContext("a", "b", "c").aad()[0] == 1  # format version
    for bad in [("", "k", "i"), ("o", "", "i"), ("o", "k", ""), ("o", None, "i")]:
        with pytest.raises(ValueError):
            BlobContext(*bad)  # type: ignore[arg-type]


def test_wrapped_key_repr_hides_the_blob(ring: KeyRing) -> None:
    wrapped = wrap_data_key(ring, new_data_key(), owner="A")
    assert wrapped.blob.hex() not in repr(wrapped)
    assert repr(wrapped.blob) not in repr(wrapped)


# -- CR-04 --------------------------------------------------------------------------------------


def _world(ring: KeyRing, store: LocalBlobStore, users: int = 20) -> dict[str, dict]:
    world = {}
    for n in range(users):
        owner = f"user-{n:02d}"
        data_key = new_data_key()
        blobs = {}
        for kind in ("selfie", "licence_front", "licence_back"):
            ctx = BlobContext(owner, kind, f"{owner}-{kind}")
            plaintext = fake_jpeg(300)
            blobs[store.put(encrypt_blob(data_key, plaintext, ctx))] = (ctx, plaintext)
        world[owner] = {"wrapped": wrap_data_key(ring, data_key, owner=owner), "blobs": blobs}
    return world


def _digests(store: LocalBlobStore) -> dict[str, str]:
    return {key: hashlib.sha256(store.get(key)).hexdigest() for key in store.iter_keys()}


def _assert_all_decrypt(ring: KeyRing, store: LocalBlobStore, world: dict[str, dict]) -> None:
    for owner, entry in world.items():
        data_key = unwrap_data_key(ring, entry["wrapped"], owner=owner)
        for key, (ctx, plaintext) in entry["blobs"].items():
            assert decrypt_blob(data_key, store.get(key), ctx) == plaintext


def test_master_key_rotation_can_resume(tmp_path: Path) -> None:
    # CR-04: add v2, re-wrap (killed halfway, then rerun twice), blobs untouched, retire v1 last
    ring = KeyRing.load(tmp_path / "keyring.json", create=True)
    store = LocalBlobStore(tmp_path / "blobs")
    world = _world(ring, store)
    before = _digests(store)
    v1 = ring.active_key_id
    v2 = ring.add_key().key_id
    assert ring.get(v1).status is KeyStatus.RETIRING

    owners = sorted(world)
    for owner in owners[: len(owners) // 2]:  # the job is killed halfway
        world[owner]["wrapped"] = rewrap(ring, world[owner]["wrapped"], owner=owner)
    _assert_all_decrypt(ring, store, world)  # mid-rotation both master keys open
    for _ in range(2):  # rerun twice: idempotent
        for owner in owners:
            current = world[owner]["wrapped"]
            world[owner]["wrapped"] = rewrap(ring, current, owner=owner)
            if current.key_id == v2:
                assert world[owner]["wrapped"] is current  # no-op when already on the active key

    assert sum(entry["wrapped"].key_id == v1 for entry in world.values()) == 0
    assert _digests(store) == before  # blob ciphertext byte-identical
    ring.retire(v1)  # only now
    reloaded = KeyRing.load(tmp_path / "keyring.json", create=False)
    assert reloaded.get(v1).secret is None
    _assert_all_decrypt(reloaded, store, world)


def test_retiring_too_early_makes_unrewrapped_keys_unreadable(tmp_path: Path) -> None:
    # CR-04 control: v1 retired before the re-wrap finished
    ring = KeyRing.load(tmp_path / "keyring.json", create=True)
    store = LocalBlobStore(tmp_path / "blobs")
    world = _world(ring, store, users=6)
    v1 = ring.active_key_id
    ring.add_key()
    owners = sorted(world)
    done, pending = owners[:3], owners[3:]
    for owner in done:
        world[owner]["wrapped"] = rewrap(ring, world[owner]["wrapped"], owner=owner)
    ring.retire(v1)
    _assert_all_decrypt(ring, store, {owner: world[owner] for owner in done})
    for owner in pending:
        with pytest.raises(DecryptionFailed) as info:
            unwrap_data_key(ring, world[owner]["wrapped"], owner=owner)
        assert info.value.reason == "retired_master_key"
        with pytest.raises(DecryptionFailed):
            rewrap(ring, world[owner]["wrapped"], owner=owner)


# -- small fields under the master key ------------------------------------------------------------


def test_field_round_trip_binding_and_reencryption(ring: KeyRing) -> None:
    secret = b"JBSWY3DPEHPK3PXP"
    aad = b"totp:user-A"
    token = encrypt_field(ring, secret, aad=aad)
    assert secret not in token
    assert field_key_id(token) == ring.active_key_id
    assert decrypt_field(ring, token, aad=aad) == secret
    assert encrypt_field(ring, secret, aad=aad) != token  # fresh nonce
    with pytest.raises(DecryptionFailed):
        decrypt_field(ring, token, aad=b"totp:user-B")
    for bit in range(len(token) * 8):
        with pytest.raises(DecryptionFailed):
            decrypt_field(ring, flipped(token, bit), aad=aad)
    for bad in (b"", b"\x01", b"\x02\x00abc", token[:20]):
        with pytest.raises(DecryptionFailed):
            decrypt_field(ring, bad, aad=aad)

    old = ring.active_key_id
    ring.add_key()
    moved = reencrypt_field(ring, token, aad=aad)
    assert field_key_id(moved) == ring.active_key_id != old
    assert reencrypt_field(ring, moved, aad=aad) is moved  # rerun: no-op
    ring.retire(old)
    assert decrypt_field(ring, moved, aad=aad) == secret
    with pytest.raises(DecryptionFailed):
        decrypt_field(ring, token, aad=aad)


def test_purposes_are_separated(ring: KeyRing) -> None:
    # a field token sealed over 32 bytes is not a wrapped data key, even with the same id strings
    data_key = new_data_key()
    token = encrypt_field(ring, data_key, aad=b"A")
    sealed = token[2 + token[1] :]
    with pytest.raises(DecryptionFailed):
        unwrap_data_key(ring, WrappedKey(ring.active_key_id, sealed), owner="A")
    wrapped = wrap_data_key(ring, data_key, owner="A")
    forged = bytes((1, len(wrapped.key_id))) + wrapped.key_id.encode() + wrapped.blob
    with pytest.raises(DecryptionFailed):
        decrypt_field(ring, forged, aad=b"A")


# -- CR-05: crypto-shredding ------------------------------------------------------------------------


def test_erasure_shreds_every_copy_and_survives_a_key_store_restore(ring: KeyRing, tmp_path: Path) -> None:
    # CR-05 (library level), enforces P-27
    key_store: dict[str, tuple[str, WrappedKey]] = {}  # key_ref -> (owner, wrapped key)
    blobs: dict[str, tuple[BlobContext, bytearray]] = {}
    for owner in ("A", "B"):
        data_key = new_data_key()
        key_store[f"dk-{owner}"] = (owner, wrap_data_key(ring, data_key, owner=owner))
        ctx = BlobContext(owner, "selfie", f"doc-{owner}")
        blobs[owner] = (ctx, encrypt_blob(data_key, fake_jpeg(), ctx))
    backup = dict(key_store)  # a key-store backup taken before the erasure
    blob_backup = dict(blobs)  # and a blob-store backup

    erasures = DestroyedKeyLog(tmp_path / "erasures.jsonl")
    shred_data_key(erasures, owner="A", key_ref="dk-A", destroy=lambda: key_store.pop("dk-A"))
    assert "dk-A" not in key_store

    restored = dict(backup)  # restore the old backup: A's wrapped key is back ...
    assert "dk-A" in restored
    for entry in erasures:  # ... until the restore procedure replays the log
        restored.pop(entry.key_ref, None)
    assert set(restored) == {"dk-B"}

    ctx_a, envelope_a = blob_backup["A"]
    for owner, wrapped in restored.values():  # no remaining key opens any copy of A's blobs
        data_key = unwrap_data_key(ring, wrapped, owner=owner)
        with pytest.raises(DecryptionFailed):
            decrypt_blob(data_key, envelope_a, ctx_a)
    owner_b, wrapped_b = restored["dk-B"]
    ctx_b, envelope_b = blob_backup["B"]
    assert decrypt_blob(unwrap_data_key(ring, wrapped_b, owner=owner_b), envelope_b, ctx_b)


def test_shred_logs_before_destroying(tmp_path: Path) -> None:
    erasures = DestroyedKeyLog(tmp_path / "erasures.jsonl")

    def destroy() -> None:
        raise RuntimeError("key store down")

    with pytest.raises(RuntimeError):
        shred_data_key(erasures, owner="A", key_ref="dk-A", destroy=destroy)
    assert [entry.key_ref for entry in erasures] == ["dk-A"]  # replaying the log completes it


def test_destroyed_key_log_is_append_only_private_and_survives_a_torn_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys" / "erasures.jsonl"
    erasures = DestroyedKeyLog(path)
    assert list(erasures) == []  # no file yet: empty
    erasures.record("A", "dk-A")
    erasures.record("B", "dk-B")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [json.loads(line)["owner"] for line in lines] == ["A", "B"]
    assert all(set(json.loads(line)) == {"owner", "key_ref", "destroyed_at"} for line in lines)

    with path.open("ab") as handle:  # a crash mid-append
        handle.write(b'{"owner":"C","key_r')
    erasures.record("D", "dk-D")
    with caplog.at_level(logging.WARNING, logger="marketplace.crypto.shred"):
        entries = list(erasures.iter())
    assert [(entry.owner, entry.key_ref) for entry in entries] == [
        ("A", "dk-A"),
        ("B", "dk-B"),
        ("D", "dk-D"),
    ]
    assert all(entry.destroyed_at.tzinfo is not None for entry in entries)
    assert "unreadable line 3" in caplog.text
    with pytest.raises(ValueError):
        erasures.record("", "dk-x")


def test_small_value_under_a_data_key_is_bound_to_owner_and_field() -> None:  # CR-02, issue 7 item 7
    key, other_key = new_data_key(), new_data_key()
    token = encrypt_value(key, b"784-1990-1234567-4", owner="user:a", field="kyc_identities.id_document_number")
    assert b"784-1990" not in token and token[0] == 1
    assert decrypt_value(key, token, owner="user:a", field="kyc_identities.id_document_number") == \
        b"784-1990-1234567-4"
    assert encrypt_value(key, b"x", owner="user:a", field="f") != encrypt_value(key, b"x", owner="user:a", field="f")
    for wrong in ({"owner": "user:b", "field": "kyc_identities.id_document_number"},
                  {"owner": "user:a", "field": "kyc_identities.licence_number"}):
        with pytest.raises(DecryptionFailed):
            decrypt_value(key, token, **wrong)
    with pytest.raises(DecryptionFailed):
        decrypt_value(other_key, token, owner="user:a", field="kyc_identities.id_document_number")
    for at in range(len(token)):
        flipped = bytearray(token)
        flipped[at] ^= 0x01
        with pytest.raises(DecryptionFailed):
            decrypt_value(key, bytes(flipped), owner="user:a", field="kyc_identities.id_document_number")
    with pytest.raises(DecryptionFailed):
        decrypt_value(key, token[:-1], owner="user:a", field="kyc_identities.id_document_number")
