"""Helpers for KYC tests: generated photos and a customer walked to a submitted case."""

from __future__ import annotations

import io
from datetime import date, timedelta
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
