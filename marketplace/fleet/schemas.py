"""Fleet schemas, split by direction and audience: the agency's input, the agency's view, the public view."""

from __future__ import annotations

import math
import re
from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from marketplace.availability.service import MAX_TURNAROUND_MINUTES
from marketplace.errors import AppError
from marketplace.fleet import rules as fleet
from marketplace.schemas import (
    AT_LEAST_ONE_FIELD,
    CURSOR,
    Documented,
    ImageUpload,
    OutSchema,
    PageArgsSchema,
    PageInfoSchema,
    QueryInteger,
    StrictInteger,
    StrictSchema,
    Text,
    documented,
)

_WHEN = {"format": "date-time", "description": "ISO 8601 with a time zone offset; stored in UTC"}
_FILS = "AED minor units (fils); 100 fils = AED 1"


class StrictNumber(fields.Float):
    """A JSON number (integer or decimal), finite; never a boolean or a string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.make_error("invalid", input=value)
        return float(value)


_NUMBER_TEXT = re.compile(r"^-?\d{1,4}(\.\d{1,20})?$")


class QueryNumber(fields.Float):
    """A decimal number in a query string: plain digits with an optional fraction (no exponents, no NaN).

    The document states it as text of that form whose pattern also holds the field's range (``decimal_text``):
    a JSON Schema number would be sent as ``1e-05`` by a client, which is refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if not isinstance(value, str) or not _NUMBER_TEXT.match(value):
            raise self.make_error("invalid", input=value)
        return float(value)


def decimal_text(pattern: str, description: str) -> Documented:
    return Documented({"type": "string", "pattern": pattern, "description": description})


_FRACTION = r"(\.[0-9]{1,20})?"
_LATITUDE = decimal_text(rf"^-?([0-8]?[0-9]{_FRACTION}|90(\.0{{1,20}})?)$", "Decimal degrees, -90 to 90")
_LONGITUDE = decimal_text(rf"^-?((1[0-7][0-9]|[1-9]?[0-9]){_FRACTION}|180(\.0{{1,20}})?)$",
                          "Decimal degrees, -180 to 180")
_RADIUS = decimal_text(rf"^(0\.[1-9][0-9]{{0,19}}|[1-9][0-9]?{_FRACTION}|100(\.0{{1,20}})?)$",
                       f"Kilometres, 0.1 to {fleet.MAX_RADIUS_KM:g}; default {fleet.DEFAULT_RADIUS_KM:g} with lat/lng")


def _year(value: int) -> None:
    if not fleet.MIN_YEAR <= value <= fleet.next_model_year():
        raise ValidationError(f"Must be between {fleet.MIN_YEAR} and next year.")


YEAR = Documented(lambda: {"minimum": fleet.MIN_YEAR, "maximum": fleet.next_model_year()}, _year)
# a plate as fleet.service stores it (it also folds case, dashes and spaces): emirate, optional series, number
PLATE = documented(pattern=r"^[A-Z]{1,6}( [A-Z0-9]{1,6})? [0-9]{1,6}$")


def _plate(value: str) -> None:
    try:
        fleet.normalise_plate(value)
    except AppError as exc:
        raise ValidationError(fleet.PLATE_HINT) from exc


# ---- agency input -------------------------------------------------------------------------------------------


class VehicleIn(StrictSchema):
    agency = fields.UUID(load_default=None, metadata={
        "description": "Public id of the agency that lists the car; needed only if you work for several"})
    make = Text(max_length=60, required=True)
    model = Text(max_length=60, required=True)
    year = StrictInteger(required=True, validate=YEAR, metadata={"description": "1990 up to next year"})
    category = fields.String(required=True, validate=validate.OneOf(fleet.CATEGORIES))
    plate = fields.String(required=True, validate=[validate.Length(min=1, max=20), _plate, PLATE],
                          metadata={"description": "UAE plate, e.g. DXB A 12345 (stored upper case)"})
    seats = StrictInteger(required=True, validate=validate.Range(min=1, max=60))
    transmission = fields.String(required=True, validate=validate.OneOf(fleet.TRANSMISSIONS))
    fuel_type = fields.String(load_default="petrol", validate=validate.OneOf(fleet.FUEL_TYPES))
    city = fields.String(required=True, validate=validate.OneOf(fleet.CITIES))
    latitude = StrictNumber(required=True, validate=validate.Range(min=-90, max=90),
                            metadata={"description": "Pick-up point of the car"})
    longitude = StrictNumber(required=True, validate=validate.Range(min=-180, max=180))
    pickup_address = Text(max_length=200, load_default=None, allow_none=True)
    daily_price_fils = StrictInteger(required=True, validate=validate.Range(min=1, max=fleet.MAX_DAILY_PRICE_FILS),
                                     metadata={"description": _FILS})
    deposit_fils = StrictInteger(required=True, validate=validate.Range(min=0, max=fleet.MAX_DEPOSIT_FILS),
                                 metadata={"description": _FILS + "; held on the card, not charged"})
    mileage_limit_km_per_day = StrictInteger(load_default=None, allow_none=True,
                                             validate=validate.Range(min=1, max=10_000),
                                             metadata={"description": "null: unlimited"})
    extra_km_fils = StrictInteger(load_default=None, allow_none=True, validate=validate.Range(min=0, max=1_000_000),
                                  metadata={"description": "Price per km over the limit, " + _FILS})
    fuel_policy = fields.String(load_default="full_to_full", validate=validate.OneOf(fleet.FUEL_POLICIES))
    turnaround_minutes = StrictInteger(load_default=None, allow_none=True,
                                       validate=validate.Range(min=0, max=MAX_TURNAROUND_MINUTES),
                                       metadata={"description": "Gap kept free after each rental; default: "
                                                                "the agency's"})
    status = fields.String(load_default="unlisted", validate=validate.OneOf(["listed", "unlisted", "maintenance"]),
                           metadata={"description": "Only an active agency can list a car"})


