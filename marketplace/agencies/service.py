"""Agency rules (P-12): public sign-up, the agency's own profile, documents and staff, and verification,
rejection, suspension and reinstatement by platform staff.

Agency-side verbs take the agency's public id (or ``None``) and resolve it among the caller's own
agencies only, so another agency's profile, documents or staff are simply not found (404, AZ-03).
Permissions are checked against the caller's roles *in that agency*: being an owner of one agency
gives nothing in another. Services flush but never commit; the unit of work commits once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Select, case, or_, select
from sqlalchemy.exc import IntegrityError

from marketplace import audit, images
from marketplace.agencies import states
from marketplace.agencies.models import Agency, AgencyDocument
from marketplace.agencies.states import UNVERIFIED, AgencyDocumentKind, AgencyStatus
from marketplace.errors import Conflict, Forbidden, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.kyc import service as kyc
from marketplace.notifications import service as notifications
from marketplace.permissions import AGENCY_ROLES, Permission, Role
from marketplace.security import Actor, require, require_in_agency
from marketplace.users import service as users
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.users.models import StaffInvitation, User
    from marketplace.vault.models import Blob

DOCUMENT_KINDS: tuple[str, ...] = tuple(k.value for k in AgencyDocumentKind)
IDENTITY_FIELDS = frozenset({"business_name", "trade_licence_number", "trn", "representative_name"})
MAX_TURNAROUND_MINUTES = 24 * 60
_TRN = re.compile(r"^100[0-9]{12}$")  # UAE TRN: 15 ASCII digits starting with 100 (\d matches any script)
_TRADE_LICENCE = re.compile(r"^[A-Z0-9][A-Z0-9/\- ]{2,63}$")


class AgencyNotActive(Conflict):
    code = "agency_not_active"
    message = "The agency is not verified and active."


class IdentityLocked(Conflict):
    code = "agency_identity_locked"
    message = "The business identity was verified and cannot change here. Contact CareJar to change it."


class DocumentsLocked(Conflict):
    code = "agency_documents_locked"
    message = "Documents can be replaced only before the agency is verified."


class DocumentsMissing(Conflict):
    code = "agency_documents_missing"
    message = "All four verification documents are needed first."


class SelfVerificationForbidden(Forbidden):
    code = "self_review_forbidden"
    message = "You cannot verify or act on an agency you work for."


class CannotRemoveSelf(Conflict):
    code = "cannot_remove_self"
    message = "You cannot remove yourself from the agency. Ask another owner."


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(details={"fields": {field: [message]}})


def vault_owner(agency: Agency) -> str:
    """Agency documents are encrypted under the agency's own data key, not a person's."""
    return f"agency:{agency.public_id}"


def normalise_trn(raw: str) -> str:
    value = re.sub(r"[\s\-]", "", raw)
    if not _TRN.match(value):
        raise _invalid("trn", "A UAE TRN has 15 digits and starts with 100.")
    return value


def normalise_trade_licence(raw: str) -> str:
    value = " ".join(raw.split()).upper()
    if not _TRADE_LICENCE.match(value):
        raise _invalid("trade_licence_number", "3 to 64 letters, digits, spaces, dashes or slashes.")
    return value


def _email(raw: str, field: str) -> str:
    try:
        return users.normalise_email(raw)
    except Unprocessable as exc:
        raise _invalid(field, "Not a valid e-mail address.") from exc


def _name(raw: str, field: str = "name") -> str:
    value = " ".join(raw.split())
    if not value:
        raise _invalid(field, "Must not be blank.")
    return value


# ---- public sign-up ------------------------------------------------------------------------------


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


# ---- the caller's own agency -------------------------------------------------------------------


def agencies_of(actor: Actor) -> list[Agency]:
    ids = actor.agency_ids
    if not ids:
        return []
    return list(db.session.execute(
        select(Agency).where(Agency.id.in_(ids)).order_by(Agency.business_name, Agency.id)
    ).scalars())


def own_agency(actor: Actor, public_id: str | None = None) -> Agency:
    """The caller's agency: the one named (among their own), or their only one. Others are not found."""
    require(actor, Permission.AGENCY_ACCESS)
    ids = actor.agency_ids
    if public_id:
        agency = db.session.execute(
            select(Agency).where(Agency.public_id == public_id, Agency.id.in_(ids))
        ).scalar_one_or_none() if ids else None
        if agency is None:
            raise NotFound()
        return agency
    if not ids:
        raise NotFound()
    if len(ids) > 1:
        raise _invalid("agency", "You work for several agencies: name one with ?agency=<id>.")
    agency = db.session.get(Agency, next(iter(ids)))
    if agency is None:
        raise NotFound()
    return agency


