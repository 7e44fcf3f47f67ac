"""Post-rental charges over the JSON API (P-21): customers read, accept, dispute and pay their charges;
agency staff raise them with evidence and withdraw them."""

from __future__ import annotations

from typing import Any

from flask import Response

from marketplace.api import ApiBlueprint
from marketplace.charges import schemas as s
from marketplace.charges import service
from marketplace.charges.states import ChargeKind
from marketplace.extensions import limiter
from marketplace.permissions import Permission
from marketplace.schemas import decode_id_cursor, paginate
from marketplace.security import current_actor, requires
from marketplace.transactions import writes
from marketplace.webhelpers import image_response, upload_arguments, upload_key, upload_limit

charges_bp = ApiBlueprint("charges", __name__, url_prefix="/api/v1/charges",
                          description="Post-rental charges: the notice, its evidence, accept, dispute, pay (P-21)")
agency_charges_bp = ApiBlueprint("agency_charges", __name__, url_prefix="/api/v1/agency",
                                 description="Post-rental charges your agency raises, with evidence (P-21)")

CUSTOMER_EVIDENCE = "/api/v1/charges/{charge}/evidence/{evidence}"
AGENCY_EVIDENCE = "/api/v1/agency/charges/{charge}/evidence/{evidence}"


def _customer_out(charge: Any) -> dict[str, Any]:
    return service.present(charge, evidence_url=CUSTOMER_EVIDENCE)


def _agency_out(charge: Any) -> dict[str, Any]:
    return service.present(charge, evidence_url=AGENCY_EVIDENCE)


def _files(uploads: list[Any]) -> list[service.EvidenceFile]:
    return [service.EvidenceFile(u.stream, u.mimetype) for u in uploads]


# ---- the customer ---------------------------------------------------------------------------------------------


@charges_bp.route("")
@charges_bp.arguments(s.ChargeListArgs, location="query")
@charges_bp.response(200, s.ChargeListOut)
@requires(Permission.ACCOUNT_READ)
def list_charges(args: dict[str, Any]) -> dict[str, Any]:
    """Your post-rental charges, newest first (cursor pagination)."""
    actor = current_actor()
    after = decode_id_cursor("charges", args["cursor"])
    page = paginate("charges", args["limit"], lambda n: service.list_for_customer(actor, after_id=after, limit=n))
    return page.out(_customer_out)


@charges_bp.route("/<string:charge_id>")
@charges_bp.response(200, s.ChargeOut)
@requires(Permission.ACCOUNT_READ)
def get_charge(charge_id: str) -> dict[str, Any]:
    """One charge with its notice (when it was sent and delivered), breakdown, evidence and where it stands."""
    return _customer_out(service.for_customer(current_actor(), charge_id))


@charges_bp.route("/<string:charge_id>/evidence/<string:evidence_id>")
@writes  # every view is audited
@charges_bp.response(200, description="The evidence image (JPEG), never cached", content_type="image/jpeg")
@requires(Permission.ACCOUNT_READ)
def customer_evidence(charge_id: str, evidence_id: str) -> Response:
    """One evidence file of your charge (every view is audited)."""
    actor = current_actor()
    charge = service.for_customer(actor, charge_id)
    return image_response(service.evidence_image(actor, charge, evidence_id, viewer="customer"), "image/jpeg")


@charges_bp.route("/<string:charge_id>/accept", methods=["POST"])
@charges_bp.response(200, s.ChargeOut)
@requires(Permission.ACCOUNT_WRITE)
def accept(charge_id: str) -> dict[str, Any]:
    """Accept a noticed charge: it is collected now (from the deposit hold while one is valid, else from your
    saved card). Only a `noticed` charge (`illegal_state_transition` otherwise)."""
    return _customer_out(service.accept(current_actor(), charge_id))


@charges_bp.route("/<string:charge_id>/dispute", methods=["POST"])
@limiter.limit(upload_limit, key_func=upload_key)
@upload_arguments(charges_bp, s.ChargeDisputeIn)
@charges_bp.response(200, s.ChargeOut)
@requires(Permission.ACCOUNT_WRITE)
def dispute(args: dict[str, Any], charge_id: str) -> dict[str, Any]:
    """Dispute a noticed charge within its 24 hours, with a reason and up to three images (`file_1` ...): nothing is
    collected until the disputes team decides (after the 24 hours: `notice_period_over`)."""
    return _customer_out(service.dispute(current_actor(), charge_id, reason=args["reason"],
                                         files=_files(s.ChargeDisputeIn().files(args))))


