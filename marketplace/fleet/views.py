"""Vehicles over the JSON API: public search and detail, and the agency's fleet management."""

from __future__ import annotations

from marketplace.api import ApiBlueprint

# GET /api/v1/vehicles, GET /api/v1/vehicles/{id} (public)
vehicles_bp = ApiBlueprint("vehicles", __name__, url_prefix="/api/v1/vehicles", description="Search cars (public)")
# /api/v1/agency/vehicles... (agency staff with MFA)
agency_fleet_bp = ApiBlueprint("agency_fleet", __name__, url_prefix="/api/v1/agency/vehicles",
                               description="The agency's fleet and availability")
