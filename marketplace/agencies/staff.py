"""The agency's staff: members, invitations and removal, through the users area's service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from marketplace.agencies.errors import CannotRemoveSelf
from marketplace.agencies.models import Agency
from marketplace.agencies.profile import own_agency, require_in
from marketplace.agencies.rules import _invalid, _name
from marketplace.errors import NotFound
from marketplace.permissions import AGENCY_ROLES, Permission, Role
from marketplace.security import Actor
from marketplace.users import service as users

if TYPE_CHECKING:
    from marketplace.users.models import StaffInvitation, User


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
