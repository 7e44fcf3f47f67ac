"""The demo customer's identity verification, done the way a real customer's is (``flask demo seed``).

The customer gives her consents, declares her identity data and uploads generated photos through the one
upload pipeline and the vault; a demo reviewer claims and approves the case through the review workflow.
So the seeded account is cleared by the same rules (P-10) and leaves the same audit rows as a real one,
instead of rows written around the services.

With localstripe, her rentals of today go through the services too (``seed_rentals``): bookings, payments,
the handover check (the selfie revealed and matched), hand-over, return, a post-rental charge with its
evidence photo and a dispute. The clock is never moved (the seed runs in the app, where time-machine is not
installed): every booking starts at least the booking lead time from now, as for any customer, and the
handovers happen early, inside the agency's handover window (``handover_window_before``), so a rental can be
under way, and one back, on the day the seed runs.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from PIL import Image, ImageDraw, ImageFont

from marketplace import clock
from marketplace.availability import service as availability
from marketplace.bookings import service as bookings
from marketplace.charges import service as charges
from marketplace.charges.states import ChargeKind
from marketplace.errors import AppError
from marketplace.extensions import utcnow
from marketplace.fleet import service as fleet
from marketplace.handover import service as handover
from marketplace.handover.states import Outcome
from marketplace.kyc import service as kyc
from marketplace.kyc.states import ApproveReason, Decision
from marketplace.payments import service as payments
from marketplace.users import service as users
from marketplace.users.states import ConsentKind

if TYPE_CHECKING:
    from marketplace.users.models import User

DEVICE = "demo seed"
SKIN = (198, 150, 120)
CARD = (236, 240, 232)
INK = (30, 38, 52)


def years_before(day: date, years: int) -> date:
    """The same calendar day ``years`` earlier; 29 February becomes 28 February in a common year."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def emirates_id_number(birth_year: int, serial: str = "4519276") -> str:
    """A well-formed Emirates ID (``784-YYYY-NNNNNNN-C``) whose last digit is the Luhn check digit."""
    body = f"784{birth_year:04d}{serial}"
    for check in "0123456789":
        total = 0
        for i, ch in enumerate(reversed(body + check)):
            n = int(ch) * (2 if i % 2 else 1)
            total += n - 9 if n > 9 else n
        if total % 10 == 0:
            return f"784-{birth_year:04d}-{serial}-{check}"
    raise AssertionError("one of ten digits always completes a Luhn sum")


CARS = [
    ("Toyota", "Corolla", 2024, "economy", "DXB A 12345", 5, "automatic", 14900, 100000),
    ("Nissan", "Patrol", 2023, "suv", "DXB B 23456", 7, "automatic", 54900, 300000),
    ("Kia", "Picanto", 2024, "mini", "DXB C 34567", 4, "automatic", 9900, 50000),
    ("Mercedes-Benz", "E 300", 2024, "luxury", "DXB D 45678", 5, "automatic", 89900, 500000),
]


def list_cars(owner: User, agency_public_id: str) -> list[str]:
    """The agency's owner lists four cars through the fleet service, as the agency app does; their ids."""
    actor = users.open_api_session(owner, mfa_done=True)
    ids = []
    for i, (make, model, year, category, plate, seats, gearbox, price, deposit) in enumerate(CARS):
        vehicle = fleet.create_vehicle(
            actor, agency=agency_public_id, make=make, model=model, year=year, category=category, plate=plate,
            seats=seats, transmission=gearbox, city="Dubai", latitude=Decimal("25.1412") + Decimal(i) / 100,
            longitude=Decimal("55.2230"), daily_price_fils=price, deposit_fils=deposit,
            mileage_limit_km_per_day=250, status="listed",
        )
        ids.append(str(vehicle.public_id))
    users.close_session(actor, "demo_seed_done")
    return ids