def require_in(actor: Actor, agency: Agency, permission: Permission) -> None:
    """Permission through the caller's roles in *this* agency (``security.require_in_agency``)."""
    require_in_agency(actor, agency.id, permission)


def require_active(agency: Agency) -> None:
    """Only a verified, active agency lists cars and takes bookings."""
    if agency.status != AgencyStatus.ACTIVE:
        raise AgencyNotActive(details={"status": agency.status})


def missing_documents(agency: Agency) -> list[str]:
    have = set(db.session.execute(
        select(AgencyDocument.kind).where(AgencyDocument.agency_id == agency.id)
    ).scalars())
    return [kind for kind in DOCUMENT_KINDS if kind not in have]


def _resubmit(actor: Actor, agency: Agency) -> None:
    """A rejected agency that corrects its data or documents goes back to the verification queue."""
    if agency.status == AgencyStatus.REJECTED:
        states.check(agency.status, AgencyStatus.PENDING)
        agency.status = AgencyStatus.PENDING
        agency.status_reason = None
        audit.record(actor, "agency:resubmit", agency)


def update_profile(  # noqa: PLR0912 - one branch per field
    actor: Actor, agency_ref: str | None, changes: dict[str, Any]
) -> Agency:
    """Contact details, address and turnaround at any time; the business identity only before verification."""
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_PROFILE_WRITE)
    identity = sorted(IDENTITY_FIELDS & changes.keys())
    if identity and agency.status not in UNVERIFIED:
        raise IdentityLocked(details={"fields": identity})
    changed: list[str] = []
    if "business_name" in changes:
        agency.business_name = _name(changes["business_name"], "business_name")
    if "representative_name" in changes:
        agency.representative_name = _name(changes["representative_name"], "representative_name")
    if "trn" in changes:
        agency.trn = normalise_trn(changes["trn"])
    if "trade_licence_number" in changes:
        agency.trade_licence_number = normalise_trade_licence(changes["trade_licence_number"])
    changed += identity
    if "contact_email" in changes:
        agency.contact_email = _email(changes["contact_email"], "contact_email")
        changed.append("contact_email")
    if "contact_phone" in changes:
        agency.contact_phone = users.normalise_phone(changes["contact_phone"], "contact_phone")
        changed.append("contact_phone")
    if "address" in changes:
        address = changes["address"]
        if "line1" in address:
            agency.address_line1 = _name(address["line1"], "address.line1")
        if "city" in address:
            agency.address_city = _name(address["city"], "address.city")
        if "country" in address:
            agency.address_country = address["country"].upper()
        changed.append("address")
    if "turnaround_minutes" in changes:
        minutes = changes["turnaround_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 <= minutes <= MAX_TURNAROUND_MINUTES:
            raise _invalid("turnaround_minutes", f"Whole minutes from 0 to {MAX_TURNAROUND_MINUTES}.")
        agency.turnaround_minutes = minutes
        changed.append("turnaround_minutes")
    if identity:
        _resubmit(actor, agency)
    db.session.flush()
    audit.record(actor, "agency:update", agency, fields=sorted(changed))
    return agency


# ---- verification documents --------------------------------------------------------------------


def documents_of(agency: Agency) -> list[AgencyDocument]:
    rows = db.session.execute(select(AgencyDocument).where(AgencyDocument.agency_id == agency.id)).scalars()
    order = {kind: i for i, kind in enumerate(DOCUMENT_KINDS)}
    return sorted(rows, key=lambda d: order.get(d.kind, len(order)))


def list_documents(actor: Actor, agency_ref: str | None) -> tuple[Agency, list[AgencyDocument]]:
    agency = own_agency(actor, agency_ref)
    return agency, documents_of(agency)


def upload_document(actor: Actor, agency_ref: str | None, kind: str, stream: IO[bytes],
                    declared_type: str | None) -> AgencyDocument:
    """Run one document photo through the image pipeline and store it encrypted for the agency.

    Replacing a kind replaces its blob. Allowed only before verification (pending or rejected).
    """
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_PROFILE_WRITE)
    if kind not in DOCUMENT_KINDS:
        raise _invalid("kind", f"One of: {', '.join(DOCUMENT_KINDS)}.")
    if agency.status not in UNVERIFIED:
        raise DocumentsLocked(details={"status": agency.status})
    processed = images.process_image(stream, policy=images.DOCUMENT_POLICY, declared_type=declared_type)
    blob = vault.store(vault_owner(agency), kind, processed.data, mime=processed.mime, width=processed.width,
                       height=processed.height)
    now = utcnow()
    blob.attached_at = now  # claimed by the document row at once (never swept as an orphan upload)
    document = db.session.execute(
        select(AgencyDocument).where(AgencyDocument.agency_id == agency.id, AgencyDocument.kind == kind)
    ).scalar_one_or_none()
    old: Blob | None = None
    if document is None:
        document = AgencyDocument(agency_id=agency.id, kind=kind, blob_id=blob.id)
        db.session.add(document)
    else:
        old = vault.get_blob(document.blob_id)
        document.blob_id = blob.id
    document.uploaded_by_id = actor.user.id
    document.uploaded_at = now
    db.session.flush()
    if old is not None and old.deleted_at is None:
        vault.delete(old)
    _resubmit(actor, agency)
    audit.record(actor, "agency:document_upload", agency, kind=kind, blob=blob.public_id,
                 replaced=old.public_id if old is not None else None)
    return document


