"""The customer's own profile (rectification): plain fields, address, contact, e-mail and phone."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from marketplace import audit
from marketplace.errors import Conflict
from marketplace.extensions import db
from marketplace.notifications import service as notifications
from marketplace.security import Actor, require_recent_auth
from marketplace.users.models import TokenPurpose, User
from marketplace.users.registration import _retire_tokens, _send_verification
from marketplace.users.rules import ensure_adult, normalise_email, normalise_phone

_PLAIN_FIELDS = {"full_name", "nationality"}
_ADDRESS_FIELDS = {"line1": "address_line1", "line2": "address_line2", "city": "address_city",
                   "region": "address_region", "postal_code": "address_postal_code",
                   "country": "address_country"}


def update_profile(actor: Actor, changes: dict[str, Any]) -> User:  # noqa: PLR0912 - one branch per field
    user = actor.user
    changed: list[str] = []
    if "email" in changes or "phone" in changes:
        require_recent_auth(actor)
    for name in _PLAIN_FIELDS & changes.keys():
        value = changes[name]
        setattr(user, name, " ".join(value.split()) if name == "full_name" else value.upper())
        changed.append(name)
    if "date_of_birth" in changes:
        ensure_adult(changes["date_of_birth"])
        user.date_of_birth = changes["date_of_birth"]
        changed.append("date_of_birth")
    if "address" in changes:
        for key, column in _ADDRESS_FIELDS.items():
            if key in changes["address"]:
                value = changes["address"][key]
                setattr(user, column, value.upper() if key == "country" and value else value)
        changed.append("address")
    if "emergency_contact" in changes:
        contact = changes["emergency_contact"] or {}
        user.emergency_contact_name = contact.get("name")
        phone = contact.get("phone")
        user.emergency_contact_phone = normalise_phone(phone, "emergency_contact.phone") if phone else None
        changed.append("emergency_contact")
    if "phone" in changes:
        phone = normalise_phone(changes["phone"])
        if phone != user.phone:
            taken = db.session.execute(select(User.id).where(User.phone == phone, User.id != user.id)).first()
            if taken:
                raise Conflict(details={"fields": {"phone": ["This number cannot be used."]}})
            user.phone = phone
            changed.append("phone")
    if "email" in changes:
        email = normalise_email(changes["email"])
        if email != user.email:
            # a code sent to an earlier pending address must not confirm this one
            _retire_tokens(user, TokenPurpose.EMAIL_VERIFY)
            # the same answer whether or not the address is taken (no enumeration); only a free one gets a code
            user.pending_email = email
            if not db.session.execute(select(User.id).where(User.email == email)).first():
                _send_verification(user, email)
            notifications.send_email(to=user.email, kind="email_change_requested", context={"user": user},
                                     user=user)
            changed.append("email")
    db.session.flush()
    if changed:
        audit.record(actor, "account:update", user, fields=sorted(changed))
    return user
