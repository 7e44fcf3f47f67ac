"""Payment work: each job re-reads its row and calls Stripe under the row's key, so a re-run never moves
money twice (STRIPE.md §4: the database, not Redis, is the source of truth)."""

from __future__ import annotations

from marketplace import jobs
from marketplace.payments import service


@jobs.handler("payments.refund")
def refund(ref: str) -> None:
    service.execute_refund(int(ref))


@jobs.handler("payments.save_card")
def save_card(ref: str) -> None:
    """``setup_intent.succeeded`` arrived before (or instead of) the app's confirm call."""
    service.save_card_from_setup(int(ref))


@jobs.handler("payments.hold_deposit")
def hold_deposit(ref: str) -> None:
    """A deposit hold whose first try met a Stripe outage: placed by our job, so off-session."""
    service.hold_deposit(int(ref), off_session=True)


@jobs.handler("payments.release_deposit")
def release_deposit(ref: str) -> None:
    service.release_deposit(int(ref))


@jobs.periodic
def rehold_deposits() -> None:
    service.rehold_due_deposits()


@jobs.periodic
def reconcile() -> None:
    service.reconcile()


@jobs.periodic
def release_payouts() -> None:
    service.release_payouts()
