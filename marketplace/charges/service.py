"""Post-rental charges (P-20, P-21): raised by the agency with evidence, noticed to the customer in writing,
24 hours to accept or dispute, a human decision on a dispute, then collected once for exactly the noticed
(or reduced) amount, from the deposit hold while one is valid, else off-session from the saved card.

Every step is the charge row's status and a due time. ``collect`` is the one place money is asked for: it
locks the charge, checks that it is due (never before ``due_at``, however early or often the job runs),
undisputed, inside 90 days of the return and clear of an open chargeback (STRIPE.md §1.3), moves it to
``collecting`` with the attempt number, and hands the attempt to ``payments.service.collect_charge``, which
commits the attempt's key before Stripe is asked. A killed worker, a flushed Redis or a restarted database
leaves a row that the sweeper's relay (``relay_due``) runs again under the same key: each charge is collected
once. Payments tells this area of an outcome that arrives later (a webhook) through ``on_charge_outcome``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from flask import current_app
from sqlalchemy import select

from marketplace import audit, images, jobs, money
from marketplace.agencies import service as agencies
from marketplace.bookings import service as bookings
from marketplace.charges import states
from marketplace.charges.models import Charge, ChargeEvidence
from marketplace.charges.states import (
    CHARGE_WINDOW,
    MAX_DISPUTE_FILES,
    MAX_EVIDENCE,
    NOTICE_PERIOD,
    OPEN,
    OUTSTANDING,
    PASS_THROUGH,
    PAYABLE,
    RETRY_SCHEDULE,
    TIMED,
    WITHDRAWABLE,
    ChargeKind,
    ChargeStatus,
    Decision,
    ReviewDecision,
)
from marketplace.config import Settings
from marketplace.errors import Conflict, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.handover import service as handover
from marketplace.money import Money
from marketplace.notifications import service as notifications
from marketplace.payments import service as payments
from marketplace.permissions import Permission
from marketplace.security import Actor, SystemActor, require, require_in_agency
from marketplace.users import service as users
from marketplace.vault import service as vault

S = ChargeStatus
EVIDENCE_KIND = "charge_evidence"
LEASE = timedelta(minutes=2)  # an attempt with the provider; another runner waits this long before resuming
SYSTEM = SystemActor("charges")


class ChargeWindowClosed(Conflict):
    code = "charge_window_closed"
    message = "Nothing can be raised or charged more than 90 days after the car's return."


class NotReturned(Conflict):
    code = "booking_not_returned"
    message = "A post-rental charge can be raised only once the car has been handed over and returned."


class NoticePeriodOver(Conflict):
    code = "notice_period_over"
    message = "The 24 hours to review this charge are over: it can no longer be disputed."


class OutstandingBalance(Conflict):
    code = "outstanding_balance"
    message = "An unpaid post-rental charge must be settled before a new booking."


class ChargeBusy(Conflict):
    code = "charge_in_progress"
    message = "A payment attempt for this charge is in progress; try again in a minute."


class EvidenceLimit(Unprocessable):
    code = "evidence_limit"
    message = "Too many files for this charge."


class InvalidCharge(Unprocessable):
    code = "validation_error"


def _settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


# ---- reading ------------------------------------------------------------------------------------------------


def _by_public_id(public_id: str, *, lock: bool = False) -> Charge | None:
    stmt = select(Charge).where(Charge.public_id == public_id[:36])
    return db.session.execute(stmt.with_for_update() if lock else stmt).scalar_one_or_none()


def _locked(charge_id: int) -> Charge:
    return db.session.execute(select(Charge).where(Charge.id == charge_id).with_for_update()).scalar_one()


def for_customer(actor: Actor, public_id: str, *, lock: bool = False) -> Charge:
    """The customer's own charge (another's, or one still under platform review, is not found)."""
    charge = _by_public_id(public_id, lock=lock)
    if charge is None or charge.customer_id != actor.user.id or charge.status == S.PLATFORM_REVIEW:
        raise NotFound()
    return charge


def for_agency(actor: Actor, public_id: str, *, lock: bool = False) -> Charge:
    """A charge of one of the actor's agencies (another agency's is not found)."""
    require(actor, Permission.AGENCY_BOOKING_READ)
    charge = _by_public_id(public_id, lock=lock)
    if charge is None or charge.agency_id not in actor.agency_ids:
        raise NotFound()
    return charge


def for_staff(actor: Actor, public_id: str, *, lock: bool = False) -> Charge:
    """Any charge, for the platform's disputes team."""
    require(actor, Permission.DISPUTE_DECIDE)
    charge = _by_public_id(public_id, lock=lock)
    if charge is None:
        raise NotFound()
    return charge


