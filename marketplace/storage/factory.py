"""Build the blob store named by a URL (the ``BLOB_STORE_URL`` setting).

- ``file:var/blobs``: a directory relative to ``base_dir`` (the embedded default)
- ``file:///srv/blobs``: an absolute directory
- ``s3://bucket/optional/prefix?endpoint=http://127.0.0.1:9000&region=eu-central-1``: S3-compatible
  storage. Credentials come from ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
  ``AWS_SESSION_TOKEN`` (or boto3's default chain when unset), never from the URL; the region from the
  URL, else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from marketplace.storage.base import BlobStore, BlobStoreError
from marketplace.storage.local import LocalBlobStore
from marketplace.storage.s3 import S3BlobStore

_S3_PARAMS = {"endpoint", "region"}
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class BlobStoreConfigError(BlobStoreError, ValueError):
    """The blob store URL is not usable."""


def blob_store_from_url(url: str, *, base_dir: Path) -> BlobStore:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise BlobStoreConfigError("file URL must be file:relative/dir or file:///absolute/dir")
        raw = unquote(parts.path)
        if not raw or "\x00" in raw:
            raise BlobStoreConfigError("file URL needs a directory")
        path = Path(raw)
        return LocalBlobStore(path if path.is_absolute() else Path(base_dir) / path)
    if scheme == "s3":
        return _s3_store(parts.netloc, parts.path, parts.query, has_userinfo="@" in parts.netloc)
    raise BlobStoreConfigError("blob store URL must start with file: or s3://")


def _s3_store(bucket: str, path: str, query: str, *, has_userinfo: bool) -> BlobStore:
    if has_userinfo:
        raise BlobStoreConfigError("put S3 credentials in AWS_* environment variables, not in the URL")
    if _BUCKET.fullmatch(bucket) is None:
        raise BlobStoreConfigError("s3 URL needs a valid bucket name: s3://bucket/prefix")
    params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    unknown = set(params) - _S3_PARAMS
    if unknown:
        raise BlobStoreConfigError(f"unknown s3 URL parameter(s): {', '.join(sorted(unknown))}")
    if any(len(values) > 1 for values in params.values()):
        raise BlobStoreConfigError("s3 URL parameters may appear once each")
    endpoint = params.get("endpoint", [None])[0]
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise BlobStoreConfigError("s3 endpoint must be an http:// or https:// URL")
    region = (
        params.get("region", [None])[0]
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    return S3BlobStore(
        bucket,
        endpoint_url=endpoint,
        region=region,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        prefix=unquote(path).strip("/"),
    )