def clear_customer(customer: User, reviewer: User) -> None:
    """Consents, identity data, five photos and a submitted case, then the reviewer's approval."""
    actor = users.open_api_session(customer)
    for kind in (ConsentKind.TERMS, ConsentKind.PRIVACY, ConsentKind.FACE_DATA):
        users.give_consent(actor, kind, users.current_text_version(kind), device=DEVICE)
    today = users.business_today()
    assert customer.date_of_birth is not None
    dob = customer.date_of_birth
    number = emirates_id_number(dob.year)
    kyc.put_identity(actor, {
        "legal_name": customer.full_name, "date_of_birth": dob, "nationality": customer.nationality or "AE",
        "id_document_type": "emirates_id", "id_document_number": number,
        "id_document_expiry": years_before(today, -4), "licence_number": "DXB-4471902", "licence_issuer": "AE-DU",
        "licence_expiry": years_before(today, -3), "licence_category": "B",
    })
    name = customer.full_name.upper()
    photos = {
        "selfie": selfie(),
        "id_front": card_front("UNITED ARAB EMIRATES", "RESIDENT IDENTITY CARD", [
            ("Name", name), ("ID number", number), ("Date of birth", dob.strftime("%d/%m/%Y")),
            ("Nationality", customer.nationality or "AE"), ("Expiry", years_before(today, -4).strftime("%d/%m/%Y"))]),
        "id_back": card_back(f"ILARE{number.replace('-', '')}<<<<<<<<<<<<<<<", name.replace(" ", "<") + "<<<<<<<<"),
        "licence_front": card_front("GOVERNMENT OF DUBAI · RTA", "DRIVING LICENCE", [
            ("Name", name), ("Licence no.", "DXB-4471902"), ("Category", "B  light vehicle"),
            ("Issued", years_before(today, 2).strftime("%d/%m/%Y")),
            ("Expiry", years_before(today, -3).strftime("%d/%m/%Y"))]),
        "licence_back": card_back("CATEGORY B  AUTOMATIC AND MANUAL", "TRAFFIC FILE 50198231  ·  RESTRICTIONS NONE"),
    }
    for slot, data in photos.items():
        kyc.upload(actor, slot, io.BytesIO(data), "image/jpeg")
    case = kyc.submit(actor)
    users.close_session(actor, "demo_seed_done")

    review = users.open_api_session(reviewer, mfa_done=True)
    kyc.claim(review, case)
    kyc.decide(review, case, decision=Decision.APPROVE, reason_code=ApproveReason.DOCUMENTS_MATCH,
               note="Demo seed: selfie and ID photo show the same person; data matches the licence.")
    users.close_session(review, "demo_seed_done")


# ---- the payment journey, with localstripe playing Stripe and this module playing the mobile SDK ---------

# Stripe's published test card numbers (Stripe "Testing"); nothing else is ever sent, and only to localstripe
TEST_CARDS = {
    "4242424242424242": "Visa, succeeds",
    "5555555555554444": "Mastercard, succeeds",
    "4000002500003155": "Visa, asks for 3D Secure once, then works off-session",
    "4000000000009995": "Visa, declined: insufficient funds",
}
DEMO_CARD = "4242424242424242"
DEMO_PUBLISHABLE_KEY = "pk_test_localstripe_demo"  # localstripe accepts any pk_ key for the SDK's calls


class DemoStripeUnavailable(Exception):
    """localstripe is not answering (or Stripe is not local): the payment parts of the demo are skipped."""


@dataclass(frozen=True)
class DemoPayment:
    card: str  # "visa ending 4242"
    booking: str | None = None  # the paid booking's reference
    invoice: str | None = None  # its tax invoice number


def local_stripe_base(api_base: str | None) -> str:
    """The loopback localstripe the demo may hand a test card to; anything else (real Stripe) is refused."""
    host = urlsplit(api_base or "").hostname
    if api_base is None or host not in ("127.0.0.1", "localhost", "::1"):
        raise DemoStripeUnavailable("Stripe is not localstripe on this machine (STRIPE_API_BASE); the demo "
                                    "only plays the SDK against localstripe")
    return api_base.rstrip("/")