def document_blob(document: AgencyDocument) -> Blob:
    blob = vault.get_blob(document.blob_id)
    if blob is None or blob.deleted_at is not None:
        raise NotFound()
    return blob


# ---- staff -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaffMember:
    user: User
    roles: list[str]


def _members(agency: Agency, *, after_id: int | None = None, limit: int | None = None) -> list[StaffMember]:
    return [StaffMember(user, roles) for user, roles in users.agency_members(agency.id, after_id=after_id, limit=limit)]


def list_staff(actor: Actor, agency_ref: str | None, *, after_id: int | None = None,
               limit: int | None = None) -> list[StaffMember]:
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_STAFF_MANAGE)
    return _members(agency, after_id=after_id, limit=limit)


def pending_invitations(actor: Actor, agency_ref: str | None) -> list[StaffInvitation]:
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_STAFF_MANAGE)
    return users.open_invitations(agency.id)


def invite(actor: Actor, agency_ref: str | None, *, email: str, full_name: str, role: str) -> StaffInvitation:
    """Invite someone to this agency with an agency role (only an owner may invite an owner)."""
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_STAFF_MANAGE)
    try:
        agency_role = Role(role)
    except ValueError:
        agency_role = None
    if agency_role is None or agency_role not in AGENCY_ROLES:
        raise _invalid("role", f"One of: {', '.join(sorted(AGENCY_ROLES))}.")
    _name(full_name, "full_name")
    return users.invite_staff(actor, email=email, full_name=full_name, role=agency_role, agency_id=agency.id)


def remove_staff(actor: Actor, agency_ref: str | None, user_public_id: str) -> User:
    """Take away every role the person holds in this agency; all their sessions end at once (P-04)."""
    agency = own_agency(actor, agency_ref)
    require_in(actor, agency, Permission.AGENCY_STAFF_MANAGE)
    member = users.agency_member(agency.id, user_public_id)
    if member is None:
        raise NotFound()
    if member.id == actor.user.id:
        raise CannotRemoveSelf()
    for role in sorted({Role(a.role) for a in member.roles if a.agency_id == agency.id}):
        users.remove_role(actor, member, role, agency.id)  # checks that the caller may take this role away
    return member


