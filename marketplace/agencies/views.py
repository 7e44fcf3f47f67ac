"""Agencies over the JSON API: public sign-up, and the agency's own profile, documents and staff."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from marketplace import ratelimits
from marketplace.agencies import schemas as s
from marketplace.agencies import service
from marketplace.api import ApiBlueprint
from marketplace.extensions import limiter
from marketplace.schemas import StatusSchema, decode_id_cursor, paginate
from marketplace.security import current_actor, public
from marketplace.webhelpers import ImageFileIn, upload_arguments, upload_key
from marketplace.webhelpers import configured_limit as _limit

# POST /api/v1/agencies (public sign-up)
agencies_bp = ApiBlueprint("agencies", __name__, url_prefix="/api/v1/agencies", description="Agency sign-up")
# /api/v1/agency/... (agency staff with MFA; profile, documents, staff)
agency_api_bp = ApiBlueprint("agency_api", __name__, url_prefix="/api/v1/agency",
                             description="The signed-in staff member's agency")


class AgencyDocumentUploadIn(ImageFileIn, s.AgencyDocumentFormIn):
    """One multipart/form-data body: the document's ``kind`` and its ``image``."""


def _client_key() -> str:
    return ratelimits.client_key()


@agencies_bp.route("", methods=["POST"])
@limiter.limit(_limit("register_client"), key_func=_client_key)
@agencies_bp.arguments(s.AgencySignUpIn)
@agencies_bp.response(202, StatusSchema)
@public
def sign_up(args: dict[str, Any]) -> dict[str, str]:
    """Sign an agency up for verification; the owner then signs in at /agency and uploads documents."""
    service.sign_up(service.SignUp(**args))
    return {"status": "received",
            "message": "If this e-mail can be used, the owner's account is ready: sign in at /agency to continue."}


@agency_api_bp.route("")
class AgencyProfile(MethodView):
    @agency_api_bp.arguments(s.AgencyQueryIn, location="query")
    @agency_api_bp.response(200, s.AgencyOut)
    def get(self, query: dict[str, Any]) -> Any:
        """Your agency's profile and verification status."""
        return service.own_agency(current_actor(), query.get("agency"))

    @agency_api_bp.arguments(s.AgencyQueryIn, location="query")
    @agency_api_bp.arguments(s.AgencyPatchIn)
    @agency_api_bp.response(200, s.AgencyOut)
    def patch(self, query: dict[str, Any], changes: dict[str, Any]) -> Any:
        """Change contact details, address or turnaround; business identity only before verification."""
        agency = service.update_profile(current_actor(), query.get("agency"), changes)
        return agency


@agency_api_bp.route("/documents", methods=["GET"])
@agency_api_bp.arguments(s.AgencyQueryIn, location="query")
@agency_api_bp.response(200, s.AgencyDocumentListOut)
def list_documents(query: dict[str, Any]) -> dict[str, Any]:
    """Your agency's verification documents: what is uploaded and what is still missing."""
    agency, documents = service.list_documents(current_actor(), query.get("agency"))
    have = {d.kind for d in documents}
    return {"status": agency.status, "items": documents,
            "missing": [k for k in service.DOCUMENT_KINDS if k not in have]}


@agency_api_bp.route("/documents", methods=["POST"])
@limiter.limit(_limit("upload_session"), key_func=upload_key)
@agency_api_bp.arguments(s.AgencyQueryIn, location="query")
@upload_arguments(agency_api_bp, AgencyDocumentUploadIn)
@agency_api_bp.response(201, s.AgencyDocumentOut)
def upload_document(query: dict[str, Any], args: dict[str, Any]) -> Any:
    """Owner: upload or replace a verification document photo (only before the agency is verified)."""
    image = args["image"]
    document = service.upload_document(current_actor(), query.get("agency"), args["kind"], image.stream,
                                       image.mimetype)
    return document


@agency_api_bp.route("/staff")
class AgencyStaff(MethodView):
    @agency_api_bp.arguments(s.StaffPageIn, location="query")
    @agency_api_bp.response(200, s.StaffPageOut)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Your agency's staff and their roles (cursor pagination)."""
        after = decode_id_cursor("agency-staff", args["cursor"])
        actor, agency = current_actor(), args.get("agency")
        page = paginate("agency-staff", args["limit"],
                        lambda n: service.list_staff(actor, agency, after_id=after, limit=n), key=lambda m: m.user.id)
        return {"items": page.items, "page": {"next_cursor": page.next_cursor}}

    @agency_api_bp.arguments(s.AgencyQueryIn, location="query")
    @agency_api_bp.arguments(s.InvitationIn)
    @agency_api_bp.response(201, s.InvitationOut)
    def post(self, query: dict[str, Any], args: dict[str, Any]) -> Any:
        """Invite someone to your agency with a role; they get an e-mail link to set a password."""
        invitation = service.invite(current_actor(), query.get("agency"), **args)
        return invitation


@agency_api_bp.route("/staff/<string:user_id>", methods=["DELETE"])
@agency_api_bp.arguments(s.AgencyQueryIn, location="query")
@agency_api_bp.response(204)
def remove_staff(query: dict[str, Any], user_id: str) -> None:
    """Remove a person from your agency; every session of theirs ends at once."""
    service.remove_staff(current_actor(), query.get("agency"), user_id)
