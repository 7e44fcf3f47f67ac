"""Identity data (P-05): document numbers checked and sealed under the customer's key."""

from __future__ import annotations

import re
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from marketplace import audit
from marketplace.errors import Unprocessable
from marketplace.extensions import db
from marketplace.kyc import states
from marketplace.kyc.errors import ReverificationRequired
from marketplace.kyc.lookup import current_case
from marketplace.kyc.models import KycIdentity
from marketplace.kyc.rules import EMIRATES, ID_TYPES
from marketplace.security import Actor
from marketplace.users.service import age_on, business_today

if TYPE_CHECKING:
    pass


_EMIRATES_ID = re.compile(r"^784-(\d{4})-(\d{7})-(\d)$")
_PASSPORT = re.compile(r"^[A-Z0-9]{6,9}$")
_LICENCE = re.compile(r"^[A-Z0-9-]{4,20}$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def validate_document_number(kind: str, number: str, dob: date) -> str:
    value = number.strip().upper()
    if kind == "emirates_id":
        match = _EMIRATES_ID.match(value)
        if not match:
            raise Unprocessable(details={"fields": {"id_document_number": ["Use the format 784-YYYY-NNNNNNN-N."]}})
        if not _luhn_ok(value.replace("-", "")):
            raise Unprocessable(details={"fields": {"id_document_number": ["The check digit does not match."]}})
        if int(match.group(1)) != dob.year:
            message = "The year part must be the year of birth."
            raise Unprocessable(details={"fields": {"id_document_number": [message]}})
        return value
    if not _PASSPORT.match(value):
        raise Unprocessable(details={"fields": {"id_document_number": ["6 to 9 letters and digits."]}})
    return value


def put_identity(actor: Actor, data: dict[str, Any]) -> KycIdentity:
    user = actor.user
    case = current_case(user, create=True)
    if case.status not in states.EDITABLE:
        raise ReverificationRequired()
    today = business_today()
    errors: dict[str, list[str]] = {}
    if data["licence_expiry"] <= today:
        errors["licence_expiry"] = ["The driving licence has expired."]
    if data["id_document_expiry"] <= today:
        errors["id_document_expiry"] = ["The ID document has expired."]
    if data["id_document_type"] not in ID_TYPES:
        errors["id_document_type"] = [f"One of: {', '.join(ID_TYPES)}."]
    issuer = data["licence_issuer"].upper()
    if not (issuer in EMIRATES or re.fullmatch(r"[A-Z]{2}", issuer)):
        errors["licence_issuer"] = ["A two-letter country code or a UAE emirate (e.g. AE-DU)."]
    if age_on(data["date_of_birth"], today) < 21:
        errors["date_of_birth"] = ["Drivers must be at least 21."]
    if not _LICENCE.match(data["licence_number"].strip().upper()):
        errors["licence_number"] = ["4 to 20 letters, digits or dashes."]
    if errors:
        raise Unprocessable(details={"fields": errors})
    number = validate_document_number(data["id_document_type"], data["id_document_number"], data["date_of_birth"])
    identity = db.session.execute(select(KycIdentity).where(KycIdentity.user_id == user.id)).scalar_one_or_none()
    new = identity is None
    if identity is None:
        # added once complete: sealing the numbers may create the data key, and that flushes the session
        identity = KycIdentity(user_id=user.id)
    identity.legal_name = " ".join(data["legal_name"].split())
    identity.date_of_birth = data["date_of_birth"]
    identity.nationality = data["nationality"].upper()
    identity.id_document_type = data["id_document_type"]
    identity.id_document_number = number
    identity.id_document_expiry = data["id_document_expiry"]
    identity.licence_number = data["licence_number"].strip().upper()
    identity.licence_issuer = issuer
    identity.licence_expiry = data["licence_expiry"]
    identity.licence_category = data["licence_category"].strip().upper()
    if new:
        db.session.add(identity)
    db.session.flush()
    audit.record(actor, "kyc:identity_put", case)
    return identity
