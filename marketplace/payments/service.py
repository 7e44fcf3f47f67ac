"""Payment rules: saved cards (P-19), the MIT mandate (P-20), paying a booking, deposits (P-22), refunds,
webhooks, reconciliation and the double-entry ledger.

Every Stripe call follows the same three steps (``transactions.outside``): the row that carries the call's
idempotency key is committed first, Stripe is asked with no transaction open, and the answer is recorded
in the next transaction of the same unit of work. A crash anywhere leaves a row whose key replays the same
call; webhooks and the reconciliation job settle what the API answer did not. States only move forward
(``states.MOVES``), so a late or repeated event changes nothing.

Tax invoices (P-23, ``invoices.py``) are issued in the same transaction as the payment's capture is
recorded (the agency's for the rental, the platform's for its fee), and a settled refund gets its credit
notes in the transaction that records it settled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update

from marketplace import audit, jobs, money
from marketplace.agencies import service as agencies
from marketplace.bookings import service as bookings
from marketplace.bookings.states import BookingStatus
from marketplace.clock import business_today
from marketplace.errors import Conflict, Forbidden, NotFound, Unprocessable
from marketplace.extensions import db, utcnow
from marketplace.fleet import service as fleet
from marketplace.money import Money
from marketplace.notifications import service as notifications
from marketplace.payments import invoices
from marketplace.payments.errors import (
    AuthenticationRequired,
    CardDeclined,
    IdempotencyConflict,
    PaymentInvalid,
    PaymentProviderUnavailable,
    PayoutsNotReady,
)
from marketplace.payments.gateway import (
    ConnectedAccount,
    Intent,
    IntentStatus,
    connected_account_from,
    current_gateway,
    intent_from,
    refund_from,
)
from marketplace.payments.models import (
    CardSetup,
    ChargePayment,
    Dispute,
    JournalEntry,
    JournalLine,
    MandateAcceptance,
    PaymentCustomer,
    PaymentIntentRow,
    Payout,
    PayoutAccount,
    Refund,
    SavedCard,
    WebhookEvent,
)
from marketplace.payments.states import (
    AWAITING_EVIDENCE,
    DISPUTE_CLOSED,
    OPEN,
    Account,
    DisputeStatus,
    IntentKind,
    IntentState,
    RefundState,
    dispute_may_move,
    may_move,
)
from marketplace.permissions import Permission
from marketplace.security import Actor, require, require_in_agency
from marketplace.transactions import UNIQUE_VIOLATION, keep, outside, serialised
from marketplace.users import service as users

log = logging.getLogger(__name__)

CIT_HOLD_WINDOW = timedelta(days=7)  # STRIPE.md §1.2, when the provider gives no capture_before
MIT_HOLD_WINDOW = {"visa": timedelta(days=4, hours=18)}  # a re-hold by our job; other brands 7 days
REHOLD_MARGIN = timedelta(hours=24)  # re-hold this long before the authorisation lapses
STALE_AFTER = timedelta(minutes=15)  # a payment, hold or refund still open this long is asked about
HOLD_FALLBACK_AFTER = timedelta(minutes=10)
ESCROW_HOLDING = timedelta(days=3)  # after the rental completes, before the agency is paid (P-22)
LIVE_BOOKING = frozenset({BookingStatus.PENDING_PAYMENT, BookingStatus.CONFIRMED, BookingStatus.IN_PROGRESS,
                          BookingStatus.RETURNED})
PAID_STATUSES = frozenset({BookingStatus.CONFIRMED, BookingStatus.IN_PROGRESS, BookingStatus.RETURNED,
                           BookingStatus.COMPLETED})

# the invoices area plugs in here (see the module docstring): name -> function(row id)


class PaymentMethodInUse(Conflict):
    code = "payment_method_in_use"
    message = "This card secures a live booking or an unpaid charge and cannot be removed now."


class CardSetupIncomplete(Conflict):
    code = "card_setup_incomplete"
    message = "The card has not been confirmed with the bank yet."


class MandateNotAccepted(Unprocessable):
    code = "mandate_not_accepted"
    message = "Accept the current post-rental charges (MIT) mandate, exactly as shown."


class PaymentInProgress(Conflict):
    code = "payment_in_progress"
    message = "A payment for this booking is still being processed. Try again shortly."


class StaffCannotPay(Forbidden):
    code = "booking_not_allowed"
    message = "Only customer accounts have saved cards and pay bookings."


def _gateway() -> Any:
    return current_gateway()


def stripe_api_base() -> str | None:
    """Where the gateway talks to Stripe (None: Stripe itself); the demo plays the SDK only against a local one."""
    return getattr(_gateway(), "api_base", None)


def _invoice_payment(row_id: int, booking_id: int) -> None:
    """P-23: the captured payment's tax invoices (idempotent per payment row)."""
    booking = bookings.get(booking_id)
    agency = agencies.agency_by_id(booking.agency_id)
    invoices.issue_for_booking_payment(row_id, booking, users.user_by_id(booking.customer_id), agency)
    if booking.rental_fils > 0 and not invoices.can_issue(agency):
        bookings.flag_booking(booking_id, "no rental tax invoice: the agency has no TRN or address on file")


def _credit_refund(refund: Refund) -> None:
    """P-23: credit notes for a settled refund against the payment's invoices (idempotent per refund)."""
    invoices.credit_for_booking_refund(refund.id, refund.payment_id, Money(refund.amount_fils),
                                       "Refund of booking payment")


# ---- keys: derived from our rows, never random (STRIPE.md §1.5) ----------------------------------------------


def pay_key(booking_id: int, attempt: int) -> str:
    return f"pay:{booking_id}:attempt:{attempt}"


def hold_key(booking_id: int, attempt: int) -> str:
    return f"deposit:{booking_id}:hold:{attempt}"


# ---- the ledger -----------------------------------------------------------------------------------------------


def post(kind: str, source: str, lines: list[tuple[Account, Money]], *, booking_id: int | None,
         memo: str = "") -> bool:
    """One balanced entry (debits positive, credits negative); posting the same ``source`` twice does nothing."""
    if sum(amount.fils for _, amount in lines) != 0:
        raise ValueError(f"unbalanced entry {source}")
    if db.session.execute(select(JournalEntry.id).where(JournalEntry.source == source)).first() is not None:
        return False
    entry = JournalEntry(kind=kind, source=source, booking_id=booking_id, memo=memo)
    db.session.add(entry)
    db.session.flush()
    for account, amount in lines:
        if amount.fils:
            db.session.add(JournalLine(entry_id=entry.id, booking_id=booking_id, account=account,
                                       amount_fils=amount.fils))
    db.session.flush()
    return True


def balance(account: Account, *, booking_id: int | None = None) -> int:
    stmt = select(func.coalesce(func.sum(JournalLine.amount_fils), 0)).where(JournalLine.account == account)
    if booking_id is not None:
        stmt = stmt.where(JournalLine.booking_id == booking_id)
    return int(db.session.execute(stmt).scalar_one())


@dataclass
class LedgerReport:
    entries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sum(stmt: Any) -> int:
    return int(db.session.execute(stmt).scalar_one() or 0)


def ledger_check() -> LedgerReport:
    """The books balance, and agree with the payment, refund and booking rows (``flask ledger check``)."""
    report = LedgerReport(entries=_sum(select(func.count()).select_from(JournalEntry)))
    unbalanced = db.session.execute(
        select(JournalLine.entry_id).group_by(JournalLine.entry_id).having(func.sum(JournalLine.amount_fils) != 0)
    ).scalars().all()
    report.problems += [f"entry {entry_id} does not balance" for entry_id in unbalanced]
    total = _sum(select(func.coalesce(func.sum(JournalLine.amount_fils), 0)))
    if total != 0:
        report.problems.append(f"the journal sums to {total}, not 0")
    paid = _sum(select(func.sum(PaymentIntentRow.amount_fils)).where(
        PaymentIntentRow.kind == IntentKind.BOOKING, PaymentIntentRow.state == IntentState.SUCCEEDED))
    captured = _sum(select(func.sum(PaymentIntentRow.captured_fils)).where(
        PaymentIntentRow.kind == IntentKind.DEPOSIT, PaymentIntentRow.state == IntentState.CAPTURED))
    refunded = _sum(select(func.sum(Refund.amount_fils)).where(Refund.state == RefundState.SUCCEEDED))
    in_flight = _sum(select(func.sum(Refund.amount_fils)).where(Refund.state == RefundState.PROCESSING))
    held = _sum(select(func.sum(PaymentIntentRow.amount_fils)).where(
        PaymentIntentRow.kind == IntentKind.DEPOSIT, PaymentIntentRow.state == IntentState.HELD))
    charged = {via: _sum(select(func.sum(ChargePayment.amount_fils)).where(
        ChargePayment.state == IntentState.SUCCEEDED, ChargePayment.via.in_(vias)))
        for via, vias in (("deposit", ["deposit"]), ("card", ["card", "on_session"]))}
    transferred = _sum(select(func.sum(Payout.amount_fils)).where(Payout.state == "paid"))
    owed = _sum(select(func.sum(Payout.amount_fils)).where(Payout.state != "paid"))
    disputed = _sum(select(func.sum(Dispute.withdrawn_fils - Dispute.reinstated_fils)))
    lost = _sum(select(func.sum(Dispute.withdrawn_fils - Dispute.reinstated_fils)).where(
        Dispute.status == DisputeStatus.LOST))
    expected = {Account.CASH: paid + captured + charged["card"] - refunded - transferred - disputed,
                Account.REFUNDS: -in_flight, Account.DEPOSITS_HELD: held,
                Account.DEPOSITS_CAPTURED: charged["deposit"] - captured,
                Account.PAYOUTS: -owed, Account.DISPUTED: disputed - lost, Account.DISPUTE_LOSSES: lost}
    for account, want in expected.items():
        got = balance(account)
        if got != want:
            report.problems.append(f"{account} is {got}, the rows say {want}")
    # per booking: never refunded above what was paid; what customers paid is all accounted for
    rows = db.session.execute(
        select(PaymentIntentRow.booking_id, func.sum(PaymentIntentRow.amount_fils))
        .where(PaymentIntentRow.kind == IntentKind.BOOKING, PaymentIntentRow.state == IntentState.SUCCEEDED)
        .group_by(PaymentIntentRow.booking_id)).all()
    paid_by_booking = {booking_id: int(amount) for booking_id, amount in rows}
    for booking_id, amount in paid_by_booking.items():
        out = _refunded(booking_id)
        if amount - out > bookings.get(booking_id).total_fils:
            report.problems.append(f"booking {booking_id} keeps more than its total")
        if out > amount:
            report.problems.append(f"booking {booking_id} refunds {out} exceed the {amount} paid")
        if balance(Account.CUSTOMER_FUNDS, booking_id=booking_id) > 0:
            report.problems.append(f"booking {booking_id} customer funds are positive")
    for booking_id in db.session.execute(select(MandateAcceptance.booking_id).distinct()).scalars():
        status = bookings.get(booking_id).status
        if status in PAID_STATUSES and booking_id not in paid_by_booking:
            report.problems.append(f"booking {booking_id} is {status} without a captured payment")
    return report


# ---- customers and saved cards (P-19) ---------------------------------------------------------------------


def _customer_only(actor: Actor) -> None:
    require(actor, Permission.ACCOUNT_WRITE)
    if actor.is_staff:
        raise StaffCannotPay()


def customer_id_for(user_id: int) -> str | None:
    row = db.session.execute(select(PaymentCustomer).where(PaymentCustomer.user_id == user_id)).scalar_one_or_none()
    return row.stripe_customer_id if row is not None else None


def _ensure_customer(actor: Actor) -> str:
    user_id, user_ref, email = actor.user.id, actor.user.public_id, actor.user.email
    found = customer_id_for(user_id)
    if found:
        return found
    if db.session.execute(select(PaymentCustomer.id).where(PaymentCustomer.user_id == user_id)).first() is None:
        db.session.add(PaymentCustomer(user_id=user_id))
        db.session.flush()
    key = f"customer:{user_id}"
    stripe_id = outside(lambda: _gateway().ensure_customer(user_ref, email, key=key))
    row = db.session.execute(select(PaymentCustomer).where(PaymentCustomer.user_id == user_id)).scalar_one()
    row.stripe_customer_id = stripe_id
    db.session.flush()
    return str(stripe_id)


