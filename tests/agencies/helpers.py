"""Helpers for agency tests: sign-up bodies, document uploads and agencies with their people."""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from marketplace.agencies.models import Agency, AgencyDocument, AgencyStatus
from marketplace.extensions import db, utcnow
from marketplace.permissions import Role
from marketplace.users.models import RoleAssignment
from tests.factories import Person, make_agency, make_staff
from tests.kyc.helpers import photo

AGENCY = "/api/v1/agency"
DOCUMENTS = "/api/v1/agency/documents"
STAFF = "/api/v1/agency/staff"
SIGNUP = "/api/v1/agencies"
KINDS = ("trade_licence", "vat_certificate", "representative_id", "authorisation_letter")


def signup_body(**overrides: Any) -> dict[str, Any]:
    tag = secrets.token_hex(3)
    body: dict[str, Any] = {
        "business_name": f"Desert Wheels {tag} Car Rental LLC",
        "trade_licence_number": "DED-884412",
        "trn": "100234567890003",
        "address": {"line1": "Office 12, Al Quoz Industrial 3", "city": "Dubai", "country": "ae"},
        "representative_name": "Khalid Al Mansoori",
        "contact_email": f"ops-{tag}@desertwheels.example",
        "contact_phone": "+971 4 300 1234",
        "owner": {"full_name": "Khalid Al Mansoori", "email": f"khalid-{tag}@desertwheels.example",
                  "password": "Saffron-Dune-Falcon-42"},
    }
    body.update(overrides)
    return body


def code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


def upload(client: FlaskClient, headers: dict[str, str], kind: str, data: bytes | None = None, *,
           content_type: str = "image/jpeg", agency: str | None = None) -> Any:
    body = data if data is not None else photo(1200, 900)
    return client.post(DOCUMENTS, headers=headers, query_string={"agency": agency} if agency else None,
                       data={"kind": kind, "image": (io.BytesIO(body), f"{kind}.jpg", content_type)},
                       content_type="multipart/form-data")


@dataclass
class AgencyWorld:
    agency: Agency
    owner: Person
    manager: Person
    staff: Person

    @property
    def public_id(self) -> str:
        return self.agency.public_id


def agency_with_people(status: str = AgencyStatus.ACTIVE) -> AgencyWorld:
    agency = make_agency(status=status)
    if status != AgencyStatus.ACTIVE:
        agency.verified_at = None
        db.session.commit()
    return AgencyWorld(agency, make_staff(Role.AGENCY_OWNER, agency=agency),
                       make_staff(Role.AGENCY_MANAGER, agency=agency), make_staff(Role.AGENCY_STAFF, agency=agency))


def grant_role(person: Person, role: Role, agency: Agency) -> None:
    db.session.add(RoleAssignment(user_id=person.user_id, role=role, agency_id=agency.id, granted_at=utcnow()))
    db.session.commit()


def count(model: Any, *where: Any) -> int:
    db.session.expire_all()
    return int(db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def attach_all_documents(agency: Agency, uploader: Person) -> None:
    """The four documents, stored through the real pipeline (service level)."""
    from marketplace.agencies import service
    from tests.factories import actor_for

    actor = actor_for(uploader)
    status = agency.status
    if status not in (AgencyStatus.PENDING, AgencyStatus.REJECTED):
        agency.status = AgencyStatus.PENDING
    for kind in KINDS:
        service.upload_document(actor, agency.public_id, kind, io.BytesIO(photo(800, 600)), "image/jpeg")
    agency.status = status
    db.session.commit()
    assert count(AgencyDocument, AgencyDocument.agency_id == agency.id) == 4