def sdk_confirm_setup(api_base: str, setup_intent_id: str, client_secret: str, number: str) -> None:
    """What the mobile SDK does: confirm the SetupIntent with the card, at Stripe directly (our API never sees
    the number). Only Stripe's test numbers, only to a loopback localstripe."""
    if number not in TEST_CARDS:
        raise ValueError("only Stripe's test card numbers: " + ", ".join(TEST_CARDS))
    form = {"key": DEMO_PUBLISHABLE_KEY, "client_secret": client_secret, "payment_method_data[type]": "card",
            "payment_method_data[card][number]": number, "payment_method_data[card][exp_month]": "12",
            "payment_method_data[card][exp_year]": str(utcnow().year + 4), "payment_method_data[card][cvc]": "123"}
    request = urllib.request.Request(  # noqa: S310 - a loopback localstripe, checked by local_stripe_base
        f"{local_stripe_base(api_base)}/v1/setup_intents/{setup_intent_id}/confirm",
        data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback localstripe
            response.read()
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}").get("error", {})
        raise ValueError(f"localstripe refused the card: {body.get('code') or body.get('message')}") from exc
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise DemoStripeUnavailable(f"localstripe does not answer at {api_base}") from exc


def save_test_card(customer: User, number: str = DEMO_CARD) -> str:
    """Save a test card for ``customer`` through the payments service, as the app and its SDK would.
    Raises DemoStripeUnavailable when localstripe is not there."""
    base = local_stripe_base(payments.stripe_api_base())
    actor = users.open_api_session(customer)
    try:
        started = payments.start_card_setup(actor)
    except AppError as exc:  # payment_provider_unavailable: nothing answers at STRIPE_API_BASE
        raise DemoStripeUnavailable(f"localstripe does not answer at {base} ({exc.code})") from exc
    sdk_confirm_setup(base, started.setup_intent_id, started.client_secret, number)
    card = payments.complete_card_setup(actor, started.setup_intent_id)
    users.close_session(actor, "demo_seed_done")
    return str(card.public_id)


def pay_a_booking(customer: User, vehicle_public_id: str, card_public_id: str, *, start_in_days: int = 5,
                  days: int = 2, starts_at: datetime | None = None, ends_at: datetime | None = None) -> str:
    """The customer books a car and pays it with her saved card, accepting the MIT mandate; the deposit is held
    and the tax invoice issued by the payments service as for any payment. Returns the booking reference."""
    actor = users.open_api_session(customer)
    starts = starts_at or (utcnow() + timedelta(days=start_in_days)).replace(minute=0, second=0, microsecond=0)
    booking, _ = bookings.create_booking(
        actor, vehicle_id=vehicle_public_id, starts_at=starts, ends_at=ends_at or starts + timedelta(days=days),
        rental_terms_version=users.current_text_version(ConsentKind.RENTAL_TERMS),
        mit_mandate_version=users.current_text_version(ConsentKind.MIT_MANDATE))
    reference = str(booking.reference)
    text = users.mit_mandate_text()
    payments.pay_booking(actor, reference, card_public_id=card_public_id, mandate=payments.MandateShown(
        version=text.version, text_sha256=text.sha256, device=DEVICE, channel="app"))
    users.close_session(actor, "demo_seed_done")
    return reference


# ---- today's rentals at the demo agency: a pick-up, one under way, two back with a charge -------------------


@dataclass(frozen=True)
class DemoRentals:
    pickup: str  # confirmed and paid; the customer picks it up later today
    active: str  # handed over early (inside the handover window), in progress, due back later today
    returned: str  # handed over and back; a fuel charge in its 24-hour notice
    disputed: str  # handed over and back; a cleaning charge the customer disputed (the console's queue)
    charge: str  # the noticed charge's public id
    disputed_charge: str
    pickup_at: datetime
    return_at: datetime


