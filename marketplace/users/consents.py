"""Consents as rows (P-02): grant, list, give, withdraw; notification preferences."""

from __future__ import annotations

from sqlalchemy import select

from marketplace import audit
from marketplace.errors import Conflict, NotFound
from marketplace.extensions import db, utcnow
from marketplace.security import Actor
from marketplace.users.consent_texts import CURRENT as CURRENT_TEXTS
from marketplace.users.errors import ConsentRequired, ConsentVersionMismatch
from marketplace.users.models import Consent, ConsentKind, User
from marketplace.users.rules import _client


def grant_consent(user: User, kind: ConsentKind, version: str, *, device: str | None = None,
                  context: str | None = None) -> Consent:
    """Record a consent row for the current text (used by other areas, e.g. a booking's mandate)."""
    return _grant(user, kind, version, device=device, context=context)


def _grant(user: User, kind: ConsentKind, version: str, *, device: str | None = None,
           context: str | None = None) -> Consent:
    text = CURRENT_TEXTS[kind]
    if version != text.version:
        raise ConsentVersionMismatch(details={"kind": kind, "current_version": text.version})
    ip, agent = _client()
    consent = Consent(
        user_id=user.id,
        kind=kind,
        text_version=text.version,
        text_sha256=text.sha256,
        granted_at=utcnow(),
        ip_address=ip,
        device=(device or agent or "")[:300] or None,
        context=context,
    )
    db.session.add(consent)
    db.session.flush()
    return consent


def active_consent(user: User, kind: ConsentKind) -> Consent | None:
    return db.session.execute(
        select(Consent)
        .where(Consent.user_id == user.id, Consent.kind == kind, Consent.withdrawn_at.is_(None))
        .order_by(Consent.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def list_consents(user: User) -> list[Consent]:
    return list(db.session.execute(
        select(Consent).where(Consent.user_id == user.id).order_by(Consent.id.desc())
    ).scalars())


def give_consent(actor: Actor, kind: ConsentKind, version: str, device: str | None = None) -> tuple[Consent, bool]:
    """Record a consent; giving the same version again returns the existing row (created=False)."""
    current = active_consent(actor.user, kind)
    if current is not None and current.text_version == version == CURRENT_TEXTS[kind].version:
        return current, False
    if kind in (ConsentKind.MIT_MANDATE, ConsentKind.RENTAL_TERMS):
        raise Conflict("The rental terms and the post-rental charges mandate are accepted with each booking.",
                       details={"kind": kind})
    consent = _grant(actor.user, kind, version, device=device)
    if current is not None:  # superseded by the new version
        current.withdrawn_at = consent.granted_at
    audit.record(actor, "consent:grant", consent, kind=str(kind), version=version)
    return consent, True


def withdraw_consent(actor: Actor, kind: ConsentKind) -> list[Consent]:
    if kind in (ConsentKind.TERMS, ConsentKind.PRIVACY):
        raise ConsentRequired(details={"kind": kind})
    ip, _ = _client()
    rows = list(db.session.execute(
        select(Consent).where(Consent.user_id == actor.user.id, Consent.kind == kind,
                              Consent.withdrawn_at.is_(None))
    ).scalars())
    if not rows:
        raise NotFound(details={"kind": kind})
    now = utcnow()
    for row in rows:
        row.withdrawn_at = now
        row.withdrawn_ip_address = ip
    db.session.flush()
    audit.record(actor, "consent:withdraw", actor.user, kind=str(kind))
    return rows


def preferences(user: User) -> dict[str, bool]:
    return {
        "email": user.notify_email,
        "in_app": user.notify_in_app,
        "marketing": active_consent(user, ConsentKind.MARKETING) is not None,
    }


def update_preferences(actor: Actor, changes: dict[str, bool]) -> dict[str, bool]:
    user = actor.user
    if "email" in changes:
        user.notify_email = changes["email"]
    if "in_app" in changes:
        user.notify_in_app = changes["in_app"]
    if "marketing" in changes:
        has = active_consent(user, ConsentKind.MARKETING) is not None
        if changes["marketing"] and not has:
            _grant(user, ConsentKind.MARKETING, CURRENT_TEXTS[ConsentKind.MARKETING].version)
        elif not changes["marketing"] and has:
            withdraw_consent(actor, ConsentKind.MARKETING)
    db.session.flush()
    audit.record(actor, "account:preferences", user, changes={k: bool(v) for k, v in changes.items()})
    return preferences(user)