def list_for_customer(actor: Actor, *, after_id: int | None = None, limit: int = 50) -> list[Charge]:
    stmt = select(Charge).where(Charge.customer_id == actor.user.id, Charge.status != S.PLATFORM_REVIEW)
    if after_id is not None:
        stmt = stmt.where(Charge.id < after_id)
    return list(db.session.execute(stmt.order_by(Charge.id.desc()).limit(limit)).scalars())


def list_for_booking(actor: Actor, reference: str) -> list[Charge]:
    booking = bookings.get_for_agency(actor, reference)
    return list(db.session.execute(select(Charge).where(Charge.booking_id == booking.id)
                                   .order_by(Charge.id)).scalars())


def list_for_agency(actor: Actor, *, limit: int = 100) -> list[Charge]:
    require(actor, Permission.AGENCY_BOOKING_READ)
    return list(db.session.execute(select(Charge).where(Charge.agency_id.in_(actor.agency_ids or {-1}))
                                   .order_by(Charge.id.desc()).limit(limit)).scalars())


def queue(actor: Actor) -> list[Charge]:
    """The disputes team's queue: disputed charges and fines or tolls in platform review, oldest first."""
    require(actor, Permission.DISPUTE_DECIDE)
    return list(db.session.execute(select(Charge).where(Charge.status.in_([S.DISPUTED, S.PLATFORM_REVIEW]))
                                   .order_by(Charge.updated_at, Charge.id)).scalars())


def evidence_of(charge: Charge) -> list[ChargeEvidence]:
    return list(db.session.execute(select(ChargeEvidence).where(ChargeEvidence.charge_id == charge.id)
                                   .order_by(ChargeEvidence.id)).scalars())


def booking_reference(charge: Charge) -> str:
    return str(bookings.get(charge.booking_id).reference)


@dataclass(frozen=True)
class Breakdown:
    net: int
    vat: int
    total: int
    vat_applies: bool


def breakdown(charge: Charge, *, collected: bool = False) -> Breakdown:
    total, vat = (charge.collect_fils, charge.collect_vat_fils) if collected else (charge.amount_fils, charge.vat_fils)
    return Breakdown(net=total - vat, vat=vat, total=total, vat_applies=charge.kind not in PASS_THROUGH)


def notice_delivery(charge: Charge) -> dict[str, datetime | None]:
    """When the notice was written and delivered (the e-mail's SMTP hand-off; the in-app notice at once)."""
    emailed = None
    if charge.notice_email_id:
        try:
            emailed = notifications.get_email(charge.notice_email_id).sent_at
        except NotFound:
            emailed = None
    in_app = None
    if charge.notice_in_app_id:
        in_app = charge.notice_sent_at
    return {"sent_at": charge.notice_sent_at, "email_delivered_at": emailed, "in_app_delivered_at": in_app}


def invoice_number(charge: Charge) -> str | None:
    return payments.charge_invoice_number(charge.payment_id) if charge.payment_id else None


# ---- raising a charge (agency) ----------------------------------------------------------------------------


def _split(kind: str, amount: Money) -> Money:
    """The VAT inside a charge's amount: none for a fine or toll (passed through at cost), else 5 % included."""
    if kind in PASS_THROUGH:
        return Money.zero()
    return money.split_inclusive(amount)[1]


def _window_closes(returned_at: datetime) -> datetime:
    return returned_at + CHARGE_WINDOW


@dataclass(frozen=True)
class EvidenceFile:
    stream: IO[bytes]
    mimetype: str | None