@dataclass(frozen=True)
class SetupStarted:
    setup_intent_id: str
    client_secret: str


def start_card_setup(actor: Actor) -> SetupStarted:
    """A SetupIntent (off-session use) for the customer's SDK to confirm with Stripe directly."""
    _customer_only(actor)
    customer = _ensure_customer(actor)
    user_id, user_ref = actor.user.id, actor.user.public_id
    setup = CardSetup(user_id=user_id)
    db.session.add(setup)
    db.session.flush()
    setup_id = setup.id
    started = outside(lambda: _gateway().start_card_setup(
        customer, key=f"setup:{setup_id}", metadata={"setup": str(setup_id), "user": user_ref}))
    row = db.session.get(CardSetup, setup_id)
    assert row is not None
    row.stripe_setup_intent_id = started.setup_intent_id
    row.status = started.status
    db.session.flush()
    return SetupStarted(started.setup_intent_id, started.client_secret)


def complete_card_setup(actor: Actor, setup_intent_id: str) -> SavedCard:
    """After the SDK confirmed it: read the SetupIntent, attach the card if Stripe did not, keep its details."""
    _customer_only(actor)
    setup = db.session.execute(select(CardSetup).where(
        CardSetup.user_id == actor.user.id, CardSetup.stripe_setup_intent_id == setup_intent_id)).scalar_one_or_none()
    if setup is None:
        raise NotFound()
    return save_card_from_setup(setup.id)


def save_card_from_setup(setup_id: int) -> SavedCard:
    """Idempotent: the API confirm and the ``setup_intent.succeeded`` job both end here."""
    setup = db.session.get(CardSetup, setup_id)
    assert setup is not None
    if setup.card_id is not None:
        card = db.session.get(SavedCard, setup.card_id)
        assert card is not None
        return card
    user_id, seti = setup.user_id, setup.stripe_setup_intent_id
    customer = customer_id_for(user_id)
    if seti is None or customer is None:
        raise CardSetupIncomplete()
    outcome = outside(lambda: _gateway().card_setup_outcome(seti))
    if outcome.status != "succeeded" or not outcome.payment_method_id:
        raise CardSetupIncomplete(details={"status": outcome.status})
    pm = outcome.payment_method_id
    details = outside(lambda: _gateway().attach_if_needed(pm, customer, key=f"attach:{setup_id}"))
    card = db.session.execute(select(SavedCard).where(
        SavedCard.stripe_payment_method_id == details.payment_method_id)).scalar_one_or_none()
    if card is None:
        has_default = db.session.execute(select(SavedCard.id).where(
            SavedCard.user_id == user_id, SavedCard.removed_at.is_(None), SavedCard.is_default)).first() is not None
        card = SavedCard(user_id=user_id, stripe_payment_method_id=details.payment_method_id, brand=details.brand,
                         last4=details.last4, exp_month=details.exp_month, exp_year=details.exp_year,
                         is_default=not has_default)
        db.session.add(card)
        db.session.flush()
    setup = db.session.get(CardSetup, setup_id)
    assert setup is not None
    setup.card_id, setup.status = card.id, "succeeded"
    db.session.flush()
    return card


def list_cards(actor: Actor) -> list[SavedCard]:
    return list(db.session.execute(select(SavedCard).where(
        SavedCard.user_id == actor.user.id, SavedCard.removed_at.is_(None)).order_by(SavedCard.id)).scalars())


def card_for(actor: Actor, public_id: str) -> SavedCard:
    card = db.session.execute(select(SavedCard).where(
        SavedCard.public_id == public_id, SavedCard.user_id == actor.user.id,
        SavedCard.removed_at.is_(None))).scalar_one_or_none()
    if card is None:
        raise NotFound()
    return card


def set_default_card(actor: Actor, public_id: str) -> SavedCard:
    _customer_only(actor)
    chosen = card_for(actor, public_id)
    for card in list_cards(actor):
        card.is_default = card.id == chosen.id
    db.session.flush()
    return chosen


def _card_in_use(card_id: int) -> bool:
    open_intent = db.session.execute(select(PaymentIntentRow.id).where(
        PaymentIntentRow.card_id == card_id,
        PaymentIntentRow.state.in_([*OPEN, IntentState.HELD]))).first()
    if open_intent is not None:
        return True
    booking_ids = set(db.session.execute(select(MandateAcceptance.booking_id).where(
        MandateAcceptance.card_id == card_id)).scalars())
    # a returned booking keeps its card for post-rental charges (P-20: within 90 days of the return)
    return any(bookings.get(booking_id).status in LIVE_BOOKING for booking_id in booking_ids)


def remove_card(actor: Actor, public_id: str) -> None:
    """Refused while a live booking or an open payment needs the card; else detached at Stripe and hidden."""
    _customer_only(actor)
    card = card_for(actor, public_id)
    if _card_in_use(card.id):
        raise PaymentMethodInUse()
    card_id, pm = card.id, card.stripe_payment_method_id
    outside(lambda: _gateway().detach_card(pm, key=f"detach:{card_id}"))
    removed = db.session.get(SavedCard, card_id)
    assert removed is not None
    was_default = removed.is_default
    removed.removed_at, removed.is_default = utcnow(), False
    db.session.flush()
    if was_default:
        remaining = list_cards(actor)
        if remaining:
            remaining[0].is_default = True
            db.session.flush()


# ---- paying a booking ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentView:
    booking: Any
    payment: PaymentIntentRow | None
    deposit: PaymentIntentRow | None
    client_secret: str | None = None


def _intents(booking_id: int, kind: IntentKind) -> list[PaymentIntentRow]:
    return list(db.session.execute(select(PaymentIntentRow).where(
        PaymentIntentRow.booking_id == booking_id, PaymentIntentRow.kind == kind)
        .order_by(PaymentIntentRow.attempt)).scalars())


def booking_payment(booking_id: int) -> PaymentIntentRow | None:
    """The latest attempt to pay the booking (the succeeded one if any)."""
    rows = _intents(booking_id, IntentKind.BOOKING)
    paid = [row for row in rows if row.state == IntentState.SUCCEEDED]
    return paid[-1] if paid else (rows[-1] if rows else None)


def current_deposit(booking_id: int) -> PaymentIntentRow | None:
    rows = _intents(booking_id, IntentKind.DEPOSIT)
    live = [row for row in rows if row.state in (IntentState.HELD, *OPEN)]
    return live[-1] if live else (rows[-1] if rows else None)


def payment_view(booking: Any, client_secret: str | None = None) -> PaymentView:
    return PaymentView(booking, booking_payment(booking.id), current_deposit(booking.id), client_secret)


def payment_status(actor: Actor, reference: str) -> PaymentView:
    return payment_view(bookings.get_for_customer(actor, reference))


def mandate_for(actor: Actor, reference: str) -> MandateAcceptance:
    """The customer's own mandate acceptance for a booking (the latest one), shown back to them (P-20)."""
    booking = bookings.get_for_customer(actor, reference)
    row = db.session.execute(select(MandateAcceptance).where(
        MandateAcceptance.booking_id == booking.id, MandateAcceptance.user_id == actor.user.id)
        .order_by(MandateAcceptance.id.desc()).limit(1)).scalar_one_or_none()
    if row is None:
        raise NotFound()
    return row


@dataclass(frozen=True)
class MandateShown:
    """What the customer's app showed and the customer actively accepted (an unticked box they ticked)."""

    version: str
    text_sha256: str
    ip_address: str | None = None
    user_agent: str | None = None
    device: str | None = None
    channel: str = "app"
    language: str = "en"


def pay_booking(actor: Actor, reference: str, *, card_public_id: str, mandate: MandateShown) -> PaymentView:
    """Pay a pending booking with a saved card, accepting the MIT mandate; confirms it exactly once."""
    _customer_only(actor)
    booking = bookings.get_for_customer(actor, reference)
    booking_id, total = booking.id, booking.total_fils
    paid = booking_payment(booking_id)
    if paid is not None and paid.state == IntentState.SUCCEEDED:
        return payment_view(booking)  # already paid: the answer again, nothing charged
    bookings.ensure_payable(booking)
    text = users.mit_mandate_text()
    if mandate.version != text.version or mandate.text_sha256 != text.sha256:
        raise MandateNotAccepted(details={"current_version": text.version, "text_sha256": text.sha256})
    card = card_for(actor, card_public_id)
    customer = _ensure_customer(actor)
    card = card_for(actor, card_public_id)
    row = paid if paid is not None and paid.state in OPEN else None
    if row is not None and row.card_id != card.id:
        raise PaymentInProgress(details={"state": row.state})
    if row is None:
        attempt = (paid.attempt + 1) if paid is not None else 1
        row = PaymentIntentRow(booking_id=booking_id, kind=IntentKind.BOOKING, attempt=attempt,
                               idempotency_key=pay_key(booking_id, attempt), amount_fils=total, card_id=card.id)
        db.session.add(row)
    db.session.add(MandateAcceptance(
        user_id=actor.user.id, booking_id=booking_id, card_id=card.id, stripe_customer_id=customer,
        stripe_payment_method_id=card.stripe_payment_method_id, card_brand=card.brand, card_last4=card.last4,
        text_version=text.version, text_sha256=text.sha256, language=mandate.language, accepted_at=utcnow(),
        ip_address=mandate.ip_address, user_agent=(mandate.user_agent or "")[:300] or None,
        device=mandate.device, channel=mandate.channel))
    db.session.flush()
    row_id, key, amount, pm = row.id, row.idempotency_key, Money(row.amount_fils), card.stripe_payment_method_id
    metadata = {"payment": str(row_id), "booking": reference, "kind": IntentKind.BOOKING}
    try:
        intent = outside(lambda: _gateway().pay_booking(customer_id=customer, payment_method_id=pm, amount=amount,
                                                        key=key, metadata=metadata,
                                                        transfer_group=f"booking_{reference}"))
    except IdempotencyConflict:
        # a twin request under the same key is in flight, or our parameters changed: the outcome is not a
        # failure we may record; the row stays pending for the webhook or reconciliation, and people look
        keep(lambda: _flag_intent(row_id, "idempotency conflict on pay: check at Stripe"))
        raise
    except (CardDeclined, AuthenticationRequired, PaymentInvalid) as exc:
        code = getattr(exc, "decline_code", None) or exc.code
        seen, review = getattr(exc, "intent_id", None), not isinstance(exc, CardDeclined | AuthenticationRequired)
        keep(lambda: _record_failure(row_id, code, seen, review=review))
        raise
    apply_intent(row_id, intent)
    deposit = None
    if bookings.get(booking_id).status == BookingStatus.CONFIRMED:
        deposit = _hold_after_payment(booking_id)
    booking = bookings.get(booking_id)
    view = payment_view(booking, intent.client_secret if intent.needs_customer else None)
    return PaymentView(view.booking, view.payment, deposit or view.deposit, view.client_secret)


def _flag_intent(row_id: int, reason: str) -> None:
    db.session.execute(update(PaymentIntentRow).where(PaymentIntentRow.id == row_id).values(needs_review=reason))


def _record_failure(row_id: int, code: str, intent_id: str | None, *, review: bool = False) -> None:
    row = db.session.get(PaymentIntentRow, row_id)
    assert row is not None
    if not may_move(row.state, IntentState.FAILED):
        return
    row.state, row.error_code = IntentState.FAILED, code[:64]
    if intent_id and row.stripe_intent_id is None:
        row.stripe_intent_id = intent_id
    if review:
        row.needs_review = f"refused by Stripe: {code}"[:200]
    db.session.flush()


def _locked_intent(row_id: int) -> PaymentIntentRow:
    return db.session.execute(select(PaymentIntentRow).where(PaymentIntentRow.id == row_id)
                              .with_for_update()).scalar_one()