# ---- verification by platform staff (console) ---------------------------------------------------


def require_verifier(actor: Actor, agency: Agency | None = None) -> None:
    """Platform staff who verify agencies, never for an agency they work for themselves."""
    _verifier(actor, agency)


def _verifier(actor: Actor, agency: Agency | None = None) -> None:
    require(actor, Permission.AGENCY_VERIFY)
    if agency is not None and agency.id in actor.agency_ids:
        raise SelfVerificationForbidden()


def list_for_console(actor: Actor, *, status: str | None = None, limit: int = 500) -> list[Agency]:
    """Every agency, those waiting for a decision first (oldest first within each status)."""
    _verifier(actor)
    rank = case({str(s): i for i, s in enumerate(states.LIST_ORDER)}, value=Agency.status, else_=len(states.LIST_ORDER))
    stmt = select(Agency).order_by(rank, Agency.created_at, Agency.id).limit(limit)
    if status:
        stmt = stmt.where(Agency.status == status)
    return list(db.session.execute(stmt).scalars())


def get_for_console(actor: Actor, public_id: str) -> Agency:
    _verifier(actor)
    agency = db.session.execute(select(Agency).where(Agency.public_id == public_id)).scalar_one_or_none()
    if agency is None:
        raise NotFound()
    return agency


def staff_of(actor: Actor, agency: Agency) -> list[StaffMember]:
    _verifier(actor)
    return _members(agency)


def lookalikes(actor: Actor, agency: Agency) -> list[Agency]:
    """Other agencies with the same TRN or trade licence number: a reviewer should know before approving."""
    _verifier(actor)
    return list(db.session.execute(
        select(Agency).where(Agency.id != agency.id, or_(Agency.trn == agency.trn,
                                                         Agency.trade_licence_number == agency.trade_licence_number))
        .order_by(Agency.id)
    ).scalars())


def document_image_grants(actor: Actor, agency: Agency) -> dict[str, str]:
    """A single-use image link per uploaded document, each through the one image policy (audited)."""
    _verifier(actor, agency)
    return {
        document.kind: kyc.grant_image_view(actor, document_blob(document), purpose="agency_verification",
                                        context=agency.public_id, reason="Agency verification: check the document")
        for document in documents_of(agency)
    }


def _notify(agency: Agency, kind: str, **context: Any) -> None:
    notifications.send_email(to=agency.contact_email, kind=kind, context={"agency": agency, **context})


