"""Vehicles over the JSON API: public search and detail, and the agency's fleet management."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Response, jsonify
from flask.views import MethodView

from marketplace.api import ApiBlueprint
from marketplace.errors import Unprocessable
from marketplace.extensions import limiter
from marketplace.fleet import schemas as s
from marketplace.fleet import service as fleet
from marketplace.fleet.models import AvailabilityBlock, Vehicle, VehiclePhoto
from marketplace.permissions import Permission
from marketplace.schemas import decode_cursor, decode_id_cursor, paginate
from marketplace.security import Actor, current_actor, public, requires
from marketplace.webhelpers import upload_arguments, upload_key, upload_limit

# GET /api/v1/vehicles, GET /api/v1/vehicles/{id} (public)
vehicles_bp = ApiBlueprint("vehicles", __name__, url_prefix="/api/v1/vehicles", description="Search cars (public)")
# /api/v1/agency/vehicles... (agency staff with MFA)
agency_fleet_bp = ApiBlueprint("agency_fleet", __name__, url_prefix="/api/v1/agency/vehicles",
                               description="The agency's fleet and availability")

PHOTO_MAX_AGE = 86_400  # a photo id always names the same bytes; a removed photo may linger in caches a day


def _photo_url(vehicle_public_id: str, photo_public_id: str) -> str:
    return f"/api/v1/vehicles/{vehicle_public_id}/photos/{photo_public_id}"


def _location(v: Any) -> dict[str, Any]:  # a Vehicle, or a row of its columns
    return {"city": v.city, "latitude": float(v.latitude), "longitude": float(v.longitude),
            "pickup_address": v.pickup_address}


def _rules(v: Any) -> dict[str, Any]:
    return {"mileage_limit_km_per_day": v.mileage_limit_km_per_day, "extra_km_fils": v.extra_km_fils,
            "fuel_policy": v.fuel_policy}


def _photos(v: Vehicle, photos: list[VehiclePhoto]) -> list[dict[str, Any]]:
    return [{"id": p.public_id, "url": _photo_url(v.public_id, p.public_id), "width": p.width, "height": p.height}
            for p in photos]


def summary_out(hit: fleet.SearchHit) -> dict[str, Any]:
    (_, public_id, make, model, year, category, seats, transmission, fuel_type, city, latitude, longitude,
     pickup_address, daily_price, deposit, currency, agency_name, cover_photo, _) = hit.row
    return {
        "id": public_id, "make": make, "model": model, "year": year, "category": category, "seats": seats,
        "transmission": transmission, "fuel_type": fuel_type,
        "location": {"city": city, "latitude": latitude, "longitude": longitude, "pickup_address": pickup_address},
        "daily_price_fils": daily_price, "deposit_fils": deposit, "currency": currency, "agency": {"name": agency_name},
        "photo_url": f"/api/v1/vehicles/{public_id}/photos/{cover_photo}" if cover_photo else None,
        "distance_km": hit.distance_km,
    }


def agency_vehicle_out(v: Vehicle, agency_public_id: str, photos: list[VehiclePhoto]) -> dict[str, Any]:
    return {
        "id": v.public_id, "agency": agency_public_id, "make": v.make, "model": v.model, "year": v.year,
        "category": v.category, "plate": v.plate, "seats": v.seats, "transmission": v.transmission,
        "fuel_type": v.fuel_type, "location": _location(v), "daily_price_fils": v.daily_price_fils,
        "deposit_fils": v.deposit_fils, "currency": v.currency, "rules": _rules(v),
        "turnaround_minutes": v.turnaround_minutes, "status": v.status, "photos": _photos(v, photos),
        "created_at": v.created_at, "updated_at": v.updated_at,
    }


def block_out(b: AvailabilityBlock) -> dict[str, Any]:
    return {"id": b.public_id, "starts_at": b.starts_at, "ends_at": b.ends_at, "reason": b.reason,
            "created_at": b.created_at}


def _invalid_cursor() -> Unprocessable:
    return Unprocessable(details={"fields": {"cursor": ["Invalid cursor."]}})


def _fingerprint(query: fleet.SearchQuery) -> str:
    return hashlib.sha256(json.dumps(query.fingerprint(), default=str).encode()).hexdigest()[:16]


def _search_query(args: dict[str, Any]) -> fleet.SearchQuery:
    point = fleet.GeoPoint(args["lat"], args["lng"]) if args["lat"] is not None else None
    query = fleet.SearchQuery(
        city=args["city"], point=point,
        radius_km=args["radius_km"] if args["radius_km"] is not None else fleet.DEFAULT_RADIUS_KM,
        starts_at=args["starts_at"], ends_at=args["ends_at"], category=args["category"],
        min_price=args["min_price"], max_price=args["max_price"], sort=args["sort"], limit=args["limit"])
    raw = decode_cursor("vehicles", args["cursor"])
    if raw is None:
        return query
    if not isinstance(raw, list) or len(raw) != 3 or raw[2] != _fingerprint(query):
        raise _invalid_cursor()
    key, last_id = raw[0], raw[1]
    number = (int, float) if query.sort == "distance" else (int,)
    if (isinstance(key, bool) or not isinstance(key, number)
            or isinstance(last_id, bool) or not isinstance(last_id, int)):
        raise _invalid_cursor()
    return fleet.SearchQuery(**{**query.__dict__, "after": (key, last_id)})


@vehicles_bp.route("")
@vehicles_bp.doc(description=s.SEARCH_RULES)
@vehicles_bp.arguments(s.SearchArgs, location="query")
@vehicles_bp.response(200, s.SearchPageOut)
@public
def search(args: dict[str, Any]) -> Response:
    """Cars free for the whole period, by city or by position and radius (your position is never stored)."""
    query = _search_query(args)
    fingerprint = _fingerprint(query)
    # search asks for limit + 1 rows itself (SearchQuery.limit is the page size)
    page = paginate("vehicles", query.limit, lambda _: fleet.search(query),
                    key=lambda hit: [hit.sort_key, hit.row.id, fingerprint])
    # the hottest public route: summary_out already builds exactly SearchPageOut's fields (tests validate every
    # answer against it), so the page skips marshmallow's per-field dump, a quarter of the request's CPU
    return jsonify(page.out(summary_out))


@vehicles_bp.route("/<string:vehicle_id>")
@vehicles_bp.response(200, s.VehiclePublicOut)
@public
def detail(vehicle_id: str) -> Response:
    """One car anyone can book: details, rules, photos and the agency's business name."""
    v, photos = fleet.public_vehicle(vehicle_id)
    # like search, the page is built as exactly VehiclePublicOut (tests validate it) and skips marshmallow's dump
    return jsonify({
        "id": v.public_id, "make": v.make, "model": v.model, "year": v.year, "category": v.category,
        "seats": v.seats, "transmission": v.transmission, "fuel_type": v.fuel_type, "location": _location(v),
        "daily_price_fils": v.daily_price_fils, "deposit_fils": v.deposit_fils, "currency": v.currency,
        "rules": _rules(v), "agency": {"name": v.agency_name},
        "photos": [{"id": pid, "url": _photo_url(v.public_id, pid), "width": w, "height": h} for pid, w, h in photos],
    })


