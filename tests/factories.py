"""Factories for the fixture world: they create rows through the real models and services.

Call them inside an app context (the ``app_ctx`` fixture) or pass ``app``; each commits, because
requests in the same test read through their own sessions.
"""

from __future__ import annotations

import io
import itertools
import secrets
import time
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pyotp
from flask import Flask
from flask.testing import FlaskClient

from marketplace.agencies.models import Agency, AgencyStatus
from marketplace.crypto import encrypt_field
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import AvailabilityBlock, Vehicle, VehicleStatus
from marketplace.permissions import Role
from marketplace.users import passwords
from marketplace.users.consent_texts import CURRENT
from marketplace.users.models import AccountStatus, AccountType, Consent, ConsentKind, User

_seq = itertools.count(1)
PASSWORD = "Correct-Horse-Battery-9"


@dataclass
class Person:
    user_id: int
    public_id: str
    email: str
    password: str
    totp_secret: str | None = None

    def user(self) -> User:
        user = db.session.get(User, self.user_id)
        assert user is not None
        return user


def make_customer(*, status: str = AccountStatus.ACTIVE, dob: date | None = None, **fields: Any) -> Person:
    n = next(_seq)
    email = fields.pop("email", f"customer{n}@example.com")
    user = User(
        account_type=AccountType.CUSTOMER,
        status=status,
        email=email,
        email_verified_at=utcnow() if status == AccountStatus.ACTIVE else None,
        phone=fields.pop("phone", f"+9715{n:08d}"),
        password_hash=passwords.hash_password(PASSWORD),
        password_changed_at=utcnow(),
        full_name=fields.pop("full_name", f"Customer Number{n}"),
        date_of_birth=dob or date(1990, 5, 17),
        nationality="AE",
        address_line1="1 Test Street",
        address_city="Dubai",
        address_country="AE",
        **fields,
    )
    db.session.add(user)
    db.session.flush()
    for kind in (ConsentKind.TERMS, ConsentKind.PRIVACY):
        text = CURRENT[kind]
        db.session.add(Consent(user_id=user.id, kind=kind, text_version=text.version, text_sha256=text.sha256,
                               granted_at=utcnow()))
    db.session.commit()
    return Person(user.id, user.public_id, email, PASSWORD)


def make_agency(*, status: str = AgencyStatus.ACTIVE, name: str | None = None) -> Agency:
    n = next(_seq)
    agency = Agency(
        business_name=name or f"Agency {n} LLC", trade_licence_number=f"DED-{n:07d}", trn=f"100{n:012d}",
        address_line1="Sheikh Zayed Road", address_city="Dubai", address_country="AE",
        representative_name="Rep Resentative", contact_email=f"ops{n}@agency.example",
        contact_phone=f"+9714{n:07d}", status=status, verified_at=utcnow(),
    )
    db.session.add(agency)
    db.session.commit()
    return agency


def make_vehicle(agency: Agency, **fields: Any) -> Vehicle:
    n = next(_seq)
    vehicle = Vehicle(
        agency_id=agency.id, make=fields.pop("make", "Toyota"), model=fields.pop("model", "Corolla"),
        year=2024, category=fields.pop("category", "economy"), plate=f"DXB T {n:05d}", seats=5,
        transmission="automatic", city=fields.pop("city", "Dubai"), latitude=Decimal("25.2"),
        longitude=Decimal("55.27"), daily_price_fils=fields.pop("daily_price_fils", 15000),
        deposit_fils=fields.pop("deposit_fils", 100000), status=fields.pop("status", VehicleStatus.LISTED), **fields,
    )
    db.session.add(vehicle)
    db.session.commit()
    return vehicle


def make_block(vehicle: Vehicle, *, starts_at: Any = None, ends_at: Any = None,
               commit: bool = True) -> AvailabilityBlock:
    """An availability block row of ``vehicle`` (a holder for availability's holds; it holds no time itself)."""
    start = starts_at or utcnow()
    block = AvailabilityBlock(vehicle_id=vehicle.id, starts_at=start, ends_at=ends_at or start + timedelta(hours=1),
                              created_at=utcnow())
    db.session.add(block)
    db.session.flush()
    if commit:
        db.session.commit()
    return block


def make_staff(role: Role, *, agency: Agency | None = None, mfa: bool = True, email: str | None = None) -> Person:
    """A staff member with one role; with ``mfa`` their authenticator is already enrolled."""
    from flask import current_app

    from marketplace.users import service

    n = next(_seq)
    user = service.create_staff(
        email=email or f"{role.value.replace('_', '-')}{n}@staff.example",
        full_name=f"Staff Member{n}",
        password=PASSWORD,
        roles=[(role, agency.id if agency is not None else None)],
    )
    secret = None
    if mfa:
        secret = pyotp.random_base32(32)
        user.totp_secret_enc = encrypt_field(current_app.extensions["keyring"], secret.encode(),
                                             aad=f"totp:{user.public_id}".encode())
        user.totp_enrolled_at = utcnow()
    db.session.commit()
    return Person(user.id, user.public_id, user.email, PASSWORD, secret)


