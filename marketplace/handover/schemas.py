"""Handover schemas: what agency staff send and see at the counter (P-18)."""

from __future__ import annotations

from marshmallow import fields, validate

from marketplace.handover.inspections import (
    ACK_NAME_MAX,
    DAMAGE_NOTE_MAX,
    MAX_DAMAGE_MARKS,
    MAX_INSPECTION_PHOTOS,
    MAX_MILEAGE_KM,
    NOTE_MAX,
)
from marketplace.handover.states import DamageArea, DamageSeverity, InspectionKind, Outcome, Stage
from marketplace.schemas import ImageUpload, OutSchema, StrictSchema, Text


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


# ---- inspections ---------------------------------------------------------------------------------------------


class DamageMark(StrictSchema):
    area = fields.String(required=True, validate=validate.OneOf(list(DamageArea)))
    severity = fields.String(required=True, validate=validate.OneOf(list(DamageSeverity)))
    note = Text(max_length=DAMAGE_NOTE_MAX, load_default=None)


class InspectionIn(StrictSchema):
    mileage_km = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=MAX_MILEAGE_KM),
                                metadata={"description": "The odometer; at return not below the pick-up's "
                                                         "(`mileage_below_pickup`)"})
    fuel_eighths = fields.Integer(required=True, strict=True, validate=validate.Range(min=0, max=8),
                                  metadata={"description": "Fuel gauge in eighths: 0 empty, 8 full"})
    damage = fields.List(fields.Nested(DamageMark), load_default=list, validate=validate.Length(max=MAX_DAMAGE_MARKS),
                         metadata={"description": "The damage marks (the whole list: it replaces the recorded one)"})
    note = Text(max_length=NOTE_MAX, load_default=None)


class InspectionPhotoFileIn(StrictSchema):
    image = ImageUpload(required=True, description=f"At most {MAX_INSPECTION_PHOTOS} photos per inspection "
                                                   "(`inspection_photo_limit`).")


class InspectionAckIn(StrictSchema):
    name = Text(max_length=ACK_NAME_MAX, blank=False, required=True,
                metadata={"description": "The customer's name as they typed it at the counter"})


class DamageMarkOut(OutSchema):
    area = fields.String(required=True, validate=validate.OneOf(list(DamageArea)))
    severity = fields.String(required=True, validate=validate.OneOf(list(DamageSeverity)))
    note = fields.String(allow_none=True, required=True)


class InspectionPhotoOut(OutSchema):
    id = fields.String(required=True)
    url = fields.String(required=True, metadata={"description": "The photo (JPEG, no metadata, never cached)"})
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)


class InspectionOut(OutSchema):
    id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(list(InspectionKind)))
    mileage_km = fields.Integer(required=True)
    fuel_eighths = fields.Integer(required=True, validate=validate.Range(min=0, max=8))
    damage = fields.List(fields.Nested(DamageMarkOut), required=True)
    note = fields.String(allow_none=True, required=True)
    recorded_at = fields.DateTime(required=True)
    acknowledged_at = fields.DateTime(allow_none=True, required=True,
                                      metadata={"description": "Set: the inspection is frozen"})
    acknowledged_name = fields.String(allow_none=True, required=True)
    photos = fields.List(fields.Nested(InspectionPhotoOut), required=True)


class InspectionsOut(OutSchema):
    reference = fields.String(required=True)
    pickup = fields.Nested(InspectionOut, allow_none=True, required=True)
    return_ = fields.Nested(InspectionOut, allow_none=True, required=True, attribute="return", data_key="return")
    handed_over_at = fields.DateTime(allow_none=True, required=True)
    returned_at = fields.DateTime(allow_none=True, required=True)
    late_by_minutes = fields.Integer(allow_none=True, required=True)
