"""Roles and permissions as data: one table from role to permissions, readable in one screen.

Permissions are named ``<scope>:<resource>:<action>``. A staff member holds one or more role
assignments (rows in ``role_assignments``); agency roles are tied to one agency.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    CUSTOMER = "customer"
    AGENCY_OWNER = "agency_owner"
    AGENCY_MANAGER = "agency_manager"
    AGENCY_STAFF = "agency_staff"
    KYC_REVIEWER = "kyc_reviewer"
    DISPUTES_AGENT = "disputes_agent"
    DPO = "dpo"
    ADMIN = "admin"


AGENCY_ROLES = frozenset({Role.AGENCY_OWNER, Role.AGENCY_MANAGER, Role.AGENCY_STAFF})
PLATFORM_ROLES = frozenset({Role.KYC_REVIEWER, Role.DISPUTES_AGENT, Role.DPO, Role.ADMIN})
STAFF_ROLES = AGENCY_ROLES | PLATFORM_ROLES


class Permission(StrEnum):
    # customers, over the JSON API
    ACCOUNT_READ = "api:account:read"
    ACCOUNT_WRITE = "api:account:write"
    # internal console
    CONSOLE_ACCESS = "console:app:access"
    KYC_CASE_READ = "console:kyc-case:read"
    KYC_CASE_DECIDE = "console:kyc-case:decide"
    KYC_IMAGE_VIEW = "console:kyc-image:view"
    DISPUTE_DECIDE = "console:dispute:decide"
    PRIVACY_REQUEST_MANAGE = "console:privacy-request:manage"
    BREACH_MANAGE = "console:breach:manage"
    AGENCY_VERIFY = "console:agency:verify"
    AUDIT_READ = "console:audit:read"
    OUTBOX_READ = "console:outbox:read"
    STAFF_MANAGE = "console:staff:manage"
    INVOICE_READ = "console:invoice:read"
    PAYMENT_REVIEW = "console:payment:review"  # a booking's payments page, the reconciliation queue
    # agency app and the agency JSON API
    AGENCY_ACCESS = "agency:app:access"
    AGENCY_PROFILE_WRITE = "agency:profile:write"
    AGENCY_STAFF_MANAGE = "agency:staff:manage"
    AGENCY_VEHICLE_READ = "agency:vehicle:read"
    AGENCY_VEHICLE_WRITE = "agency:vehicle:write"
    AGENCY_BOOKING_READ = "agency:booking:read"
    AGENCY_HANDOVER_PERFORM = "agency:handover:perform"
    AGENCY_CHARGE_CREATE = "agency:charge:create"
    AGENCY_PAYOUT_READ = "agency:payout:read"
    AGENCY_INVOICE_READ = "agency:invoice:read"


P = Permission
_AGENCY_FLOOR = {P.AGENCY_ACCESS, P.AGENCY_VEHICLE_READ, P.AGENCY_BOOKING_READ, P.AGENCY_HANDOVER_PERFORM}
_AGENCY_MANAGE = _AGENCY_FLOOR | {P.AGENCY_VEHICLE_WRITE, P.AGENCY_CHARGE_CREATE, P.AGENCY_PAYOUT_READ,
                                  P.AGENCY_INVOICE_READ}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.CUSTOMER: frozenset({P.ACCOUNT_READ, P.ACCOUNT_WRITE}),
    Role.AGENCY_STAFF: frozenset(_AGENCY_FLOOR),
    Role.AGENCY_MANAGER: frozenset(_AGENCY_MANAGE | {P.AGENCY_STAFF_MANAGE}),
    Role.AGENCY_OWNER: frozenset(_AGENCY_MANAGE | {P.AGENCY_STAFF_MANAGE, P.AGENCY_PROFILE_WRITE}),
    Role.KYC_REVIEWER: frozenset({P.CONSOLE_ACCESS, P.KYC_CASE_READ, P.KYC_CASE_DECIDE, P.KYC_IMAGE_VIEW}),
    # invoices: disputes (evidence packs, P-24), the DPO (access requests, P-25) and admins read any
    Role.DISPUTES_AGENT: frozenset({P.CONSOLE_ACCESS, P.DISPUTE_DECIDE, P.KYC_IMAGE_VIEW, P.INVOICE_READ,
                                    P.PAYMENT_REVIEW}),
    Role.DPO: frozenset({P.CONSOLE_ACCESS, P.PRIVACY_REQUEST_MANAGE, P.BREACH_MANAGE, P.AUDIT_READ, P.INVOICE_READ}),
    Role.ADMIN: frozenset(
        {P.CONSOLE_ACCESS, P.STAFF_MANAGE, P.AGENCY_VERIFY, P.AUDIT_READ, P.OUTBOX_READ, P.BREACH_MANAGE,
         P.INVOICE_READ, P.PAYMENT_REVIEW}
    ),
}


def permissions_for(roles: frozenset[Role] | set[Role]) -> frozenset[Permission]:
    granted: set[Permission] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS[role]
    return frozenset(granted)