def _later_today(earliest: datetime, wanted: datetime) -> datetime:
    """``wanted``, pulled back to before the end of the business day (Asia/Dubai) when there is room after
    ``earliest``; late in the day it stays as wanted (tomorrow)."""
    day_end = datetime.combine(clock.business_today() + timedelta(days=1), datetime.min.time(),
                               tzinfo=clock.BUSINESS_TZ) - timedelta(minutes=10)
    return min(wanted, day_end) if day_end > earliest else wanted


def seed_rentals(customer: User, desk: User, owner: User, cars: list[str], card_public_id: str) -> DemoRentals:
    """Four paid bookings of the demo customer at the demo agency, each on its own car, moved on through the
    services as the agency app does it: the desk reveals the customer's selfie, records the match and hands the
    car over; two come back at once and the owner raises a charge with an evidence photo on each; the customer
    disputes one. Needs localstripe (the bookings are paid)."""
    now = utcnow().replace(microsecond=0)
    # the earliest pick-up any customer may book; its handover window opens one lead time before, i.e. now
    soon = now + availability.MIN_LEAD + timedelta(seconds=5)
    pickup_at = _later_today(soon, (now + timedelta(hours=2)).replace(second=0))
    return_at = _later_today(soon + timedelta(minutes=30), soon + timedelta(hours=3))
    card = card_public_id
    pickup = pay_a_booking(customer, cars[0], card, starts_at=pickup_at, ends_at=pickup_at + timedelta(days=1))
    active = pay_a_booking(customer, cars[1], card, starts_at=soon, ends_at=return_at)
    returned = pay_a_booking(customer, cars[2], card, starts_at=soon, ends_at=soon + timedelta(days=1))
    disputed = pay_a_booking(customer, cars[3], card, starts_at=soon, ends_at=soon + timedelta(hours=6))

    staff = users.open_api_session(desk, mfa_done=True)
    first = bookings.get_by_reference(active)
    opens = handover.reveal_window(first).opens_at
    time.sleep(max(0.0, (opens - utcnow()).total_seconds()))  # a few seconds at most: the window opens at `now`
    for reference in (active, returned, disputed):
        token, _ = handover.reveal_selfie(staff, reference)
        handover.open_selfie(staff, token)  # the desk looks at her photo, watermarked, once
        handover.record_check(staff, reference, Outcome.MATCH, note="Demo seed: the customer matches her photo.")
        handover.hand_over(staff, reference)
    for reference in (returned, disputed):
        handover.record_return(staff, reference)
    users.close_session(staff, "demo_seed_done")

    manager = users.open_api_session(owner, mfa_done=True)
    fuel = charges.raise_charge(
        manager, returned, kind=ChargeKind.FUEL, amount_fils=15750, incurred_at=utcnow(),
        description="Returned with a quarter tank (picked up full): 45 litres at AED 3.50",
        evidence=[charges.EvidenceFile(io.BytesIO(evidence_photo("FUEL 1/4", (200, 120, 30))), "image/jpeg")])
    cleaning = charges.raise_charge(
        manager, disputed, kind=ChargeKind.CLEANING, amount_fils=26250, incurred_at=utcnow(),
        description="Sand on the seats and in the boot: interior valet",
        evidence=[charges.EvidenceFile(io.BytesIO(evidence_photo("INTERIOR", (170, 150, 110))), "image/jpeg")])
    users.close_session(manager, "demo_seed_done")

    renter = users.open_api_session(customer)
    charges.dispute(renter, cleaning.public_id, reason="The car was clean when I gave it back; see my photo.",
                    files=[charges.EvidenceFile(io.BytesIO(evidence_photo("CLEAN SEATS", (90, 120, 150))),
                                                "image/jpeg")])
    users.close_session(renter, "demo_seed_done")
    return DemoRentals(pickup, active, returned, disputed, str(fuel.public_id), str(cleaning.public_id),
                       pickup_at, return_at)


