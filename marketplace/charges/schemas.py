"""Post-rental charges over the API: what agencies raise, what customers see and send (P-21)."""

from __future__ import annotations

from marshmallow import fields, validate

from marketplace.charges.states import (
    MAX_CHARGE_FILS,
    MAX_DISPUTE_FILES,
    MAX_EVIDENCE,
    MIN_CHARGE_FILS,
    ChargeKind,
    ChargeStatus,
    Decision,
)
from marketplace.schemas import (
    ImageUpload,
    OutSchema,
    PageArgsSchema,
    PageInfoSchema,
    QueryInteger,
    StrictSchema,
    Text,
)


def _amount(**kwargs: object) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(min=MIN_CHARGE_FILS, max=MAX_CHARGE_FILS), **kwargs)  # type: ignore[arg-type]


def _form_amount(**kwargs: object) -> fields.Integer:
    """An amount in a multipart form (text): plain digits only."""
    return QueryInteger(validate=validate.Range(min=MIN_CHARGE_FILS, max=MAX_CHARGE_FILS), **kwargs)  # type: ignore[arg-type]


class ChargeRaiseIn(StrictSchema):
    """One multipart/form-data body: the charge and its evidence files (images: a photo of the fine, the
    receipt, the damage)."""

    kind = fields.String(required=True, validate=validate.OneOf(list(ChargeKind)), metadata={
        "description": "traffic_fine and toll (Salik, Darb) are passed through at cost without VAT; the others "
                       "include 5 % VAT. A fine or toll timed outside the actual handover-to-return period (plus "
                       "the grace setting) goes to platform review instead of to the customer"})
    amount = _form_amount(required=True, metadata={"description": "In fils (AED 1 = 100 fils), VAT included where "
                                                             "it applies: exactly what the notice shows and what "
                                                             "is charged"})
    description = Text(max_length=1000, blank=False, required=True)
    incurred_at = fields.AwareDateTime(required=True, metadata={
        "description": "When it was incurred (with a time zone offset), not in the future"})
    evidence = ImageUpload(required=True, description="The first evidence file (more in evidence_2 ...).")
    evidence_2 = ImageUpload(load_default=None, description="Another evidence file.")
    evidence_3 = ImageUpload(load_default=None, description="Another evidence file.")
    evidence_4 = ImageUpload(load_default=None, description="Another evidence file.")
    evidence_5 = ImageUpload(load_default=None, description="Another evidence file.")

    def files(self, args: dict[str, object]) -> list[object]:
        return [args[key] for key in ["evidence", *(f"evidence_{n}" for n in range(2, MAX_EVIDENCE + 1))]
                if args.get(key) is not None]


class ChargeWithdrawIn(StrictSchema):
    reason = Text(max_length=300, blank=False, required=True)


class ChargeDisputeIn(StrictSchema):
    """One multipart/form-data body: why, and up to three files (photos, receipts)."""

    reason = Text(max_length=2000, min_length=10, blank=False, required=True)
    file_1 = ImageUpload(load_default=None, description="A file that supports the dispute.")
    file_2 = ImageUpload(load_default=None, description="Another file.")
    file_3 = ImageUpload(load_default=None, description="Another file.")

    def files(self, args: dict[str, object]) -> list[object]:
        return [args[f"file_{n}"] for n in range(1, MAX_DISPUTE_FILES + 1) if args.get(f"file_{n}") is not None]


class ChargePayIn(StrictSchema):
    card = fields.String(load_default=None, validate=validate.Length(max=36), metadata={
        "description": "One of your saved cards (its id); default: the card the booking was paid with"})


class ChargeDecisionIn(StrictSchema):
    decision = fields.String(required=True, validate=validate.OneOf(list(Decision)))
    reason = Text(max_length=2000, blank=False, required=True)
    amount = _amount(load_default=None, metadata={"description": "reduce only: the new amount in fils, less "
                                                                 "than the noticed one"})


class BreakdownOut(OutSchema):
    net = fields.Integer(required=True)
    vat = fields.Integer(required=True)
    total = fields.Integer(required=True)
    vat_applies = fields.Boolean(required=True)
    currency = fields.String(required=True)


class EvidenceOut(OutSchema):
    id = fields.String(required=True)
    side = fields.String(required=True, validate=validate.OneOf(["agency", "customer"]))
    url = fields.String(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)
    created_at = fields.DateTime(required=True)


class NoticeOut(OutSchema):
    sent_at = fields.DateTime(allow_none=True, required=True)
    email_delivered_at = fields.DateTime(allow_none=True, required=True)
    in_app_delivered_at = fields.DateTime(allow_none=True, required=True)


class ChargeOut(OutSchema):
    id = fields.String(required=True)
    booking = fields.String(required=True, metadata={"description": "The booking's reference"})
    kind = fields.String(required=True, validate=validate.OneOf(list(ChargeKind)))
    description = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(list(ChargeStatus)))
    amount = fields.Integer(required=True, metadata={"description": "Noticed, in fils"})
    breakdown = fields.Nested(BreakdownOut, required=True)
    amount_due = fields.Integer(required=True, metadata={"description": "What is (or was) collected: the noticed "
                                                                        "amount, or less after a reduction"})
    incurred_at = fields.DateTime(required=True)
    raised_at = fields.DateTime(required=True)
    notice = fields.Nested(NoticeOut, required=True)
    due_at = fields.DateTime(allow_none=True, required=True, metadata={
        "description": "Collected from then on unless accepted earlier or disputed before"})
    accepted_at = fields.DateTime(allow_none=True, required=True)
    disputed_at = fields.DateTime(allow_none=True, required=True)
    dispute_reason = fields.String(allow_none=True, required=True)
    decision = fields.String(allow_none=True, required=True, validate=validate.OneOf(list(Decision)))
    decision_reason = fields.String(allow_none=True, required=True)
    decided_at = fields.DateTime(allow_none=True, required=True)
    attempts = fields.Integer(required=True)
    next_attempt_at = fields.DateTime(allow_none=True, required=True)
    paid_at = fields.DateTime(allow_none=True, required=True)
    paid_via = fields.String(allow_none=True, required=True, validate=validate.OneOf(["deposit", "card",
                                                                                       "on_session"]))
    invoice = fields.String(allow_none=True, required=True, metadata={"description": "The tax invoice's number "
                                                                                     "(none for a fine or toll)"})
    evidence = fields.List(fields.Nested(EvidenceOut), required=True)


class AgencyChargeOut(ChargeOut):
    review_reason = fields.String(allow_none=True, required=True)
    last_error = fields.String(allow_none=True, required=True)
    withdrawn_reason = fields.String(allow_none=True, required=True)


class ChargeListArgs(PageArgsSchema):
    pass


class ChargeListOut(OutSchema):
    items = fields.List(fields.Nested(ChargeOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)


class AgencyChargeListOut(OutSchema):
    items = fields.List(fields.Nested(AgencyChargeOut), required=True)


class PayOut(OutSchema):
    charge = fields.Nested(ChargeOut, required=True)
    client_secret = fields.String(allow_none=True, required=True, metadata={
        "description": "When the bank asks the customer to authenticate: for the mobile SDK's confirmPayment"})
