"""Verification documents (P-12, ALJ): uploaded by the owner through the same encrypted pipeline as KYC
documents, replaced per kind, refused when hostile, and frozen once the agency is verified."""

from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image
from sqlalchemy import select

from marketplace.agencies.models import AgencyDocument, AgencyStatus
from marketplace.audit import AuditEvent
from marketplace.extensions import db
from marketplace.vault import service as vault
from marketplace.vault.models import Blob, DataKey
from tests.agencies.helpers import DOCUMENTS, KINDS, agency_with_people, code, count, upload
from tests.factories import auth_headers
from tests.kyc.helpers import blob_files, noisy_photo, photo
from tests.staff_web import db_snapshot

JPEG = photo(400, 300)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("payload.html", "<script>alert(1)</script>")
    return out.getvalue()


HOSTILE = {
    # name: (bytes, declared Content-Type, expected status, expected code)
    "html renamed .jpg": (b"<!doctype html><html><script>alert(document.cookie)</script></html>", "image/jpeg", 415,
                          "unsupported_media_type"),
    "pdf renamed .jpg": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "image/jpeg", 415,
                         "unsupported_media_type"),
    "zip renamed .jpg": (_zip(), "image/jpeg", 415, "unsupported_media_type"),
    "png declared as jpeg": (_png(Image.new("RGB", (40, 40))), "image/jpeg", 415, "unsupported_media_type"),
    "truncated jpeg": (JPEG[: len(JPEG) // 2], "image/jpeg", 422, "image_invalid"),
    "empty file": (b"", "image/jpeg", 422, "image_invalid"),
    "random bytes": (bytes(range(7, 250)) * 8, "image/jpeg", 422, "image_invalid"),
    "16-bit png": (_png(Image.new("I;16", (48, 48), 40000)), "image/png", 422, "image_invalid"),
}


def test_owner_uploads_the_four_documents_encrypted(app, client, app_ctx):  # enforces P-12, P-08
    world = agency_with_people(AgencyStatus.PENDING)
    headers = auth_headers(client, world.owner)
    originals = {}
    for n, kind in enumerate(KINDS):
        originals[kind] = noisy_photo(900, 640, seed=n + 1)
        response = upload(client, headers, kind, originals[kind])
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["kind"] == kind
        assert set(response.get_json()) == {"id", "kind", "uploaded_at"}
    listing = client.get(DOCUMENTS, headers=headers).get_json()
    assert [d["kind"] for d in listing["items"]] == list(KINDS)
    assert listing["missing"] == []
    assert listing["status"] == "pending_verification"
    owner = f"agency:{world.public_id}"
    blobs = db.session.execute(select(Blob).where(Blob.deleted_at.is_(None))).scalars().all()
    assert {b.owner for b in blobs} == {owner}  # the agency's own data key, not the uploader's
    assert all(b.user_id is None and b.attached_at is not None for b in blobs)
    assert count(DataKey, DataKey.owner == owner) == 1
    for blob in blobs:
        assert vault.read(blob)[:3] == b"\xff\xd8\xff"  # decrypts to a fresh JPEG
    for data in blob_files(app).values():  # P-08: only ciphertext at rest
        assert b"\xff\xd8\xff" not in data[:16] and b"JFIF" not in data
        for original in originals.values():
            assert original[200:264] not in data
    uploads = db.session.execute(
        select(AuditEvent).where(AuditEvent.action == "agency:document_upload")).scalars().all()
    assert len(uploads) == 4 and {e.subject_id for e in uploads} == {world.public_id}


def test_replacing_a_kind_replaces_its_blob(app, client, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    headers = auth_headers(client, world.owner)
    assert upload(client, headers, "trade_licence", noisy_photo(seed=1)).status_code == 201
    first = db.session.execute(select(AgencyDocument)).scalar_one()
    first_blob = first.blob_id
    files_after_first = blob_files(app)
    assert upload(client, headers, "trade_licence", noisy_photo(seed=2)).status_code == 201
    db.session.expire_all()
    document = db.session.execute(select(AgencyDocument)).scalar_one()
    assert document.public_id == first.public_id and document.blob_id != first_blob
    old = db.session.get(Blob, first_blob)
    assert old is not None and old.deleted_at is not None
    files_after = blob_files(app)
    assert len(set(files_after_first) - set(files_after)) == 1  # the old ciphertext is gone from the store
    assert len(set(files_after) - set(files_after_first)) == 1
    assert count(Blob, Blob.deleted_at.is_(None)) == 1


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_document_is_refused_and_nothing_is_stored(app, client, app_ctx, name):  # UP-02, UP-05, P-08
    payload, declared, status, expected = HOSTILE[name]
    world = agency_with_people(AgencyStatus.PENDING)
    headers = auth_headers(client, world.owner)
    before, files_before = db_snapshot(app), blob_files(app)
    response = upload(client, headers, "representative_id", payload, content_type=declared)
    assert response.status_code == status, response.get_json()
    assert code(response) == expected
    assert db_snapshot(app) == before  # no blob row, no data key, no document row, no audit row
    assert blob_files(app) == files_before


def test_a_replacement_that_fails_keeps_the_previous_document(app, client, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    headers = auth_headers(client, world.owner)
    assert upload(client, headers, "vat_certificate").status_code == 201
    before, files_before = db_snapshot(app), blob_files(app)
    response = upload(client, headers, "vat_certificate", HOSTILE["truncated jpeg"][0])
    assert response.status_code == 422
    assert db_snapshot(app) == before and blob_files(app) == files_before


@pytest.mark.parametrize("kind", ["selfie", "id_front", "other", ""])
def test_unknown_kind_is_refused(app, client, app_ctx, kind):
    world = agency_with_people(AgencyStatus.PENDING)
    response = upload(client, auth_headers(client, world.owner), kind)
    assert response.status_code == 422
    assert count(Blob) == 0


def test_a_json_body_is_not_an_upload(app, client, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    response = client.post(DOCUMENTS, headers=auth_headers(client, world.owner), json={"kind": "trade_licence"})
    assert response.status_code == 415
    assert code(response) == "unsupported_media_type"


def test_unknown_form_fields_are_refused(app, client, app_ctx):  # AZ-08
    world = agency_with_people(AgencyStatus.PENDING)
    response = client.post(DOCUMENTS, headers=auth_headers(client, world.owner), content_type="multipart/form-data",
                           data={"kind": "trade_licence", "agency_id": "1",
                                 "image": (io.BytesIO(JPEG), "x.jpg", "image/jpeg")})
    assert response.status_code == 422
    assert code(response) == "unknown_field"
    assert count(Blob) == 0


@pytest.mark.parametrize("who", ["manager", "staff"])
def test_only_the_owner_uploads(app, client, app_ctx, who):  # AZ-04 (function level)
    world = agency_with_people(AgencyStatus.PENDING)
    response = upload(client, auth_headers(client, getattr(world, who)), "trade_licence")
    assert response.status_code == 403
    assert count(Blob) == 0


@pytest.mark.parametrize("status", [AgencyStatus.ACTIVE, AgencyStatus.SUSPENDED])
def test_documents_are_frozen_once_verified(app, client, app_ctx, status):  # enforces P-12
    world = agency_with_people(status)
    before = db_snapshot(app)
    response = upload(client, auth_headers(client, world.owner), "trade_licence")
    assert response.status_code == 409
    assert code(response) == "agency_documents_locked"
    assert count(Blob) == 0 and db_snapshot(app)["agency_documents"] == before["agency_documents"]


def test_a_rejected_agency_uploading_again_returns_to_the_queue(app, client, app_ctx):
    world = agency_with_people(AgencyStatus.REJECTED)
    response = upload(client, auth_headers(client, world.owner), "authorisation_letter")
    assert response.status_code == 201
    db.session.expire_all()
    assert db.session.get(type(world.agency), world.agency.id).status == AgencyStatus.PENDING


def test_every_staff_member_sees_what_is_missing(app, client, app_ctx):
    world = agency_with_people(AgencyStatus.PENDING)
    assert upload(client, auth_headers(client, world.owner), "trade_licence").status_code == 201
    body = client.get(DOCUMENTS, headers=auth_headers(client, world.staff)).get_json()
    assert [d["kind"] for d in body["items"]] == ["trade_licence"]
    assert body["missing"] == ["vat_certificate", "representative_id", "authorisation_letter"]