def raise_charge(actor: Actor, reference: str, *, kind: ChargeKind, amount_fils: int, description: str,
                 incurred_at: datetime, evidence: list[EvidenceFile], now: datetime | None = None) -> Charge:
    """A post-rental charge with its evidence. A fine or toll timed outside the actual handover-to-return
    period (plus the grace setting) goes to platform review; any other is noticed to the customer at once."""
    booking = bookings.get_for_agency(actor, reference)
    require_in_agency(actor, booking.agency_id, Permission.AGENCY_CHARGE_CREATE)
    now = now or utcnow()
    handed_over_at, returned_at = handover.rental_period(booking.id)
    if handed_over_at is None or returned_at is None:
        raise NotReturned()
    if now > _window_closes(returned_at):
        raise ChargeWindowClosed(details={"returned_at": returned_at.isoformat()})
    if incurred_at.tzinfo is None:
        raise InvalidCharge(details={"fields": {"incurred_at": ["Give a time zone offset."]}})
    if incurred_at > now + timedelta(minutes=5):
        raise InvalidCharge(details={"fields": {"incurred_at": ["The time it was incurred cannot be in the future."]}})
    if not evidence:
        raise InvalidCharge(details={"fields": {"evidence": ["Attach at least one evidence file."]}})
    if len(evidence) > MAX_EVIDENCE:
        raise EvidenceLimit(details={"max": MAX_EVIDENCE})
    amount = Money(amount_fils)
    vat = _split(kind, amount)
    charge = Charge(booking_id=booking.id, agency_id=booking.agency_id, customer_id=booking.customer_id,
                    kind=kind, description=description.strip(), amount_fils=amount.fils, vat_fils=vat.fils,
                    collect_fils=amount.fils, collect_vat_fils=vat.fils, incurred_at=incurred_at,
                    status=S.NOTICED, raised_by_id=actor.user.id, attempts=0)
    grace = _settings().charge_time_grace
    outside_rental = kind in TIMED and not (handed_over_at - grace <= incurred_at <= returned_at + grace)
    if outside_rental:
        charge.status = S.PLATFORM_REVIEW
        charge.review_reason = "timed outside the rental (handover to return, with the grace period)"
    db.session.add(charge)
    db.session.flush()
    agency = agencies.agency_by_id(booking.agency_id)
    for item in evidence:
        _store_evidence(charge, item, side="agency", owner=agencies.vault_owner(agency), uploader=actor.user.id)
    audit.record(actor, "charge:raise", ("charge", charge.public_id), booking=booking.reference, kind=kind,
                 amount=amount.fils, status=charge.status, evidence=len(evidence))
    if outside_rental:
        notifications.send_email(to=agency.contact_email, kind="charge_in_review",
                                 context={"agency": agency, "charge": charge, "reference": booking.reference})
    else:
        _send_notice(charge, now)
    return charge


def _store_evidence(charge: Charge, item: EvidenceFile, *, side: str, owner: str, uploader: int) -> ChargeEvidence:
    processed = images.process_image(item.stream, policy=images.DOCUMENT_POLICY, declared_type=item.mimetype)
    blob = vault.store(owner, EVIDENCE_KIND, processed.data, mime=processed.mime, width=processed.width,
                       height=processed.height)
    vault.mark_attached(blob.id, utcnow())
    row = ChargeEvidence(charge_id=charge.id, blob_id=blob.id, side=side, uploaded_by_id=uploader,
                         width=processed.width, height=processed.height, created_at=utcnow())
    db.session.add(row)
    db.session.flush()
    return row


def _send_notice(charge: Charge, now: datetime) -> None:
    """P-21: the written notice, by e-mail and in-app, with the amount, its breakdown, the evidence links and
    the due time 24 hours later; the collection is scheduled for that time (and not before)."""
    charge.notice_sent_at, charge.due_at = now, now + NOTICE_PERIOD
    customer = users.user_by_id(charge.customer_id)
    booking = bookings.get(charge.booking_id)
    sent = notifications.notify(customer, kind="charge_notice", essential=True,
                                context=_context(charge, booking, customer))
    for message in sent:
        if message.channel == "email":
            charge.notice_email_id = message.public_id
        else:
            charge.notice_in_app_id = message.public_id
    db.session.flush()
    jobs.schedule("charges.collect", charge.id, due_at=charge.due_at, dedupe_key=f"charge-collect:{charge.id}:notice")
    audit.record(SYSTEM, "charge:notice", ("charge", charge.public_id), due_at=charge.due_at.isoformat(),
                 email=charge.notice_email_id, in_app=charge.notice_in_app_id)


