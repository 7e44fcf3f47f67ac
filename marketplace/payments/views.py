"""Payments over the JSON API: saved cards, paying a booking, its mandate, the agency's payouts and Connect
onboarding, and Stripe's webhook."""

from __future__ import annotations

from typing import Any, ClassVar

from flask import current_app, request

from marketplace.agencies import service as agencies
from marketplace.api import ApiBlueprint, DocumentedConverter
from marketplace.payments import schemas as s
from marketplace.payments import service
from marketplace.payments.gateway import current_gateway
from marketplace.payments.models import PaymentIntentRow, SavedCard
from marketplace.permissions import Permission
from marketplace.security import current_actor, public, requires
from marketplace.users import service as users

cards_bp = ApiBlueprint("payment_methods", __name__, url_prefix="/api/v1/me/payment-methods",
                        description="Saved cards (tokenised by Stripe: brand, last four and expiry only)")
booking_payments_bp = ApiBlueprint("booking_payments", __name__, url_prefix="/api/v1/bookings",
                                   description="Paying a booking with a saved card, and its MIT mandate")
agency_payouts_bp = ApiBlueprint("agency_payouts", __name__, url_prefix="/api/v1/agency/payouts",
                                 description="The agency's payout statements")
webhook_bp = ApiBlueprint("stripe_webhook", __name__, url_prefix="/api/v1/payments",
                          description="Stripe events (public, signature-checked)")

class CardIdConverter(DocumentedConverter):
    """A saved card's id: any path segment but ``setup``, its static sibling (``PATCH``/``DELETE
    /payment-methods/setup`` were served, and advertised in ``Allow``, as a card's)."""

    regex = r"(?!setup$)[^/]+"
    part_isolating = True
    openapi: ClassVar[dict[str, Any]] = {"type": "string"}


def _converters(state: Any) -> None:
    state.app.url_map.converters.setdefault("card", CardIdConverter)


cards_bp.record_once(_converters)  # before any route, so the converter exists when the rules are added



def card_out(card: SavedCard) -> dict[str, Any]:
    return {"id": card.public_id, "brand": card.brand, "last4": card.last4, "exp_month": card.exp_month,
            "exp_year": card.exp_year, "is_default": card.is_default}


def _intent_out(row: PaymentIntentRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"state": row.state, "amount": row.amount_fils, "currency": "AED", "error_code": row.error_code,
            "capture_before": row.capture_before, "captured": row.captured_fils if row.kind == "deposit" else None}


def payment_out(view: service.PaymentView) -> dict[str, Any]:
    return {"reference": view.booking.reference, "booking_status": view.booking.status,
            "payment": _intent_out(view.payment), "deposit": _intent_out(view.deposit),
            "refunds": [{"amount": r.amount_fils, "state": r.state, "reason": r.reason}
                        for r in service.refunds_for(view.booking.id)],
            "client_secret": view.client_secret}


# ---- saved cards (P-19) --------------------------------------------------------------------------------


@cards_bp.route("/setup", methods=["POST"])
@cards_bp.response(201, s.SetupOut)
def start_setup() -> tuple[dict[str, Any], int]:
    """Start saving a card: a SetupIntent client secret for the mobile SDK (the card goes to Stripe only)."""
    started = service.start_card_setup(current_actor())
    return {"setup_intent_id": started.setup_intent_id, "client_secret": started.client_secret}, 201


