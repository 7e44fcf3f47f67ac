"""The errors the agency rules raise (public: front doors and other areas catch them by class)."""

from __future__ import annotations

from marketplace.errors import Conflict, Forbidden


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