def totp_code(person: Person | str, *, step_offset: int = 0) -> str:
    """A code for the current step (+offset). Codes are single-use: use ``next_totp`` for a second one."""
    secret = person if isinstance(person, str) else person.totp_secret
    assert secret
    return pyotp.TOTP(secret).at(int(time.time()) + 30 * step_offset)


def next_totp(person: Person) -> str:
    """A code the server has not seen yet (within the ±1 step window), read from the user's last step."""
    user = db.session.get(User, person.user_id)
    assert user is not None and person.totp_secret
    db.session.refresh(user)
    while True:
        now = time.time()
        if now % 30 > 27:  # too close to a step boundary: the server may already be one step on
            time.sleep(30 - now % 30 + 0.2)
            continue
        now_step = int(now) // 30
        step = max(now_step, user.totp_last_counter + 1)
        if step <= now_step + 1:
            return pyotp.TOTP(person.totp_secret).generate_otp(step)
        time.sleep(30 - now % 30 + 0.2)


# ---- signing in -------------------------------------------------------------------------------------


def api_login(client: FlaskClient, person: Person) -> dict[str, Any]:
    """Customer sign-in; staff also pass the MFA step. Returns the token response."""
    response = client.post("/api/v1/auth/login", json={"email": person.email, "password": person.password})
    assert response.status_code == 200, response.get_json()
    tokens: dict[str, Any] = response.get_json()
    if tokens["mfa_required"]:
        response = client.post("/api/v1/auth/mfa", json={"code": next_totp(person)},
                               headers=bearer(tokens["access_token"]))
        assert response.status_code == 200, response.get_json()
        tokens = response.get_json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_headers(client: FlaskClient, person: Person) -> dict[str, str]:
    return bearer(api_login(client, person)["access_token"])