class VehiclePatchIn(VehicleIn):
    """Every field optional; only those sent change (the agency cannot be changed)."""

    OPENAPI = AT_LEAST_ONE_FIELD
    turnaround_minutes = StrictInteger(validate=validate.Range(min=0, max=MAX_TURNAROUND_MINUTES),
                                       metadata={"description": "Gap kept free after each rental"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["partial"] = True
        kwargs["exclude"] = ("agency",)
        super().__init__(*args, **kwargs)

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Send at least one field to change.")
        for key in ("make", "model", "year", "category", "plate", "seats", "transmission", "fuel_type", "city",
                    "latitude", "longitude", "daily_price_fils", "deposit_fils", "fuel_policy", "status",
                    "turnaround_minutes"):
            if key in data and data[key] is None:
                raise ValidationError("May not be null.", field_name=key)


class AgencyVehicleArgs(PageArgsSchema):
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=50))
    status = fields.String(load_default=None, validate=validate.OneOf(["listed", "unlisted", "maintenance"]))
    agency = fields.UUID(load_default=None, metadata={"description": "Only this agency's cars (one of yours)"})
    city = fields.String(load_default=None, validate=validate.OneOf(fleet.CITIES))


BLOCK_RULES = ("The period: the end after the start, at most 90 days long and not already over (refused with "
               "`validation_error` naming `ends_at`).")