def _move(row_id: int, target: IntentState, **values: Any) -> bool:
    """Move a row forward, once: a conditional update, so two racing writers cannot both apply it."""
    allowed = [state for state in IntentState if may_move(state, target)]
    result = db.session.execute(update(PaymentIntentRow).where(
        PaymentIntentRow.id == row_id, PaymentIntentRow.state.in_(allowed)).values(state=target, **values))
    db.session.expire_all()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def apply_intent(row_id: int, intent: Intent) -> None:  # noqa: PLR0912 - one branch per Stripe status
    """Record what Stripe says of an intent (an API answer, a webhook, a reconciliation read); monotonic."""
    row = _locked_intent(row_id)
    now = utcnow()
    ids: dict[str, Any] = {"stripe_intent_id": intent.id, "updated_at": now}
    if intent.charge_id:
        ids["stripe_charge_id"] = intent.charge_id
    if row.kind == IntentKind.BOOKING:
        if intent.status is IntentStatus.SUCCEEDED:
            if _move(row_id, IntentState.SUCCEEDED, settled_at=now, error_code=None, **ids):
                _on_paid(row_id)
        elif intent.status is IntentStatus.CANCELED:
            _move(row_id, IntentState.FAILED, error_code="canceled", **ids)
        elif intent.needs_customer and intent.last_error_code:
            _move(row_id, IntentState.FAILED, error_code=(intent.decline_code or intent.last_error_code)[:64], **ids)
        elif intent.needs_customer:
            _move(row_id, IntentState.REQUIRES_ACTION, **ids)
        else:
            db.session.execute(update(PaymentIntentRow).where(PaymentIntentRow.id == row_id).values(**ids))
        return
    if intent.status is IntentStatus.REQUIRES_CAPTURE:
        before = intent.capture_before or _hold_deadline(row, now)
        if _move(row_id, IntentState.HELD, capture_before=before, **ids):
            _post_hold(row_id)
    elif intent.status is IntentStatus.CANCELED:
        if _move(row_id, IntentState.RELEASED, settled_at=now, **ids):
            _post_release(row_id)
    elif intent.status is IntentStatus.SUCCEEDED:
        received = intent.amount_received.fils if intent.amount_received is not None else row.captured_fils
        if received and _move(row_id, IntentState.CAPTURED, captured_fils=received, settled_at=now, **ids):
            _post_capture(row_id)
    elif intent.needs_customer and intent.last_error_code:
        _move(row_id, IntentState.FAILED, error_code=intent.last_error_code[:64], **ids)
    elif intent.needs_customer:
        _move(row_id, IntentState.REQUIRES_ACTION, **ids)


def _on_paid(row_id: int) -> None:
    row = db.session.get(PaymentIntentRow, row_id)
    assert row is not None
    amount = Money(row.amount_fils)
    post("payment", f"payment:{row_id}", [(Account.CASH, amount), (Account.CUSTOMER_FUNDS, -amount)],
         booking_id=row.booking_id, memo=f"booking payment {row.stripe_intent_id}")
    confirmed = bookings.confirm_paid(row.booking_id, payment_ref=row.stripe_intent_id or str(row_id))
    _invoice_payment(row_id, row.booking_id)
    booking = bookings.get(row.booking_id)
    if confirmed and booking.deposit_fils > 0:
        # the pay request holds the deposit at once; should its answer be lost (the webhook confirmed), this
        # job holds it later (a no-op when a hold exists), late enough not to race the request's own hold
        jobs.schedule("payments.hold_deposit", booking.id, due_at=utcnow() + HOLD_FALLBACK_AFTER,
                      dedupe_key=f"deposit-hold:{booking.id}:after-payment")
    others = db.session.execute(select(PaymentIntentRow.id).where(
        PaymentIntentRow.booking_id == row.booking_id, PaymentIntentRow.kind == IntentKind.BOOKING,
        PaymentIntentRow.state == IntentState.SUCCEEDED, PaymentIntentRow.id != row_id)).first()
    if not confirmed and others is not None:
        bookings.flag_booking(booking.id, "paid twice: the second payment is refunded in full")
        create_refund(row_id, amount, reason="duplicate_payment")
    elif not confirmed and booking.status not in PAID_STATUSES:
        # paid after the booking expired or was cancelled: the money goes back, and people look at it
        bookings.flag_booking(booking.id, "paid after it expired or was cancelled: refunded in full")
        create_refund(row_id, amount, reason="paid_after_expiry")


# ---- deposits (P-22) ------------------------------------------------------------------------------------


def _hold_deadline(row: PaymentIntentRow, now: datetime) -> datetime:
    if row.replaces_id is None:
        return now + CIT_HOLD_WINDOW
    card = db.session.get(SavedCard, row.card_id)
    return now + MIT_HOLD_WINDOW.get(card.brand if card else "", CIT_HOLD_WINDOW)


def _hold_after_payment(booking_id: int) -> PaymentIntentRow | None:
    """The first hold, with the customer present; a failure never undoes the payment (the agency is told)."""
    try:
        return hold_deposit(booking_id)
    except PaymentProviderUnavailable:
        jobs.schedule("payments.hold_deposit", booking_id, due_at=utcnow() + timedelta(minutes=5),
                      dedupe_key=f"deposit-hold:{booking_id}:{len(_intents(booking_id, IntentKind.DEPOSIT))}")
        return current_deposit(booking_id)


def hold_deposit(booking_id: int, *, off_session: bool = False, replaces: int | None = None) -> PaymentIntentRow | None:
    """Authorise the booking's deposit on the card it was paid with (manual capture), once per attempt."""
    booking = bookings.get(booking_id)
    if booking.deposit_fils <= 0:
        return None
    existing = current_deposit(booking_id)
    if replaces is None and existing is not None and existing.state == IntentState.HELD:
        return existing
    paid = booking_payment(booking_id)
    if paid is None or paid.state != IntentState.SUCCEEDED:
        raise Conflict(details={"reason": "the booking is not paid"})
    customer = customer_id_for(booking.customer_id)
    card = db.session.get(SavedCard, paid.card_id)
    assert customer is not None and card is not None
    if existing is not None and existing.state in OPEN and replaces is None:
        row = existing  # an unknown outcome: ask again under the same key
    else:
        attempt = max((r.attempt for r in _intents(booking_id, IntentKind.DEPOSIT)), default=0) + 1
        row = PaymentIntentRow(booking_id=booking_id, kind=IntentKind.DEPOSIT, attempt=attempt,
                               idempotency_key=hold_key(booking_id, attempt), amount_fils=booking.deposit_fils,
                               card_id=card.id, replaces_id=replaces)
        db.session.add(row)
        db.session.flush()
    row_id, key, amount, pm = row.id, row.idempotency_key, Money(row.amount_fils), card.stripe_payment_method_id
    metadata = {"payment": str(row_id), "booking": booking.reference, "kind": IntentKind.DEPOSIT}
    try:
        intent = outside(lambda: _gateway().hold_deposit(customer_id=customer, payment_method_id=pm, amount=amount,
                                                         key=key, metadata=metadata, off_session=off_session))
    except IdempotencyConflict:
        _flag_intent(row_id, "idempotency conflict on a hold: check at Stripe")  # outcome unknown: stays open
        return db.session.get(PaymentIntentRow, row_id)
    except (CardDeclined, AuthenticationRequired, PaymentInvalid) as exc:
        _record_failure(row_id, getattr(exc, "decline_code", None) or exc.code, getattr(exc, "intent_id", None),
                        review=isinstance(exc, PaymentInvalid))
        if replaces is None:
            bookings.flag_booking(booking_id, f"deposit hold failed ({exc.code}): post-rental charges use the mandate")
        return db.session.get(PaymentIntentRow, row_id)
    apply_intent(row_id, intent)
    return db.session.get(PaymentIntentRow, row_id)


def _post_hold(row_id: int) -> None:
    row = db.session.get(PaymentIntentRow, row_id)
    assert row is not None
    amount = Money(row.amount_fils)
    post("deposit_hold", f"hold:{row_id}:held", [(Account.DEPOSITS_HELD, amount),
                                                 (Account.DEPOSIT_AUTHORISATIONS, -amount)],
         booking_id=row.booking_id, memo="deposit authorised")


def _post_release(row_id: int) -> None:
    row = db.session.get(PaymentIntentRow, row_id)
    assert row is not None
    if db.session.execute(select(JournalEntry.id).where(JournalEntry.source == f"hold:{row_id}:held")).first() is None:
        return
    amount = Money(row.amount_fils)
    post("deposit_release", f"hold:{row_id}:ended", [(Account.DEPOSIT_AUTHORISATIONS, amount),
                                                     (Account.DEPOSITS_HELD, -amount)],
         booking_id=row.booking_id, memo=f"deposit {row.state}")


def _post_capture(row_id: int) -> None:
    row = db.session.get(PaymentIntentRow, row_id)
    assert row is not None
    _post_release(row_id)  # the authorisation ends either way
    captured = Money(row.captured_fils)
    post("deposit_capture", f"hold:{row_id}:captured", [(Account.CASH, captured),
                                                        (Account.DEPOSITS_CAPTURED, -captured)],
         booking_id=row.booking_id, memo="deposit captured toward accepted post-rental charges")


def _held(booking_id: int) -> PaymentIntentRow | None:
    row = current_deposit(booking_id)
    return row if row is not None and row.state == IntentState.HELD else None


def release_deposit(booking_id: int) -> PaymentIntentRow | None:
    """Release the hold in full (a clean return, a cancellation; step 7 calls this)."""
    row = _held(booking_id)
    if row is None:
        return None
    row_id, intent_id = row.id, row.stripe_intent_id
    assert intent_id is not None
    intent = outside(lambda: _gateway().release_deposit(intent_id, key=f"deposit:{booking_id}:release:{row_id}"))
    apply_intent(row_id, intent)
    return db.session.get(PaymentIntentRow, row_id)


def capture_deposit(booking_id: int, amount: Money) -> PaymentIntentRow:
    """Capture part of the hold toward accepted post-rental charges, once; the rest is released (step 7)."""
    row = _held(booking_id)
    if row is None:
        raise Conflict(details={"reason": "no deposit is held"})
    if not 0 < amount.fils <= row.amount_fils:
        raise Unprocessable(details={"amount": ["between one fil and the amount held"]})
    row_id, intent_id = row.id, row.stripe_intent_id
    assert intent_id is not None
    intent = outside(lambda: _gateway().capture_deposit(intent_id, amount,
                                                        key=f"deposit:{booking_id}:capture:{row_id}"))
    if intent.amount_received is None:  # localstripe leaves it out: our ledger knows what we asked for
        db.session.execute(update(PaymentIntentRow).where(PaymentIntentRow.id == row_id)
                           .values(captured_fils=amount.fils))
    apply_intent(row_id, intent)
    row = db.session.get(PaymentIntentRow, row_id)
    assert row is not None
    return row


def rehold_due_deposits(*, now: datetime | None = None, limit: int = 50) -> int:
    """Re-hold deposits whose authorisation lapses before the car is back: the new hold first, then release
    the old; if the new hold fails, the old one runs out and the agency relies on the mandate (flagged)."""
    now = now or utcnow()
    due = db.session.execute(select(PaymentIntentRow.id, PaymentIntentRow.booking_id).where(
        PaymentIntentRow.kind == IntentKind.DEPOSIT, PaymentIntentRow.state == IntentState.HELD,
        PaymentIntentRow.capture_before < now + REHOLD_MARGIN).limit(limit)).all()
    done = 0
    for old_id, booking_id in due:
        booking = bookings.get(booking_id)
        if booking.status not in (BookingStatus.CONFIRMED, BookingStatus.IN_PROGRESS):
            continue
        new = hold_deposit(booking_id, off_session=True, replaces=old_id)
        if new is not None and new.state == IntentState.HELD:
            old = db.session.get(PaymentIntentRow, old_id)
            assert old is not None and old.stripe_intent_id is not None
            intent_id = old.stripe_intent_id
            intent = outside(lambda i=intent_id, o=old_id, b=booking_id: _gateway().release_deposit(  # type: ignore[misc]
                i, key=f"deposit:{b}:release:{o}"))
            apply_intent(old_id, intent)
            done += 1
        else:
            bookings.flag_booking(booking_id, "deposit re-hold failed: post-rental charges will use the MIT mandate")
            agency = agencies.agency_by_id(booking.agency_id)
            notifications.send_email(to=agency.contact_email, kind="deposit_rehold_failed",
                                     context={"agency": agency, "booking": booking})
    return done


