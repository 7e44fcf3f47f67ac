"""The consent texts customers are shown, each with a version. A consent row keeps the version and
the SHA-256 of the exact text accepted, so the wording behind any consent can be proven later.

To change a text, add a new version here; old versions stay so earlier consents remain provable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from marketplace.users.models import ConsentKind


@dataclass(frozen=True)
class ConsentText:
    kind: ConsentKind
    version: str
    title: str
    text: str
    required_for: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


_TEXTS: list[ConsentText] = [
    ConsentText(
        ConsentKind.TERMS,
        "2026-11-01",
        "Terms of use",
        "I accept the CareJar terms of use. I confirm I am at least 21 years old and that the details I give "
        "are true and belong to me.",
        "registration",
    ),
    ConsentText(
        ConsentKind.PRIVACY,
        "2026-11-01",
        "Privacy policy",
        "I have read the CareJar privacy policy, which explains what personal data is collected, why, who it "
        "is shared with, how long it is kept and how I can exercise my rights.",
        "registration",
    ),
    ConsentText(
        ConsentKind.FACE_DATA,
        "2026-11-01",
        "Face data (selfie)",
        "I explicitly consent to CareJar processing my selfie for four purposes only: (1) verifying my "
        "identity (KYC) by a human reviewer comparing it with my ID photo; (2) preventing fraud; (3) letting "
        "the agency that rents me a car match me to my booking at handover; (4) showing it on my own profile. "
        "No facial recognition, biometric templates or automated face matching are used. I can withdraw this "
        "consent at any time; I then cannot make new bookings.",
        "selfie upload",
    ),
    ConsentText(
        ConsentKind.MIT_MANDATE,
        "2026-11-01",
        "Post-rental charges mandate",
        "I authorise CareJar to charge my saved card without me being present, for costs arising from this "
        "booking: traffic fines, Salik/Darb tolls, damage, fuel and cleaning, once per item and only within 90 "
        "days of the car's return. Fines and tolls are the authority's record plus the published admin fee; "
        "fuel is the published per-litre rate; cleaning is the published fee list; damage follows the "
        "inspection and repair assessment; VAT applies where due. Nothing is charged until a written notice "
        "has listed the items, amounts and evidence and given me 24 hours to review or dispute them.",
        "booking",
    ),
    ConsentText(
        ConsentKind.RENTAL_TERMS,
        "2026-11-01",
        "Rental terms",
        "I accept the rental terms of this booking: the car is picked up and returned at the stated place and "
        "times (Asia/Dubai time); I show my driving licence and I am the only person who may take the car; the "
        "mileage and fuel rules of the listing apply; the security deposit is held on my card and released or "
        "partly captured after the return inspection. Cancellation: free until 48 hours before pick-up; later "
        "cancellations cost one day's rental (plus its platform fee and VAT); an unpaid booking expires after "
        "15 minutes.",
        "booking",
    ),
    ConsentText(
        ConsentKind.MARKETING,
        "2026-11-01",
        "Marketing messages",
        "Send me offers and news from CareJar by e-mail and in the app. I can opt out at any time.",
        "optional",
    ),
    ConsentText(
        ConsentKind.PRECISE_LOCATION,
        "2026-11-01",
        "Precise location for search",
        "Use my device's precise location to find cars near me. It is used only for the search request and "
        "never stored.",
        "optional",
    ),
]

CURRENT: dict[ConsentKind, ConsentText] = {t.kind: t for t in _TEXTS}
ALL_VERSIONS: dict[tuple[str, str], ConsentText] = {(t.kind, t.version): t for t in _TEXTS}


def current(kind: ConsentKind) -> ConsentText:
    return CURRENT[kind]
