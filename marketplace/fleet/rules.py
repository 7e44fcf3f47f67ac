"""Fleet's fixed vocabularies and value rules: what a listing may say (categories, cities, price bounds,
plates, model years) and how far search reaches. Shared by the service and the request schemas, so neither
imports the other for them."""

from __future__ import annotations

import re

from marketplace.errors import Unprocessable
from marketplace.extensions import utcnow

MAX_RADIUS_KM = 100.0
DEFAULT_RADIUS_KM = 25.0

CATEGORIES = ("mini", "economy", "compact", "sedan", "suv", "luxury", "sports", "van", "pickup")
TRANSMISSIONS = ("automatic", "manual")
FUEL_POLICIES = ("full_to_full", "same_to_same", "prepaid")
FUEL_TYPES = ("petrol", "diesel", "hybrid", "electric")
# the cities cars are picked up in; search matches them exactly, so listings and searches agree
CITIES = ("Abu Dhabi", "Ajman", "Al Ain", "Dubai", "Fujairah", "Hatta", "Kalba", "Khor Fakkan", "Ras Al Khaimah",
          "Ruwais", "Sharjah", "Umm Al Quwain")
MIN_YEAR = 1990
MAX_DAILY_PRICE_FILS = 5_000_000  # AED 50,000 a day: 30 days with fee and VAT stay inside a 32-bit integer
MAX_DEPOSIT_FILS = 50_000_000
PLATE_HINT = "A UAE plate: emirate, series and number, e.g. DXB A 12345."
_PLATE = re.compile(r"^(?=.*\d)[A-Z0-9]{1,6}(?: [A-Z0-9]{1,6}){0,3}$")


def normalise_plate(raw: str) -> str:
    """Upper case, single spaces: ``dxb  a 12345`` -> ``DXB A 12345``; UAE plates are an emirate code or
    name, a letter or number series, and a number."""
    plate = " ".join(raw.replace("-", " ").upper().split())
    if not _PLATE.match(plate) or len(plate) > 20:
        raise Unprocessable(details={"fields": {"plate": [PLATE_HINT]}})
    return plate


def next_model_year() -> int:
    """Cars of next year's model are sold from mid-year: the newest year a listing may give."""
    return utcnow().year + 1