# ---- refunds ----------------------------------------------------------------------------------------------


def _refunded(booking_id: int) -> int:
    return _sum(select(func.sum(Refund.amount_fils)).where(
        Refund.booking_id == booking_id, Refund.state != RefundState.FAILED))


def create_refund(payment_row_id: int, amount: Money, *, reason: str) -> Refund | None:
    """A refund row (committed with the unit), sent to Stripe by a job after the commit; capped at what was
    paid less what was already refunded."""
    payment = db.session.get(PaymentIntentRow, payment_row_id)
    assert payment is not None and payment.state == IntentState.SUCCEEDED
    left = payment.amount_fils - _sum(select(func.sum(Refund.amount_fils)).where(
        Refund.payment_id == payment.id, Refund.state != RefundState.FAILED))
    fils = min(amount.fils, left)
    if fils <= 0:
        return None
    refund = Refund(payment_id=payment.id, booking_id=payment.booking_id, amount_fils=fils, reason=reason[:40])
    db.session.add(refund)
    db.session.flush()
    refund.idempotency_key = f"refund:{refund.id}"
    db.session.flush()
    jobs.schedule("payments.refund", refund.id, dedupe_key=f"refund:{refund.id}")
    return refund


@bookings.on_cancelled
def _refund_on_cancel(booking: Any) -> None:
    """Cancellation refunds per the policy (bookings.cancellation_fee): everything paid but the fee; the
    retained part is recognised as the agency's, the platform's fee and VAT; the deposit is released."""
    paid = booking_payment(booking.id)
    if paid is not None and paid.state == IntentState.SUCCEEDED:
        fee = booking.cancellation_fee_fils or 0
        left = paid.amount_fils - _refunded(booking.id)
        refund = create_refund(paid.id, Money(max(0, booking.total_fils - fee)), reason="cancellation")
        retained = left - (refund.amount_fils if refund else 0)
        if retained > 0:
            _recognise(booking, Money(retained), source=f"cancel:{booking.id}:retained")
    if current_deposit(booking.id) is not None:
        jobs.schedule("payments.release_deposit", booking.id, dedupe_key=f"deposit-release:{booking.id}:cancel")


def _recognise(booking: Any, amount: Money, *, source: str) -> None:
    """Customer funds earned: the agency's rental, the platform fee and the VAT, in the booking's proportions."""
    breakdown = money.taxed([("rental", Money(booking.rental_fils)),
                             ("platform_fee", Money(booking.platform_fee_fils))])
    part = breakdown.portion(amount) if amount <= breakdown.total else breakdown
    post("recognise", source, [(Account.CUSTOMER_FUNDS, part.total),
                               (Account.AGENCY_PAYABLE, -part.line("rental").net),
                               (Account.PLATFORM_FEE, -part.line("platform_fee").net),
                               (Account.VAT_PAYABLE, -part.vat)], booking_id=booking.id)


def execute_refund(refund_id: int) -> None:
    """The refund job: ask Stripe under ``refund:<id>`` (a re-run replays, never refunds twice)."""
    refund = db.session.get(Refund, refund_id)
    if refund is None or refund.state != RefundState.PENDING:
        return
    payment = db.session.get(PaymentIntentRow, refund.payment_id)
    assert payment is not None
    target = payment.stripe_charge_id or payment.stripe_intent_id
    assert target is not None and refund.idempotency_key is not None
    key, amount = refund.idempotency_key, Money(refund.amount_fils)
    metadata = {"refund": str(refund_id), "booking_payment": str(payment.id)}
    try:
        result = outside(lambda: _gateway().refund(target, amount, key=key, metadata=metadata))
    except (PaymentInvalid, IdempotencyConflict, CardDeclined) as exc:
        refund = db.session.get(Refund, refund_id)
        assert refund is not None
        refund.state, refund.error_code = RefundState.FAILED, exc.code
        refund.needs_review = f"refund refused by Stripe: {exc.code}"
        db.session.flush()
        return
    apply_refund(refund_id, result.id, result.status)


def apply_refund(refund_id: int, stripe_id: str | None, status: str) -> None:
    """Record a refund's state from Stripe (answer, event or reconciliation): pending -> processing -> succeeded."""
    refund = db.session.execute(select(Refund).where(Refund.id == refund_id).with_for_update()).scalar_one()
    if stripe_id and refund.stripe_refund_id is None:
        refund.stripe_refund_id = stripe_id
    amount = Money(refund.amount_fils)
    if status in ("pending", "requires_action", "succeeded") and refund.state == RefundState.PENDING:
        refund.state = RefundState.PROCESSING
        post("refund", f"refund:{refund_id}:accepted", [(Account.CUSTOMER_FUNDS, amount), (Account.REFUNDS, -amount)],
             booking_id=refund.booking_id, memo="refund accepted by Stripe")
    if status == "succeeded" and refund.state == RefundState.PROCESSING:
        refund.state, refund.settled_at = RefundState.SUCCEEDED, utcnow()
        post("refund", f"refund:{refund_id}:settled", [(Account.REFUNDS, amount), (Account.CASH, -amount)],
             booking_id=refund.booking_id, memo="refund settled")
        _credit_refund(refund)
    elif status in ("failed", "canceled") and refund.state in (RefundState.PENDING, RefundState.PROCESSING):
        if refund.state == RefundState.PROCESSING:
            post("refund", f"refund:{refund_id}:failed", [(Account.REFUNDS, amount),
                                                          (Account.CUSTOMER_FUNDS, -amount)],
                 booking_id=refund.booking_id, memo="refund failed")
        refund.state, refund.needs_review = RefundState.FAILED, f"refund {status} at Stripe"
    db.session.flush()


def refunds_for(booking_id: int) -> list[Refund]:
    return list(db.session.execute(select(Refund).where(Refund.booking_id == booking_id)
                                   .order_by(Refund.id)).scalars())


# ---- webhooks (STRIPE.md §1.6) -------------------------------------------------------------------------------


def handle_event(event: dict[str, Any]) -> str:
    """Apply a verified event once: its id goes in a unique row in the same transaction as its effect."""
    event_id, kind = str(event["id"])[:80], str(event["type"])[:80]

    def work() -> str:
        if db.session.execute(select(WebhookEvent.id).where(WebhookEvent.event_id == event_id)).first():
            return "duplicate"
        row = WebhookEvent(event_id=event_id, type=kind, outcome="received")
        db.session.add(row)
        db.session.flush()
        row.outcome = _dispatch(kind, (event.get("data") or {}).get("object") or {})
        db.session.flush()
        return row.outcome

    def on_conflict(state: str | None) -> str | None:
        return "duplicate" if state in (UNIQUE_VIOLATION, None) else None

    return serialised(work, on_conflict=on_conflict)


def _row_for_intent(model: Any, obj: dict[str, Any], metadata_key: str) -> Any:
    """Our row for a Stripe object about an intent: by the intent's id, else by our row id in its metadata
    (the intent id was never recorded: a crash between Stripe's answer and our commit)."""
    intent_id = obj.get("id") if str(obj.get("id", "")).startswith("pi_") else obj.get("payment_intent")
    if isinstance(intent_id, str):
        row = db.session.execute(select(model).where(model.stripe_intent_id == intent_id)).scalar_one_or_none()
        if row is not None:
            return row
    ours = (obj.get("metadata") or {}).get(metadata_key)
    if isinstance(ours, str) and ours.isdigit():
        row = db.session.get(model, int(ours))
        if row is not None and row.stripe_intent_id in (None, intent_id):
            return row
    return None


def _intent_row(obj: dict[str, Any]) -> PaymentIntentRow | None:
    row: PaymentIntentRow | None = _row_for_intent(PaymentIntentRow, obj, "payment")
    return row


def _dispatch(kind: str, obj: dict[str, Any]) -> str:  # noqa: PLR0911, PLR0912 - one branch per event type
    if kind.startswith("payment_intent."):
        charged = _charge_event(kind, obj)
        if charged is not None:
            return charged
        row = _intent_row(obj)
        if row is None:
            return "unknown_intent"
        try:
            intent = intent_from(obj)
        except (KeyError, ValueError):
            return "unreadable"
        if kind == "payment_intent.payment_failed" and intent.status is not IntentStatus.SUCCEEDED:
            error = obj.get("last_payment_error") or {}
            _record_failure(row.id, str(error.get("decline_code") or error.get("code") or "payment_failed"), intent.id)
            return "failed"
        apply_intent(row.id, intent)
        return "applied"
    if kind == "charge.expired":
        row = _intent_row(obj)
        if row is None or row.kind != IntentKind.DEPOSIT:
            return "unknown_intent"
        if _move(row.id, IntentState.LAPSED, settled_at=utcnow()):
            _post_release(row.id)
            bookings.flag_booking(row.booking_id, "deposit hold lapsed: post-rental charges will use the MIT mandate")
        return "applied"
    if kind in ("charge.refunded", "charge.refund.updated", "refund.updated", "refund.created"):
        found = 0
        for data in _refund_objects(kind, obj):
            refund = db.session.execute(select(Refund).where(
                Refund.stripe_refund_id == data.get("id"))).scalar_one_or_none()
            if refund is None:
                ours = (data.get("metadata") or {}).get("refund")
                refund = db.session.get(Refund, int(ours)) if isinstance(ours, str) and ours.isdigit() else None
            if refund is not None:
                result = refund_from(data)
                apply_refund(refund.id, result.id, result.status)
                found += 1
        return "applied" if found else "unknown_refund"
    if kind.startswith("charge.dispute."):
        return apply_dispute_event(kind, obj)
    if kind == "setup_intent.succeeded":
        setup = db.session.execute(select(CardSetup).where(
            CardSetup.stripe_setup_intent_id == obj.get("id"))).scalar_one_or_none()
        if setup is None:
            return "unknown_setup"
        if setup.card_id is None:
            jobs.schedule("payments.save_card", setup.id, dedupe_key=f"save-card:{setup.id}")
        return "applied"
    if kind == "account.updated":
        return _account_updated(obj)
    if kind == "setup_intent.setup_failed":
        setup = db.session.execute(select(CardSetup).where(
            CardSetup.stripe_setup_intent_id == obj.get("id"))).scalar_one_or_none()
        if setup is not None and setup.card_id is None:
            setup.status = "failed"
        return "applied" if setup is not None else "unknown_setup"
    return "ignored"


