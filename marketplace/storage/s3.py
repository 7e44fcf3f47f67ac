"""Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph ...), via boto3 (the ``s3`` extra).

Objects are ``<prefix><key>``. Only ciphertext is ever uploaded (callers encrypt first), so the
bucket's server-side encryption is welcome but not relied upon. boto3 is imported when a store is
created, so the rest of the package works without the extra installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from marketplace.storage.base import (
    KEY_PATTERN,
    BlobNotFound,
    BlobStoreError,
    BytesLike,
    StoredObject,
    check_key,
    new_key,
)

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3BlobStore:
    """A ``BlobStore`` on an S3 bucket. boto3 clients are thread-safe, so one store is shared."""

    list_page_size = 1000  # ListObjectsV2 maximum

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str,
        access_key: str | None,
        secret_key: str | None,
        session_token: str | None = None,
        prefix: str = "",
    ) -> None:
        """``access_key``/``secret_key`` None: boto3's default chain (instance role, profile ...)."""
        try:
            import boto3  # noqa: PLC0415 - optional extra (s3), imported only when S3 storage is configured
            from botocore.config import Config  # noqa: PLC0415 - optional extra (s3), as above
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise BlobStoreError("S3 storage needs the 's3' extra (boto3)") from exc
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        config = Config(
            region_name=region,
            signature_version="s3v4",
            # custom endpoints (MinIO, a local test server) rarely resolve virtual-host bucket names
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=session_token,
            config=config,
        )
        self._errors: Any = self._client.exceptions

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, data: BytesLike) -> str:
        key = new_key()
        self.put_at(key, data)
        return key

    def put_at(self, key: str, data: BytesLike) -> None:
        body = data if isinstance(data, bytes | bytearray) else bytes(data)
        self._client.put_object(
            Bucket=self.bucket, Key=self._object(key), Body=body, ContentType="application/octet-stream"
        )

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object(key))
        except self._errors.NoSuchKey:
            raise BlobNotFound("no blob under this key") from None
        with response["Body"] as body:
            data: bytes = body.read()
        return data

    def delete(self, key: str) -> None:
        # S3 DeleteObject succeeds for a missing key
        self._client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._object(key))
        except self._errors.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return False
            raise
        return True

    def iter_keys(self) -> Iterator[str]:
        for item in self.iter_objects():
            yield item.key

    def iter_objects(self) -> Iterator[StoredObject]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": self.list_page_size}
        ):
            for item in page.get("Contents", ()):
                name = item["Key"][len(self.prefix) :]
                if KEY_PATTERN.fullmatch(name):
                    modified: datetime = item["LastModified"]  # botocore parses it as an aware datetime
                    yield StoredObject(name, modified.astimezone(UTC))