@vehicles_bp.route("/<string:vehicle_id>/photos/<string:photo_id>")
@vehicles_bp.response(200, description="The photo (JPEG, no metadata); cacheable", content_type="image/jpeg")
@public
def photo(vehicle_id: str, photo_id: str) -> Response:
    """A listing photo (public, metadata stripped)."""
    response = Response(fleet.public_photo(vehicle_id, photo_id), mimetype="image/jpeg")
    response.headers["Cache-Control"] = f"public, max-age={PHOTO_MAX_AGE}"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = 'inline; filename="photo.jpg"'
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response


# ---- the agency's fleet ----------------------------------------------------------------------------------


def _agency_ids(actor: Actor) -> dict[int, str]:
    return {a.id: a.public_id for a in fleet.agencies_of(actor)}


def _out(actor: Actor, v: Vehicle) -> dict[str, Any]:
    return agency_vehicle_out(v, _agency_ids(actor)[v.agency_id], fleet.photos_of(v))


def _after_id(value: str | None) -> int | None:
    return decode_id_cursor("agency-vehicles", value)


@agency_fleet_bp.route("")
class AgencyVehicles(MethodView):
    @agency_fleet_bp.arguments(s.AgencyVehicleArgs, location="query")
    @agency_fleet_bp.response(200, s.AgencyVehiclePageOut)
    @requires(Permission.AGENCY_VEHICLE_READ)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Your agency's cars, oldest first (deleted cars are not listed)."""
        actor, after = current_actor(), _after_id(args["cursor"])
        page = paginate("agency-vehicles", args["limit"], lambda n: fleet.list_for_agency(
            actor, after_id=after, limit=n, status=args["status"], city=args["city"],
            agency_public_id=str(args["agency"]) if args["agency"] else None))
        agencies = _agency_ids(actor)
        photos = fleet.photos_by_vehicle(page.items)
        return page.out(lambda v: agency_vehicle_out(v, agencies[v.agency_id], photos.get(v.id, [])))

    @agency_fleet_bp.arguments(s.VehicleIn)
    @agency_fleet_bp.response(201, s.AgencyVehicleOut)
    @requires(Permission.AGENCY_VEHICLE_WRITE)
    def post(self, args: dict[str, Any]) -> dict[str, Any]:
        """Add a car (unlisted unless `status` says otherwise; only an active agency can list it)."""
        actor = current_actor()
        agency = args.pop("agency")
        vehicle = fleet.create_vehicle(actor, agency=str(agency) if agency else None, **args)
        return _out(actor, vehicle)