def _context(charge: Charge, booking: Any, customer: Any, **extra: Any) -> dict[str, Any]:
    return {"charge": charge, "booking": booking, "customer": customer, "breakdown": breakdown(charge),
            "collected": breakdown(charge, collected=True), "evidence": evidence_of(charge),
            "kind_label": charge.kind.replace("_", " "), **extra}


# ---- the customer: accept, dispute, pay ---------------------------------------------------------------------


def accept(actor: Actor, public_id: str) -> Charge:
    """The customer accepts a noticed charge: it is collected now."""
    require(actor, Permission.ACCOUNT_WRITE)
    charge = for_customer(actor, public_id, lock=True)
    if charge.status == S.DUE and charge.accepted_at is not None:
        return charge  # accepted already: the same answer
    states.check(charge.status, S.DUE)
    charge.status, charge.accepted_at = S.DUE, utcnow()
    db.session.flush()
    jobs.schedule("charges.collect", charge.id, dedupe_key=f"charge-collect:{charge.id}:accepted")
    audit.record(actor, "charge:accept", ("charge", charge.public_id))
    return charge


def dispute(actor: Actor, public_id: str, *, reason: str, files: list[EvidenceFile],
            now: datetime | None = None) -> Charge:
    """Dispute a noticed charge within its 24 hours, with a reason and files: nothing is collected until the
    disputes team decides."""
    require(actor, Permission.ACCOUNT_WRITE)
    charge = for_customer(actor, public_id, lock=True)
    now = now or utcnow()
    if charge.status == S.NOTICED and charge.due_at is not None and now >= charge.due_at:
        raise NoticePeriodOver(details={"due_at": charge.due_at.isoformat()})
    states.check(charge.status, S.DISPUTED)
    if len(files) > MAX_DISPUTE_FILES:
        raise EvidenceLimit(details={"max": MAX_DISPUTE_FILES})
    charge.status, charge.disputed_at, charge.dispute_reason = S.DISPUTED, now, reason.strip()
    db.session.flush()
    owner = f"user:{actor.user.public_id}"  # the customer's data key, like their KYC images (P-08)
    for item in files:
        _store_evidence(charge, item, side="customer", owner=owner, uploader=actor.user.id)
    audit.record(actor, "charge:dispute", ("charge", charge.public_id), files=len(files))
    agency = agencies.agency_by_id(charge.agency_id)
    notifications.send_email(to=agency.contact_email, kind="charge_disputed",
                             context={"agency": agency, "charge": charge, "reference": booking_reference(charge)})
    return charge


@dataclass(frozen=True)
class PayResult:
    charge: Charge
    client_secret: str | None


def pay(actor: Actor, public_id: str, *, card_public_id: str | None = None) -> PayResult:
    """The customer pays a charge the bank wanted them present for, or one declined off-session: the attempt
    waiting for authentication gives its client secret to the app; otherwise a new on-session attempt."""
    require(actor, Permission.ACCOUNT_WRITE)
    charge = for_customer(actor, public_id, lock=True)
    if charge.status == S.PAID:
        return PayResult(charge, None)
    if charge.status not in PAYABLE:  # a noticed charge is accepted (or disputed), not paid here
        raise states.IllegalTransition(details={"status": charge.status})
    _ensure_window(charge)
    if charge.status == S.REQUIRES_ACTION and card_public_id is None:
        secret = payments.charge_client_secret(charge.id)
        if secret is not None:
            audit.record(actor, "charge:pay", ("charge", charge.public_id), mode="authenticate")
            return PayResult(for_customer(actor, public_id), secret)
    outcome = _attempt(charge.id, on_session=True, card_public_id=card_public_id)
    audit.record(actor, "charge:pay", ("charge", public_id), mode="on_session", outcome=outcome.state)
    return PayResult(for_customer(actor, public_id), outcome.client_secret)


# ---- the agency withdraws; the platform reviews and decides ----------------------------------------------


def withdraw(actor: Actor, public_id: str, *, reason: str) -> Charge:
    charge = for_agency(actor, public_id, lock=True)
    require_in_agency(actor, charge.agency_id, Permission.AGENCY_CHARGE_CREATE)
    if charge.status not in WITHDRAWABLE:
        states.check(charge.status, S.WITHDRAWN)
    noticed = charge.status != S.PLATFORM_REVIEW
    charge.status, charge.withdrawn_at, charge.withdrawn_reason = S.WITHDRAWN, utcnow(), reason.strip()[:300]
    db.session.flush()
    audit.record(actor, "charge:withdraw", ("charge", charge.public_id))
    if noticed:
        _tell_customer(charge, "charge_withdrawn")
    _settle_deposit(charge)
    return charge


