"""Handover schemas: what agency staff send and see at the counter (P-18)."""

from __future__ import annotations

from marshmallow import fields, validate

from marketplace.handover.states import Outcome, Stage
from marketplace.schemas import OutSchema, StrictSchema, Text


class HandoverDayArgs(StrictSchema):
    day = fields.Date(load_default=None, metadata={"description": "A day in Asia/Dubai (default: today)"})


class HandoverVehicleOut(OutSchema):
    id = fields.String(required=True)
    make = fields.String(required=True)
    model = fields.String(required=True)
    year = fields.Integer(required=True)
    plate = fields.String(required=True)


class HandoverRenterOut(OutSchema):
    first_name = fields.String(required=True)
    last_name = fields.String(required=True)


class HandoverLicenceOut(OutSchema):
    number = fields.String(allow_none=True, required=True)
    issuer = fields.String(allow_none=True, required=True)
    expiry = fields.Date(allow_none=True, required=True)
    category = fields.String(allow_none=True, required=True)


class HandoverItemOut(OutSchema):
    reference = fields.String(required=True)
    status = fields.String(required=True)
    stage = fields.String(required=True, validate=validate.OneOf(list(Stage)))
    starts_at = fields.DateTime(required=True)
    ends_at = fields.DateTime(required=True)
    vehicle = fields.Nested(HandoverVehicleOut, required=True)
    renter = fields.Nested(HandoverRenterOut, required=True)


class TodayOut(OutSchema):
    day = fields.Date(required=True)
    pickups = fields.List(fields.Nested(HandoverItemOut), required=True)
    returns = fields.List(fields.Nested(HandoverItemOut), required=True)


class HandoverOut(OutSchema):
    reference = fields.String(required=True)
    status = fields.String(required=True, metadata={"description": "The booking's status"})
    stage = fields.String(required=True, validate=validate.OneOf(list(Stage)))
    outcome = fields.String(allow_none=True, required=True, validate=validate.OneOf(list(Outcome)))
    starts_at = fields.DateTime(required=True)
    ends_at = fields.DateTime(required=True)
    vehicle = fields.Nested(HandoverVehicleOut, required=True)
    renter = fields.Nested(HandoverRenterOut, required=True)
    licence = fields.Nested(HandoverLicenceOut, required=True)
    reveal_opens_at = fields.DateTime(required=True, metadata={"description": "The photo may be shown from"})
    reveal_closes_at = fields.DateTime(required=True, metadata={"description": "... until"})
    handed_over_at = fields.DateTime(allow_none=True, required=True)
    returned_at = fields.DateTime(allow_none=True, required=True)
    late_by_minutes = fields.Integer(allow_none=True, required=True)


class RevealOut(OutSchema):
    url = fields.String(required=True, metadata={"description": "Single-use link to the watermarked photo, "
                                                                "valid about a minute"})
    expires_at = fields.DateTime(required=True)


class HandoverCheckIn(StrictSchema):
    outcome = fields.String(required=True, validate=validate.OneOf(list(Outcome)))
    note = Text(max_length=300, load_default=None)