class BlockIn(StrictSchema):
    starts_at = fields.AwareDateTime(required=True, metadata=_WHEN)
    ends_at = fields.AwareDateTime(required=True, metadata={**_WHEN, "description": "After starts_at"})
    reason = Text(max_length=200, load_default=None, allow_none=True)

    @validates_schema
    def _order(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "starts_at" in data and "ends_at" in data and data["ends_at"] <= data["starts_at"]:
            raise ValidationError("The end must be after the start.", field_name="ends_at")


class PhotoFileIn(StrictSchema):
    image = ImageUpload(required=True, description="Public once the car is listed.")


# ---- public search input -----------------------------------------------------------------------------------


SEARCH_RULES = (
    "How the parameters combine (refused with `validation_error` naming the parameter): `city`, or `lat` with "
    "`lng` (both or neither); `starts_at` with `ends_at` (both or neither, and the booking rules: pick-up at "
    "least one hour from now and at most a year ahead, the return after it and at most 30 days later); "
    "`radius_km` and `sort=distance` need `lat` and `lng`; `max_price` not below `min_price`; `cursor` is the "
    "`next_cursor` of the previous page of the same search.")


class SearchArgs(StrictSchema):
    city = fields.String(load_default=None, validate=validate.OneOf(fleet.CITIES))
    lat = QueryNumber(load_default=None, validate=[validate.Range(min=-90, max=90), _LATITUDE],
                      metadata={"description": "Your position: used for this request only, never stored"})
    lng = QueryNumber(load_default=None, validate=[validate.Range(min=-180, max=180), _LONGITUDE])
    radius_km = QueryNumber(load_default=None, validate=[validate.Range(min=0.1, max=fleet.MAX_RADIUS_KM), _RADIUS])
    starts_at = fields.AwareDateTime(load_default=None, metadata=_WHEN)
    ends_at = fields.AwareDateTime(load_default=None, metadata=_WHEN)
    category = fields.String(load_default=None, validate=validate.OneOf(fleet.CATEGORIES))
    min_price = QueryInteger(load_default=None, validate=validate.Range(min=0, max=fleet.MAX_DAILY_PRICE_FILS),
                             metadata={"description": "Daily price from, " + _FILS})
    max_price = QueryInteger(load_default=None, validate=validate.Range(min=0, max=fleet.MAX_DAILY_PRICE_FILS),
                             metadata={"description": "Daily price up to, " + _FILS})
    sort = fields.String(load_default="price", validate=validate.OneOf(["price", "distance"]),
                         metadata={"description": "distance needs lat and lng"})
    cursor = fields.String(load_default=None, validate=validate.Length(max=300),
                           metadata={"description": CURSOR})
    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=50))

    @validates_schema
    def _coherent(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        if (data.get("starts_at") is None) != (data.get("ends_at") is None):
            errors["ends_at" if data.get("starts_at") is not None else "starts_at"] = [
                "Send both starts_at and ends_at, or neither."]
        elif data.get("starts_at") is not None and data["ends_at"] <= data["starts_at"]:
            errors["ends_at"] = ["The return must be after the pick-up."]
        has_point = data.get("lat") is not None and data.get("lng") is not None
        if (data.get("lat") is None) != (data.get("lng") is None):
            errors["lng" if data.get("lat") is not None else "lat"] = ["Send both lat and lng."]
        if data.get("radius_km") is not None and not has_point:
            errors["radius_km"] = ["A radius needs lat and lng."]
        if data.get("sort") == "distance" and not has_point:
            errors["sort"] = ["Sorting by distance needs lat and lng."]
        if data.get("city") is None and data.get("lat") is None and data.get("lng") is None:
            errors["city"] = ["Search by city, or by lat and lng."]
        low, high = data.get("min_price"), data.get("max_price")
        if low is not None and high is not None and low > high:
            errors["max_price"] = ["Must not be below min_price."]
        if errors:
            raise ValidationError(errors)


# ---- output ----------------------------------------------------------------------------------------------


class LocationOut(OutSchema):
    city = fields.String(required=True)
    latitude = fields.Float(required=True)
    longitude = fields.Float(required=True)
    pickup_address = fields.String(allow_none=True, required=True)


class RulesOut(OutSchema):
    mileage_limit_km_per_day = fields.Integer(allow_none=True, required=True,
                                              metadata={"description": "null: unlimited"})
    extra_km_fils = fields.Integer(allow_none=True, required=True)
    fuel_policy = fields.String(required=True)


class AgencyNameOut(OutSchema):
    name = fields.String(required=True)


class PhotoOut(OutSchema):
    id = fields.String(required=True)
    url = fields.String(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)


class _VehicleCardOut(OutSchema):
    """What every public view of a car shows."""

    id = fields.String(required=True)
    make = fields.String(required=True)
    model = fields.String(required=True)
    year = fields.Integer(required=True)
    category = fields.String(required=True)
    seats = fields.Integer(required=True)
    transmission = fields.String(required=True)
    fuel_type = fields.String(required=True)
    location = fields.Nested(LocationOut, required=True)
    daily_price_fils = fields.Integer(required=True, metadata={"description": _FILS})
    deposit_fils = fields.Integer(required=True, metadata={"description": _FILS})
    currency = fields.String(required=True)


class VehicleSummaryOut(_VehicleCardOut):
    agency = fields.Nested(AgencyNameOut, required=True)
    photo_url = fields.String(allow_none=True, required=True, metadata={"description": "Cover photo"})
    distance_km = fields.Float(allow_none=True, required=True,
                               metadata={"description": "From the searched point, rounded to 0.1 km"})


class SearchPageOut(OutSchema):
    items = fields.List(fields.Nested(VehicleSummaryOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)


class VehiclePublicOut(_VehicleCardOut):
    rules = fields.Nested(RulesOut, required=True)
    agency = fields.Nested(AgencyNameOut, required=True)
    photos = fields.List(fields.Nested(PhotoOut), required=True)


class BlockOut(OutSchema):
    id = fields.String(required=True)
    starts_at = fields.DateTime(required=True)
    ends_at = fields.DateTime(required=True)
    reason = fields.String(allow_none=True, required=True)
    created_at = fields.DateTime(required=True)


class BlockListOut(OutSchema):
    items = fields.List(fields.Nested(BlockOut), required=True)


class AgencyVehicleOut(OutSchema):
    id = fields.String(required=True)
    agency = fields.String(required=True, metadata={"description": "Public id of the agency"})
    make = fields.String(required=True)
    model = fields.String(required=True)
    year = fields.Integer(required=True)
    category = fields.String(required=True)
    plate = fields.String(required=True)
    seats = fields.Integer(required=True)
    transmission = fields.String(required=True)
    fuel_type = fields.String(required=True)
    location = fields.Nested(LocationOut, required=True)
    daily_price_fils = fields.Integer(required=True, metadata={"description": _FILS})
    deposit_fils = fields.Integer(required=True, metadata={"description": _FILS})
    currency = fields.String(required=True)
    rules = fields.Nested(RulesOut, required=True)
    turnaround_minutes = fields.Integer(required=True)
    status = fields.String(required=True)
    photos = fields.List(fields.Nested(PhotoOut), required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class AgencyVehiclePageOut(OutSchema):
    items = fields.List(fields.Nested(AgencyVehicleOut), required=True)
    page = fields.Nested(PageInfoSchema, required=True)
