"""Agency rules (P-12): public sign-up, the agency's own profile, documents and staff, and verification,
rejection, suspension and reinstatement by platform staff.

The public surface of the agencies area; the rules live in its private modules (``rules``, ``signup``,
``profile``, ``documents``, ``staff``, ``verification``, ``lookups``; the errors in ``errors``).

Agency-side verbs take the agency's public id (or ``None``) and resolve it among the caller's own
agencies only, so another agency's profile, documents or staff are simply not found (404, AZ-03).
Permissions are checked against the caller's roles *in that agency*: being an owner of one agency
gives nothing in another. Services flush but never commit; the unit of work commits once.
"""

from __future__ import annotations

from marketplace.agencies import states
from marketplace.agencies.documents import document_blob, documents_of, list_documents, upload_document
from marketplace.agencies.errors import (
    AgencyNotActive,
    CannotRemoveSelf,
    DocumentsLocked,
    DocumentsMissing,
    IdentityLocked,
    SelfVerificationForbidden,
)
from marketplace.agencies.lookups import (
    active_agencies,
    active_ids,
    agency_by_id,
    agency_id_from_public,
    agency_id_of,
    create_verified,
    get,
    list_all,
)
from marketplace.agencies.profile import (
    agencies_of,
    missing_documents,
    own_agency,
    require_active,
    require_in,
    update_profile,
)
from marketplace.agencies.rules import (
    DOCUMENT_KINDS,
    IDENTITY_FIELDS,
    normalise_trade_licence,
    normalise_trn,
    vault_owner,
)
from marketplace.agencies.signup import SignUp, sign_up
from marketplace.agencies.staff import StaffMember, invite, list_staff, pending_invitations, remove_staff
from marketplace.agencies.verification import (
    SuspensionListener,
    approve,
    document_image_grants,
    get_for_console,
    list_for_console,
    lookalikes,
    on_suspended,
    reinstate,
    reject,
    require_verifier,
    staff_of,
    suspend,
)
from marketplace.availability.service import MAX_TURNAROUND_MINUTES  # the one copy (availability owns it)
from marketplace.errors import Forbidden  # callers catch the plain refusal through here too

__all__ = [
    "DOCUMENT_KINDS",
    "IDENTITY_FIELDS",
    "MAX_TURNAROUND_MINUTES",
    "AgencyNotActive",
    "CannotRemoveSelf",
    "DocumentsLocked",
    "DocumentsMissing",
    "Forbidden",
    "IdentityLocked",
    "SelfVerificationForbidden",
    "SignUp",
    "StaffMember",
    "SuspensionListener",
    "active_agencies",
    "active_ids",
    "agencies_of",
    "agency_by_id",
    "agency_id_from_public",
    "agency_id_of",
    "approve",
    "create_verified",
    "document_blob",
    "document_image_grants",
    "documents_of",
    "get",
    "get_for_console",
    "invite",
    "list_all",
    "list_documents",
    "list_for_console",
    "list_staff",
    "lookalikes",
    "missing_documents",
    "normalise_trade_licence",
    "normalise_trn",
    "on_suspended",
    "own_agency",
    "pending_invitations",
    "reinstate",
    "reject",
    "remove_staff",
    "require_active",
    "require_in",
    "require_verifier",
    "sign_up",
    "staff_of",
    "states",
    "suspend",
    "update_profile",
    "upload_document",
    "vault_owner",
]