def evidence_photo(label: str, colour: tuple[int, int, int], width: int = 960, height: int = 720) -> bytes:
    """A drawn evidence photo (a coloured scene with a caption), for the demo's charges and dispute."""
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    draw.rectangle((width * 0.1, height * 0.55, width * 0.9, height * 0.9), fill=(40, 44, 52))
    draw.text((width * 0.14, height * 0.65), label, font=_font(64), fill=(250, 250, 246))
    return _jpeg(image)


# ---- generated photos (drawn, so the demo needs no image files and holds no real person) -----------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def _portrait(width: int, height: int) -> Image.Image:
    """A drawn head and shoulders (no real person), cropped to its frame."""
    image = Image.new("RGB", (width, height), (214, 222, 230))
    draw = ImageDraw.Draw(image)
    w, h = width, height
    draw.ellipse((w * 0.22, h * 0.08, w * 0.78, h * 0.58), fill=(40, 30, 28))  # hair
    draw.rectangle((w * 0.42, h * 0.55, w * 0.58, h * 0.75), fill=SKIN)  # neck
    draw.ellipse((w * 0.05, h * 0.7, w * 0.95, h * 1.3), fill=(60, 90, 140))  # shoulders
    draw.ellipse((w * 0.28, h * 0.14, w * 0.72, h * 0.64), fill=SKIN)  # face
    for x in (0.41, 0.59):
        cx, cy = w * x, h * 0.36
        draw.ellipse((cx - w * 0.035, cy - h * 0.018, cx + w * 0.035, cy + h * 0.018), fill=(250, 250, 250))
        draw.ellipse((cx - w * 0.015, cy - h * 0.015, cx + w * 0.015, cy + h * 0.015), fill=(50, 35, 25))
    draw.arc((w * 0.43, h * 0.45, w * 0.57, h * 0.54), 20, 160, fill=(140, 60, 60), width=max(2, w // 60))
    return image


def selfie(width: int = 900, height: int = 1200) -> bytes:
    return _jpeg(_portrait(width, height))


def card_front(issuer: str, title: str, rows: list[tuple[str, str]], width: int = 1400, height: int = 880) -> bytes:
    """A landscape card (ID-1 proportions, 85.6 x 54 mm) with a portrait photo and labelled fields."""
    image = Image.new("RGB", (width, height), (90, 96, 104))
    draw = ImageDraw.Draw(image)
    margin = width // 28
    draw.rounded_rectangle((margin, margin, width - margin, height - margin), radius=36, fill=CARD)
    draw.rectangle((margin, margin + 30, width - margin, margin + 140), fill=(18, 102, 79))
    draw.text((margin + 40, margin + 44), issuer, font=_font(34), fill=(255, 255, 255))
    draw.text((margin + 40, margin + 90), title, font=_font(30), fill=(220, 240, 230))
    image.paste(_portrait(340, 420), (margin + 40, margin + 180))
    y = margin + 190
    for label, value in rows:
        draw.text((margin + 430, y), label, font=_font(24), fill=(95, 105, 120))
        draw.text((margin + 430, y + 30), value, font=_font(34), fill=INK)
        y += 90
    return _jpeg(image)


def card_back(line1: str, line2: str, width: int = 1400, height: int = 880) -> bytes:
    image = Image.new("RGB", (width, height), (90, 96, 104))
    draw = ImageDraw.Draw(image)
    margin = width // 28
    draw.rounded_rectangle((margin, margin, width - margin, height - margin), radius=36, fill=CARD)
    for i in range(48):  # a barcode-like band
        x = margin + 60 + i * 24
        draw.rectangle((x, margin + 80, x + (6 if i % 3 else 14), margin + 300), fill=INK)
    draw.rectangle((margin + 40, height - margin - 250, width - margin - 40, height - margin - 40),
                   fill=(250, 250, 246))
    draw.text((margin + 70, height - margin - 220), line1[:44], font=_font(38), fill=INK)
    draw.text((margin + 70, height - margin - 140), line2[:44], font=_font(38), fill=INK)
    return _jpeg(image)