def review(actor: Actor, public_id: str, decision: ReviewDecision, *, reason: str) -> Charge:
    """Platform review of a fine or toll timed outside the rental: approve (the notice goes out now, with its
    24 hours) or reject (withdrawn; the customer never sees it). The agency is told either way."""
    charge = for_staff(actor, public_id, lock=True)
    target = S.NOTICED if decision is ReviewDecision.APPROVE else S.WITHDRAWN
    if charge.status != S.PLATFORM_REVIEW:
        raise states.IllegalTransition(details={"status": charge.status})
    states.check(charge.status, target)
    if target == S.NOTICED:
        _ensure_window(charge)  # no notice for a charge that could no longer be taken
    charge.reviewed_by_id, charge.reviewed_at, charge.status = actor.user.id, utcnow(), target
    if target == S.WITHDRAWN:
        charge.withdrawn_at, charge.withdrawn_reason = utcnow(), f"platform review: {reason.strip()}"[:300]
    db.session.flush()
    audit.record(actor, "charge:review", ("charge", charge.public_id), decision=decision, reason=reason)
    if target == S.NOTICED:
        _send_notice(charge, utcnow())
    else:
        _settle_deposit(charge)
    agency = agencies.agency_by_id(charge.agency_id)
    notifications.send_email(to=agency.contact_email, kind="charge_reviewed",
                             context={"agency": agency, "charge": charge, "reference": booking_reference(charge),
                                      "decision": decision, "reason": reason})
    return charge


def decide(actor: Actor, public_id: str, decision: Decision, *, reason: str, amount_fils: int | None = None) -> Charge:
    """The disputes team decides a disputed charge: uphold (the noticed amount), reduce (a smaller amount) or
    waive, with a reason; the customer and the agency are told; an upheld or reduced charge is collected at
    once, but never before the notice's 24 hours are over."""
    charge = for_staff(actor, public_id, lock=True)
    if charge.status != S.DISPUTED:
        states.check(charge.status, S.WAIVED if decision is Decision.WAIVE else S.DUE)
    if decision is Decision.REDUCE:
        if amount_fils is None or not 0 < amount_fils < charge.amount_fils:
            raise InvalidCharge(details={"fields": {"amount": [
                f"Between 1 and {charge.amount_fils - 1} fils (less than the noticed amount)."]}})
        charge.collect_fils, charge.collect_vat_fils = amount_fils, _split(charge.kind, Money(amount_fils)).fils
    elif amount_fils is not None:
        raise InvalidCharge(details={"fields": {"amount": ["Only a reduction names an amount."]}})
    target = S.WAIVED if decision is Decision.WAIVE else S.DUE
    now = utcnow()
    charge.status, charge.decision, charge.decision_reason = target, decision, reason.strip()
    charge.decided_by_id, charge.decided_at = actor.user.id, now
    db.session.flush()
    audit.record(actor, "charge:decide", ("charge", charge.public_id), decision=decision,
                 amount=charge.collect_fils if target == S.DUE else 0)
    _tell_customer(charge, "charge_decided")
    agency = agencies.agency_by_id(charge.agency_id)
    notifications.send_email(to=agency.contact_email, kind="charge_decided_agency",
                             context={"agency": agency, "charge": charge, "reference": booking_reference(charge)})
    if target == S.DUE:
        due = max(now, charge.due_at) if charge.due_at else now
        jobs.schedule("charges.collect", charge.id, due_at=due, dedupe_key=f"charge-collect:{charge.id}:decided")
    else:
        _settle_deposit(charge)
    return charge


def _tell_customer(charge: Charge, kind: str, **extra: Any) -> None:
    customer = users.user_by_id(charge.customer_id)
    booking = bookings.get(charge.booking_id)
    notifications.notify(customer, kind=kind, essential=True, context=_context(charge, booking, customer, **extra))


# ---- collection ---------------------------------------------------------------------------------------------


def _returned_at(charge: Charge) -> datetime | None:
    return handover.rental_period(charge.booking_id)[1]


