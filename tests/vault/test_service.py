"""The vault: encrypted blobs round-trip on the local store and on S3-compatible storage, each owner has one
wrapped data key, and crypto-shredding an owner makes every copy of their blobs unreadable (CR-01, CR-05;
enforces P-08, P-27).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from sqlalchemy import select

from marketplace import create_app, jobs
from marketplace.crypto import OVERHEAD, DecryptionFailed
from marketplace.extensions import db, utcnow
from marketplace.jobs import WorkItem, WorkStatus
from marketplace.storage import BlobStore, BlobStoreError, LocalBlobStore
from marketplace.vault import service as vault
from marketplace.vault.models import Blob, DataKey
from tests.conftest import drain_jobs, free_port
from tests.factories import auth_headers, make_customer
from tests.kyc.helpers import blob_files, latest_case, noisy_photo, submitted_case

boto3 = pytest.importorskip("boto3", reason="the S3 store needs the 's3' extra (boto3)")
moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")

BUCKET = "carejar-vault-test"
ACCESS = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}  # moto takes any


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port, with one bucket."""
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=ACCESS["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def s3_objects(endpoint: str, prefix: str) -> dict[str, bytes]:
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=ACCESS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=ACCESS["AWS_SECRET_ACCESS_KEY"],
    )
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listing}


