"""Booking schemas, split by audience: the customer's view and the agency's minimised view (P-17)."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from marketplace.schemas import OutSchema, PageArgsSchema, PageInfoSchema, StrictSchema, Text, documented
from marketplace.users.service import current_text_version

_WHEN = {"format": "date-time", "description": "ISO 8601 with a time zone offset; stored in UTC"}
PERIOD_RULES = ("The period: `ends_at` after `starts_at`, pick-up at least one hour from now and at most a "
                "year ahead, at most 30 days long (refused with `validation_error` naming the field).")


class PeriodIn(StrictSchema):
    starts_at = fields.AwareDateTime(required=True, metadata={
        **_WHEN, "description": "Pick-up: at least one hour from now, at most a year ahead"})
    ends_at = fields.AwareDateTime(required=True, metadata={
        **_WHEN, "description": "Return: after the pick-up, at most 30 days later"})

    @validates_schema
    def _order(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "starts_at" in data and "ends_at" in data and data["ends_at"] <= data["starts_at"]:
            raise ValidationError("The return must be after the pick-up.", field_name="ends_at")


class QuoteIn(PeriodIn):
    vehicle_id = fields.UUID(required=True)


class BookingIn(QuoteIn):
    accept_rental_terms_version = Text(
        max_length=32, required=True, rules=(documented(enum=[current_text_version("rental_terms")]),),
        metadata={"description": "Version of the rental terms shown and accepted (the current one)"})
    accept_mit_mandate_version = Text(
        max_length=32, required=True, rules=(documented(enum=[current_text_version("mit_mandate")]),),
        metadata={"description": "Version of the post-rental charges (MIT) mandate shown and accepted"})


class CancelIn(StrictSchema):
    reason = Text(max_length=300, required=True)


class MoneyOut(OutSchema):
    days = fields.Integer(required=True)
    daily_rate = fields.Integer(required=True, metadata={"description": "fils"})
    rental = fields.Integer(required=True, metadata={"description": "fils"})
    platform_fee = fields.Integer(required=True, metadata={"description": "fils; 10% of the rental, for everyone"})
    vat = fields.Integer(required=True, metadata={"description": "fils; UAE VAT 5% of rental + fee"})
    total = fields.Integer(required=True, metadata={"description": "fils; what is charged for the booking"})
    deposit = fields.Integer(required=True, metadata={"description": "fils; held on the card, not charged"})
    currency = fields.String(required=True)


class QuoteOut(OutSchema):
    vehicle_id = fields.String(required=True)
    starts_at = fields.DateTime(required=True)
    ends_at = fields.DateTime(required=True)
    available = fields.Boolean(required=True)
    price = fields.Nested(MoneyOut, required=True)
    free_cancellation_until = fields.DateTime(required=True)


class VehicleBriefOut(OutSchema):
    id = fields.String(required=True)
    make = fields.String(required=True)
    model = fields.String(required=True)
    year = fields.Integer(required=True)
    plate = fields.String(required=True)


class EventOut(OutSchema):
    at = fields.DateTime(required=True)
    kind = fields.String(required=True)
    from_status = fields.String(allow_none=True, required=True)
    to_status = fields.String(allow_none=True, required=True)


class BookingOut(OutSchema):
    reference = fields.String(required=True)
    status = fields.String(required=True)
    vehicle = fields.Nested(VehicleBriefOut, required=True)
    starts_at = fields.DateTime(required=True)
    ends_at = fields.DateTime(required=True)
    pickup_place = fields.String(required=True)
    dropoff_place = fields.String(required=True)
    price = fields.Nested(MoneyOut, required=True)
    pay_by = fields.DateTime(allow_none=True, required=True)
    rental_terms_version = fields.String(required=True)
    mit_mandate_version = fields.String(required=True)
    cancelled_at = fields.DateTime(allow_none=True, required=True)
    cancel_reason = fields.String(allow_none=True, required=True)
    cancellation_fee = fields.Integer(allow_none=True, required=True)
    free_cancellation_until = fields.DateTime(required=True)
    history = fields.List(fields.Nested(EventOut), required=True)
    created_at = fields.DateTime(required=True)


class BookingPageOut(OutSchema):
    items = fields.List(fields.Nested(BookingOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)


# ---- the agency's view: only what the booking needs (P-17) --------------------------------------


class RenterOut(OutSchema):
    first_name = fields.String(required=True)
    last_name = fields.String(required=True)


class LicenceOut(OutSchema):
    number = fields.String(allow_none=True, required=True)
    issuer = fields.String(allow_none=True, required=True)
    expiry = fields.Date(allow_none=True, required=True)
    category = fields.String(allow_none=True, required=True)


class EmergencyOut(OutSchema):
    name = fields.String(allow_none=True, required=True)
    phone = fields.String(allow_none=True, required=True)


class AgencyBookingOut(OutSchema):
    reference = fields.String(required=True)
    status = fields.String(required=True)
    vehicle = fields.Nested(VehicleBriefOut, required=True)
    starts_at = fields.DateTime(required=True)
    ends_at = fields.DateTime(required=True)
    pickup_place = fields.String(required=True)
    dropoff_place = fields.String(required=True)
    renter = fields.Nested(RenterOut, required=True)
    licence = fields.Nested(LicenceOut, required=True)
    emergency_contact = fields.Nested(EmergencyOut, required=True)
    flagged = fields.Boolean(required=True)
    flag_reason = fields.String(allow_none=True, required=True)


class AgencyBookingPageOut(OutSchema):
    items = fields.List(fields.Nested(AgencyBookingOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)


class AgencyBookingArgs(PageArgsSchema):
    day = fields.Date(load_default=None, metadata={"description": "A day in Asia/Dubai: pick-ups and returns on it"})
    status = fields.String(load_default=None, validate=validate.OneOf([
        "pending_payment", "confirmed", "in_progress", "returned", "completed", "cancelled", "expired", "no_show"]))