def _ensure_window(charge: Charge, now: datetime | None = None) -> None:
    returned = _returned_at(charge)
    if returned is not None and (now or utcnow()) > _window_closes(returned):
        raise ChargeWindowClosed(details={"returned_at": returned.isoformat()})


def _collectable(charge: Charge, now: datetime) -> bool:
    """Due now: the notice period is over (or the customer accepted, or the team decided), or a retry's time
    came, or an attempt whose runner vanished is to be resumed."""
    if charge.status == S.NOTICED:
        return charge.due_at is not None and now >= charge.due_at
    if charge.status == S.DUE:  # accepted: at once; upheld or reduced: not before the notice's 24 hours end
        return charge.due_at is None or charge.accepted_at is not None or now >= charge.due_at
    if charge.status == S.RETRYING:
        return charge.next_attempt_at is not None and now >= charge.next_attempt_at
    return charge.status == S.COLLECTING


def collect(charge_id: int, *, now: datetime | None = None) -> str:
    """The collection job: a no-op unless the charge is due; at most one attempt with the provider at a time;
    a re-run resumes the same attempt under the same key. Returns what happened (for logs and tests)."""
    now = now or utcnow()
    charge = _locked(charge_id)
    if not _collectable(charge, now):
        return f"not_due:{charge.status}"
    if charge.status == S.COLLECTING and charge.collecting_until is not None and charge.collecting_until > now:
        raise ChargeBusy()  # another runner has it: this job tries again after its back-off
    returned = _returned_at(charge)
    if returned is None or now > _window_closes(returned):
        charge.status, charge.last_error = S.EXPIRED, "charge_window_closed"
        db.session.flush()
        audit.record(SYSTEM, "charge:expire", ("charge", charge.public_id))
        _settle_deposit(charge)
        return "expired"
    if charge.collect_fils > charge.amount_fils:
        raise RuntimeError(f"charge {charge.id}: more to collect than was noticed")  # never: reductions only
    if payments.has_open_dispute(charge.booking_id):
        # STRIPE.md §1.3: no post-rental charge while a chargeback on the booking is open; look again tomorrow
        charge.last_error = "chargeback_open"
        jobs.schedule("charges.collect", charge.id, due_at=now + timedelta(days=1))
        db.session.flush()
        return "chargeback_open"
    return _attempt(charge.id, on_session=False).state


def _attempt(charge_id: int, *, on_session: bool, card_public_id: str | None = None) -> payments.ChargeOutcome:
    charge = _locked(charge_id)
    now = utcnow()
    resume = charge.status == S.COLLECTING and not on_session
    if not resume:
        states.check(charge.status, S.COLLECTING)
        charge.attempts += 1
        charge.status = S.COLLECTING
    charge.collecting_until, charge.next_attempt_at = now + LEASE, None
    db.session.flush()
    request = payments.ChargeRequest(
        charge_id=charge.id, charge_ref=charge.public_id, booking_id=charge.booking_id, attempt=charge.attempts,
        amount=Money(charge.collect_fils), vat=Money(charge.collect_vat_fils),
        description=f"{charge.kind.replace('_', ' ').capitalize()}: {charge.description}"[:300],
        on_session=on_session, card_public_id=card_public_id)
    outcome = payments.collect_charge(request)  # commits the attempt before Stripe is asked
    _apply(charge_id, outcome.state, outcome.payment_id, outcome.via, outcome.error_code)
    return outcome


