"""Agency app pages for post-rental charges (P-21): the "raise a charge" form on a returned booking (amount in
AED, the time it was incurred in Asia/Dubai time, evidence files through the one multipart parser), the
agency's charges list, one charge with its evidence (every view audited) and the withdraw form. They call
``marketplace.charges.service`` like the JSON API does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Response, request, url_for
from flask_smorest.fields import Upload
from marshmallow import fields

from agency_app.views import _attempt, _render, agency_bp
from marketplace.bookings import service as bookings
from marketplace.charges import service as charges
from marketplace.charges.states import MAX_CHARGE_FILS, MAX_EVIDENCE, MIN_CHARGE_FILS, WITHDRAWABLE, ChargeKind
from marketplace.clock import BUSINESS_TZ
from marketplace.errors import AppError, Unprocessable
from marketplace.handover import service as handover
from marketplace.permissions import Permission
from marketplace.schemas import StrictSchema
from marketplace.security import current_actor, requires
from marketplace.transactions import writes
from marketplace.webhelpers import aed_to_fils, error_text, image_response, read_upload_form

EVIDENCE_URL = "/agency/charges/{charge}/evidence/{evidence}"


class ChargeFormIn(StrictSchema):
    """The raise form as the page sends it (multipart): text fields are checked here, the files by the image
    pipeline; an unknown or nameless part is refused by the parser (422 ``unknown_field``)."""

    csrf_token = fields.String(load_default="")
    kind = fields.String(load_default="")
    amount = fields.String(load_default="")
    description = fields.String(load_default="")
    incurred_at = fields.String(load_default="")
    evidence = fields.List(Upload(), load_default=list)  # one file input, ``multiple``


_FORM = ChargeFormIn()


def _invalid(field: str, text: str) -> Unprocessable:
    return Unprocessable(details={"fields": {field: [text]}})


def _local_time(raw: str) -> datetime:
    """A ``datetime-local`` value, read as Asia/Dubai wall-clock time."""
    try:
        value = datetime.fromisoformat(raw.strip()[:19])
    except ValueError:
        raise _invalid("incurred_at", "Pick the date and time it was incurred (Dubai time).") from None
    if value.tzinfo is not None:
        raise _invalid("incurred_at", "Pick the date and time it was incurred (Dubai time).")
    return value.replace(tzinfo=BUSINESS_TZ)


def _rows(items: list[Any]) -> list[dict[str, Any]]:
    return [charges.present(c, evidence_url=EVIDENCE_URL) for c in items]


def booking_charges(actor: Any, reference: str) -> dict[str, Any]:
    """What the booking page shows of its charges: the list and whether the raise form is open."""
    booking = bookings.get_for_agency(actor, reference)
    returned = handover.rental_period(booking.id)[1] is not None
    return {
        "charges": _rows(charges.list_for_booking(actor, reference)),
        "charge_form_open": returned,
        "kinds": list(ChargeKind),
        "max_evidence": MAX_EVIDENCE,
        "charge_error": None,
        "charge_error_code": None,
        "form": {},
    }


def _booking_page(
    reference: str, status: int = 200, *, error: AppError | None = None, form: dict[str, Any] | None = None
) -> Any:
    actor = current_actor()
    booking = bookings.get_for_agency(actor, reference)
    context = booking_charges(actor, reference) | {
        "charge_error": error and error_text(error),
        "charge_error_code": error and error.code,
        "form": form or {},
    }
    return _render("agency/booking.html", status, b=bookings.agency_booking_out(booking), **context)


@agency_bp.post("/bookings/<string:reference>/charges")
@requires(Permission.AGENCY_CHARGE_CREATE)
def charge_raise(reference: str) -> Any:
    """Raise a post-rental charge on a returned booking (amount in AED, time in Dubai time, 1 to 5 files)."""
    reference = reference[:20]
    actor = current_actor()
    bookings.get_for_agency(actor, reference)  # another agency's booking: 404 before the form is read
    form = read_upload_form(_FORM)
    kept = {k: form[k] for k in ("kind", "amount", "description", "incurred_at")}

    def raise_it() -> Any:
        if form["kind"] not in set(ChargeKind):
            raise _invalid("kind", "Choose what the charge is for.")
        amount = aed_to_fils(form["amount"], low=MIN_CHARGE_FILS, high=MAX_CHARGE_FILS)
        description = form["description"].strip()
        if not description or len(description) > 1000:
            raise _invalid("description", "Describe the charge (at most 1,000 characters).")
        incurred_at = _local_time(form["incurred_at"])
        files = [f for f in form["evidence"] if f is not None and f.filename]
        if not files:
            raise _invalid("evidence", "Attach at least one evidence file.")
        if len(files) > MAX_EVIDENCE:
            raise _invalid("evidence", f"At most {MAX_EVIDENCE} evidence files.")
        return charges.raise_charge(
            actor,
            reference,
            kind=ChargeKind(form["kind"]),
            amount_fils=amount,
            description=description,
            incurred_at=incurred_at,
            evidence=[charges.EvidenceFile(f.stream, f.mimetype) for f in files],
        )

    return _attempt(
        raise_it,
        lambda status, exc: _booking_page(reference, status, error=exc, form=kept),
        lambda c: url_for("agency.charge_detail", charge_id=c.public_id, raised=1),
    )


@agency_bp.get("/charges")
@requires(Permission.AGENCY_BOOKING_READ)
def charges_list() -> Any:
    """The agency's post-rental charges, newest first: status, amounts, due time, dispute and decision."""
    return _render("agency/charges.html", charges=_rows(charges.list_for_agency(current_actor())))


def _detail_page(charge_id: str, status: int = 200, error: AppError | None = None) -> Any:
    actor = current_actor()
    charge = charges.for_agency(actor, charge_id)
    return _render(
        "agency/charge.html",
        status,
        c=_rows([charge])[0],
        error=error and error_text(error),
        withdrawable=charge.status in WITHDRAWABLE,
    )


@agency_bp.get("/charges/<string:charge_id>")
@requires(Permission.AGENCY_BOOKING_READ)
def charge_detail(charge_id: str) -> Any:
    """One charge: the notice, its breakdown, the evidence of both sides, the dispute and the decision."""
    return _detail_page(charge_id[:36])


@agency_bp.get("/charges/<string:charge_id>/evidence/<string:evidence_id>")
@writes  # every view is audited
@requires(Permission.AGENCY_BOOKING_READ)
def charge_evidence(charge_id: str, evidence_id: str) -> Response:
    """An evidence file of the agency's charge (the customer's dispute files included), never cached."""
    actor = current_actor()
    charge = charges.for_agency(actor, charge_id[:36])
    return image_response(charges.evidence_image(actor, charge, evidence_id[:36], viewer="agency"), "image/jpeg")


@agency_bp.post("/charges/<string:charge_id>/withdraw")
@requires(Permission.AGENCY_CHARGE_CREATE)
def charge_withdraw(charge_id: str) -> Any:
    """Withdraw a charge that is not paid and not being collected, with a reason (a noticed customer is told)."""
    charge_id = charge_id[:36]
    actor = current_actor()
    charges.for_agency(actor, charge_id)  # another agency's charge: 404

    def withdraw() -> Any:
        reason = request.form.get("reason", "").strip()[:300]
        if not reason:
            raise _invalid("reason", "Give a reason for withdrawing the charge.")
        return charges.withdraw(actor, charge_id, reason=reason)

    return _attempt(
        withdraw,
        lambda status, exc: _detail_page(charge_id, status, exc),
        lambda c: url_for("agency.charge_detail", charge_id=c.public_id, withdrawn=1),
    )
