"""Public sign-up (P-12): a pending agency and its owner's staff account, or nothing at all."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from marketplace import audit
from marketplace.agencies.models import Agency
from marketplace.agencies.rules import _email, _name, normalise_trade_licence, normalise_trn
from marketplace.agencies.states import AgencyStatus
from marketplace.errors import Conflict
from marketplace.extensions import db
from marketplace.notifications import service as notifications
from marketplace.permissions import Role
from marketplace.users import service as users


@dataclass(frozen=True)
class SignUp:
    business_name: str
    trade_licence_number: str
    trn: str
    address: dict[str, str]
    representative_name: str
    contact_email: str
    contact_phone: str
    owner: dict[str, str]


def sign_up(data: SignUp) -> Agency | None:
    """Create a pending agency and its owner's staff account, or nothing at all.

    The caller answers the same whether or not the owner's e-mail is already registered (no account
    enumeration): the holder of an existing account is told by e-mail instead, and no agency is created.
    """
    business_name = _name(data.business_name, "business_name")
    representative = _name(data.representative_name, "representative_name")
    line1, city = _name(data.address["line1"], "address.line1"), _name(data.address["city"], "address.city")
    trn = normalise_trn(data.trn)
    licence = normalise_trade_licence(data.trade_licence_number)
    contact_email = _email(data.contact_email, "contact_email")
    contact_phone = users.normalise_phone(data.contact_phone, "contact_phone")
    owner_email = _email(data.owner["email"], "owner.email")
    owner_name = _name(data.owner["full_name"], "owner.full_name")
    try:
        users.check_password_policy(data.owner["password"], email=owner_email, name=owner_name)
    except users.WeakPassword as exc:
        raise users.WeakPassword(details={"fields": {"owner.password": exc.details["fields"]["password"]}}) from exc

    existing = users.find_by_email(owner_email)
    if existing is None:
        try:
            # a savepoint: if the owner cannot be created, the agency row goes too
            with db.session.begin_nested():
                agency = Agency(
                    business_name=business_name, trade_licence_number=licence, trn=trn,
                    address_line1=line1, address_city=city, address_country=data.address["country"].upper(),
                    representative_name=representative,
                    contact_email=contact_email, contact_phone=contact_phone, status=AgencyStatus.PENDING,
                )
                db.session.add(agency)
                db.session.flush()
                owner = users.create_staff(email=owner_email, full_name=owner_name, password=data.owner["password"],
                                           roles=[(Role.AGENCY_OWNER, agency.id)])
        except (Conflict, IntegrityError):
            # a concurrent sign-up or registration took the address between the check and the insert
            existing = users.find_by_email(owner_email)
            if existing is None:
                raise
        else:
            notifications.send_email(to=owner.email, kind="agency_signup_received", user=owner,
                                     context={"agency": agency, "user": owner})
            audit.record(None, "agency:signup", agency, owner=owner.public_id)
            return agency
    users.equal_hashing_work(data.owner["password"])  # the same work as a real sign-up
    if users.is_open(existing):
        notifications.send_email(to=existing.email, kind="agency_signup_exists", user=existing,
                                 context={"user": existing})
    audit.record(None, "agency:signup_duplicate", existing, outcome="refused")
    return None