def _apply(charge_id: int, state: payments.ChargeState, payment_id: int | None, via: str | None,
           error: str | None) -> None:
    charge = _locked(charge_id)
    if charge.status in (S.PAID, S.WAIVED, S.WITHDRAWN, S.EXPIRED):
        return
    now = utcnow()
    charge.collecting_until = None
    if state is payments.ChargeState.SUCCEEDED:
        charge.status, charge.paid_at, charge.paid_via, charge.payment_id = S.PAID, now, via, payment_id
        charge.last_error = None
        db.session.flush()
        audit.record(SYSTEM, "charge:paid", ("charge", charge.public_id), amount=charge.collect_fils, via=via)
        _tell_customer(charge, "charge_receipt", invoice=invoice_number(charge))
        _settle_deposit(charge)
        return
    if state is payments.ChargeState.PENDING:
        charge.collecting_until = now + LEASE  # the outcome is unknown: the relay resumes it after the lease
        db.session.flush()
        return
    charge.last_error = (error or state)[:64]
    if state is payments.ChargeState.REQUIRES_ACTION:
        if charge.status != S.REQUIRES_ACTION:
            charge.status = S.REQUIRES_ACTION
            db.session.flush()
            _tell_customer(charge, "charge_action_needed")
        return
    # declined (or refused): tried again on the schedule, then unpaid; either way the customer is told
    if charge.attempts <= len(RETRY_SCHEDULE):
        charge.status, charge.next_attempt_at = S.RETRYING, now + RETRY_SCHEDULE[charge.attempts - 1]
        jobs.schedule("charges.collect", charge.id, due_at=charge.next_attempt_at,
                      dedupe_key=f"charge-collect:{charge.id}:retry:{charge.attempts}")
    else:
        charge.status = S.UNPAID
    db.session.flush()
    audit.record(SYSTEM, "charge:declined", ("charge", charge.public_id), attempt=charge.attempts,
                 error=charge.last_error, status=charge.status)
    if charge.attempts == 1:  # told once, at the first decline, with the whole schedule (PY-05: no repeats)
        retries = [charge.next_attempt_at + sum(RETRY_SCHEDULE[1:n], timedelta())
                   for n in range(1, len(RETRY_SCHEDULE) + 1)] if charge.next_attempt_at else []
        _tell_customer(charge, "charge_declined", retries=retries)


@payments.on_charge_outcome
def _later_outcome(charge_id: int, outcome: payments.ChargeOutcome) -> None:
    """A webhook settled an attempt after its answer was lost or the customer authenticated on-session."""
    if db.session.get(Charge, charge_id) is not None:
        _apply(charge_id, outcome.state, outcome.payment_id, outcome.via, outcome.error_code)


def _settle_deposit(charge: Charge) -> None:
    """Once nothing open on the booking needs it, a deposit still held is released (its own job)."""
    if charge_pending(charge.booking_id):
        return
    jobs.schedule("payments.release_deposit", charge.booking_id,
                  dedupe_key=f"deposit-release:{charge.booking_id}:charge:{charge.id}")


def relay_due(*, now: datetime | None = None, limit: int = 100) -> int:
    """The sweeper's relay: every charge that is due and has no open work row gets one (a lost queue, a job
    that ended early); an attempt whose lease ran out (its runner died, or the provider's answer was lost) is
    resumed under its key. Idempotent: ``collect`` decides, under the row's lock."""
    now = now or utcnow()
    due = (((Charge.status == S.NOTICED) & (Charge.due_at <= now))
           | (Charge.status == S.DUE)
           | ((Charge.status == S.RETRYING) & (Charge.next_attempt_at <= now))
           | ((Charge.status == S.COLLECTING)
              & (Charge.collecting_until.is_(None) | (Charge.collecting_until <= now))))
    ids = db.session.execute(select(Charge.id).where(due).order_by(Charge.id).limit(limit)).scalars().all()
    scheduled = 0
    for charge_id in ids:
        if not jobs.has_open("charges.collect", str(charge_id)):
            jobs.schedule("charges.collect", charge_id)
            scheduled += 1
    _expire_outstanding(now)
    return scheduled


def _expire_outstanding(now: datetime) -> None:
    """An unpaid charge (or one waiting for the customer) can no longer be taken 90 days after the return:
    it expires, stops blocking new bookings, and the agency is told (it may pursue the debt itself). All
    outstanding charges are looked at each tick (a page of them would starve the rest), their returns in
    one question to handover."""
    waiting = db.session.execute(select(Charge.id, Charge.booking_id).where(
        Charge.status.in_(list(OUTSTANDING)))).all()
    closed = handover.returned_before({booking_id for _, booking_id in waiting}, now - CHARGE_WINDOW)
    for charge_id, booking_id in waiting:
        if booking_id not in closed:
            continue
        charge = _locked(charge_id)
        if charge.status not in OUTSTANDING:
            continue
        charge.status, charge.last_error = S.EXPIRED, "charge_window_closed"
        db.session.flush()
        audit.record(SYSTEM, "charge:expire", ("charge", charge.public_id), unpaid=charge.collect_fils)
        agency = agencies.agency_by_id(charge.agency_id)
        notifications.send_email(to=agency.contact_email, kind="charge_expired",
                                 context={"agency": agency, "charge": charge, "reference": booking_reference(charge)})


