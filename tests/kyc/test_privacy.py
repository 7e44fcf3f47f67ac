"""Face data at rest and in use: no plaintext anywhere (CR-03), ciphertext bound to its row (CR-02), master-key
rotation through the CLI (CR-04), metadata stripped (UP-04), pixel floods refused before decoding (UP-01) and
every image view audited (PV-01). Enforces P-08, P-09 and P-11.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from PIL import ExifTags, Image, ImageFile
from sqlalchemy import select, text, update

from marketplace import create_app
from marketplace.audit import AuditEvent
from marketplace.crypto import DecryptionFailed, KeyRing, KeyStatus, WrappedKey, field_key_id, unwrap_data_key
from marketplace.extensions import db, utcnow
from marketplace.images import metadata_blocks
from marketplace.kyc import service as kyc
from marketplace.kyc.models import ImageGrant
from marketplace.permissions import Role
from marketplace.users.models import User
from marketplace.vault import service as vault
from marketplace.vault.models import Blob, DataKey
from tests.conftest import is_postgres
from tests.factories import auth_headers, make_customer, make_staff, web_login
from tests.kyc.helpers import (
    blob_files,
    give_face_consent,
    identity_body,
    latest_case,
    noisy_photo,
    png_bomb,
    submitted_case,
    upload,
)
from tests.staff_web import db_snapshot, page_csrf

KINDS = ("selfie", "id_front", "id_back", "licence_front", "licence_back")
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff", b"\x89PNG"


# ---- a scanner for image bytes -----------------------------------------------------------------------


def images_inside(data: bytes) -> list[tuple[int, str]]:
    """Every offset where a JPEG or PNG magic starts a parseable image (random ciphertext contains the
    3-byte JPEG magic about once per 16 MB by chance; those never parse as an image)."""
    found = []
    for magic, fmt in ((JPEG_MAGIC, "JPEG"), (PNG_MAGIC, "PNG")):
        start = data.find(magic)
        while start != -1:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(io.BytesIO(data[start:]), formats=[fmt]) as im:
                        if im.width > 0 and im.height > 0:
                            found.append((start, fmt))
            except Exception:  # noqa: S110 - not an image at this offset, which is what we hope for
                pass
            start = data.find(magic, start + 1)
    return found


def needles(image: bytes) -> list[bytes]:
    """Three 32-byte stretches of an image's compressed data: finding any of them means a copy exists."""
    return [image[at : at + 32] for at in (len(image) // 4, len(image) // 2, 3 * len(image) // 4)]


def leaks(where: str, data: bytes, secrets: list[bytes], *, strict: bool = False) -> list[str]:
    """What in ``data`` betrays an image or a key. ``strict``: not even the magic bytes may appear (for
    places that hold no random bytes beyond a few wrapped keys: rows, dumps, temp files, logs)."""
    problems = [f"{where}: {fmt} image at offset {at}" for at, fmt in images_inside(data)]
    if data.startswith((JPEG_MAGIC, PNG_MAGIC)):
        problems.append(f"{where}: starts with image magic bytes")
    if strict and (JPEG_MAGIC in data or PNG_MAGIC in data):
        problems.append(f"{where}: holds JPEG or PNG magic bytes")
    for secret in secrets:
        if secret in data or secret.hex().encode() in data:
            problems.append(f"{where}: holds {len(secret)} bytes of an uploaded image or a data key")
    return problems


def walk_files(root: Path) -> Iterator[Path]:
    if root.exists():
        yield from (path for path in sorted(root.rglob("*")) if path.is_file())


def database_dump(app: Flask) -> dict[str, bytes]:
    """The database as a backup would hold it: pg_dump on PostgreSQL, the files themselves on SQLite, and
    every row of every table read back through SQL on both."""
    dumps: dict[str, bytes] = {}
    url = app.config["SETTINGS"].database_url
    if is_postgres(app):
        libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
        dumped = subprocess.run(["pg_dump", "--data-only", "--no-owner", "--dbname", libpq],  # noqa: S603, S607
                                capture_output=True, check=True, timeout=120)
        raw = dumped.stdout
        # bytea is written as \x<hex>; decode it so magic bytes in a bytea column are seen as bytes
        decoded = b"".join(bytes.fromhex(m.decode()) for m in re.findall(rb"\\\\x((?:[0-9a-f]{2})+)", raw))
        dumps["pg_dump"] = raw
        dumps["pg_dump bytea"] = decoded
    else:
        # The raw files are read by a child process: closing a descriptor of the database file in this
        # process would drop every POSIX lock SQLite holds on it here (fcntl locks belong to the process),
        # and the next process to open it (a test's gunicorn server) would rebuild the WAL index under
        # this process's live connections, which then fail with "disk I/O error".
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm", "-journal"):
            candidate = Path(str(path) + suffix)
            if candidate.exists():
                dumps[candidate.name] = subprocess.run(["cat", str(candidate)],  # noqa: S603, S607
                                                       capture_output=True, check=True, timeout=60).stdout
    with app.app_context(), db.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            values = []
            for row in conn.execute(table.select()):
                for value in row:
                    values.append(value if isinstance(value, bytes) else str(value).encode())
            dumps[f"table {table.name}"] = b"\x00".join(values)
    return dumps


def redis_values(app: Flask) -> dict[str, bytes]:
    from marketplace import jobs

    backend = app.extensions["jobs_backend"]
    if not isinstance(backend, jobs.RqBackend):
        return {}  # jobs run synchronously: nothing is queued anywhere
    out: dict[str, bytes] = {}
    conn = backend.connection
    for key in conn.scan_iter():
        kind = conn.type(key)
        if kind == b"string":
            values = [conn.get(key)]
        elif kind == b"hash":
            values = list(conn.hgetall(key).values())
        elif kind == b"list":
            values = conn.lrange(key, 0, -1)
        elif kind in (b"set", b"zset"):
            values = list(conn.smembers(key)) if kind == b"set" else conn.zrange(key, 0, -1)
        else:
            values = []
        blob = b"".join(v for v in values if isinstance(v, bytes))
        with contextlib.suppress(zlib.error):
            blob += zlib.decompress(blob)  # rq compresses job payloads
        out[f"redis {key!r}"] = blob
    return out


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def walk_to_submitted(client: Any, person: Any, seed: int) -> dict[str, bytes]:
    """Consent, identity, five distinct noisy photos, submit; returns what was uploaded, by slot."""
    headers = auth_headers(client, person)
    give_face_consent(client, headers)
    assert client.put("/api/v1/me/kyc/identity", headers=headers, json=identity_body()).status_code == 200
    sent = {}
    for n, kind in enumerate(KINDS):
        # PNG and JPEG uploads, each under 500 KB so the test client keeps the body in memory
        fmt = "PNG" if n % 2 else "JPEG"
        data = noisy_photo(320, 240, seed=seed * 10 + n, fmt=fmt)
        response = upload(client, headers, kind, data, content_type=f"image/{fmt.lower()}")
        assert response.status_code == 201, response.get_json()
        sent[kind] = data
    assert client.post("/api/v1/me/kyc/submit", headers=headers).status_code == 200
    return sent


# ---- CR-03: no plaintext at rest ---------------------------------------------------------------------


def test_no_plaintext_image_anywhere_at_rest(app, client, app_ctx, private_tmp, caplog):  # CR-03, enforces P-08
    caplog.set_level(logging.DEBUG, logger="marketplace")
    customers = [make_customer(), make_customer()]
    uploaded = [walk_to_submitted(client, person, seed) for seed, person in enumerate(customers, start=1)]

    stored = [vault.read(blob) for blob in db.session.execute(select(Blob)).scalars()]
    assert len(stored) == 10 and all(data.startswith(JPEG_MAGIC) for data in stored)
    data_keys = [vault._data_key(f"user:{person.public_id}", create=False) for person in customers]
    secrets = [n for image in [*(d for u in uploaded for d in u.values()), *stored] for n in needles(image)]
    secrets += data_keys  # CR-03: no unwrapped data key either
    db.session.commit()

    problems: list[str] = []
    files = blob_files(app)
    assert len(files) >= 10
    for name, data in files.items():
        problems += leaks(f"blob store {name}", data, secrets)
    temp_files = list(walk_files(private_tmp))
    for path in temp_files:
        problems += leaks(f"temp {path.name}", path.read_bytes(), secrets, strict=True)
    for name, data in database_dump(app).items():
        # the SQLite file keeps deleted rows of earlier tests (random wrapped keys) in its free pages
        problems += leaks(name, data, secrets, strict=name.startswith(("table ", "pg_dump")))
    for name, data in redis_values(app).items():
        problems += leaks(name, data, secrets)
    log_text = "\n".join(f"{r.getMessage()} {getattr(r, 'event', '')}" for r in caplog.records).encode()
    problems += leaks("logs", log_text, secrets, strict=True)
    assert problems == []
    assert temp_files == []  # uploads are parsed in memory: nothing is spooled to disk

    # negative control: the same scan finds a plaintext copy when there is one
    (private_tmp / "leak.bin").write_bytes(b"junk" + stored[0] + b"junk")
    control = [p for path in walk_files(private_tmp) for p in leaks(path.name, path.read_bytes(), secrets)]
    assert any("JPEG image at offset 4" in p for p in control) and any("holds 32 bytes" in p for p in control)


# ---- CR-02: ciphertext bound to its owner, kind and id --------------------------------------------------


def _swap_storage_keys(mine: Blob, theirs: Blob) -> None:
    a, b = mine.storage_key, theirs.storage_key
    db.session.execute(update(Blob).where(Blob.id == mine.id).values(storage_key="0" * 32))
    db.session.execute(update(Blob).where(Blob.id == theirs.id).values(storage_key=a))
    db.session.execute(update(Blob).where(Blob.id == mine.id).values(storage_key=b))


def _flip_a_bit(mine: Blob, theirs: Blob) -> None:
    data = bytearray(vault.blob_store().get(mine.storage_key))
    data[len(data) // 2] ^= 0x01
    vault.blob_store().put_at(mine.storage_key, bytes(data))


def _truncate(mine: Blob, theirs: Blob) -> None:
    vault.blob_store().put_at(mine.storage_key, vault.blob_store().get(mine.storage_key)[:-1])


def _copy_their_ciphertext(mine: Blob, theirs: Blob) -> None:
    vault.blob_store().put_at(mine.storage_key, vault.blob_store().get(theirs.storage_key))


def _relabel_owner(mine: Blob, theirs: Blob) -> None:
    db.session.execute(update(Blob).where(Blob.id == mine.id).values(owner=theirs.owner))


def _relabel_kind(mine: Blob, theirs: Blob) -> None:
    db.session.execute(update(Blob).where(Blob.id == mine.id).values(kind="id_front"))


def _swap_wrapped_keys(mine: Blob, theirs: Blob) -> None:
    rows = {row.owner: row for row in db.session.execute(select(DataKey)).scalars()}
    a, b = rows[mine.owner], rows[theirs.owner]
    a.wrapped, b.wrapped = b.wrapped, a.wrapped


TAMPERING = {
    "storage keys swapped": _swap_storage_keys,
    "their ciphertext copied over mine": _copy_their_ciphertext,
    "owner relabelled": _relabel_owner,
    "selfie relabelled as a licence": _relabel_kind,
    "one bit flipped": _flip_a_bit,
    "ciphertext truncated": _truncate,
    "wrapped data keys swapped": _swap_wrapped_keys,
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampered_blob_fails_closed(app, client, app_ctx, caplog, name):  # CR-02, enforces P-08, P-11
    caplog.set_level(logging.INFO, logger="marketplace")
    mine, theirs = make_customer(), make_customer()
    their_images = walk_to_submitted(client, theirs, seed=3)
    headers = auth_headers(client, mine)
    give_face_consent(client, headers)
    assert upload(client, headers, "selfie", noisy_photo(seed=4)).status_code == 201
    my_blob = db.session.get(Blob, latest_case(mine.user_id).selfie_blob_id)
    their_blob = db.session.get(Blob, latest_case(theirs.user_id).selfie_blob_id)
    their_plain = vault.read(their_blob)
    TAMPERING[name](my_blob, their_blob)
    db.session.commit()

    url = client.get("/api/v1/me/selfie", headers=headers).get_json()["url"]
    caplog.clear()
    response = client.get(url, headers=headers)
    assert response.status_code == 410
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert (error["code"], error["details"]) == ("document_unavailable", {})  # no detail leaks out
    for secret in [*needles(their_plain), *needles(their_images["selfie"])]:
        assert secret not in response.data  # B's image is never shown
    alerts = [r for r in caplog.records if r.levelno >= logging.ERROR
              and getattr(r, "event", {}).get("alert") == "blob_integrity"]
    assert len(alerts) == 1 and alerts[0].event["blob"] == my_blob.public_id
    assert db.session.execute(select(AuditEvent).where(AuditEvent.action == "image:view")).first() is None


def test_swapped_blob_fails_closed_for_the_reviewer_too(app, client, app_ctx, caplog):  # CR-02, enforces P-11
    mine, theirs = make_customer(), make_customer()
    walk_to_submitted(client, mine, seed=5)
    walk_to_submitted(client, theirs, seed=6)
    case = latest_case(mine.user_id)
    my_blob = db.session.get(Blob, case.selfie_blob_id)
    _swap_storage_keys(my_blob, db.session.get(Blob, latest_case(theirs.user_id).selfie_blob_id))
    db.session.commit()
    reviewer = make_staff(Role.KYC_REVIEWER)
    web = app.test_client()
    web_login(web, reviewer)
    claimed = web.post(f"/console/kyc/{case.public_id}/claim",
                       data={"csrf_token": page_csrf(web, f"/console/kyc/{case.public_id}")})
    assert claimed.status_code == 302
    page = web.get(f"/console/kyc/{case.public_id}").get_data(as_text=True)
    sources = dict(re.findall(r'<img src="([^"]+)" alt="([a-z_]+)"', page))
    by_kind = {kind: src for src, kind in sources.items()}
    caplog.set_level(logging.INFO, logger="marketplace")
    selfie = web.get(by_kind["selfie"])
    assert selfie.status_code == 410 and not selfie.data.startswith(JPEG_MAGIC)
    assert "document_unavailable" in selfie.get_data(as_text=True)
    assert any(getattr(r, "event", {}).get("alert") == "blob_integrity" for r in caplog.records)
    licence = web.get(by_kind["licence_front"])  # the untouched images still open
    assert licence.status_code == 200 and licence.data.startswith(JPEG_MAGIC)


@pytest.mark.timeout(120)  # before the fix this request hung for good on PostgreSQL (30 s and a 503 on SQLite)
def test_case_slot_pointing_at_another_customers_blob_is_refused_to_the_reviewer(app, client, app_ctx):  # CR-02
    mine, theirs = make_customer(), make_customer()
    walk_to_submitted(client, mine, seed=7)
    their_images = walk_to_submitted(client, theirs, seed=8)
    case = latest_case(mine.user_id)
    their_blob = db.session.get(Blob, latest_case(theirs.user_id).id_front_blob_id)
    case.id_front_blob_id = their_blob.id  # B's ID photo copied into A's case, after A's selfie slot
    db.session.commit()
    web = app.test_client()
    web_login(web, make_staff(Role.KYC_REVIEWER))
    assert web.post(f"/console/kyc/{case.public_id}/claim",
                    data={"csrf_token": page_csrf(web, f"/console/kyc/{case.public_id}")}).status_code == 302

    page = web.get(f"/console/kyc/{case.public_id}")
    assert page.status_code == 404  # fails closed: no part of the case is shown
    assert "<img" not in page.get_data(as_text=True)
    denied = db.session.execute(select(AuditEvent).where(AuditEvent.action == "image:view_denied")).scalars().all()
    assert [(e.subject_id, e.outcome) for e in denied] == [(their_blob.public_id, "denied")]
    # the selfie's grant, issued earlier in the same request, went with it
    assert db.session.execute(select(AuditEvent).where(AuditEvent.action == "image:grant")).first() is None
    assert db.session.execute(select(ImageGrant)).first() is None
    assert all(secret not in page.data for secret in needles(their_images["id_front"]))


@pytest.mark.timeout(120)
def test_selfie_slot_pointing_at_another_customers_blob_is_refused_to_the_customer(app, client, app_ctx):  # CR-02
    mine, theirs = make_customer(), make_customer()
    walk_to_submitted(client, theirs, seed=9)
    headers = auth_headers(client, mine)
    give_face_consent(client, headers)
    assert upload(client, headers, "selfie").status_code == 201
    case = latest_case(mine.user_id)
    their_blob = db.session.get(Blob, latest_case(theirs.user_id).selfie_blob_id)
    case.selfie_blob_id = their_blob.id
    db.session.commit()
    # two minutes on, the sign-in's "last seen" is written during the request, before the refusal
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=2)):
        response = client.get("/api/v1/me/selfie", headers=headers)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    [denied] = db.session.execute(select(AuditEvent).where(AuditEvent.action == "image:view_denied")).scalars()
    assert (denied.actor_id, denied.subject_id, denied.outcome) == (mine.public_id, their_blob.public_id, "denied")


# ---- UP-04: metadata is gone from what is stored ------------------------------------------------------


def _jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Acme"
    exif[ExifTags.Base.Model] = "Phone 9"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.BodySerialNumber] = "SN-0042-7777"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (25.0, 11.0, 51.3)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (55.0, 16.0, 27.9)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description exif:GPSLatitude="25,11.855N"/></x:xmpmeta>'
    image = Image.open(io.BytesIO(noisy_photo(400, 300, seed=9)))
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, xmp=xmp, comment=b"home: Marina Gate 1")
    return out.getvalue()