@charges_bp.route("/<string:charge_id>/pay", methods=["POST"])
@charges_bp.arguments(s.ChargePayIn)
@charges_bp.response(200, s.PayOut)
@requires(Permission.ACCOUNT_WRITE)
def pay(args: dict[str, Any], charge_id: str) -> dict[str, Any]:
    """Pay a charge yourself: when your bank asked you to authenticate (`requires_action`: the answer carries
    the client secret for the SDK), or after a decline (`retrying`, `unpaid`), with the booking's card or
    another saved one. An unpaid charge blocks new bookings (`outstanding_balance`)."""
    result = service.pay(current_actor(), charge_id, card_public_id=args["card"])
    return {"charge": _customer_out(result.charge), "client_secret": result.client_secret}


# ---- the agency ---------------------------------------------------------------------------------------------


@agency_charges_bp.route("/bookings/<string:reference>/charges", methods=["POST"])
@limiter.limit(upload_limit, key_func=upload_key)
@upload_arguments(agency_charges_bp, s.ChargeRaiseIn)
@agency_charges_bp.response(201, s.AgencyChargeOut)
@requires(Permission.AGENCY_CHARGE_CREATE)
def raise_charge(args: dict[str, Any], reference: str) -> dict[str, Any]:
    """Raise a post-rental charge on a returned booking, with evidence: the customer gets a written notice
    (e-mail and in-app) with a due time 24 hours later; a fine or toll timed outside the rental goes to
    platform review first. More than 90 days after the return: `charge_window_closed`."""
    charge = service.raise_charge(current_actor(), reference, kind=ChargeKind(args["kind"]),
                                  amount_fils=args["amount"], description=args["description"],
                                  incurred_at=args["incurred_at"], evidence=_files(s.ChargeRaiseIn().files(args)))
    return _agency_out(charge)


@agency_charges_bp.route("/bookings/<string:reference>/charges")
@agency_charges_bp.response(200, s.AgencyChargeListOut)
@requires(Permission.AGENCY_BOOKING_READ)
def booking_charges(reference: str) -> dict[str, Any]:
    """The charges raised on one of your agency's bookings."""
    return {"items": [_agency_out(c) for c in service.list_for_booking(current_actor(), reference)]}


@agency_charges_bp.route("/charges/<string:charge_id>")
@agency_charges_bp.response(200, s.AgencyChargeOut)
@requires(Permission.AGENCY_BOOKING_READ)
def agency_charge(charge_id: str) -> dict[str, Any]:
    """One of your agency's charges."""
    return _agency_out(service.for_agency(current_actor(), charge_id))


@agency_charges_bp.route("/charges/<string:charge_id>/evidence/<string:evidence_id>")
@writes  # every view is audited
@agency_charges_bp.response(200, description="The evidence image (JPEG), never cached", content_type="image/jpeg")
@requires(Permission.AGENCY_BOOKING_READ)
def agency_evidence(charge_id: str, evidence_id: str) -> Response:
    """One evidence file of your agency's charge, the customer's dispute files included (audited)."""
    actor = current_actor()
    charge = service.for_agency(actor, charge_id)
    return image_response(service.evidence_image(actor, charge, evidence_id, viewer="agency"), "image/jpeg")


@agency_charges_bp.route("/charges/<string:charge_id>/withdraw", methods=["POST"])
@agency_charges_bp.arguments(s.ChargeWithdrawIn)
@agency_charges_bp.response(200, s.AgencyChargeOut)
@requires(Permission.AGENCY_CHARGE_CREATE)
def withdraw(args: dict[str, Any], charge_id: str) -> dict[str, Any]:
    """Withdraw a charge that is not paid and not being collected; a noticed customer is told."""
    return _agency_out(service.withdraw(current_actor(), charge_id, reason=args["reason"]))