@cards_bp.route("", methods=["POST"])
@cards_bp.arguments(s.CardConfirmIn)
@cards_bp.response(201, s.CardOut)
def confirm_setup(args: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """After the SDK confirmed the SetupIntent: keep the card (brand, last four, expiry)."""
    return card_out(service.complete_card_setup(current_actor(), args["setup_intent_id"])), 201


@cards_bp.route("", methods=["GET"])
@cards_bp.response(200, s.CardListOut)
def list_cards() -> dict[str, Any]:
    """Your saved cards: brand, last four and expiry only."""
    return {"items": [card_out(card) for card in service.list_cards(current_actor())]}


@cards_bp.route("/<card:card_id>/default", methods=["POST"])
@cards_bp.response(200, s.CardOut)
def make_default(card_id: str) -> dict[str, Any]:
    """Make this card the default."""
    return card_out(service.set_default_card(current_actor(), card_id))


@cards_bp.route("/<card:card_id>", methods=["PATCH"])
@cards_bp.arguments(s.CardPatchIn)
@cards_bp.response(200, s.CardOut)
def patch_card(args: dict[str, Any], card_id: str) -> dict[str, Any]:
    """Make this card the default (the same as `POST .../{id}/default`)."""
    return card_out(service.set_default_card(current_actor(), card_id))


@cards_bp.route("/<card:card_id>", methods=["DELETE"])
@cards_bp.response(204)
def remove(card_id: str) -> tuple[str, int]:
    """Remove a card: refused (409 `payment_method_in_use`) while a live booking or an open payment needs it."""
    service.remove_card(current_actor(), card_id)
    return "", 204


# ---- paying a booking --------------------------------------------------------------------------------


@booking_payments_bp.route("/<string:reference>/pay", methods=["POST"])
@booking_payments_bp.arguments(s.PayIn)
@booking_payments_bp.response(200, s.PaymentOut)
def pay(args: dict[str, Any], reference: str) -> dict[str, Any]:
    """Pay a pending booking with a saved card, actively accepting the MIT mandate (P-20); then the deposit
    is held. A decline is 402 `card_declined` and the booking stays payable; pay again to retry."""
    mandate = args["mit_mandate"]
    view = service.pay_booking(current_actor(), reference, card_public_id=str(args["payment_method_id"]),
                               mandate=service.MandateShown(
                                   version=mandate["version"], text_sha256=mandate["text_sha256"],
                                   ip_address=request.remote_addr,
                                   user_agent=request.headers.get("User-Agent"), device=args["device"]))
    return payment_out(view)


@booking_payments_bp.route("/<string:reference>/payment", methods=["GET"])
@booking_payments_bp.response(200, s.PaymentOut)
def payment(reference: str) -> dict[str, Any]:
    """The booking's payment, deposit hold and refunds."""
    return payment_out(service.payment_status(current_actor(), reference))


@booking_payments_bp.route("/<string:reference>/mandate", methods=["GET"])
@booking_payments_bp.response(200, s.MandateOut)
def mandate(reference: str) -> dict[str, Any]:
    """The MIT mandate you accepted for this booking, as recorded (P-20)."""
    row = service.mandate_for(current_actor(), reference)
    text = users.mit_mandate_text()
    return {"booking": reference, "text_version": row.text_version, "text_sha256": row.text_sha256,
            "text": text.text if text.sha256 == row.text_sha256 else "", "language": row.language,
            "accepted_at": row.accepted_at, "ip_address": row.ip_address, "device": row.device,
            "card": {"brand": row.card_brand, "last4": row.card_last4}}


# ---- the agency's payouts ----------------------------------------------------------------------------------


def payout_setup_out(setup: service.PayoutSetup) -> dict[str, Any]:
    return {"account_id": setup.account_id, "details_submitted": setup.details_submitted,
            "payouts_enabled": setup.payouts_enabled, "ready": setup.ready, "required": setup.required}


@agency_payouts_bp.route("", methods=["GET"])
@agency_payouts_bp.response(200, s.PayoutListOut)
@requires(Permission.AGENCY_PAYOUT_READ)
def agency_payouts() -> dict[str, Any]:
    """Your agency's payouts: each completed booking's money less the platform fee, after the holding period."""
    return {"items": [{k: v for k, v in service.payout_line(p).items() if k != "agency_id"}
                      for p in service.payouts_for_agency(current_actor())]}


@agency_payouts_bp.route("/onboarding", methods=["POST"])
@agency_payouts_bp.arguments(s.OnboardingIn)
@agency_payouts_bp.response(201, s.OnboardingOut)
@requires(Permission.AGENCY_PROFILE_WRITE)
def start_onboarding(args: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The agency's owner starts (or resumes) Stripe Connect onboarding: its connected account is created once,
    and each call returns a fresh single-use link to Stripe's hosted form. The account becomes ready when
    Stripe reports it can take payouts (`account.updated`); in production cars are listed and booked only then."""
    actor = current_actor()
    agency = agencies.own_agency(actor, str(args["agency"]) if args["agency"] else None)
    back = f"{current_app.config['SETTINGS'].public_base_url}/agency/payouts?returned=1"  # the agency app's page
    setup, link = service.start_payout_onboarding(actor, agency, refresh_url=back, return_url=back)
    return {**payout_setup_out(setup), "onboarding_url": link}, 201


# ---- Stripe's webhook (STRIPE.md §1.6) ----------------------------------------------------------------


@webhook_bp.route("/stripe/webhook", methods=["POST"])
@webhook_bp.response(200, s.WebhookOut)
@webhook_bp.doc(parameters=[{
    "in": "header", "name": "Stripe-Signature", "required": True, "schema": {"type": "string"},
    "description": "Stripe's signature of the raw body with the endpoint's signing secret (`t=...,v1=...`)",
}])
@public
def stripe_webhook() -> dict[str, Any]:
    """Stripe events: the body is the event exactly as Stripe sent it (read raw, never through a schema);
    the signature is verified on the raw body (400 `invalid_signature` otherwise); each event id takes effect
    once; unknown events are acknowledged and ignored."""
    event = current_gateway().verify_webhook(request.get_data(cache=True), request.headers.get("Stripe-Signature"))
    return {"received": True, "outcome": service.handle_event(event)}
