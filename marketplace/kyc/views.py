"""Identity verification over the JSON API (the customer's side)."""

from __future__ import annotations

from typing import Any

from flask import Response

from marketplace.api import ApiBlueprint
from marketplace.errors import NotFound
from marketplace.extensions import limiter
from marketplace.kyc import schemas as s
from marketplace.kyc import service
from marketplace.kyc.models import KycCase
from marketplace.security import current_actor
from marketplace.transactions import writes
from marketplace.webhelpers import ImageFileIn, image_response, upload_arguments, upload_key, upload_limit

kyc_bp = ApiBlueprint("kyc", __name__, url_prefix="/api/v1", description="Identity verification (KYC)")


class DocumentUploadIn(ImageFileIn, s.DocumentFormIn):
    """One multipart/form-data body: the document's ``kind`` and its ``image``."""


def _status(user: Any) -> dict[str, Any]:
    try:
        case: KycCase | None = service.current_case(user)
    except NotFound:
        case = None
    identity = service.identity_of(user)
    uploaded = [k for k, slot in service.SLOTS.items() if case is not None and getattr(case, slot) is not None]
    needed = ["selfie", "id_front", "licence_front", "licence_back"]
    if identity is not None and identity.id_document_type == "emirates_id":
        needed.append("id_back")
    missing = ([] if identity is not None else ["identity"]) + [k for k in needed if k not in uploaded]
    return {
        "status": case.status if case is not None else "not_started",
        "submitted_at": case.submitted_at if case else None,
        "decided_at": case.decided_at if case else None,
        "reason": case.customer_reason if case else None,
        "resubmit_items": (case.resubmit_items or "").split(",") if case and case.resubmit_items else [],
        "uploaded": uploaded,
        "missing": missing,
        "identity": identity,
        "face_consent_version": case.face_consent_version if case else None,
    }


@kyc_bp.route("/me/kyc")
@kyc_bp.response(200, s.KycStatusOut)
def kyc_status() -> dict[str, Any]:
    """Your verification status, what is uploaded, what is missing, and any reviewer's reason."""
    return _status(current_actor().user)


@kyc_bp.route("/me/kyc/identity", methods=["PUT"])
@kyc_bp.arguments(s.IdentityIn)
@kyc_bp.response(200, s.KycStatusOut)
def put_identity(args: dict[str, Any]) -> dict[str, Any]:
    """Set your identity and driving-licence data (while the case is a draft or needs resubmission)."""
    service.put_identity(current_actor(), args)
    return _status(current_actor().user)


@kyc_bp.route("/me/kyc/selfie", methods=["POST"])
@limiter.limit(upload_limit, key_func=upload_key)
@upload_arguments(kyc_bp, ImageFileIn)
@kyc_bp.response(201, s.UploadedOut)
def upload_selfie(args: dict[str, Any]) -> dict[str, Any]:
    """Upload your live selfie (needs the current face-data consent first)."""
    image = args["image"]
    blob = service.upload(current_actor(), "selfie", image.stream, image.mimetype)
    return {"id": blob.public_id, "kind": blob.kind, "width": blob.width, "height": blob.height}


@kyc_bp.route("/me/kyc/documents", methods=["POST"])
@limiter.limit(upload_limit, key_func=upload_key)
@upload_arguments(kyc_bp, DocumentUploadIn)
@kyc_bp.response(201, s.UploadedOut)
def upload_document(args: dict[str, Any]) -> dict[str, Any]:
    """Upload a photo of your ID document or driving licence (front or back)."""
    image = args["image"]
    blob = service.upload(current_actor(), args["kind"], image.stream, image.mimetype)
    return {"id": blob.public_id, "kind": blob.kind, "width": blob.width, "height": blob.height}


@kyc_bp.route("/me/kyc/submit", methods=["POST"])
@kyc_bp.response(200, s.KycStatusOut)
def submit() -> dict[str, Any]:
    """Send your case to a human reviewer (target: a decision within 24 hours)."""
    service.submit(current_actor())
    return _status(current_actor().user)


@kyc_bp.route("/me/kyc/reverify", methods=["POST"])
@kyc_bp.response(200, s.KycStatusOut)
def reverify() -> dict[str, Any]:
    """Start a new verification (needed to replace your selfie); bookings wait for its approval."""
    service.start_reverification(current_actor())
    return _status(current_actor().user)


@kyc_bp.route("/me/selfie")
@writes
@kyc_bp.response(200, s.ImageLinkOut)
def my_selfie() -> dict[str, Any]:
    """A single-use link (about a minute) to your own profile photo."""
    token, expires = service.own_selfie_grant(current_actor())
    return {"url": f"/api/v1/images/{token}", "expires_at": expires}


@kyc_bp.route("/images/<string:token>")
@writes
@kyc_bp.response(200, description="The image (JPEG), never cached", content_type="image/jpeg")
def image(token: str) -> Response:
    """Open a signed image link once (only by the person it was issued to)."""
    # spending a grant writes (the grant, an audit row) and a page's images are fetched all at once: under
    # ``@writes`` the transaction begins IMMEDIATE on SQLite, so those requests queue for the write lock
    data, blob = service.open_granted_image(current_actor(), token)
    return image_response(data, blob.mime)