@pytest.fixture(params=["local", "s3"])
def store_app(request: pytest.FixtureRequest, app: Flask, app_overrides: dict[str, Any], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The session app (blobs under var/blobs) or an app of its own whose blobs live in S3 (moto)."""
    if request.param == "local":
        with app.app_context():
            yield app
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in ACCESS.items():
        monkeypatch.setenv(name, value)
    prefix = request.node.name.replace("[", "-").replace("]", "")
    var = tmp_path / "s3-var"
    s3_app = create_app({**app_overrides, "VAR_DIR": str(var), "KEYRING_PATH": str(var / "keyring.json"),
                         "BLOB_STORE_URL": f"s3://{BUCKET}/{prefix}?endpoint={endpoint}&region=us-east-1"},
                        start_background=False)
    s3_app.config["TESTING"] = True
    s3_app.config["S3_PREFIX"] = prefix
    s3_app.config["S3_ENDPOINT"] = endpoint
    with s3_app.app_context():
        yield s3_app
        db.session.remove()
        db.engine.dispose()


def stored_ciphertext(app: Flask) -> dict[str, bytes]:
    """What the blob store holds, by object name."""
    if "S3_PREFIX" in app.config:
        return s3_objects(app.config["S3_ENDPOINT"], app.config["S3_PREFIX"])
    return blob_files(app)


def test_round_trip_stores_only_ciphertext(store_app):  # CR-01, enforces P-08
    before = stored_ciphertext(store_app)
    images = {("user:alice", "selfie"): noisy_photo(seed=1), ("user:alice", "id_front"): noisy_photo(seed=2),
              ("user:bob", "selfie"): noisy_photo(seed=3)}
    blobs = {key: vault.store(key[0], key[1], data, mime="image/jpeg", width=640, height=480)
             for key, data in images.items()}
    same_again = vault.store("user:alice", "selfie", images[("user:alice", "selfie")], mime="image/jpeg",
                             width=640, height=480)
    db.session.commit()

    for (owner, kind), blob in blobs.items():
        row = db.session.get(Blob, blob.id)
        assert (row.owner, row.kind, row.mime, row.width, row.height) == (owner, kind, "image/jpeg", 640, 480)
        assert row.size == len(images[(owner, kind)]) + OVERHEAD
        assert vault.read(row) == images[(owner, kind)]
    assert vault.read(same_again) == images[("user:alice", "selfie")]

    new = {name: data for name, data in stored_ciphertext(store_app).items() if name not in before}
    assert len(new) == 4
    # stored under the random keys of the rows, never under anything derived from the content or owner
    assert {name.rsplit("/", 1)[-1] for name in new} == {b.storage_key for b in [*blobs.values(), same_again]}
    for data in new.values():
        assert not data.startswith(b"\xff\xd8\xff") and data[0] == 1  # envelope version byte, then the nonce
        assert all(image[100:132] not in data for image in images.values())
    nonces = {data[1:13] for data in new.values()}
    assert len(nonces) == 4  # a fresh nonce per blob, even for the same picture stored twice
    assert vault.blob_store().get(same_again.storage_key) != vault.blob_store().get(
        blobs[("user:alice", "selfie")].storage_key)

    keys = {row.owner: row for row in db.session.execute(select(DataKey)).scalars()}
    assert set(keys) == {"user:alice", "user:bob"}  # one data key per owner
    active = store_app.extensions["keyring"].active_key_id
    assert all(row.master_key_id == active and row.wrapped and row.destroyed_at is None for row in keys.values())
    assert vault._data_key("user:alice", create=False) != vault._data_key("user:bob", create=False)


def test_upload_through_the_api_lands_encrypted_in_the_store(store_app):  # enforces P-08
    client = store_app.test_client()
    person = make_customer()
    headers = auth_headers(client, person)
    before = stored_ciphertext(store_app)
    submitted_case(client, headers)
    new = {name: data for name, data in stored_ciphertext(store_app).items() if name not in before}
    assert len(new) == 5
    assert not any(data.startswith(b"\xff\xd8\xff") for data in new.values())
    case = latest_case(person.user_id)
    selfie = db.session.get(Blob, case.selfie_blob_id)
    assert any(name.endswith(selfie.storage_key) for name in new)
    url = client.get("/api/v1/me/selfie", headers=headers).get_json()["url"]
    image = client.get(url, headers=headers)
    assert image.status_code == 200 and image.data == vault.read(selfie)
    if "S3_PREFIX" in store_app.config:
        assert not (Path(store_app.config["SETTINGS"].var_dir) / "blobs").exists()  # nothing on local disk


def test_missing_ciphertext_fails_closed_with_an_alert(store_app, caplog):  # CR-02
    caplog.set_level(logging.INFO, logger="marketplace")
    blob = vault.store("user:carol", "selfie", noisy_photo(seed=4), mime="image/jpeg", width=640, height=480)
    db.session.commit()
    vault.blob_store().delete(blob.storage_key)
    with pytest.raises(DecryptionFailed) as caught:
        vault.read(blob)
    assert (caught.value.status, caught.value.code) == (410, "document_unavailable")
    [alert] = [r for r in caplog.records if getattr(r, "event", {}).get("alert") == "blob_integrity"]
    assert alert.levelno == logging.ERROR and alert.event == {"alert": "blob_integrity", "blob": blob.public_id,
                                                              "error": "BlobNotFound"}


def test_shredding_an_owner_makes_every_copy_unreadable(store_app):  # CR-05, enforces P-27
    victim, bystander = "user:dora", "user:eve"
    mine = [vault.store(victim, kind, noisy_photo(seed=n), mime="image/jpeg", width=640, height=480)
            for n, kind in enumerate(("selfie", "id_front", "licence_front"), start=10)]
    their_image = noisy_photo(seed=20)
    theirs = vault.store(bystander, "selfie", their_image, mime="image/jpeg", width=640, height=480)
    db.session.commit()
    backups = {blob.id: vault.blob_store().get(blob.storage_key) for blob in mine}  # copies kept elsewhere
    key_row = db.session.execute(select(DataKey).where(DataKey.owner == victim)).scalar_one()
    wrapped_before = bytes(key_row.wrapped or b"")
    log_path = Path(store_app.config["SETTINGS"].var_dir) / "destroyed-keys.jsonl"
    lines_before = log_path.read_text().splitlines() if log_path.exists() else []

    vault.shred_owner(victim)
    db.session.commit()

    key_row = db.session.execute(select(DataKey).where(DataKey.owner == victim)).scalar_one()
    assert (key_row.wrapped, key_row.master_key_id) == (None, None) and key_row.destroyed_at is not None
    for blob in mine:
        row = db.session.get(Blob, blob.id)
        assert row.deleted_at is not None
        assert not vault.blob_store().exists(row.storage_key)
        with pytest.raises(DecryptionFailed):
            vault.read(row)
    # a restored copy of the ciphertext (a backup, a replica) is useless without the destroyed key
    for blob in mine:
        vault.blob_store().put_at(blob.storage_key, backups[blob.id])
        row = db.session.get(Blob, blob.id)
        row.deleted_at = None
        with pytest.raises(DecryptionFailed):
            vault.read(row)
    db.session.rollback()
    assert vault.read(db.session.get(Blob, theirs.id)) == their_image  # nobody else is touched

    new_lines = log_path.read_text().splitlines()[len(lines_before):]
    assert len(new_lines) == 1
    entry = json.loads(new_lines[0])
    assert (entry["owner"], entry["key_ref"]) == (victim, str(key_row.id)) and entry["destroyed_at"]
    assert set(entry) == {"owner", "key_ref", "destroyed_at"}  # ids only, never key material
    assert wrapped_before.hex() not in new_lines[0] and bystander not in new_lines[0]

    vault.shred_owner(victim)  # shredding again is a no-op
    db.session.commit()
    assert log_path.read_text().splitlines()[len(lines_before):] == new_lines


# ---- files and rows stay in agreement (issue 7 item 6) ------------------------------------------------
# A file that no committed row names is removed by the reconciliation once it is older than the grace period,
# and a removal that fails after its row was deleted is retried until it succeeds. The crash itself (a server
# killed between the file write and the commit) is in test_crash.py.

OWNER = "user:durability"


def _store(seed: int) -> Blob:
    return vault.store(OWNER, "id_front", noisy_photo(seed=seed), mime="image/jpeg", width=640, height=480)


def test_orphans_go_after_the_grace_period_and_live_blobs_stay(store_app: Flask) -> None:  # issue 7 item 6
    store = vault.blob_store()
    live = _store(1)
    db.session.commit()
    orphan = _store(2)  # the file is written, then the request dies before its commit
    orphan_key = orphan.storage_key
    db.session.rollback()
    assert db.session.execute(select(Blob).where(Blob.storage_key == orphan_key)).first() is None
    stranded = _store(3)
    db.session.commit()
    stranded.deleted_at = utcnow()  # deleted, and every removal of its file failed
    db.session.commit()

    young = vault.reconcile_store()  # inside the grace period: an upload may still be in flight
    assert young.removed == 0
    assert store.exists(orphan_key) and store.exists(stranded.storage_key)

    result = vault.reconcile_store(now=utcnow() + timedelta(hours=1, minutes=1))
    assert result.removed >= 2 and result.skipped is None
    assert not store.exists(orphan_key)
    assert not store.exists(stranded.storage_key)
    assert store.exists(live.storage_key)
    assert vault.read(live) == vault.read(db.session.get(Blob, live.id))  # still decrypts


def test_the_grace_period_is_a_setting(store_app: Flask) -> None:
    orphan = _store(4)
    key = orphan.storage_key
    db.session.rollback()
    _store(5)
    db.session.commit()
    assert store_app.config["SETTINGS"].blob_orphan_grace == timedelta(hours=1)
    assert vault.reconcile_store(grace=timedelta(0), now=utcnow() + timedelta(seconds=5)).removed >= 1
    assert not vault.blob_store().exists(key)


def test_a_store_without_any_rows_is_left_alone(store_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    # an empty blobs table next to a full store is a fresh or wrong database, not a store of orphans
    orphan = _store(6)
    key = orphan.storage_key
    db.session.rollback()
    caplog.set_level(logging.WARNING, logger="marketplace.vault")
    result = vault.reconcile_store(now=utcnow() + timedelta(days=1))
    assert result.skipped == "no_rows" and result.removed == 0
    assert vault.blob_store().exists(key)
    assert any(getattr(r, "event", {}).get("alert") == "blob_store" for r in caplog.records)


def test_stale_temp_files_of_dead_writes_are_removed(app: Flask) -> None:
    with app.app_context():
        store = vault.blob_store()
        assert isinstance(store, LocalBlobStore)
        _store(7)
        db.session.commit()
        key = next(iter(store.iter_keys()))
        shard = store.root / key[:2] / key[2:4]
        dead = shard / ".tmp-0123456789abcdef"  # what a crash inside write_atomic leaves
        dead.write_bytes(b"half a blob")
        old = (utcnow() - timedelta(hours=2)).timestamp()
        os.utime(dead, (old, old))
        fresh = shard / ".tmp-fedcba9876543210"  # a write in progress right now
        fresh.write_bytes(b"being written")
        result = vault.reconcile_store()
        assert result.temp_removed == 1
        assert not dead.exists() and fresh.exists()
        fresh.unlink()


class FlakyStore:
    """Delegates to the real store, but the first ``failures`` deletions fail (the store is down)."""

    def __init__(self, inner: BlobStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.delete_calls = 0

    def delete(self, key: str) -> None:
        self.delete_calls += 1
        if self.delete_calls <= self.failures:
            raise BlobStoreError("the store is unavailable")
        self.inner.delete(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_failed_file_removal_is_retried_until_it_succeeds(store_app: Flask) -> None:  # issue 7 item 6
    real = vault.blob_store()
    blob = _store(8)
    db.session.commit()
    # more failures than the default MAX_ATTEMPTS: a file removal must not be given up like other work
    flaky = FlakyStore(real, failures=jobs.MAX_ATTEMPTS + 2)
    store_app.extensions["blob_store"] = flaky
    try:
        vault.delete(blob)
        db.session.commit()  # the inline removal right after the commit fails (logged)
        assert flaky.delete_calls == 1 and real.exists(blob.storage_key)
        item = db.session.execute(select(WorkItem).where(WorkItem.kind == vault.REMOVE_FILE)).scalar_one()
        assert item.ref == blob.storage_key and item.status == WorkStatus.PENDING

        clock = utcnow()
        for _ in range(40):
            db.session.expire_all()
            item = db.session.get(WorkItem, item.id)
            if item.status != WorkStatus.PENDING:
                break
            clock = max(clock, item.due_at) + timedelta(minutes=2)
            with time_machine.travel(clock, tick=False):
                jobs.sweep()
                drain_jobs(store_app)
        db.session.expire_all()
        item = db.session.get(WorkItem, item.id)
        assert item.status == WorkStatus.DONE
        assert item.attempts == jobs.MAX_ATTEMPTS + 2  # one inline attempt failed before the work item ran
        assert flaky.delete_calls == jobs.MAX_ATTEMPTS + 3
        assert not real.exists(blob.storage_key)
    finally:
        store_app.extensions["blob_store"] = real


def test_the_removal_never_takes_a_live_blobs_file(store_app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    blob = _store(9)
    db.session.commit()
    caplog.set_level(logging.ERROR, logger="marketplace.vault")
    vault.remove_file(blob.storage_key)  # a work row that names a live blob (corrupt, replayed): refused
    assert vault.blob_store().exists(blob.storage_key)
    assert any(getattr(r, "event", {}).get("alert") == "blob_integrity" for r in caplog.records)


def test_deleting_twice_schedules_one_removal(store_app: Flask) -> None:
    blob = _store(10)
    db.session.commit()
    vault.delete(blob)
    vault.delete(blob)
    db.session.commit()
    rows = db.session.execute(select(WorkItem).where(WorkItem.kind == vault.REMOVE_FILE)).scalars().all()
    assert [row.ref for row in rows] == [blob.storage_key]
    assert not vault.blob_store().exists(blob.storage_key)  # removed at once, after the commit
