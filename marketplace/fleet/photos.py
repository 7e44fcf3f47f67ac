"""Listing photos: public pictures of a car, re-encoded without metadata and kept encrypted in the vault."""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

from sqlalchemy import func, select

from marketplace import audit
from marketplace.agencies import service as agencies
from marketplace.agencies.service import vault_owner
from marketplace.errors import Conflict, NotFound
from marketplace.extensions import db, utcnow
from marketplace.fleet.models import Vehicle, VehiclePhoto
from marketplace.fleet.scope import require_in_agency
from marketplace.fleet.search import bookable_vehicle
from marketplace.images import VEHICLE_PHOTO_POLICY, process_image
from marketplace.permissions import Permission
from marketplace.security import Actor
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.vault.models import Blob

MAX_PHOTOS = 20


class PhotoLimit(Conflict):
    code = "photo_limit"
    message = f"A car can have at most {MAX_PHOTOS} photos."


# ---- photos (public listing pictures: re-encoded, no metadata) --------------------------------------------
#
# Listing photos are not personal data, but they go through the vault like every other image: the blob store
# only ever holds ciphertext (P-08; the store's contract, checked by the CR-03 scans), here under the agency's
# own data key, so terminating an agency can crypto-shred its photos with its documents (P-29).

PHOTO_KIND = "vehicle_photo"


def photos_of(vehicle: Vehicle) -> list[VehiclePhoto]:
    """A car's photos in display order."""
    return list(db.session.execute(
        select(VehiclePhoto).where(VehiclePhoto.vehicle_id == vehicle.id)
        .order_by(VehiclePhoto.position, VehiclePhoto.id)
    ).scalars())


def photos_by_vehicle(vehicles: list[Vehicle]) -> dict[int, list[VehiclePhoto]]:
    """The photos of several cars in one query (list pages)."""
    if not vehicles:
        return {}
    result: dict[int, list[VehiclePhoto]] = {}
    for photo in db.session.execute(
        select(VehiclePhoto).where(VehiclePhoto.vehicle_id.in_([v.id for v in vehicles]))
        .order_by(VehiclePhoto.vehicle_id, VehiclePhoto.position, VehiclePhoto.id)
    ).scalars():
        result.setdefault(photo.vehicle_id, []).append(photo)
    return result


def add_photo(actor: Actor, vehicle: Vehicle, stream: IO[bytes], declared_type: str | None) -> VehiclePhoto:
    """Run an upload through the image pipeline (metadata stripped, pixels re-encoded) and store it encrypted."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    count = db.session.execute(select(func.count()).where(VehiclePhoto.vehicle_id == vehicle.id)).scalar_one()
    if count >= MAX_PHOTOS:
        raise PhotoLimit()
    image = process_image(stream, policy=VEHICLE_PHOTO_POLICY, declared_type=declared_type)
    agency = agencies.agency_by_id(vehicle.agency_id)
    assert agency is not None
    blob = vault.store(vault_owner(agency), PHOTO_KIND, image.data, mime=image.mime, width=image.width,
                       height=image.height)
    blob.attached_at = utcnow()  # claimed by the photo at once (never swept as an orphan upload)
    last = db.session.execute(
        select(func.max(VehiclePhoto.position)).where(VehiclePhoto.vehicle_id == vehicle.id)
    ).scalar()
    photo = VehiclePhoto(vehicle_id=vehicle.id, storage_key=blob.storage_key, width=image.width,
                         height=image.height, position=(last + 1) if last is not None else 0, created_at=utcnow())
    db.session.add(photo)
    db.session.flush()
    audit.record(actor, "vehicle:photo:add", vehicle, photo=photo.public_id)
    return photo


def get_photo(vehicle: Vehicle, photo_public_id: str) -> VehiclePhoto:
    """One photo of this car (a photo id of another car is not found)."""
    photo = db.session.execute(
        select(VehiclePhoto).where(VehiclePhoto.vehicle_id == vehicle.id, VehiclePhoto.public_id == photo_public_id)
    ).scalar_one_or_none()
    if photo is None:
        raise NotFound()
    return photo


def _photo_blob(photo: VehiclePhoto) -> Blob | None:
    return vault.blob_by_storage_key(photo.storage_key)


def photo_bytes(photo: VehiclePhoto) -> bytes:
    """The photo's JPEG, decrypted (public content: no audit row, unlike KYC images)."""
    blob = _photo_blob(photo)
    if blob is None or blob.deleted_at is not None or blob.kind != PHOTO_KIND:
        raise NotFound()
    return vault.read(blob)


def public_photo(vehicle_public_id: str, photo_public_id: str) -> bytes:
    """A listing photo of a car anyone can see (listed, active agency); anything else is not found."""
    return photo_bytes(get_photo(bookable_vehicle(vehicle_public_id), photo_public_id))


def delete_photo(actor: Actor, vehicle: Vehicle, photo_public_id: str) -> None:
    """Remove a photo; its ciphertext file goes once the removal is committed."""
    require_in_agency(actor, vehicle.agency_id, Permission.AGENCY_VEHICLE_WRITE)
    photo = get_photo(vehicle, photo_public_id)
    blob = _photo_blob(photo)
    db.session.delete(photo)
    if blob is not None:
        vault.delete(blob)  # the file goes once this is committed
    db.session.flush()
    audit.record(actor, "vehicle:photo:delete", vehicle, photo=photo_public_id)