def csrf_from(html: str) -> str:
    import re

    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def web_login(client: FlaskClient, person: Person, door: str = "console", *, mfa: bool = True) -> None:
    """Sign a staff member in to ``/console`` or ``/agency`` through the real pages."""
    page = client.get(f"/{door}/login")
    response = client.post(f"/{door}/login", data={"email": person.email, "password": person.password,
                                                   "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    if not mfa:
        return
    page = client.get(f"/{door}/mfa")
    response = client.post(f"/{door}/mfa", data={"code": next_totp(person),
                                                 "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]


def random_email() -> str:
    return f"user-{secrets.token_hex(4)}@example.com"


def registration_body(**overrides: Any) -> dict[str, Any]:
    n = next(_seq)
    body: dict[str, Any] = {
        "full_name": "Maryam Al Suwaidi",
        "date_of_birth": "1994-03-08",
        "nationality": "AE",
        "email": f"maryam{n}-{secrets.token_hex(3)}@example.com",
        "phone": f"+97155{n:07d}",
        "address": {"line1": "Villa 12, Street 4", "city": "Dubai", "country": "AE"},
        "password": "Saffron-Dune-Falcon-42",
        "accepted_terms_version": CURRENT[ConsentKind.TERMS].version,
        "accepted_privacy_version": CURRENT[ConsentKind.PRIVACY].version,
    }
    body.update(overrides)
    return body


def outbox_token(app: Flask, *, to: str, kind: str) -> str:
    """The one-time code in the newest e-mail of ``kind`` to ``to`` (read from the outbox)."""
    import re

    from sqlalchemy import select

    from marketplace.notifications.models import OutboxMessage

    with app.app_context():
        message = db.session.execute(
            select(OutboxMessage).where(OutboxMessage.to_address == to, OutboxMessage.kind == kind)
            .order_by(OutboxMessage.id.desc()).limit(1)
        ).scalar_one()
        match = re.search(r"^ {4}(\S+)$", message.body_text, re.M)
        assert match, message.body_text
        return match.group(1)


def table_rows(app: Flask, *tables: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, read through a fresh connection: compare before/after ("nothing changed")."""
    from sqlalchemy import text

    with app.app_context(), db.engine.connect() as conn:
        # table names come from the test itself, never from input
        return {table: [tuple(row) for row in conn.execute(text(f'SELECT * FROM "{table}" ORDER BY 1'))]  # noqa: S608
                for table in tables}


def actor_for(person: Person, *, mfa: bool = True) -> Any:
    """A service-level ``Actor`` for ``person`` with a fresh API session (for service tests)."""
    from flask import current_app

    from marketplace.security import Actor
    from marketplace.users import sessions

    issued = sessions.start_session(person.user(), sessions.SessionChannel.API, current_app.config["SETTINGS"],
                                    mfa_done=mfa)
    return Actor.for_session(issued.session)


def make_verified_customer(*, licence_valid_days: int = 700, selfie: bytes | None = None, **fields: Any) -> Person:
    """A customer cleared to drive: identity on file, face-data consent, an approved KYC case (with ``selfie``,
    a JPEG, stored through the vault on that case, as an upload would be)."""
    from datetime import timedelta

    from marketplace.kyc.models import KycCase, KycIdentity, data_owner
    from marketplace.kyc.states import CaseStatus
    from marketplace.vault import service as vault

    person = make_customer(**fields)
    user = person.user()
    today = date.today()
    db.session.add(KycIdentity(
        user_id=user.id, legal_name=user.full_name, date_of_birth=user.date_of_birth or date(1990, 5, 17),
        nationality="AE", id_document_type="passport", id_document_number="P1234567",
        id_document_expiry=today + timedelta(days=900), licence_number="DXB-778899", licence_issuer="AE-DU",
        licence_expiry=today + timedelta(days=licence_valid_days), licence_category="B",
    ))
    text = CURRENT[ConsentKind.FACE_DATA]
    consent = Consent(user_id=user.id, kind=ConsentKind.FACE_DATA, text_version=text.version,
                      text_sha256=text.sha256, granted_at=utcnow())
    db.session.add(consent)
    db.session.flush()
    case = KycCase(user_id=user.id, status=CaseStatus.APPROVED, submitted_at=utcnow(), decided_at=utcnow(),
                   face_consent_id=consent.id, face_consent_version=text.version)
    if selfie is not None:
        from PIL import Image

        with Image.open(io.BytesIO(selfie)) as image:
            width, height = image.size
        blob = vault.store(data_owner(user.public_id), "selfie", selfie, mime="image/jpeg", width=width, height=height,
                           user_id=user.id)
        blob.attached_at = utcnow()
        case.selfie_blob_id = blob.id
    db.session.add(case)
    db.session.commit()
    return person


def booking_body(
    vehicle: Vehicle, *, start_in_hours: float = 48, hours: float = 48, **overrides: Any
) -> dict[str, Any]:
    from datetime import timedelta

    start = (utcnow() + timedelta(hours=start_in_hours)).replace(microsecond=0)
    body: dict[str, Any] = {
        "vehicle_id": vehicle.public_id,
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=hours)).isoformat(),
        "accept_rental_terms_version": CURRENT[ConsentKind.RENTAL_TERMS].version,
        "accept_mit_mandate_version": CURRENT[ConsentKind.MIT_MANDATE].version,
    }
    body.update(overrides)
    return body


def make_invoice(issuer: Any, recipient: Any, *, nets: tuple[int, ...] = (30000, 3000), source: str | None = None,
                 booking: Any = None) -> Any:
    """A tax invoice (P-23) through the invoice service: one line per net amount in fils, VAT worked out."""
    from marketplace.money import Money
    from marketplace.payments import invoices

    lines = [invoices.LineIn(f"Item {n}", Money(net), kind=f"item{n}") for n, net in enumerate(nets, start=1)]
    invoice = invoices.issue_invoice(issuer, recipient, lines, date.today(),
                                     source=("test", source or f"src-{next(_seq)}"), booking=booking)
    db.session.commit()
    return invoice


def mandate_acceptance() -> dict[str, Any]:
    """What the app sends when the customer ticked the MIT mandate box under its exact text (P-20)."""
    text = CURRENT[ConsentKind.MIT_MANDATE]
    return {"version": text.version, "text_sha256": text.sha256, "accepted": True}


def save_card(client: FlaskClient, headers: dict[str, str], server: Any, number: str = "4242424242424242") -> str:
    """Save a card the way the app does: start the setup, let the "SDK" confirm it with localstripe (the card
    number goes there, never to us), then tell the API. Returns the saved card's id."""
    from marketplace.payments.gateway import CardSetup
    from tests.payments.helpers import sdk_confirm_setup

    started = client.post("/api/v1/me/payment-methods/setup", headers=headers)
    assert started.status_code == 201, started.get_json()
    data = started.get_json()
    status, body = sdk_confirm_setup(server, CardSetup(data["setup_intent_id"], "requires_payment_method",
                                                       data["client_secret"]), number)
    assert status == 200, body
    saved = client.post("/api/v1/me/payment-methods", json={"setup_intent_id": data["setup_intent_id"]},
                        headers=headers)
    assert saved.status_code == 201, saved.get_json()
    return str(saved.get_json()["id"])


def book(client: FlaskClient, headers: dict[str, str], vehicle: Vehicle, **overrides: Any) -> str:
    """A pending booking through the API; returns its reference."""
    response = client.post("/api/v1/bookings", json=booking_body(vehicle, **overrides), headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["reference"])


def pay(client: FlaskClient, headers: dict[str, str], reference: str, card_id: str) -> Any:
    return client.post(f"/api/v1/bookings/{reference}/pay", headers=headers,
                       json={"payment_method_id": card_id, "mit_mandate": mandate_acceptance()})