@agency_fleet_bp.route("/<string:vehicle_id>")
class AgencyVehicle(MethodView):
    @agency_fleet_bp.response(200, s.AgencyVehicleOut)
    @requires(Permission.AGENCY_VEHICLE_READ)
    def get(self, vehicle_id: str) -> dict[str, Any]:
        """One of your agency's cars (another agency's car is a 404)."""
        actor = current_actor()
        return _out(actor, fleet.get_for_agency(actor, vehicle_id))

    @agency_fleet_bp.arguments(s.VehiclePatchIn)
    @agency_fleet_bp.response(200, s.AgencyVehicleOut)
    @requires(Permission.AGENCY_VEHICLE_WRITE)
    def patch(self, args: dict[str, Any], vehicle_id: str) -> dict[str, Any]:
        """Change a car's details, price, rules or status (existing bookings keep their price)."""
        actor = current_actor()
        vehicle = fleet.update_vehicle(actor, fleet.get_for_agency(actor, vehicle_id), args)
        return _out(actor, vehicle)

    @agency_fleet_bp.response(204)
    @requires(Permission.AGENCY_VEHICLE_WRITE)
    def delete(self, vehicle_id: str) -> None:
        """Remove a car from the fleet (refused with 409 while it has unfinished bookings)."""
        actor = current_actor()
        fleet.delete_vehicle(actor, fleet.get_for_agency(actor, vehicle_id))


@agency_fleet_bp.route("/<string:vehicle_id>/photos", methods=["POST"])
@limiter.limit(upload_limit, key_func=upload_key)
@upload_arguments(agency_fleet_bp, s.PhotoFileIn)
@agency_fleet_bp.response(201, s.PhotoOut)
@requires(Permission.AGENCY_VEHICLE_WRITE)
def add_photo(args: dict[str, Any], vehicle_id: str) -> dict[str, Any]:
    """Upload a listing photo (JPEG, PNG or WebP; metadata removed, pixels re-encoded; public once listed)."""
    actor = current_actor()
    vehicle = fleet.get_for_agency(actor, vehicle_id)
    image = args["image"]
    photo = fleet.add_photo(actor, vehicle, image.stream, image.mimetype)
    return {"id": photo.public_id, "url": _photo_url(vehicle.public_id, photo.public_id), "width": photo.width,
            "height": photo.height}


@agency_fleet_bp.route("/<string:vehicle_id>/photos/<string:photo_id>", methods=["DELETE"])
@agency_fleet_bp.response(204)
@requires(Permission.AGENCY_VEHICLE_WRITE)
def delete_photo(vehicle_id: str, photo_id: str) -> None:
    """Remove a listing photo."""
    actor = current_actor()
    fleet.delete_photo(actor, fleet.get_for_agency(actor, vehicle_id), photo_id)


@agency_fleet_bp.route("/<string:vehicle_id>/blocks")
class Blocks(MethodView):
    @agency_fleet_bp.response(200, s.BlockListOut)
    @requires(Permission.AGENCY_VEHICLE_READ)
    def get(self, vehicle_id: str) -> dict[str, Any]:
        """The car's current and future availability blocks."""
        actor = current_actor()
        return {"items": [block_out(b) for b in fleet.list_blocks(actor, fleet.get_for_agency(actor, vehicle_id))]}

    @agency_fleet_bp.doc(description=s.BLOCK_RULES)
    @agency_fleet_bp.arguments(s.BlockIn)
    @agency_fleet_bp.response(201, s.BlockOut)
    @requires(Permission.AGENCY_VEHICLE_WRITE)
    def post(self, args: dict[str, Any], vehicle_id: str) -> dict[str, Any]:
        """Take the car off the market for up to 90 days (409 `vehicle_unavailable` if booked or blocked)."""
        actor = current_actor()
        block = fleet.create_block(actor, fleet.get_for_agency(actor, vehicle_id), starts_at=args["starts_at"],
                                   ends_at=args["ends_at"], reason=args["reason"])
        return block_out(block)


@agency_fleet_bp.route("/<string:vehicle_id>/blocks/<string:block_id>", methods=["DELETE"])
@agency_fleet_bp.response(204)
@requires(Permission.AGENCY_VEHICLE_WRITE)
def delete_block(vehicle_id: str, block_id: str) -> None:
    """Put the car back on the market for a blocked period."""
    actor = current_actor()
    fleet.delete_block(actor, fleet.get_for_agency(actor, vehicle_id), block_id)