@pytest.mark.parametrize("kind", ["selfie", "licence_front"])
def test_gps_and_all_metadata_are_gone_from_the_stored_image(app, client, app_ctx, kind):  # UP-04, P-08
    data = _jpeg_with_gps()
    assert {"EXIF", "GPS", "XMP", "COM"} <= metadata_blocks(data)  # the upload really carries them
    person = make_customer()
    headers = auth_headers(client, person)
    give_face_consent(client, headers)
    response = upload(client, headers, kind, data)
    assert response.status_code == 201, response.get_json()
    blob = db.session.execute(select(Blob).where(Blob.public_id == response.get_json()["id"])).scalar_one()
    stored = vault.read(blob)
    assert metadata_blocks(stored) == set()
    with Image.open(io.BytesIO(stored)) as im:
        assert len(im.getexif()) == 0
        assert not im.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert "xmp" not in im.info and "comment" not in im.info and "exif" not in im.info
    for secret in (b"SN-0042-7777", b"Acme", b"25,11.855N", b"Marina Gate"):
        assert secret not in stored


# ---- UP-01: the pixel flood is refused from the header --------------------------------------------------


@pytest.fixture
def decode_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records pixel decodes; decoding runs in this process meanwhile (the app's decoder pool would hide
    them in another process)."""
    from marketplace.imagepool import InlineDecoder, use_decoder

    calls: list[str] = []
    original_load = ImageFile.ImageFile.load
    original_getdecoder = Image._getdecoder

    def load(self: ImageFile.ImageFile) -> Any:
        calls.append(f"load {self.format} {self.size}")
        return original_load(self)

    def getdecoder(*args: Any, **kwargs: Any) -> Any:
        calls.append(f"decoder {args[1:2]}")
        return original_getdecoder(*args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image, "_getdecoder", getdecoder)
    with use_decoder(InlineDecoder()):
        yield calls


@pytest.mark.parametrize("kind", ["selfie", "id_front"])
def test_decompression_bomb_refused_before_decoding(app, client, app_ctx, decode_spy, kind):  # UP-01, P-08
    bomb = png_bomb(10_000, 10_000)
    assert len(bomb) < 24 * 1024  # 100 megapixels in a few KiB
    person = make_customer()
    headers = auth_headers(client, person)
    give_face_consent(client, headers)
    before, files_before = db_snapshot(app), blob_files(app)
    decode_spy.clear()
    response = upload(client, headers, kind, bomb, content_type="image/png")
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "image_too_large"
    assert decode_spy == []  # refused from the header: not one pixel decoded
    assert db_snapshot(app) == before
    assert blob_files(app) == files_before
    # the spy does see decodes: a normal upload goes through it
    assert upload(client, headers, kind, noisy_photo(64, 48)).status_code == 201
    assert any(call.startswith("load JPEG") for call in decode_spy)


# ---- PV-01: every image view is audited ---------------------------------------------------------------


def _events(action: str) -> list[AuditEvent]:
    db.session.expire_all()
    return list(db.session.execute(select(AuditEvent).where(AuditEvent.action == action)
                                   .order_by(AuditEvent.id)).scalars())


def test_customer_view_of_own_selfie_is_audited_once(app, client, app_ctx):  # PV-01, enforces P-09, P-11
    person = make_customer()
    headers = auth_headers(client, person)
    give_face_consent(client, headers)
    assert upload(client, headers, "selfie").status_code == 201
    case = latest_case(person.user_id)
    selfie = db.session.get(Blob, case.selfie_blob_id)

    link = client.get("/api/v1/me/selfie", headers=headers)
    image = client.get(link.get_json()["url"], headers=headers)
    assert image.status_code == 200
    assert client.get(link.get_json()["url"], headers=headers).status_code == 404  # spent: no second view

    [grant] = _events("image:grant")
    [view] = _events("image:view")
    for event, response in ((grant, link), (view, image)):
        assert (event.actor_type, event.actor_id) == ("customer", person.public_id)
        assert (event.subject_type, event.subject_id) == ("blobs", selfie.public_id)
        assert event.request_id == response.headers["X-Request-ID"]
        assert event.occurred_at.utcoffset().total_seconds() == 0
        data = json.loads(event.data)
        assert (data["purpose"], data["context"]) == ("own_profile", case.public_id)
        assert len(event.data) < 300  # ids and words, never image bytes
    assert json.loads(grant.data)["reason"]
    assert json.loads(view.data)["kind"] == "selfie"


def test_reviewer_views_are_audited_one_row_each(app, client, app_ctx):  # PV-01, enforces P-09, P-11
    person = make_customer()
    submitted_case(client, auth_headers(client, person))
    case = latest_case(person.user_id)
    slot_blobs = {kind: db.session.get(Blob, getattr(case, kyc.SLOTS[kind])).public_id for kind in KINDS}
    reviewer = make_staff(Role.KYC_REVIEWER)
    web = app.test_client()
    web_login(web, reviewer)
    assert web.post(f"/console/kyc/{case.public_id}/claim",
                    data={"csrf_token": page_csrf(web, f"/console/kyc/{case.public_id}")}).status_code == 302
    page = web.get(f"/console/kyc/{case.public_id}")
    sources = {kind: src for src, kind in re.findall(r'<img src="([^"]+)" alt="([a-z_]+)"',
                                                        page.get_data(as_text=True))}
    assert set(sources) == set(KINDS)
    grants = _events("image:grant")
    assert sorted(e.subject_id for e in grants) == sorted(slot_blobs.values())
    assert {e.request_id for e in grants} == {page.headers["X-Request-ID"]}
    assert all(json.loads(e.data)["reason"].startswith("KYC review") for e in grants)

    responses = {kind: web.get(src) for kind, src in sources.items()}
    assert all(r.status_code == 200 and r.data.startswith(JPEG_MAGIC) for r in responses.values())
    assert all("no-store" in r.headers["Cache-Control"] for r in responses.values())
    views = _events("image:view")
    assert len(views) == len(KINDS)
    for event in views:
        data = json.loads(event.data)
        kind = data["kind"]
        assert event.subject_id == slot_blobs[kind]
        assert (event.actor_type, event.actor_id, event.actor_roles) == ("staff", reviewer.public_id, "kyc_reviewer")
        assert (data["purpose"], data["context"]) == ("kyc_review", case.public_id)
        assert event.request_id == responses[kind].headers["X-Request-ID"]
    assert web.get(sources["selfie"]).status_code == 404  # links are single-use
    assert len(_events("image:view")) == len(KINDS)


def test_a_review_pages_images_all_open_when_fetched_at_once(app, client, app_ctx, live_server):  # PV-01, P-09
    # a browser fetches the five images of a case page in parallel; every one must open (SQLite included)
    person = make_customer()
    submitted_case(client, auth_headers(client, person))
    case = latest_case(person.user_id)
    web = app.test_client()
    web_login(web, make_staff(Role.KYC_REVIEWER))
    assert web.post(f"/console/kyc/{case.public_id}/claim",
                    data={"csrf_token": page_csrf(web, f"/console/kyc/{case.public_id}")}).status_code == 302
    page = web.get(f"/console/kyc/{case.public_id}").get_data(as_text=True)
    sources = [src for src, _ in re.findall(r'<img src="([^"]+)" alt="([a-z_]+)"', page)]
    cookie = web.get_cookie("cj_staff")
    assert cookie is not None and len(sources) == len(KINDS)
    db.session.rollback()  # end this thread's read transaction before the server threads write
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    barrier = threading.Barrier(len(sources))

    def fetch(src: str) -> tuple[int, bytes]:
        url = live_server + src  # always http://127.0.0.1:<port>/console/...
        request = urllib.request.Request(url, headers={"Cookie": f"cj_staff={cookie.value}"})  # noqa: S310
        barrier.wait(timeout=30)
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""

    with ThreadPoolExecutor(len(sources)) as pool:
        results = list(pool.map(fetch, sources))
    assert [status for status, _ in results] == [200] * len(KINDS)
    assert all(body.startswith(JPEG_MAGIC) for _, body in results)
    assert len(_events("image:view")) == len(KINDS)


# ---- CR-04: master-key rotation through the CLI ---------------------------------------------------------


@pytest.fixture
def rotation_app(app: Flask, app_overrides: dict[str, Any], tmp_path: Path) -> Iterator[Flask]:
    """An app of its own (key ring, blob store, var dir) on the shared test database: rotating its ring
    cannot disturb the session app. Depends on ``app`` so the schema exists and tables are emptied after."""
    var = tmp_path / "rotation-var"
    other = create_app({**app_overrides, "VAR_DIR": str(var), "KEYRING_PATH": str(var / "keyring.json"),
                        "BLOB_STORE_URL": f"file://{var / 'blobs'}"}, start_background=False)
    other.config["TESTING"] = True
    yield other
    with other.app_context():
        db.session.remove()
        db.engine.dispose()


def _world(app: Flask) -> dict[str, Any]:
    """Three customers with submitted cases and an MFA-enrolled reviewer, made through the rotation app."""
    client = app.test_client()
    customers = [make_customer() for _ in range(3)]
    for seed, person in enumerate(customers, start=20):
        walk_to_submitted(client, person, seed)
    staff = make_staff(Role.KYC_REVIEWER)
    blobs = list(db.session.execute(select(Blob).order_by(Blob.id)).scalars())
    world = {
        "customers": customers,
        "staff": staff,
        "plaintext": {blob.id: vault.read(blob) for blob in blobs},
        "data_keys": {f"user:{p.public_id}": vault._data_key(f"user:{p.public_id}", create=False) for p in customers},
        "wrapped": {row.owner: WrappedKey(str(row.master_key_id), bytes(row.wrapped or b""))
                    for row in db.session.execute(select(DataKey)).scalars()},
        "ciphertext": blob_files(app),
    }
    assert len(world["plaintext"]) == 15 and len(world["ciphertext"]) == 15
    db.session.commit()
    db.session.remove()
    return world


def _assert_rotated(app: Flask, world: dict[str, Any], old: str) -> None:
    ring = app.extensions["keyring"]
    new = ring.active_key_id
    assert new != old
    db.session.remove()
    rows = list(db.session.execute(select(DataKey)).scalars())
    assert len(rows) == 3
    assert {row.master_key_id for row in rows} == {new}  # 0 data keys left on the old master key
    assert all(row.rewrapped_at is not None for row in rows)
    assert vault.keys_on(old) == 0
    for blob in db.session.execute(select(Blob)).scalars():
        assert vault.read(blob) == world["plaintext"][blob.id]  # every blob still decrypts
    for owner, key in world["data_keys"].items():
        assert vault._data_key(owner, create=False) == key  # the data keys themselves did not change
    assert blob_files(app) == world["ciphertext"]  # blob ciphertext byte-identical
    # the old key is retired, in memory and in the ring file, and its material is gone
    assert ring.get(old).status == KeyStatus.RETIRED and ring.get(old).secret is None
    reloaded = KeyRing.load(app.config["SETTINGS"].keyring_path, create=False)
    assert reloaded.active_key_id == new and reloaded.get(old).status == KeyStatus.RETIRED
    # TOTP secrets were re-encrypted too, and the reviewer still passes MFA
    staff = db.session.get(User, world["staff"].user_id)
    assert staff is not None and staff.totp_secret_enc is not None
    assert field_key_id(staff.totp_secret_enc) == new
    web_login(app.test_client(), world["staff"])
    # negative control: a data key still wrapped by the old master key could no longer be opened
    for owner, wrapped in world["wrapped"].items():
        with pytest.raises(DecryptionFailed):
            unwrap_data_key(ring, wrapped, owner=owner)


def test_rotation_rewraps_every_data_key_and_retires_the_old_master_key(rotation_app):  # CR-04, P-08
    with rotation_app.app_context():
        ring = rotation_app.extensions["keyring"]
        old = ring.active_key_id
        world = _world(rotation_app)
        assert {row.master_key_id for row in db.session.execute(select(DataKey)).scalars()} == {old}

        result = rotation_app.test_cli_runner().invoke(args=["keys", "rotate"])
        assert result.exit_code == 0, result.output
        assert "re-wrapped 3 data keys and 1 TOTP secrets" in result.output
        _assert_rotated(rotation_app, world, old)
        [event] = db.session.execute(select(AuditEvent).where(AuditEvent.action == "keys:rotate")).scalars()
        assert json.loads(event.data)["rewrapped"] == 3


def test_interrupted_rotation_resumes_to_the_same_end_state(rotation_app, monkeypatch):  # CR-04, P-08
    with rotation_app.app_context():
        ring = rotation_app.extensions["keyring"]
        old = ring.active_key_id
        world = _world(rotation_app)
        runner = rotation_app.test_cli_runner()

        original = vault.rewrap_batch
        batches: list[int] = []

        def dies_after_the_first_batch(limit: int = 200) -> int:
            batches.append(limit)
            if len(batches) > 1:
                raise RuntimeError("rotation killed")
            return original(limit)

        monkeypatch.setattr(vault, "rewrap_batch", dies_after_the_first_batch)
        crashed = runner.invoke(args=["keys", "rotate", "--batch", "1"])
        assert isinstance(crashed.exception, RuntimeError) and crashed.exit_code != 0
        assert batches == [1, 1]
        db.session.remove()
        new = ring.active_key_id
        moved = {row.owner: row.master_key_id for row in db.session.execute(select(DataKey)).scalars()}
        assert sorted(moved.values()) == sorted([new, old, old])  # one batch committed, two keys still to go
        assert ring.get(old).status == KeyStatus.RETIRING  # not retired while it still wraps data keys
        for blob in db.session.execute(select(Blob)).scalars():
            assert vault.read(blob) == world["plaintext"][blob.id]  # readable half-way through
        db.session.remove()

        monkeypatch.setattr(vault, "rewrap_batch", original)
        resumed = runner.invoke(args=["keys", "rotate", "--resume", "--batch", "1"])
        assert resumed.exit_code == 0, resumed.output
        assert "re-wrapped 2 data keys and 1 TOTP secrets" in resumed.output
        assert ring.active_key_id == new  # --resume adds no key
        _assert_rotated(rotation_app, world, old)

        again = runner.invoke(args=["keys", "rotate", "--resume"])  # and a rerun changes nothing
        assert again.exit_code == 0, again.output
        assert "re-wrapped 0 data keys and 0 TOTP secrets" in again.output
        _assert_rotated(rotation_app, world, old)


def test_database_scan_sees_bytea(app, app_ctx):  # keeps the CR-03 database scan honest
    db.session.add(DataKey(owner="user:control", master_key_id="mk-control", wrapped=b"\xff\xd8\xff\xe0CONTROL",
                           created_at=utcnow()))
    db.session.commit()
    dumps = database_dump(app)
    assert any(b"\xff\xd8\xff\xe0CONTROL" in data for data in dumps.values())
    if is_postgres(app):
        assert b"\xff\xd8\xff\xe0CONTROL" in dumps["pg_dump bytea"]
        assert db.session.execute(text("SELECT count(*) FROM data_keys")).scalar_one() == 1