# ---- what other areas ask -----------------------------------------------------------------------------------


@handover.keeps_deposit
def charge_pending(booking_id: int) -> bool:
    """A charge on the booking is not settled yet: the deposit stays held for it."""
    return db.session.execute(select(Charge.id).where(Charge.booking_id == booking_id,
                                                      Charge.status.in_(list(OPEN)))).first() is not None


@bookings.before_customer_books
def ensure_no_outstanding_balance(customer_id: int) -> None:
    """An unpaid post-rental charge blocks new bookings until it is settled."""
    owed = db.session.execute(select(Charge.public_id, Charge.collect_fils).where(
        Charge.customer_id == customer_id, Charge.status.in_(list(OUTSTANDING))).order_by(Charge.id)).all()
    if owed:
        raise OutstandingBalance(details={"amount": sum(int(a) for _, a in owed), "currency": "AED",
                                          "charges": [p for p, _ in owed]})


def evidence_image(actor: Actor, charge: Charge, evidence_public_id: str, *, viewer: str) -> bytes:
    """One evidence file of a charge the caller already holds through its scope; every view is audited."""
    row = db.session.execute(select(ChargeEvidence).where(
        ChargeEvidence.charge_id == charge.id, ChargeEvidence.public_id == evidence_public_id[:36])
    ).scalar_one_or_none()
    if row is None:
        raise NotFound()
    blob = vault.get_blob(row.blob_id)
    if blob is None:
        raise NotFound()
    audit.record(actor, "charge:evidence:view", ("charge", charge.public_id), evidence=row.public_id, viewer=viewer)
    return vault.read(blob)


def present(charge: Charge, *, evidence_url: str) -> dict[str, Any]:
    """One charge as every front door shows it; ``evidence_url`` is the viewer's door to a file, with
    ``{charge}`` and ``{evidence}`` in it."""
    split = breakdown(charge)
    return {
        "id": charge.public_id, "booking": booking_reference(charge), "kind": charge.kind,
        "description": charge.description, "status": charge.status, "amount": charge.amount_fils,
        "breakdown": {"net": split.net, "vat": split.vat, "total": split.total, "vat_applies": split.vat_applies,
                      "currency": "AED"},
        "amount_due": charge.collect_fils, "incurred_at": charge.incurred_at, "raised_at": charge.created_at,
        "notice": notice_delivery(charge), "due_at": charge.due_at, "accepted_at": charge.accepted_at,
        "disputed_at": charge.disputed_at, "dispute_reason": charge.dispute_reason, "decision": charge.decision,
        "decision_reason": charge.decision_reason, "decided_at": charge.decided_at, "attempts": charge.attempts,
        "next_attempt_at": charge.next_attempt_at, "paid_at": charge.paid_at, "paid_via": charge.paid_via,
        "invoice": invoice_number(charge), "review_reason": charge.review_reason, "last_error": charge.last_error,
        "withdrawn_reason": charge.withdrawn_reason,
        "evidence": [{"id": e.public_id, "side": e.side, "width": e.width, "height": e.height,
                      "created_at": e.created_at,
                      "url": evidence_url.format(charge=charge.public_id, evidence=e.public_id)}
                     for e in evidence_of(charge)],
    }


@payments.evidence_source("post_rental_charges")
def _charge_evidence(booking_id: int) -> list[dict[str, Any]]:
    """P-24: the booking's post-rental charges with their notice times, for a chargeback's evidence pack."""
    rows = db.session.execute(select(Charge).where(Charge.booking_id == booking_id).order_by(Charge.id)).scalars()
    out = []
    for charge in rows:
        delivery = notice_delivery(charge)
        out.append({"kind": charge.kind, "amount": str(Money(charge.collect_fils)), "status": charge.status,
                    "notice_sent_at": _iso(delivery["sent_at"]),
                    "email_delivered_at": _iso(delivery["email_delivered_at"]),
                    "due_at": _iso(charge.due_at), "accepted_at": _iso(charge.accepted_at),
                    "disputed_at": _iso(charge.disputed_at), "decision": charge.decision,
                    "evidence_files": len(evidence_of(charge))})
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
