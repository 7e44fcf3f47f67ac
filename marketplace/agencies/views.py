"""Agencies over the JSON API: public sign-up, and the agency's own profile, documents and staff."""

from __future__ import annotations

from marketplace.api import ApiBlueprint

# POST /api/v1/agencies (public sign-up)
agencies_bp = ApiBlueprint("agencies", __name__, url_prefix="/api/v1/agencies", description="Agency sign-up")
# /api/v1/agency/... (agency staff with MFA; profile, documents, staff)
agency_api_bp = ApiBlueprint("agency_api", __name__, url_prefix="/api/v1/agency",
                             description="The signed-in staff member's agency")