def _refund_objects(kind: str, obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if kind == "charge.refunded":
        yield from ((obj.get("refunds") or {}).get("data") or [])
    else:
        yield obj


# ---- reconciliation ------------------------------------------------------------------------------------------


def reconcile(*, now: datetime | None = None, limit: int = 50) -> dict[str, int]:
    """Ask Stripe about every payment, hold and refund still open past its time; repair what the answer
    settles, flag the rest (``needs_review``) for the console."""
    now = now or utcnow()
    counts = {"asked": 0, "repaired": 0, "flagged": 0}
    open_too_long = PaymentIntentRow.state.in_(list(OPEN)) & (PaymentIntentRow.updated_at < now - STALE_AFTER)
    hold_past_deadline = (PaymentIntentRow.state == IntentState.HELD) & (PaymentIntentRow.capture_before < now)
    stale = db.session.execute(
        select(PaymentIntentRow.id, PaymentIntentRow.stripe_intent_id, PaymentIntentRow.state)
        .where(PaymentIntentRow.needs_review.is_(None), open_too_long | hold_past_deadline).limit(limit)).all()
    for row_id, intent_id, state in stale:
        if intent_id is None:
            db.session.execute(update(PaymentIntentRow).where(PaymentIntentRow.id == row_id).values(
                needs_review="no Stripe intent recorded: outcome unknown, retry under the same key"))
            counts["flagged"] += 1
            continue
        counts["asked"] += 1
        try:
            intent = outside(lambda i=intent_id: _gateway().retrieve_intent(i))  # type: ignore[misc]
        except PaymentProviderUnavailable:
            continue
        except PaymentInvalid as exc:
            db.session.execute(update(PaymentIntentRow).where(PaymentIntentRow.id == row_id).values(
                needs_review=f"Stripe does not know this intent: {exc.code}"))
            counts["flagged"] += 1
            continue
        if state == IntentState.HELD and intent.status is IntentStatus.CANCELED:
            if _move(row_id, IntentState.LAPSED, settled_at=now):
                _post_release(row_id)
            counts["repaired"] += 1
            continue
        apply_intent(row_id, intent)
        after = db.session.get(PaymentIntentRow, row_id)
        if after is not None and after.state != state:
            counts["repaired"] += 1
    refunds = db.session.execute(select(Refund.id, Refund.stripe_refund_id, Refund.state).where(
        Refund.needs_review.is_(None), Refund.state.in_([RefundState.PENDING, RefundState.PROCESSING]),
        Refund.created_at < now - STALE_AFTER).limit(limit)).all()
    for refund_id, stripe_id, refund_state in refunds:
        if stripe_id is None:
            if refund_state == RefundState.PENDING:  # the job never reached Stripe: it runs again, same key
                jobs.schedule("payments.refund", refund_id, dedupe_key=f"refund:{refund_id}:retry:{now:%Y%m%d%H%M}")
                counts["repaired"] += 1
            continue
        counts["asked"] += 1
        try:
            result = outside(lambda s=stripe_id: _gateway().retrieve_refund(s))  # type: ignore[misc]
        except PaymentProviderUnavailable:
            continue
        except PaymentInvalid as exc:
            db.session.execute(update(Refund).where(Refund.id == refund_id).values(
                needs_review=f"Stripe does not know this refund: {exc.code}"))
            counts["flagged"] += 1
            continue
        apply_refund(refund_id, result.id, result.status)
        counts["repaired"] += 1
    db.session.flush()
    return counts


def flagged() -> list[Any]:
    """What reconciliation could not settle, for the console."""
    intents = db.session.execute(select(PaymentIntentRow).where(PaymentIntentRow.needs_review.is_not(None))).scalars()
    refunds = db.session.execute(select(Refund).where(Refund.needs_review.is_not(None))).scalars()
    return [*intents, *refunds]


# ---- chargebacks (P-24) -----------------------------------------------------------------------------------


class DisputeEvidenceSubmitted(Conflict):
    code = "dispute_evidence_submitted"
    message = "Evidence for this dispute has already been submitted."


class DisputeNotOpen(Conflict):
    code = "dispute_not_open"
    message = "This dispute no longer takes evidence."


class DisputePastDue(Conflict):
    code = "dispute_past_due"
    message = "The evidence due date has passed: Stripe no longer accepts evidence for this dispute."


DISPUTE_FIELD_LIMIT = 20000  # characters per text field we send (Stripe "Dispute evidence")


def _at(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) and not isinstance(value, bool) else None


def _dispute_payment(obj: dict[str, Any]) -> PaymentIntentRow | None:
    intent = obj.get("payment_intent")
    intent_id = intent if isinstance(intent, str) else (intent or {}).get("id") if isinstance(intent, dict) else None
    if isinstance(intent_id, str):
        row = db.session.execute(select(PaymentIntentRow).where(
            PaymentIntentRow.stripe_intent_id == intent_id)).scalar_one_or_none()
        if row is not None:
            return row
    charge = obj.get("charge")
    charge_id = charge if isinstance(charge, str) else (charge or {}).get("id") if isinstance(charge, dict) else None
    if isinstance(charge_id, str):
        return db.session.execute(select(PaymentIntentRow).where(
            PaymentIntentRow.stripe_charge_id == charge_id)).scalars().first()
    return None


def apply_dispute_event(kind: str, obj: dict[str, Any]) -> str:
    """Open or update the dispute case from any ``charge.dispute.*`` event, in whatever order they come.

    Every event carries the whole dispute, so the first one seen opens the case; the status only moves
    forward (``states.dispute_may_move``); funds withdrawn and reinstated post to the ledger once each
    (their ``source`` is unique), and a lost case moves what was withdrawn to the losses account."""
    dispute_id = obj.get("id")
    if not (isinstance(dispute_id, str) and dispute_id.startswith(("dp_", "du_"))):
        return "unreadable"
    row = db.session.execute(select(Dispute).where(Dispute.stripe_dispute_id == dispute_id)
                             .with_for_update()).scalar_one_or_none()
    amount = obj.get("amount")
    status = str(obj.get("status") or DisputeStatus.NEEDS_RESPONSE)
    if row is None:
        payment = _dispute_payment(obj)
        charged = None if payment is not None else _charge_payment_row(
            {"payment_intent": obj.get("payment_intent"), "metadata": {}})
        booking_id = payment.booking_id if payment else (charged.booking_id if charged else None)
        charge, intent = obj.get("charge"), obj.get("payment_intent")
        row = Dispute(stripe_dispute_id=dispute_id, stripe_charge_id=charge if isinstance(charge, str) else None,
                      stripe_intent_id=intent if isinstance(intent, str) else None,
                      payment_id=payment.id if payment else None, booking_id=booking_id,
                      amount_fils=int(amount) if isinstance(amount, int) else 0,
                      currency=str(obj.get("currency") or "aed").upper()[:3],
                      reason=str(obj.get("reason") or "general")[:40],
                      status=status if status in set(DisputeStatus) else DisputeStatus.NEEDS_RESPONSE)
        db.session.add(row)
        db.session.flush()
        if row.booking_id is not None:
            bookings.flag_booking(row.booking_id, f"chargeback opened ({row.reason}): evidence in the disputes queue")
        outcome = "opened"
    else:
        if dispute_may_move(row.status, status):
            row.status = status
        if isinstance(amount, int) and row.withdrawn_fils == 0:
            row.amount_fils = amount
        if obj.get("reason"):
            row.reason = str(obj["reason"])[:40]
        outcome = "updated"
    due = _at((obj.get("evidence_details") or {}).get("due_by"))
    if due is not None:
        row.due_by = due
    if row.status in DISPUTE_CLOSED and row.closed_at is None:
        row.closed_at = utcnow()
    disputed = Money(row.amount_fils)
    if kind == "charge.dispute.funds_withdrawn" and row.withdrawn_fils == 0 and disputed.fils > 0:
        row.withdrawn_fils = disputed.fils
        post("dispute", f"dispute:{row.id}:withdrawn", [(Account.DISPUTED, disputed), (Account.CASH, -disputed)],
             booking_id=row.booking_id, memo=f"chargeback {dispute_id}: funds withdrawn")
    if kind == "charge.dispute.funds_reinstated" and row.reinstated_fils == 0 and disputed.fils > 0:
        row.reinstated_fils = disputed.fils
        post("dispute", f"dispute:{row.id}:reinstated", [(Account.CASH, disputed), (Account.DISPUTED, -disputed)],
             booking_id=row.booking_id, memo=f"chargeback {dispute_id}: funds reinstated")
    gone = row.withdrawn_fils - row.reinstated_fils
    if row.status == DisputeStatus.LOST and gone > 0:
        post("dispute", f"dispute:{row.id}:lost", [(Account.DISPUTE_LOSSES, Money(gone)),
                                                  (Account.DISPUTED, -Money(gone))],
             booking_id=row.booking_id, memo=f"chargeback {dispute_id} lost")
    db.session.flush()
    return outcome


def has_open_dispute(booking_id: int) -> bool:
    """STRIPE.md §1.3: no post-rental charge while a chargeback on the booking is open (step 7 asks this)."""
    return db.session.execute(select(Dispute.id).where(
        Dispute.booking_id == booking_id, Dispute.closed_at.is_(None))).first() is not None


def dispute_queue(actor: Actor, *, include_closed: bool = False) -> list[Dispute]:
    """The disputes queue: open cases first, the nearest due date first (no due date last)."""
    require(actor, Permission.DISPUTE_DECIDE)
    stmt = select(Dispute)
    if not include_closed:
        stmt = stmt.where(Dispute.closed_at.is_(None))
    return list(db.session.execute(stmt.order_by(Dispute.closed_at.is_not(None), Dispute.due_by.is_(None),
                                                 Dispute.due_by, Dispute.id).limit(200)).scalars())


def dispute_for_staff(actor: Actor, public_id: str) -> Dispute:
    require(actor, Permission.DISPUTE_DECIDE)
    row = db.session.execute(select(Dispute).where(Dispute.public_id == public_id[:36])).scalar_one_or_none()
    if row is None:
        raise NotFound()
    return row


EvidenceSource = Callable[[int], list[dict[str, Any]]]
_EVIDENCE_SOURCES: dict[str, EvidenceSource] = {}


def evidence_source(slot: str) -> Callable[[EvidenceSource], EvidenceSource]:
    """Areas above payments fill an evidence pack's slot for a booking (``inspection_photos`` from handover,
    ``post_rental_charges`` from charges): ``func(booking_id) -> rows``."""

    def register(func: EvidenceSource) -> EvidenceSource:
        _EVIDENCE_SOURCES[slot] = func
        return func

    return register


@dataclass(frozen=True)
class EvidencePack:
    """What our records say about a disputed payment (P-24), for a person to read and Stripe to receive.

    ``notices`` holds what we told the customer about the booking and when it was delivered; post-rental
    charge notices and ``inspection_photos`` come with step 7 (handover and charges): the slots are here and
    list what exists. ``missing`` names what the pack lacks, so a reviewer sees a thin case at once."""

    dispute: Dispute
    booking: dict[str, Any] | None
    mandate: dict[str, Any] | None
    notices: list[dict[str, Any]]
    inspection_photos: list[dict[str, Any]]
    invoices: list[dict[str, Any]]
    payments: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    missing: list[str]
    post_rental_charges: list[dict[str, Any]] = field(default_factory=list)

    def stripe_evidence(self) -> dict[str, str]:
        """Stripe's evidence text fields, filled from the pack (files would need uploading first)."""
        fields: dict[str, str] = {}
        booking, mandate = self.booking, self.mandate
        if booking is not None:
            fields["customer_name"] = booking["customer_name"]
            fields["customer_email_address"] = booking["customer_email"]
            fields["service_date"] = booking["starts_at"][:10]
            fields["product_description"] = (
                f"Car rental {booking['reference']}: {booking['car']} from {booking['agency']}, "
                f"{booking['starts_at']} to {booking['ends_at']}, collected at {booking['pickup_place']}.")
        if mandate is not None:
            if mandate["ip_address"]:
                fields["customer_purchase_ip"] = mandate["ip_address"]
            fields["access_activity_log"] = (
                f"The cardholder actively accepted the payment terms and the merchant-initiated charges mandate "
                f"(version {mandate['text_version']}, SHA-256 {mandate['text_sha256']}) at {mandate['accepted_at']} "
                f"from IP {mandate['ip_address'] or 'unknown'}, device {mandate['device'] or 'unknown'}, "
                f"user agent {mandate['user_agent'] or 'unknown'}, on the {mandate['channel']}, for card "
                f"{mandate['card_brand']} ending {mandate['card_last4']}.")
        lines = [f"Payment {p['stripe_intent_id']}: {p['kind']} {p['amount']} {p['state']} at {p['settled_at']}"
                 for p in self.payments]
        lines += [f"Refund {r['stripe_refund_id']}: {r['amount']} {r['state']} ({r['reason']})" for r in self.refunds]
        lines += [f"{i['doc_type']} {i['number']} issued {i['issued_at']}: total {i['total']}" for i in self.invoices]
        lines += [f"Notice '{n['subject']}' ({n['channel']}) {n['status']} at {n['delivered_at']}"
                  for n in self.notices]
        lines += [f"Inspection at {i['kind']} recorded {i['recorded_at']}: mileage {i['mileage_km']} km, fuel "
                  f"{i['fuel_eighths']}/8, {i['photos']} photos, acknowledged by the customer at {i['acknowledged_at']}"
                  for i in self.inspection_photos]
        lines += [f"Post-rental charge {c['kind']} {c['amount']}: noticed {c['notice_sent_at']}, due {c['due_at']}, "
                  f"{c['status']}{' (' + c['decision'] + ')' if c['decision'] else ''}"
                  for c in self.post_rental_charges]
        if lines:
            fields["uncategorized_text"] = "\n".join(lines)
        return {name: value[:DISPUTE_FIELD_LIMIT] for name, value in fields.items()}


def _fmt(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def evidence_pack(actor: Actor, dispute: Dispute) -> EvidencePack:
    """Assemble the pack from our own rows: mandate, booking, notices, photos, invoices, payments, refunds."""
    require(actor, Permission.DISPUTE_DECIDE)
    missing: list[str] = []
    booking_out = mandate_out = None
    notices: list[dict[str, Any]] = []
    invoices_out: list[dict[str, Any]] = []
    payments_out: list[dict[str, Any]] = []
    refunds_out: list[dict[str, Any]] = []
    if dispute.booking_id is None:
        missing.append("booking: the disputed charge matches none of our payments")
    else:
        booking = bookings.get(dispute.booking_id)
        customer = users.user_by_id(booking.customer_id)
        car = bookings.vehicle_out(booking.vehicle_id)
        booking_out = {
            "reference": booking.reference, "status": booking.status, "starts_at": _fmt(booking.starts_at) or "",
            "ends_at": _fmt(booking.ends_at) or "", "pickup_place": booking.pickup_place,
            "dropoff_place": booking.dropoff_place,
            "car": f"{car['make']} {car['model']} {car['year']} ({car['plate']})",
            "agency": agencies.agency_by_id(booking.agency_id).business_name, "customer_name": customer.full_name,
            "customer_email": customer.email, "total": str(Money(booking.total_fils)),
            "deposit": str(Money(booking.deposit_fils)), "terms_version": booking.terms_version,
            "cancelled_at": _fmt(booking.cancelled_at)}
        mandate = db.session.execute(select(MandateAcceptance).where(MandateAcceptance.booking_id == booking.id)
                                     .order_by(MandateAcceptance.id.desc()).limit(1)).scalar_one_or_none()
        if mandate is None:
            missing.append("mandate acceptance")
        else:
            mandate_out = {
                "text_version": mandate.text_version, "text_sha256": mandate.text_sha256, "language": mandate.language,
                "accepted_at": _fmt(mandate.accepted_at), "ip_address": mandate.ip_address,
                "user_agent": mandate.user_agent, "device": mandate.device, "channel": mandate.channel,
                "card_brand": mandate.card_brand, "card_last4": mandate.card_last4,
                "stripe_payment_method_id": mandate.stripe_payment_method_id}
        notices = [{"subject": m.subject, "kind": m.kind, "channel": m.channel, "status": m.status,
                    "created_at": _fmt(m.created_at), "delivered_at": _fmt(m.sent_at)}
                   for m in notifications.messages_mentioning(booking.customer_id, booking.reference)]
        invoices_out = [{"number": i.number, "doc_type": i.doc_type, "issued_at": _fmt(i.issued_at),
                         "total": str(Money(i.total_fils)), "vat": str(Money(i.vat_fils)),
                         "supplier": i.supplier_name} for i in invoices.invoices_for_booking(booking)]
        if not invoices_out:
            missing.append("tax invoices")
        payments_out = [{"kind": p.kind, "attempt": p.attempt, "state": p.state, "amount": str(Money(p.amount_fils)),
                         "captured": str(Money(p.captured_fils)), "stripe_intent_id": p.stripe_intent_id,
                         "stripe_charge_id": p.stripe_charge_id, "created_at": _fmt(p.created_at),
                         "settled_at": _fmt(p.settled_at)}
                        for kind in (IntentKind.BOOKING, IntentKind.DEPOSIT) for p in _intents(booking.id, kind)]
        refunds_out = [{"amount": str(Money(r.amount_fils)), "state": r.state, "reason": r.reason,
                        "stripe_refund_id": r.stripe_refund_id, "created_at": _fmt(r.created_at),
                        "settled_at": _fmt(r.settled_at)} for r in refunds_for(booking.id)]
    slots = {slot: (source(dispute.booking_id) if dispute.booking_id is not None else [])
             for slot, source in _EVIDENCE_SOURCES.items()}
    inspections = slots.get("inspection_photos", [])
    if not inspections:
        missing.append("inspection photos")
    if dispute.booking_id is not None:
        payments_out += [{"kind": f"charge ({c.via})", "attempt": c.attempt, "state": c.state,
                          "amount": str(Money(c.amount_fils)), "captured": str(Money(c.amount_fils)),
                          "stripe_intent_id": c.stripe_intent_id, "stripe_charge_id": c.stripe_charge_id,
                          "created_at": _fmt(c.created_at), "settled_at": _fmt(c.settled_at)}
                         for c in db.session.execute(select(ChargePayment).where(
                             ChargePayment.booking_id == dispute.booking_id).order_by(ChargePayment.id)).scalars()]
    return EvidencePack(dispute, booking_out, mandate_out, notices, inspections, invoices_out, payments_out,
                        refunds_out, missing, slots.get("post_rental_charges", []))


def submission_key(dispute: Dispute) -> str:
    return f"dispute:{dispute.id}:evidence"


def submit_dispute_evidence(actor: Actor, public_id: str, *, now: datetime | None = None) -> Dispute:
    """A person sends the evidence pack to Stripe, once, before the due date, under ``dispute:<id>:evidence``.

    The key is committed on the row before Stripe is asked; after an outage the same person (or another)
    tries again and the key replays the one submission."""
    dispute = dispute_for_staff(actor, public_id)
    row = db.session.execute(select(Dispute).where(Dispute.id == dispute.id).with_for_update()).scalar_one()
    now = now or utcnow()
    if row.submitted_at is not None:
        raise DisputeEvidenceSubmitted()
    if row.status not in AWAITING_EVIDENCE or row.closed_at is not None:
        raise DisputeNotOpen(details={"status": row.status})
    if row.due_by is None or now >= row.due_by:
        raise DisputePastDue(details={"due_by": _fmt(row.due_by)})
    evidence = evidence_pack(actor, row).stripe_evidence()
    row.submission_key = submission_key(row)
    row.submission_error = None
    audit.record(actor, "dispute:submit_evidence", row, outcome="attempted", fields=sorted(evidence))
    db.session.flush()
    row_id, stripe_id, key = row.id, row.stripe_dispute_id, row.submission_key
    try:
        result = outside(lambda: _gateway().submit_dispute_evidence(stripe_id, evidence, key=key))
    except (PaymentInvalid, IdempotencyConflict) as exc:
        code = exc.code if not isinstance(exc, PaymentInvalid) else (exc.stripe_code or exc.code)

        def note() -> None:
            failed = db.session.get(Dispute, row_id)
            assert failed is not None
            failed.submission_error = str(code)[:64]
            audit.record(actor, "dispute:submit_evidence", failed, outcome="refused", code=str(code)[:64])

        keep(note)
        raise
    done = db.session.get(Dispute, row_id)
    assert done is not None
    done.submitted_at, done.submitted_by_id = utcnow(), actor.user.id
    if dispute_may_move(done.status, result.status):
        done.status = result.status
    audit.record(actor, "dispute:submit_evidence", done, outcome="success", status=done.status)
    db.session.flush()
    return done


# ---- the console's payment pages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookingPayments:
    """Everything money about one booking, for platform staff: payments, holds, refunds, invoices, disputes."""

    booking: Any
    payments: list[PaymentIntentRow]
    deposits: list[PaymentIntentRow]
    refunds: list[Refund]
    invoices: list[Any]
    disputes: list[Dispute]
    payout: Payout | None


def booking_payments_for_staff(actor: Actor, reference: str) -> BookingPayments:
    require(actor, Permission.PAYMENT_REVIEW)
    booking = bookings.get_by_reference(reference)
    return BookingPayments(
        booking, _intents(booking.id, IntentKind.BOOKING), _intents(booking.id, IntentKind.DEPOSIT),
        refunds_for(booking.id), invoices.invoices_for_booking(booking),
        list(db.session.execute(select(Dispute).where(Dispute.booking_id == booking.id)
                                .order_by(Dispute.id)).scalars()),
        db.session.execute(select(Payout).where(Payout.booking_id == booking.id, Payout.source == "rental"))
        .scalar_one_or_none())


@dataclass(frozen=True)
class ReviewItem:
    kind: str  # payment | refund | booking
    id: int
    reference: str
    reason: str
    since: datetime | None


def review_queue(actor: Actor) -> list[ReviewItem]:
    """Rows reconciliation flagged (``needs_review``) and bookings payments flagged, for a person to resolve."""
    require(actor, Permission.PAYMENT_REVIEW)
    items: list[ReviewItem] = []
    for row in flagged():
        kind = "refund" if isinstance(row, Refund) else "payment"
        since = row.created_at if isinstance(row, Refund) else row.updated_at
        items.append(ReviewItem(kind, row.id, booking_reference(row.booking_id), row.needs_review or "", since))
    items += [ReviewItem("booking", b.id, b.reference, b.flag_reason or "", b.flagged_at)
              for b in bookings.flagged()]
    return items


def resolve_review(actor: Actor, kind: str, row_id: int, *, note: str) -> None:
    """A person looked at a flag and settled it: the flag goes, the audit row keeps what it said and why."""
    require(actor, Permission.PAYMENT_REVIEW)
    subject: tuple[str, str]
    if kind == "booking":
        reference = bookings.get(row_id).reference
        reason = bookings.clear_flag(row_id)
        subject = ("bookings", reference)
    elif kind in ("payment", "refund"):
        row: PaymentIntentRow | Refund | None = (db.session.get(PaymentIntentRow, row_id) if kind == "payment"
                                                 else db.session.get(Refund, row_id))
        if row is None or row.needs_review is None:
            raise NotFound()
        reason, row.needs_review = row.needs_review, None
        subject = (row.__tablename__, str(row_id))
    else:
        raise NotFound()
    if reason is None:
        raise NotFound()
    audit.record(actor, "payments:review_resolved", subject, kind=kind, flag=reason, note=note[:500])
    db.session.flush()


# ---- escrow and payouts (P-22) -----------------------------------------------------------------------------


def connect_payout_account(agency_id: int, stripe_account_id: str) -> PayoutAccount:
    """Record a connected account already onboarded outside the app (an operator's shell, a test): ready."""
    row = payout_account_of(agency_id)
    if row is None:
        row = PayoutAccount(agency_id=agency_id, stripe_account_id=stripe_account_id)
        db.session.add(row)
    else:
        row.stripe_account_id = stripe_account_id
    _apply_account(row, ConnectedAccount(stripe_account_id, details_submitted=True, payouts_enabled=True))
    return row


# ---- Connect onboarding: an agency's connected account, ready once Stripe says it can take transfers ------


@dataclass(frozen=True)
class PayoutSetup:
    """Where an agency stands with payouts, for its app and API."""

    account_id: str | None
    details_submitted: bool
    payouts_enabled: bool
    ready: bool
    required: bool  # production: no listing or booking before it is ready


def payout_account_of(agency_id: int) -> PayoutAccount | None:
    return db.session.execute(select(PayoutAccount).where(
        PayoutAccount.agency_id == agency_id)).scalar_one_or_none()


def _production() -> bool:
    return bool(current_app.config["SETTINGS"].production)


def payouts_required() -> bool:
    """Production: an agency lists and rents out cars only with a ready payout account."""
    return _production()


def payouts_ready(agency_id: int) -> bool:
    row = payout_account_of(agency_id)
    return row is not None and row.ready_at is not None


def payout_setup(actor: Actor, agency: Any) -> PayoutSetup:
    """The agency's payout account as the agency sees it (``agency`` loaded through ``agencies.own_agency``)."""
    require_in_agency(actor, agency.id, Permission.AGENCY_ACCESS)
    row = payout_account_of(agency.id)
    if row is None:
        return PayoutSetup(None, False, False, False, _production())
    return PayoutSetup(row.stripe_account_id, row.details_submitted, row.payouts_enabled, row.ready_at is not None,
                       _production())


def _apply_account(row: PayoutAccount, account: ConnectedAccount) -> None:
    row.details_submitted, row.payouts_enabled, row.updated_at = (
        account.details_submitted, account.payouts_enabled, utcnow())
    if account.ready and row.ready_at is None:
        row.ready_at = utcnow()
    elif not account.ready:
        row.ready_at = None  # Stripe disabled it (requirements due): no new listings or bookings in production
    db.session.flush()


def start_payout_onboarding(actor: Actor, agency: Any, *, refresh_url: str, return_url: str) -> tuple[PayoutSetup, str]:
    """The agency owner starts (or resumes) Stripe's hosted onboarding: the connected account is created once
    (key ``connect:agency:<id>``), and a fresh single-use onboarding link is returned each time."""
    require_in_agency(actor, agency.id, Permission.AGENCY_PROFILE_WRITE)  # its owner: the account is the business's
    agency_id, email = agency.id, agency.contact_email
    row = payout_account_of(agency_id)
    if row is None:
        account = outside(lambda: _gateway().create_connected_account(
            email=email, key=f"connect:agency:{agency_id}", metadata={"agency": str(agency.public_id)}))
        row = PayoutAccount(agency_id=agency_id, stripe_account_id=account.id)
        db.session.add(row)
        _apply_account(row, account)
    account_id = row.stripe_account_id
    url = outside(lambda: _gateway().onboarding_link(account_id, refresh_url=refresh_url, return_url=return_url))
    return payout_setup(actor, agency), url


def refresh_payout_account(agency_id: int) -> PayoutAccount | None:
    """Ask Stripe how the account stands (on return from onboarding, as Stripe advises: the return URL alone
    proves nothing); the ``account.updated`` webhook does the same without being asked."""
    row = payout_account_of(agency_id)
    if row is None:
        return None
    account_id = row.stripe_account_id
    account = outside(lambda: _gateway().connected_account(account_id))
    row = payout_account_of(agency_id)
    assert row is not None
    _apply_account(row, account)
    return row


def _account_updated(obj: dict[str, Any]) -> str:
    row = db.session.execute(select(PayoutAccount).where(
        PayoutAccount.stripe_account_id == obj.get("id"))).scalar_one_or_none()
    if row is None:
        return "unknown_account"
    try:
        account = connected_account_from(obj)
    except KeyError:
        return "unreadable"
    _apply_account(row, account)
    return "applied"


@fleet.before_listing
@bookings.before_booking
def ensure_payouts_ready(agency_id: int) -> None:
    """Production only: an agency whose payout account is not ready lists and rents out nothing (outside
    production it may, and its app shows a note)."""
    if _production() and not payouts_ready(agency_id):
        raise PayoutsNotReady()


def release_payouts(*, now: datetime | None = None, limit: int = 50) -> int:
    """Bookings completed longer than the holding period ago: what is left of the customer's money is
    recognised (agency's rental, platform fee, VAT) and the agency's part transferred under ``transfer:<id>``."""
    now = now or utcnow()
    paid_out = 0
    for booking_id in bookings.completed_ids(ended_before=now - ESCROW_HOLDING, limit=limit):
        payout = db.session.execute(select(Payout).where(
            Payout.booking_id == booking_id, Payout.source == "rental")).scalar_one_or_none()
        if payout is None:
            payout = _owe_agency(booking_id)
        if payout is not None and payout.state == "pending":
            paid_out += _transfer(payout.id)
    # the agencies' shares of collected post-rental charges (P-21): the next payout run after collection
    ready = select(PayoutAccount.agency_id)
    for payout_id in db.session.execute(select(Payout.id).where(
            Payout.source.like("charge:%"), Payout.state == "pending", Payout.agency_id.in_(ready))
            .order_by(Payout.id).limit(limit)).scalars().all():
        paid_out += _transfer(payout_id)
    return paid_out


def _owe_agency(booking_id: int) -> Payout | None:
    booking = bookings.get(booking_id)
    paid = booking_payment(booking_id)
    account = db.session.execute(select(PayoutAccount).where(
        PayoutAccount.agency_id == booking.agency_id)).scalar_one_or_none()
    if paid is None or paid.state != IntentState.SUCCEEDED or account is None:
        return None
    held = -balance(Account.CUSTOMER_FUNDS, booking_id=booking_id)
    if held > 0:
        _recognise(booking, Money(held), source=f"complete:{booking_id}")
    owed = -balance(Account.AGENCY_PAYABLE, booking_id=booking_id)
    if owed <= 0:
        return None
    payout = Payout(booking_id=booking_id, source="rental", agency_id=booking.agency_id, amount_fils=owed,
                    platform_fee_fils=-balance(Account.PLATFORM_FEE, booking_id=booking_id))
    db.session.add(payout)
    db.session.flush()
    payout.idempotency_key = f"transfer:{payout.id}"
    post("payout", f"payout:{payout.id}:owed", [(Account.AGENCY_PAYABLE, Money(owed)), (Account.PAYOUTS, -Money(owed))],
         booking_id=booking_id, memo="agency payout due")
    return payout


def _transfer(payout_id: int) -> int:
    payout = db.session.get(Payout, payout_id)
    assert payout is not None and payout.idempotency_key is not None
    account = db.session.execute(select(PayoutAccount.stripe_account_id).where(
        PayoutAccount.agency_id == payout.agency_id)).scalar_one()
    reference = bookings.get(payout.booking_id).reference
    key, amount = payout.idempotency_key, Money(payout.amount_fils)
    try:
        result = outside(lambda: _gateway().transfer_to_agency(
            account, amount, transfer_group=f"booking_{reference}", key=key, metadata={"payout": str(payout_id)}))
    except (PaymentInvalid, IdempotencyConflict) as exc:
        failed = db.session.get(Payout, payout_id)
        assert failed is not None
        failed.state, failed.error_code = "failed", exc.code
        db.session.flush()
        return 0
    done = db.session.get(Payout, payout_id)
    assert done is not None
    if done.state != "pending":
        return 0
    done.state, done.stripe_transfer_id, done.settled_at = "paid", result.id, utcnow()
    post("payout", f"payout:{payout_id}:paid", [(Account.PAYOUTS, amount), (Account.CASH, -amount)],
         booking_id=done.booking_id, memo=f"transfer {result.id}")
    return 1


def payouts_for_agency(actor: Actor) -> list[Payout]:
    require(actor, Permission.AGENCY_PAYOUT_READ)
    return list(db.session.execute(select(Payout).where(Payout.agency_id.in_(actor.agency_ids or {-1}))
                                   .order_by(Payout.id.desc()).limit(200)).scalars())


def payout_line(p: Payout) -> dict[str, Any]:
    """One payout as ``GET /api/v1/agency/payouts`` and the agency app's statement show it."""
    return {"booking": booking_reference(p.booking_id), "amount": p.amount_fils, "platform_fee": p.platform_fee_fils,
            "currency": "AED", "state": p.state, "transfer_id": p.stripe_transfer_id, "created_at": p.created_at,
            "settled_at": p.settled_at, "agency_id": p.agency_id}


def booking_reference(booking_id: int) -> str:
    return str(bookings.get(booking_id).reference)


# the invoice verbs the agency app's invoice pages use, as this area's public surface
get_for_agency_staff = invoices.get_for_agency_staff
list_for_agency = invoices.list_for_agency
render_pdf = invoices.render_pdf


# ---- post-rental charges (P-21): the money side --------------------------------------------------------------
#
# The charges area owns the charge, its notice and its schedule; it asks this area to collect exactly the
# noticed amount, once per attempt. Each attempt is a ``ChargePayment`` row whose key is committed before
# Stripe is asked: the deposit hold is captured when it still covers the amount, else the saved card is
# charged off-session as a merchant-initiated payment (the mandate the customer accepted when paying), or the
# customer pays on-session. Success posts the ledger, issues the agency's tax invoice (not for a fine or toll:
# those are passed through at cost, outside VAT) and owes the agency its share in a payout of its own.


class ChargeState(StrEnum):
    SUCCEEDED = "succeeded"
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate: they pay on-session
    DECLINED = "declined"  # the card was declined: the charges area retries on its schedule
    PENDING = "pending"  # the outcome is unknown (an outage): the same attempt is asked again, same key
    FAILED = "failed"  # refused for a reason a retry will not fix (people look: ``needs_review``)


@dataclass(frozen=True)
class ChargeRequest:
    charge_id: int
    charge_ref: str  # the charge's public id, in Stripe's metadata
    booking_id: int
    attempt: int
    amount: Money
    vat: Money  # the VAT inside ``amount`` (zero for a fine or toll)
    description: str
    on_session: bool = False
    card_public_id: str | None = None  # on-session: another of the customer's cards


@dataclass(frozen=True)
class ChargeOutcome:
    state: ChargeState
    payment_id: int
    via: str
    error_code: str | None = None
    client_secret: str | None = None


_CHARGE_LISTENERS: list[Callable[[int, ChargeOutcome], None]] = []


def on_charge_outcome(func: Callable[[int, ChargeOutcome], None]) -> Callable[[int, ChargeOutcome], None]:
    """The charges area hears a charge payment's outcome that arrives later (a webhook):
    ``func(charge_id, outcome)``, the outcome naming the attempt it is about."""
    _CHARGE_LISTENERS.append(func)
    return func


def _tell_charges(row_id: int, before: str) -> None:
    row = db.session.get(ChargePayment, row_id)
    assert row is not None
    if row.state == before:
        return
    outcome = _outcome(row)
    for listener in _CHARGE_LISTENERS:
        listener(row.charge_id, outcome)


def charge_key(charge_id: int, attempt: int) -> str:
    return f"charge:{charge_id}:attempt:{attempt}"


def _charge_payment(charge_id: int, attempt: int) -> ChargePayment | None:
    return db.session.execute(select(ChargePayment).where(
        ChargePayment.charge_id == charge_id, ChargePayment.attempt == attempt)).scalar_one_or_none()


def charge_payments_for(charge_id: int) -> list[ChargePayment]:
    return list(db.session.execute(select(ChargePayment).where(ChargePayment.charge_id == charge_id)
                                   .order_by(ChargePayment.attempt)).scalars())


def deposit_covers(booking_id: int, amount: Money, *, now: datetime | None = None) -> bool:
    """A hold is still valid (authorised, not past its capture deadline), covers ``amount`` and no other
    charge has claimed it."""
    row = _held(booking_id)
    if row is None or row.amount_fils < amount.fils:
        return False
    now = now or utcnow()
    if row.capture_before is not None and row.capture_before <= now:
        return False
    claimed = db.session.execute(select(ChargePayment.id).where(
        ChargePayment.deposit_id == row.id, ChargePayment.state != IntentState.FAILED)).first()
    return claimed is None


def _outcome(row: ChargePayment, client_secret: str | None = None) -> ChargeOutcome:
    state = {IntentState.SUCCEEDED: ChargeState.SUCCEEDED, IntentState.REQUIRES_ACTION: ChargeState.REQUIRES_ACTION,
             IntentState.PENDING: ChargeState.PENDING}.get(IntentState(row.state))
    if state is None:
        state = ChargeState.FAILED if row.needs_review else ChargeState.DECLINED
    return ChargeOutcome(state, row.id, row.via, row.error_code, client_secret)


def _charge_card(booking_id: int, customer_user_id: int, card_public_id: str | None) -> SavedCard | None:
    if card_public_id is not None:
        card = db.session.execute(select(SavedCard).where(
            SavedCard.public_id == card_public_id, SavedCard.user_id == customer_user_id,
            SavedCard.removed_at.is_(None))).scalar_one_or_none()
        if card is None:
            raise NotFound()
        return card
    paid = booking_payment(booking_id)
    card = db.session.get(SavedCard, paid.card_id) if paid is not None else None
    if card is not None and card.removed_at is None:
        return card
    return db.session.execute(select(SavedCard).where(
        SavedCard.user_id == customer_user_id, SavedCard.removed_at.is_(None))
        .order_by(SavedCard.is_default.desc(), SavedCard.id.desc()).limit(1)).scalar_one_or_none()


def collect_charge(req: ChargeRequest) -> ChargeOutcome:
    """Collect one attempt of a post-rental charge, for exactly ``req.amount``; a re-run of the same attempt
    (a killed worker, a lost answer) replays its key and never moves money twice. Raises
    ``PaymentProviderUnavailable`` when the outcome is unknown (the caller's job runs again)."""
    booking = bookings.get(req.booking_id)
    row = _charge_payment(req.charge_id, req.attempt)
    if row is not None and row.state != IntentState.PENDING:
        return _outcome(row)
    if row is None:
        if req.on_session:
            card = _charge_card(req.booking_id, booking.customer_id, req.card_public_id)
            via, deposit = "on_session", None
        elif deposit_covers(req.booking_id, req.amount):
            via, card, deposit = "deposit", None, _held(req.booking_id)
        else:
            via, card, deposit = "card", _charge_card(req.booking_id, booking.customer_id, None), None
        row = ChargePayment(charge_id=req.charge_id, booking_id=req.booking_id, agency_id=booking.agency_id,
                            attempt=req.attempt, idempotency_key=charge_key(req.charge_id, req.attempt), via=via,
                            amount_fils=req.amount.fils, vat_fils=req.vat.fils, description=req.description[:300],
                            card_id=card.id if card else None, deposit_id=deposit.id if deposit else None)
        db.session.add(row)
        db.session.flush()
        if via != "deposit" and card is None:
            row.state, row.error_code = IntentState.FAILED, "no_saved_card"
            db.session.flush()
            return _outcome(row)
    if row.amount_fils != req.amount.fils:
        raise ValueError(f"charge {req.charge_id} attempt {req.attempt}: the amount changed under its key")
    if row.via == "deposit":
        return _collect_from_deposit(row.id, req)
    return _collect_by_card(row.id, req)


def _collect_from_deposit(row_id: int, req: ChargeRequest) -> ChargeOutcome:
    row = db.session.get(ChargePayment, row_id)
    assert row is not None and row.deposit_id is not None
    hold = db.session.get(PaymentIntentRow, row.deposit_id)
    assert hold is not None
    if hold.state == IntentState.HELD:
        booking_id, amount, hold_id = row.booking_id, Money(row.amount_fils), row.deposit_id
        try:  # its own key (the hold's); the attempt's row is committed first, by ``outside``
            capture_deposit(booking_id, amount)
        except PaymentInvalid as exc:
            code = exc.stripe_code or exc.code
            _charge_failed(row_id, code, None, review=f"deposit capture refused by Stripe: {code}")
            failed = db.session.get(ChargePayment, row_id)
            assert failed is not None
            return _outcome(failed)
        hold = db.session.get(PaymentIntentRow, hold_id)
        assert hold is not None
    row = db.session.get(ChargePayment, row_id)
    assert row is not None
    if hold.state == IntentState.CAPTURED and hold.captured_fils == row.amount_fils:
        _charge_succeeded(row_id)
    elif hold.state != IntentState.HELD:
        # the hold ended (lapsed or released) before it was captured: this attempt goes to the card instead,
        # under its own key (the capture's key was the hold's)
        row.via, row.deposit_id = "card", None
        booking = bookings.get(row.booking_id)
        card = _charge_card(row.booking_id, booking.customer_id, None)
        if card is None:
            row.state, row.error_code = IntentState.FAILED, "no_saved_card"
            db.session.flush()
            return _outcome(row)
        row.card_id = card.id
        db.session.flush()
        return _collect_by_card(row_id, req)
    row = db.session.get(ChargePayment, row_id)
    assert row is not None
    return _outcome(row)


def _collect_by_card(row_id: int, req: ChargeRequest) -> ChargeOutcome:
    row = db.session.get(ChargePayment, row_id)
    assert row is not None and row.card_id is not None
    booking = bookings.get(row.booking_id)
    customer = customer_id_for(booking.customer_id)
    card = db.session.get(SavedCard, row.card_id)
    assert card is not None
    if customer is None:
        row.state, row.error_code = IntentState.FAILED, "no_payment_customer"
        db.session.flush()
        return _outcome(row)
    metadata = {"charge_payment": str(row_id), "charge": req.charge_ref,
                "booking": booking.reference, "kind": "charge"}
    intent_id = row.stripe_intent_id
    try:
        intent = _ask_stripe(row_id, customer, card.stripe_payment_method_id, metadata, booking.reference)
    except AuthenticationRequired as exc:
        seen = exc.intent_id or intent_id
        _charge_failed(row_id, "authentication_required", seen, requires_action=True)
    except CardDeclined as exc:
        code, seen = exc.decline_code or exc.code, exc.intent_id or intent_id
        _charge_failed(row_id, code, seen)
    except PaymentInvalid as exc:
        invalid = exc.stripe_code or exc.code
        _charge_failed(row_id, invalid, intent_id, review=f"refused by Stripe: {invalid}")
    except IdempotencyConflict:
        _flag_charge(row_id, "idempotency conflict on a post-rental charge: check at Stripe")
    else:
        apply_charge_intent(row_id, intent, notify=False)
        done = db.session.get(ChargePayment, row_id)
        assert done is not None
        return _outcome(done, intent.client_secret if done.state == IntentState.REQUIRES_ACTION else None)
    after = db.session.get(ChargePayment, row_id)
    assert after is not None
    return _outcome(after)


def _ask_stripe(row_id: int, customer: str, pm: str, metadata: dict[str, str], reference: str) -> Intent:
    """The attempt's Stripe calls, each after the row carrying its key is committed. On-session: one
    customer-initiated payment. Off-session (an MIT): create the intent, commit its id, then confirm it; a
    re-run asks where the intent stands before confirming again."""
    row = db.session.get(ChargePayment, row_id)
    assert row is not None
    key, amount, intent_id = row.idempotency_key, Money(row.amount_fils), row.stripe_intent_id
    if row.via == "on_session":
        group = f"booking_{reference}"
        return outside(lambda: _gateway().pay_booking(customer_id=customer, payment_method_id=pm, amount=amount,
                                                      key=key, metadata=metadata, transfer_group=group))
    if intent_id is None:
        current = outside(lambda: _gateway().charge_off_session(customer_id=customer, payment_method_id=pm,
                                                                amount=amount, key=key, metadata=metadata))
        _record_charge_intent(row_id, current.id)
        intent_id = current.id
    else:
        known = intent_id
        current = outside(lambda: _gateway().retrieve_intent(known))
    if current.status in (IntentStatus.SUCCEEDED, IntentStatus.PROCESSING):
        return current
    confirming = intent_id
    return outside(lambda: _gateway().confirm_off_session(confirming, key=f"{key}:confirm"))


def _record_charge_intent(row_id: int, intent_id: str) -> None:
    db.session.execute(update(ChargePayment).where(ChargePayment.id == row_id, ChargePayment.stripe_intent_id.is_(None))
                       .values(stripe_intent_id=intent_id))
    db.session.expire_all()


def _flag_charge(row_id: int, reason: str) -> None:
    db.session.execute(update(ChargePayment).where(ChargePayment.id == row_id).values(needs_review=reason[:200]))


def _charge_failed(row_id: int, code: str, intent_id: str | None, *, requires_action: bool = False,
                   review: str | None = None) -> None:
    row = db.session.execute(select(ChargePayment).where(ChargePayment.id == row_id).with_for_update()).scalar_one()
    target = IntentState.REQUIRES_ACTION if requires_action else IntentState.FAILED
    if row.state not in (IntentState.PENDING, IntentState.REQUIRES_ACTION) or row.state == target:
        return
    row.state, row.error_code = target, code[:64]
    if intent_id and row.stripe_intent_id is None:
        row.stripe_intent_id = intent_id
    if review:
        row.needs_review = review[:200]
    db.session.flush()


def apply_charge_intent(row_id: int, intent: Intent, *, notify: bool = True) -> None:
    """Record what Stripe says of a charge payment's intent (the API's answer, a webhook); forward only."""
    row = db.session.execute(select(ChargePayment).where(ChargePayment.id == row_id).with_for_update()).scalar_one()
    if row.stripe_intent_id is None:
        row.stripe_intent_id = intent.id
    if intent.charge_id:
        row.stripe_charge_id = intent.charge_id
    before = row.state
    if intent.status is IntentStatus.SUCCEEDED:
        if row.state != IntentState.SUCCEEDED:
            _charge_succeeded(row_id)
    elif intent.status is IntentStatus.CANCELED:
        _charge_failed(row_id, "canceled", intent.id)
    elif intent.needs_customer and intent.last_error_code and intent.last_error_code != "authentication_required":
        _charge_failed(row_id, intent.decline_code or intent.last_error_code, intent.id)
    elif intent.needs_customer:
        _charge_failed(row_id, "authentication_required", intent.id, requires_action=True)
    db.session.flush()
    if notify:
        _tell_charges(row_id, before)


def _charge_succeeded(row_id: int) -> None:
    """The money is in: ledger, the agency's tax invoice (VAT-able kinds), the agency's share owed."""
    row = db.session.execute(select(ChargePayment).where(ChargePayment.id == row_id).with_for_update()).scalar_one()
    if row.state == IntentState.SUCCEEDED:
        return
    if row.state not in (IntentState.PENDING, IntentState.REQUIRES_ACTION, IntentState.FAILED):
        return
    row.state, row.settled_at, row.error_code = IntentState.SUCCEEDED, utcnow(), None
    db.session.flush()
    gross, vat = Money(row.amount_fils), Money(row.vat_fils)
    net = gross - vat
    source = Account.DEPOSITS_CAPTURED if row.via == "deposit" else Account.CASH
    post("charge", f"charge_payment:{row_id}", [(source, gross), (Account.AGENCY_PAYABLE, -net),
                                                (Account.VAT_PAYABLE, -vat)],
         booking_id=row.booking_id, memo=f"post-rental charge {row.charge_id} ({row.via})")
    booking = bookings.get(row.booking_id)
    if vat.fils > 0:
        agency = agencies.agency_by_id(booking.agency_id)
        customer = users.user_by_id(booking.customer_id)
        if invoices.can_issue(agency):
            invoices.issue_invoice(agency, customer, [invoices.LineIn(row.description, net, vat=vat)],
                                   business_today(), source=("charge_payment", row_id), booking=booking)
        else:
            bookings.flag_booking(row.booking_id, "no tax invoice for a post-rental charge: the agency has no TRN "
                                                  "or address on file")
    payout = Payout(booking_id=row.booking_id, source=f"charge:{row_id}", agency_id=row.agency_id,
                    amount_fils=net.fils, platform_fee_fils=0)
    db.session.add(payout)
    db.session.flush()
    payout.idempotency_key = f"transfer:{payout.id}"
    post("payout", f"payout:{payout.id}:owed", [(Account.AGENCY_PAYABLE, net), (Account.PAYOUTS, -net)],
         booking_id=row.booking_id, memo="agency share of a post-rental charge")


def charge_invoice_number(payment_id: int) -> str | None:
    """The tax invoice issued for a collected charge payment (None for a fine or toll, or none issued)."""
    return db.session.execute(select(invoices.Invoice.number).where(
        invoices.Invoice.source_kind == "charge_payment", invoices.Invoice.source_ref == str(payment_id),
        invoices.Invoice.doc_type == invoices.DocumentType.INVOICE)).scalar_one_or_none()


def charge_client_secret(charge_id: int) -> str | None:
    """The client secret of the attempt waiting for the customer to authenticate (they pay on-session)."""
    row = db.session.execute(select(ChargePayment).where(
        ChargePayment.charge_id == charge_id, ChargePayment.state == IntentState.REQUIRES_ACTION)
        .order_by(ChargePayment.attempt.desc()).limit(1)).scalar_one_or_none()
    if row is None or row.stripe_intent_id is None:
        return None
    intent_id = row.stripe_intent_id
    intent = outside(lambda: _gateway().retrieve_intent(intent_id))
    return intent.client_secret


def _charge_payment_row(obj: dict[str, Any]) -> ChargePayment | None:
    row: ChargePayment | None = _row_for_intent(ChargePayment, obj, "charge_payment")
    return row


def _charge_event(kind: str, obj: dict[str, Any]) -> str | None:
    """A ``payment_intent.*`` event about a charge payment (None: not one of ours)."""
    row = _charge_payment_row(obj)
    if row is None:
        return None
    try:
        intent = intent_from(obj)
    except (KeyError, ValueError):
        return "unreadable"
    if kind == "payment_intent.payment_failed" and intent.status is not IntentStatus.SUCCEEDED:
        error = obj.get("last_payment_error") or {}
        code = str(error.get("decline_code") or error.get("code") or "payment_failed")
        before = row.state
        _charge_failed(row.id, code, intent.id, requires_action=code == "authentication_required")
        _tell_charges(row.id, before)
        return "failed"
    apply_charge_intent(row.id, intent)
    return "applied"
