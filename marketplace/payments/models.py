"""Payments (P-19, P-20, P-22): Stripe references, the mandate record, intents, refunds, webhooks, the ledger.

No card number, CVV or secret ever lands here: a card is its Stripe ``pm_`` id plus brand, last four digits
and expiry. Every row that leads to a Stripe call carries the idempotency key derived from it
(``pay:<booking>:attempt:<n>``, ``deposit:<booking>:hold:<n>``, ``refund:<id>``...), committed before the call.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, event, false
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.extensions import Model, utcnow
from marketplace.modelbase import PublicIdMixin, TimestampMixin
from marketplace.payments.states import IntentKind, IntentState, RefundState


class PaymentCustomer(Model):
    """Our user's Stripe customer (one per user)."""

    __tablename__ = "payment_customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CardSetup(Model):
    """One attempt to save a card: the SetupIntent the customer's SDK confirms (key ``setup:<id>``)."""

    __tablename__ = "card_setups"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    stripe_setup_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(32), default="created")
    card_id: Mapped[int | None] = mapped_column(ForeignKey("saved_cards.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SavedCard(PublicIdMixin, TimestampMixin, Model):
    """A saved card as we may keep it: the Stripe id, brand, last four, expiry (P-19)."""

    __tablename__ = "saved_cards"
    __table_args__ = (Index("ix_saved_cards_user", "user_id", "removed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    stripe_payment_method_id: Mapped[str] = mapped_column(String(64), unique=True)
    brand: Mapped[str] = mapped_column(String(20))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    removed_at: Mapped[datetime | None]


class MandateAcceptance(Model):
    """The MIT mandate, accepted actively at booking (P-20): append-only, later dispute evidence (P-24)."""

    __tablename__ = "mandate_acceptances"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("saved_cards.id"))
    stripe_customer_id: Mapped[str] = mapped_column(String(64))
    stripe_payment_method_id: Mapped[str] = mapped_column(String(64))
    card_brand: Mapped[str] = mapped_column(String(20))
    card_last4: Mapped[str] = mapped_column(String(4))
    text_version: Mapped[str] = mapped_column(String(32))
    text_sha256: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8), default="en")
    accepted_at: Mapped[datetime]
    ip_address: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    device: Mapped[str | None] = mapped_column(String(100))
    channel: Mapped[str] = mapped_column(String(8), default="app")


@event.listens_for(MandateAcceptance, "before_update")
@event.listens_for(MandateAcceptance, "before_delete")
def _append_only(mapper: object, connection: object, target: MandateAcceptance) -> None:
    raise RuntimeError("mandate acceptances are append-only")


class PaymentIntentRow(Model):
    """A PaymentIntent we start: a booking payment or a deposit hold; its key is derived from this row."""

    __tablename__ = "payment_intents"
    __table_args__ = (
        UniqueConstraint("booking_id", "kind", "attempt"),
        Index("ix_payment_intents_open", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=IntentKind.BOOKING)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=IntentState.PENDING)
    amount_fils: Mapped[int] = mapped_column(Integer)
    card_id: Mapped[int] = mapped_column(ForeignKey("saved_cards.id"))
    stripe_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(64))
    capture_before: Mapped[datetime | None]
    captured_fils: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    needs_review: Mapped[str | None] = mapped_column(String(200))  # reconciliation flag for the console
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("payment_intents.id"))  # a re-hold's old hold
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    settled_at: Mapped[datetime | None]


class Refund(Model):
    """A refund of a booking payment (key ``refund:<id>``); never above what was paid less earlier refunds."""

    __tablename__ = "refunds"
    __table_args__ = (Index("ix_refunds_open", "state", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payment_intents.id"), index=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    amount_fils: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(40))
    idempotency_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=RefundState.PENDING)
    stripe_refund_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    needs_review: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    settled_at: Mapped[datetime | None]


class WebhookEvent(Model):
    """Each Stripe event id once: inserted in the same transaction as its effect."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(80), unique=True)
    type: Mapped[str] = mapped_column(String(80))
    outcome: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class JournalEntry(Model):
    """One balanced posting: its lines add up to zero."""

    __tablename__ = "journal_entries"
    __table_args__ = (UniqueConstraint("source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(80))  # e.g. "payment:12:succeeded": posting twice is refused
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    memo: Mapped[str] = mapped_column(Text, default="")
    posted_at: Mapped[datetime] = mapped_column(default=utcnow)


class JournalLine(Model):
    """Debit positive, credit negative, in fils."""

    __tablename__ = "journal_lines"
    __table_args__ = (Index("ix_journal_lines_account", "account", "booking_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"))
    account: Mapped[str] = mapped_column(String(32))
    amount_fils: Mapped[int] = mapped_column(Integer)


class PayoutAccount(Model):
    """An agency's Stripe connected account (separate charges and transfers, STRIPE.md §1.4)."""

    __tablename__ = "payout_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), unique=True)
    stripe_account_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # as Stripe last reported them (the account, or an ``account.updated`` webhook); ready once both hold
    details_submitted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    payouts_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ready_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]


