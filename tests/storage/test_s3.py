"""S3BlobStore against a real S3-compatible server on 127.0.0.1 (moto in server mode, over HTTP).

Needs the ``s3`` extra (boto3) and ``moto[server]`` (dev); skipped with the reason when either is
missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3", reason="S3 tests need the 's3' extra (boto3)")
moto_server = pytest.importorskip("moto.server", reason="S3 tests need moto[server] for a local S3 endpoint")

from marketplace.crypto import BlobContext, decrypt_blob, encrypt_blob, new_data_key  # noqa: E402
from marketplace.storage import (  # noqa: E402
    BlobNotFound,
    BlobStore,
    InvalidBlobKey,
    blob_store_from_url,
    new_key,
)
from marketplace.storage.s3 import S3BlobStore  # noqa: E402

BUCKET = "carejar-test-blobs"
CREDENTIALS = {"access_key": "test-access-key", "secret_key": "test-secret-key"}  # moto accepts any


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["access_key"],
            aws_secret_access_key=CREDENTIALS["secret_key"],
        )
        client.create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.stop()


@pytest.fixture
def raw_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["access_key"],
        aws_secret_access_key=CREDENTIALS["secret_key"],
    )


@pytest.fixture
def store(endpoint: str, request: pytest.FixtureRequest) -> S3BlobStore:
    # one prefix per test keeps tests independent inside the shared bucket
    return S3BlobStore(
        BUCKET, endpoint_url=endpoint, region="us-east-1", prefix=request.node.name, **CREDENTIALS
    )


def test_put_get_delete_exists_iter(store: S3BlobStore) -> None:
    assert isinstance(store, BlobStore)
    keys = {store.put(f"blob {n}".encode()) for n in range(12)}
    assert len(keys) == 12
    assert set(store.iter_keys()) == keys
    key = sorted(keys)[0]
    assert store.exists(key)
    assert store.get(key).startswith(b"blob ")
    store.delete(key)
    store.delete(key)  # idempotent
    assert not store.exists(key)
    with pytest.raises(BlobNotFound):
        store.get(key)
    assert set(store.iter_keys()) == keys - {key}


def test_put_at_buffers_and_a_large_blob(store: S3BlobStore) -> None:
    key = new_key()
    store.put_at(key, b"first")
    store.put_at(key, bytearray(b"second"))
    assert store.get(key) == b"second"
    store.put_at(key, memoryview(b"xxthird")[2:])
    assert store.get(key) == b"third"
    big = os.urandom(2 * 1024 * 1024 + 7)
    assert store.get(store.put(big)) == big
    assert store.get(store.put(b"")) == b""


def test_prefixes_isolate_stores(endpoint: str) -> None:
    one = S3BlobStore(BUCKET, endpoint_url=endpoint, region="us-east-1", prefix="tenant-one", **CREDENTIALS)
    two = S3BlobStore(
        BUCKET, endpoint_url=endpoint, region="us-east-1", prefix="tenant-one-b/", **CREDENTIALS
    )
    key = one.put(b"one")
    assert one.prefix == "tenant-one/"
    assert not two.exists(key)
    assert list(two.iter_keys()) == []
    assert list(one.iter_keys()) == [key]


def test_iter_keys_pages_and_skips_foreign_objects(store: S3BlobStore, raw_client: Any) -> None:
    store.list_page_size = 7
    keys = {store.put(b"x") for _ in range(30)}  # several ListObjectsV2 pages
    raw_client.put_object(Bucket=BUCKET, Key=store.prefix + "not-a-blob.txt", Body=b"stray")
    assert set(store.iter_keys()) == keys
    page = raw_client.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix, MaxKeys=7)
    assert page["IsTruncated"]  # the server really pages at this size


def test_refuses_keys_of_the_wrong_format(store: S3BlobStore) -> None:
    # UP-06: the same key check as the local store, before any request is made
    for key in ("../x", "/etc/passwd", "a" * 31, "A" * 32, "0" * 31 + "\x00", "x.jpg\x00.php", ""):
        with pytest.raises(InvalidBlobKey):
            store.put_at(key, b"x")
        with pytest.raises(InvalidBlobKey):
            store.get(key)
        with pytest.raises(InvalidBlobKey):
            store.delete(key)
        with pytest.raises(InvalidBlobKey):
            store.exists(key)
    assert list(store.iter_keys()) == []


def test_only_ciphertext_leaves_the_app(store: S3BlobStore, raw_client: Any) -> None:
    # enforces P-08: what the bucket holds is the envelope, byte for byte
    data_key = new_data_key()
    ctx = BlobContext("A", "selfie", "doc-1")
    plaintext = b"\xff\xd8\xff\xe0JFIF fixture-pii-Jane-Doe" + os.urandom(500)
    envelope = encrypt_blob(data_key, plaintext, ctx)
    key = store.put(envelope)
    stored = raw_client.get_object(Bucket=BUCKET, Key=store.prefix + key)["Body"].read()
    assert stored == envelope
    assert b"Jane-Doe" not in stored
    assert decrypt_blob(data_key, store.get(key), ctx) == plaintext


def test_factory_s3_url_with_credentials_from_the_environment(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["secret_key"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    store = blob_store_from_url(
        f"s3://{BUCKET}/from-url/nested?endpoint={endpoint}&region=us-east-1", base_dir=tmp_path
    )
    assert isinstance(store, S3BlobStore)
    assert store.prefix == "from-url/nested/"
    key = store.put(b"via url")
    assert store.get(key) == b"via url"
    assert list(store.iter_keys()) == [key]
