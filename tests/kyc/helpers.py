"""Helpers for KYC tests: generated photos and a customer walked to a submitted case."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from PIL import Image, ImageDraw

from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import ConsentKind


def photo(width: int = 1080, height: int = 1440, colour: tuple[int, int, int] = (180, 120, 90),
          fmt: str = "JPEG", **save: Any) -> bytes:
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 4, height // 4, width // 2, height // 2), fill=(30, 60, 200))
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def emirates_id(year: int, middle: str = "1234567") -> str:
    """A well-formed Emirates ID number with a valid Luhn check digit."""
    body = f"784{year:04d}{middle}"
    for check in range(10):
        digits = body + str(check)
        total = 0
        for i, ch in enumerate(reversed(digits)):
            n = int(ch)
            if i % 2 == 1:
                n = n * 2 - 9 if n > 4 else n * 2
            total += n
        if total % 10 == 0:
            return f"784-{year:04d}-{middle}-{check}"
    raise AssertionError("unreachable")


def identity_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "legal_name": "Customer Number One",
        "date_of_birth": "1990-05-17",
        "nationality": "AE",
        "id_document_type": "emirates_id",
        "id_document_number": emirates_id(1990),
        "id_document_expiry": (date.today() + timedelta(days=900)).isoformat(),
        "licence_number": "DXB-778899",
        "licence_issuer": "AE-DU",
        "licence_expiry": (date.today() + timedelta(days=700)).isoformat(),
        "licence_category": "B",
    }
    body.update(overrides)
    return body


def give_face_consent(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.post("/api/v1/me/consents", headers=headers,
                           json={"kind": "face_data", "text_version": CURRENT[ConsentKind.FACE_DATA].version})
    assert response.status_code in (200, 201), response.get_json()


def upload(client: FlaskClient, headers: dict[str, str], kind: str, data: bytes | None = None,
           content_type: str = "image/jpeg") -> Any:
    body = data if data is not None else photo()
    if kind == "selfie":
        return client.post("/api/v1/me/kyc/selfie", headers=headers,
                           data={"image": (io.BytesIO(body), "selfie.jpg", content_type)},
                           content_type="multipart/form-data")
    return client.post("/api/v1/me/kyc/documents", headers=headers,
                       data={"kind": kind, "image": (io.BytesIO(body), f"{kind}.jpg", content_type)},
                       content_type="multipart/form-data")


def submitted_case(client: FlaskClient, headers: dict[str, str]) -> dict[str, Any]:
    give_face_consent(client, headers)
    assert client.put("/api/v1/me/kyc/identity", headers=headers, json=identity_body()).status_code == 200
    for kind in ("selfie", "id_front", "id_back", "licence_front", "licence_back"):
        response = upload(client, headers, kind)
        assert response.status_code == 201, response.get_json()
    response = client.post("/api/v1/me/kyc/submit", headers=headers)
    assert response.status_code == 200, response.get_json()
    result: dict[str, Any] = response.get_json()
    return result


# ---- shared by the KYC, privacy and vault tests ---------------------------------------------------


def noisy_photo(width: int = 640, height: int = 480, seed: int = 7, fmt: str = "JPEG", **save: Any) -> bytes:
    """A photo-like image with random per-pixel noise (``seed`` only shifts the tint), so every stretch of
    its encoded bytes is distinctive and two calls never give the same bytes."""
    noise = Image.effect_noise((width, height), 64)
    base = Image.merge("RGB", (noise, noise.rotate(90 if width == height else 180), noise.transpose(0)))
    image = Image.blend(base, Image.new("RGB", (width, height), (20 * seed % 255, 90, 140)), 0.3)
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def blob_root(app: Any) -> Path:
    return Path(app.config["SETTINGS"].var_dir) / "blobs"


def blob_files(app: Any) -> dict[str, bytes]:
    """Every file under the blob store root, by relative path, with its bytes."""
    root = blob_root(app)
    if not root.exists():
        return {}
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def latest_case(user_id: int) -> Any:
    from sqlalchemy import select

    from marketplace.extensions import db
    from marketplace.kyc.models import KycCase

    db.session.expire_all()
    return db.session.execute(
        select(KycCase).where(KycCase.user_id == user_id).order_by(KycCase.id.desc()).limit(1)
    ).scalar_one()


def approve_case(user_id: int, reviewer: Any | None = None) -> Any:
    """Claim and approve the customer's current case as a KYC reviewer (service level)."""
    from marketplace.extensions import db
    from marketplace.kyc import service as kyc
    from marketplace.permissions import Role
    from tests.factories import actor_for, make_staff

    actor = reviewer or actor_for(make_staff(Role.KYC_REVIEWER))
    case = latest_case(user_id)
    kyc.claim(actor, case)
    kyc.decide(actor, case, decision="approve", reason_code="documents_match", note=None)
    db.session.commit()
    return actor


def png_bomb(width: int, height: int) -> bytes:
    """A complete 1-bit PNG of width x height black pixels: a few KiB on the wire (a pixel flood)."""
    import struct
    import zlib

    def chunk(ctype: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * min(256, height - y)) for y in range(0, height, 256)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def upload_in_memory(client: FlaskClient, headers: dict[str, str], kind: str, data: bytes,
                     content_type: str = "image/jpeg") -> Any:
    """Like ``upload``, but the multipart body is built in memory: for bodies over 500 KB the test client
    would otherwise spool it to a temporary file of its own (and leak the handle)."""
    from werkzeug.datastructures import FileStorage
    from werkzeug.test import encode_multipart

    image = FileStorage(io.BytesIO(data), filename=f"{kind}.jpg", content_type=content_type)
    if kind == "selfie":
        path, values = "/api/v1/me/kyc/selfie", {"image": image}
    else:
        path, values = "/api/v1/me/kyc/documents", {"kind": kind, "image": image}
    boundary, body = encode_multipart(values)
    return client.post(path, headers=headers, data=body, content_type=f"multipart/form-data; boundary={boundary}")