class Payout(Model):
    """A booking's money to its agency, less the platform fee and VAT, once the escrow ends (key ``transfer:<id>``);
    a collected post-rental charge's share is a payout of its own (P-21)."""

    __tablename__ = "payouts"
    __table_args__ = (UniqueConstraint("booking_id", "source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    # what is paid out: "rental" (the booking's, once its escrow ends) or "charge:<charge payment id>" (the
    # agency's share of a collected post-rental charge); one payout per booking and source
    source: Mapped[str] = mapped_column(String(40), default="rental", server_default="rental")
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"), index=True)
    amount_fils: Mapped[int] = mapped_column(Integer)
    platform_fee_fils: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | paid | failed
    stripe_transfer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    error_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    settled_at: Mapped[datetime | None]


class Dispute(PublicIdMixin, Model):
    """A chargeback (P-24): Stripe's dispute on a booking payment, opened and updated by its webhooks.

    ``due_by`` is Stripe's ``evidence_details.due_by``; evidence goes to Stripe once, under
    ``dispute:<id>:evidence`` (``submission_key``, committed before the call). The funds Stripe withdrew and
    reinstated are kept here so ``flask ledger check`` can match the ledger's disputed-funds account.
    """

    __tablename__ = "disputes"
    __table_args__ = (Index("ix_disputes_due", "closed_at", "due_by"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_dispute_id: Mapped[str] = mapped_column(String(64), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(64))
    stripe_intent_id: Mapped[str | None] = mapped_column(String(64))
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payment_intents.id"), index=True)
    booking_id: Mapped[int | None] = mapped_column(ForeignKey("bookings.id"), index=True)
    amount_fils: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="AED")
    reason: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(32))  # Stripe's dispute status
    due_by: Mapped[datetime | None]
    withdrawn_fils: Mapped[int] = mapped_column(Integer, default=0)
    reinstated_fils: Mapped[int] = mapped_column(Integer, default=0)
    submission_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    submitted_at: Mapped[datetime | None]
    submitted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    submission_error: Mapped[str | None] = mapped_column(String(64))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    closed_at: Mapped[datetime | None]


class ChargePayment(Model):
    """One attempt to collect a post-rental charge (P-21): from the deposit hold, off-session from the saved
    card (an MIT under the mandate), or on-session when the customer pays it themselves.

    ``charge_id`` is the charges area's row (no foreign key: payments sits below charges). The key
    ``charge:<charge>:attempt:<n>`` is committed before Stripe is asked; an off-session attempt creates the
    intent under it and confirms under ``<key>:confirm`` once the intent's id is committed (STRIPE.md §1.3).
    """

    __tablename__ = "charge_payments"
    __table_args__ = (
        UniqueConstraint("charge_id", "attempt"),
        Index("ix_charge_payments_open", "state", "updated_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    charge_id: Mapped[int] = mapped_column(Integer, index=True)
    booking_id: Mapped[int] = mapped_column(ForeignKey("bookings.id"), index=True)
    agency_id: Mapped[int] = mapped_column(ForeignKey("agencies.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    via: Mapped[str] = mapped_column(String(12))  # deposit | card | on_session
    state: Mapped[str] = mapped_column(String(20), default=IntentState.PENDING)
    amount_fils: Mapped[int] = mapped_column(Integer)
    vat_fils: Mapped[int] = mapped_column(Integer, default=0)
    description: Mapped[str] = mapped_column(String(300))
    card_id: Mapped[int | None] = mapped_column(ForeignKey("saved_cards.id"))
    deposit_id: Mapped[int | None] = mapped_column(ForeignKey("payment_intents.id"))  # the hold it captures
    stripe_intent_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    needs_review: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    settled_at: Mapped[datetime | None]
