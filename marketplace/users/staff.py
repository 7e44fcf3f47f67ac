"""Staff accounts and roles (P-04): creation, invitations, role removal, staff lookups, web sessions."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from marketplace import audit
from marketplace.errors import Conflict, Forbidden, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.notifications import service as notifications
from marketplace.permissions import AGENCY_ROLES, Permission, Role
from marketplace.security import Actor, SystemActor, can_in_agency
from marketplace.users import mfa, passwords, sessions
from marketplace.users.errors import InvalidCredentials, TokenInvalid
from marketplace.users.models import AccountStatus, AccountType, RoleAssignment, SessionChannel, StaffInvitation, User
from marketplace.users.rules import _settings, normalise_email


def create_staff(
    *,
    email: str,
    full_name: str,
    password: str,
    roles: list[tuple[Role, int | None]],
    granted_by: User | None = None,
) -> User:
    """Used by the CLI (first admin, demo data) and by accepted invitations."""
    email = normalise_email(email)
    passwords.check_policy(password, email=email, name=full_name)
    if db.session.execute(select(User.id).where(User.email == email)).first():
        raise Conflict(details={"fields": {"email": ["An account with this e-mail exists."]}})
    now = utcnow()
    user = User(
        account_type=AccountType.STAFF,
        status=AccountStatus.ACTIVE,
        email=email,
        password_hash=passwords.hash_password(password),
        password_changed_at=now,
        full_name=" ".join(full_name.split()),
        email_verified_at=now,
    )
    db.session.add(user)
    db.session.flush()
    for role, agency_id in roles:
        _assign(user, role, agency_id, granted_by)
    audit.record(SystemActor("cli") if granted_by is None else None, "staff:create", user,
                 roles=[str(r) for r, _ in roles])
    return user


def _assign(user: User, role: Role, agency_id: int | None, granted_by: User | None) -> RoleAssignment:
    if role == Role.CUSTOMER:
        raise Unprocessable(details={"fields": {"role": ["Not a staff role."]}})
    if (role in AGENCY_ROLES) != (agency_id is not None):
        raise Unprocessable(details={"fields": {"agency": ["Agency roles need an agency; others must not."]}})
    assignment = RoleAssignment(user_id=user.id, role=role, agency_id=agency_id,
                                granted_by_id=granted_by.id if granted_by else None, granted_at=utcnow())
    user.roles.append(assignment)
    db.session.flush()
    return assignment


def invite_staff(actor: Actor, *, email: str, full_name: str, role: Role, agency_id: int | None) -> StaffInvitation:
    _check_may_grant(actor, role, agency_id)
    email = normalise_email(email)
    token, digest = sessions.new_token("")
    now = utcnow()
    invitation = StaffInvitation(
        email=email, full_name=" ".join(full_name.split()), role=role, agency_id=agency_id, token_hash=digest,
        invited_by_id=actor.user.id, created_at=now,
        expires_at=now + (_settings().invitation_ttl or timedelta(days=7)),
    )
    db.session.add(invitation)
    db.session.flush()
    door = "agency" if role in AGENCY_ROLES else "console"
    notifications.send_email(to=email, kind="staff_invitation",
                             context={"invitation": invitation, "token": token, "door": door,
                                      "inviter": actor.user.full_name}, sensitive=True)
    audit.record(actor, "staff:invite", invitation, role=str(role), agency_id=agency_id)
    return invitation


def _check_may_grant(actor: Actor, role: Role, agency_id: int | None) -> None:
    if role in AGENCY_ROLES:
        if agency_id is None:
            raise Unprocessable(details={"fields": {"agency": ["Agency roles need an agency."]}})
        if actor.can(Permission.STAFF_MANAGE):
            return
        # the rights held in THIS agency, not in any agency
        if can_in_agency(actor, agency_id, Permission.AGENCY_STAFF_MANAGE):
            if role == Role.AGENCY_OWNER and Role.AGENCY_OWNER not in actor.agency_roles(agency_id):
                raise Forbidden()
            return
        raise Forbidden()
    if not actor.can(Permission.STAFF_MANAGE):
        raise Forbidden()


def accept_invitation(token: str, password: str) -> User:
    invitation = db.session.execute(
        select(StaffInvitation).where(StaffInvitation.token_hash == sessions.token_hash(token or ""))
        .with_for_update()
    ).scalar_one_or_none()
    now = utcnow()
    if (invitation is None or invitation.accepted_at is not None or invitation.revoked_at is not None
            or invitation.expires_at <= now):
        raise TokenInvalid()
    inviter = db.session.get(User, invitation.invited_by_id) if invitation.invited_by_id else None
    existing = db.session.execute(select(User).where(User.email == invitation.email)).scalar_one_or_none()
    if existing is not None:
        if not existing.is_staff or not passwords.verify_password(existing.password_hash, password):
            raise InvalidCredentials()
        _assign(existing, Role(invitation.role), invitation.agency_id, inviter)
        if existing.status == AccountStatus.DISABLED:
            existing.status = AccountStatus.ACTIVE
        user = existing
    else:
        user = create_staff(email=invitation.email, full_name=invitation.full_name, password=password,
                            roles=[(Role(invitation.role), invitation.agency_id)], granted_by=inviter)
    invitation.accepted_at = now
    audit.record(None, "staff:invitation_accepted", invitation, user=user.public_id)
    return user


def remove_role(actor: Actor, user: User, role: Role, agency_id: int | None) -> None:
    """Take a role away; every session of that person dies at once (P-04)."""
    _check_may_grant(actor, role, agency_id)
    if user.id == actor.user.id and role == Role.ADMIN:
        raise Conflict("An admin cannot remove their own admin role.")
    match = [a for a in user.roles if a.role == role and a.agency_id == agency_id]
    if not match:
        raise NotFound()
    for assignment in match:
        user.roles.remove(assignment)
    if not user.roles:
        user.status = AccountStatus.DISABLED
    sessions.revoke_all(user, "role_removed")
    db.session.flush()
    audit.record(actor, "staff:role_remove", user, role=str(role), agency_id=agency_id)


def get_staff(public_id: str) -> User:
    user = db.session.execute(
        select(User).where(User.public_id == public_id, User.account_type == AccountType.STAFF)
    ).scalar_one_or_none()
    if user is None:
        raise NotFound()
    return user


def list_staff() -> list[User]:
    return list(db.session.execute(
        select(User).where(User.account_type == AccountType.STAFF).order_by(User.full_name)
    ).scalars())


def start_web_session(user: User) -> sessions.IssuedTokens:
    if not user.is_staff:
        raise InvalidCredentials()
    issued = sessions.start_session(user, SessionChannel.WEB, _settings())
    audit.record(Actor.for_session(issued.session), "auth:login", user, channel="web")
    return issued


def unlock_staff_mfa(email: str) -> tuple[User, bool]:
    """Lift the MFA lock that repeated wrong codes put on a staff account; says whether it was locked."""
    user = db.session.execute(select(User).where(User.email == normalise_email(email))).scalar_one_or_none()
    if user is None or not user.is_staff:
        raise NotFound("No staff account uses this e-mail.")
    was_locked = mfa.is_locked(user)
    mfa.unlock(user)
    audit.record(None, "auth:mfa_unlocked", user, was_locked=was_locked)
    return user, was_locked


def public_id_of(user_id: int) -> str | None:
    """The public id of a user known by database id (another area holding a foreign key asks this)."""
    return db.session.execute(select(User.public_id).where(User.id == user_id)).scalar_one_or_none()


# ---- agency staff (the agencies area asks; the rows stay here) -----------------------------------


def agency_members(agency_id: int, *, after_id: int | None = None,
                   limit: int | None = None) -> list[tuple[User, list[str]]]:
    """Everyone holding a role in the agency (by id), with their roles there."""
    stmt = select(User).where(
        User.id.in_(select(RoleAssignment.user_id).where(RoleAssignment.agency_id == agency_id))
    ).order_by(User.id)
    if after_id is not None:
        stmt = stmt.where(User.id > after_id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [(u, sorted(a.role for a in u.roles if a.agency_id == agency_id))
            for u in db.session.execute(stmt).scalars()]


def agency_member(agency_id: int, public_id: str) -> User | None:
    """One person holding a role in the agency, or ``None`` (someone elsewhere is not found here)."""
    return db.session.execute(
        select(User).where(User.public_id == public_id, User.id.in_(
            select(RoleAssignment.user_id).where(RoleAssignment.agency_id == agency_id)))
    ).scalar_one_or_none()


def open_invitations(agency_id: int) -> list[StaffInvitation]:
    """Invitations to the agency not yet accepted, revoked or expired, newest first."""
    return list(db.session.execute(
        select(StaffInvitation).where(StaffInvitation.agency_id == agency_id, StaffInvitation.accepted_at.is_(None),
                                      StaffInvitation.revoked_at.is_(None), StaffInvitation.expires_at > utcnow())
        .order_by(StaffInvitation.id.desc())
    ).scalars())