def _reason(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise _invalid("reason", "Give a reason: the agency is told.")
    if len(text) > 300:
        raise _invalid("reason", "At most 300 characters.")
    return text


def _move(agency: Agency, source: AgencyStatus, target: AgencyStatus) -> None:
    """Each verb starts from one status: approving and reinstating both end ``active``, but reinstating a
    pending agency would skip verification, and approving a suspended one would skip the review."""
    if agency.status != source:
        raise states.IllegalTransition(details={"from": agency.status, "to": str(target)})
    states.check(agency.status, target)


def approve(actor: Actor, public_id: str) -> Agency:
    """Verified: the four documents match the business. The agency can list cars and take bookings."""
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    _move(agency, AgencyStatus.PENDING, AgencyStatus.ACTIVE)
    missing = missing_documents(agency)
    if missing:
        raise DocumentsMissing(details={"missing": missing})
    now = utcnow()
    agency.status = AgencyStatus.ACTIVE
    agency.verified_at = now
    agency.verified_by_id = actor.user.id
    agency.status_reason = None
    db.session.flush()
    _notify(agency, "agency_approved")
    audit.record(actor, "agency:approve", agency)
    return agency


def reject(actor: Actor, public_id: str, reason: str | None) -> Agency:
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    text = _reason(reason)
    _move(agency, AgencyStatus.PENDING, AgencyStatus.REJECTED)
    agency.status = AgencyStatus.REJECTED
    agency.status_reason = text
    db.session.flush()
    _notify(agency, "agency_rejected", reason=text)
    audit.record(actor, "agency:reject", agency, reason=text)
    return agency


SuspensionListener = Callable[[Agency, str], int]
_ON_SUSPENDED: list[SuspensionListener] = []


def on_suspended(listener: SuspensionListener) -> SuspensionListener:
    """Register what a higher area does when an agency is suspended (bookings flags its live bookings).

    The listener gets the agency and a reason code and returns how many of its rows it flagged; the
    suspension's audit row carries the sum. Agencies sits below bookings, so bookings registers itself here
    instead of agencies calling up into it.
    """
    if listener not in _ON_SUSPENDED:
        _ON_SUSPENDED.append(listener)
    return listener


def suspend(actor: Actor, public_id: str, reason: str | None) -> int:
    """Suspended: its cars leave search and cannot be booked; its live bookings are flagged to staff.

    Returns how many bookings were flagged.
    """
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    text = _reason(reason)
    _move(agency, AgencyStatus.ACTIVE, AgencyStatus.SUSPENDED)
    agency.status = AgencyStatus.SUSPENDED
    agency.suspended_at = utcnow()
    agency.status_reason = text
    db.session.flush()
    flagged = sum(listener(agency, "agency_suspended") for listener in _ON_SUSPENDED)
    _notify(agency, "agency_suspended", reason=text)
    audit.record(actor, "agency:suspend", agency, reason=text, flagged_bookings=flagged)
    return flagged


def reinstate(actor: Actor, public_id: str, note: str | None = None) -> Agency:
    agency = get_for_console(actor, public_id)
    _verifier(actor, agency)
    _move(agency, AgencyStatus.SUSPENDED, AgencyStatus.ACTIVE)  # never a way round verification
    agency.status = AgencyStatus.ACTIVE
    agency.suspended_at = None
    agency.status_reason = None
    db.session.flush()
    _notify(agency, "agency_reinstated")
    audit.record(actor, "agency:reinstate", agency, note=" ".join((note or "").split())[:300] or None)
    return agency


@kyc.image_purpose("agency_verification")
def _may_view_document(actor: Actor, blob: Blob, context: str) -> bool:
    """Platform staff verifying an agency (P-12): one of that agency's current documents, never their own."""
    agency = db.session.execute(select(Agency).where(Agency.public_id == context)).scalar_one_or_none()
    return (
        agency is not None
        and actor.can(Permission.AGENCY_VERIFY)
        and agency.id not in actor.agency_ids
        and blob.owner == vault_owner(agency)
        and blob.id in set(db.session.execute(
            select(AgencyDocument.blob_id).where(AgencyDocument.agency_id == agency.id)).scalars())
    )


# ---- lookups for other areas, the console and the operator commands ---------------------------------


def list_all() -> list[Agency]:
    """Every agency by name (the console's invitation form)."""
    return list(db.session.execute(select(Agency).order_by(Agency.business_name)).scalars())


def agency_id_from_public(public_id: str | None) -> int | None:
    if not public_id:
        return None
    agency_id = db.session.execute(select(Agency.id).where(Agency.public_id == public_id)).scalar_one_or_none()
    if agency_id is None:
        raise NotFound(details={"fields": {"agency": ["Unknown agency."]}})
    return agency_id


def active_ids() -> Select[tuple[int]]:
    """The ids of verified, active agencies, as a subquery: ``Vehicle.agency_id.in_(active_ids())``."""
    return select(Agency.id).where(Agency.status == AgencyStatus.ACTIVE)


def get(agency_id: int) -> Agency | None:
    return db.session.get(Agency, agency_id)


def create_verified(*, business_name: str, trade_licence_number: str, trn: str, address_line1: str,
                    address_city: str, address_country: str, representative_name: str, contact_email: str,
                    contact_phone: str) -> Agency:
    """An agency that is verified and active at once: the demo seed only (real ones sign up and are reviewed)."""
    agency = Agency(
        business_name=business_name, trade_licence_number=trade_licence_number, trn=trn,
        address_line1=address_line1, address_city=address_city, address_country=address_country,
        representative_name=representative_name, contact_email=contact_email, contact_phone=contact_phone,
        status=AgencyStatus.ACTIVE, verified_at=utcnow(),
    )
    db.session.add(agency)
    db.session.flush()
    return agency
