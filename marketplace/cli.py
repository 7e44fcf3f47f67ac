"""Operator commands: ``flask --app wsgi <group> <command>``."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from flask import Flask, current_app
from flask.cli import AppGroup
from rq import Worker

from marketplace import audit, clock, demo, jobs
from marketplace.agencies import service as agencies
from marketplace.errors import AppError, NotFound
from marketplace.extensions import db, utcnow
from marketplace.payments import service as payments
from marketplace.permissions import AGENCY_ROLES, Role
from marketplace.transactions import unit_of_work
from marketplace.users import service as users
from marketplace.vault import service as vault

if TYPE_CHECKING:
    from marketplace.users.models import User

staff_cli = AppGroup("staff", help="Staff accounts.")
audit_cli = AppGroup("audit", help="The hash-chained audit log.")
jobs_cli = AppGroup("jobs", help="Background workers and the durable-work sweeper.")
demo_cli = AppGroup("demo", help="Demo data for a local run.")
ledger_cli = AppGroup("ledger", help="The double-entry payments ledger.")


def register(app: Flask) -> None:
    for group in (staff_cli, audit_cli, jobs_cli, demo_cli, keys_cli, ledger_cli):
        app.cli.add_command(group)


# ---- staff ---------------------------------------------------------------------------------------


@staff_cli.command("create")
@click.option("--email", required=True)
@click.option("--name", "full_name", required=True)
@click.option("--role", "roles", multiple=True, required=True,
              type=click.Choice([r.value for r in Role if r != Role.CUSTOMER]))
@click.option("--agency", "agency_public_id", default=None, help="Agency public id, for agency roles")
@click.password_option("--password", envvar="STAFF_PASSWORD", help="Prompted for if not given")
def create_staff(email: str, full_name: str, roles: tuple[str, ...], agency_public_id: str | None,
                 password: str) -> None:
    """Create a staff member (e.g. the first admin). MFA is set up at first sign-in."""
    try:
        with unit_of_work():
            agency_id = agencies.agency_id_from_public(agency_public_id)
            pairs = [(Role(r), agency_id if Role(r) in AGENCY_ROLES else None) for r in roles]
            user = users.create_staff(email=email, full_name=full_name, password=password, roles=pairs)
            email = user.email
    except AppError as exc:
        raise click.ClickException(f"{exc.code}: {exc.text} {exc.details or ''}") from exc
    click.echo(f"Created {email} ({', '.join(roles)}). Sign in at /console or /agency to set up MFA.")


@staff_cli.command("unlock-mfa")
@click.argument("email")
def unlock_mfa(email: str) -> None:
    """Lift the MFA lock that repeated wrong codes put on a staff account (after checking it was them)."""
    try:
        with unit_of_work():
            user, was_locked = users.unlock_staff_mfa(email)
            email = user.email
    except NotFound as exc:
        raise click.ClickException("No staff account uses this e-mail.") from exc
    click.echo(f"MFA of {email} is unlocked." if was_locked else f"MFA of {email} was not locked.")


# ---- ledger --------------------------------------------------------------------------------------


@ledger_cli.command("check")
def check_ledger() -> None:
    """Prove the journal balances and agrees with the payment, refund and booking rows; exit 1 if not."""
    with unit_of_work():
        report = payments.ledger_check()
    if report.ok:
        click.echo(f"ledger ok: {report.entries} entries balance and match the payment rows")
        return
    for problem in report.problems:
        click.echo(f"ledger problem: {problem}", err=True)
    sys.exit(1)


# ---- audit ---------------------------------------------------------------------------------------


@audit_cli.command("verify")
def verify_audit() -> None:
    """Recompute every hash chain; exit 1 and name the first broken row if one was tampered with."""
    report = audit.verify_chain(db.session)
    if report.ok:
        click.echo(f"audit chain ok: {report.checked} rows in {report.chains} chains")
        return
    where = "the legacy chain" if report.broken_chain == -1 else f"chain {report.broken_chain}"
    click.echo(f"audit chain BROKEN at row {report.first_broken_id} ({where}): {report.reason}", err=True)
    sys.exit(1)


@audit_cli.command("forget-period")
@click.argument("period")
def forget_audit_period(period: str) -> None:
    """Destroy one ended month's audit key (YYYY-MM): its client addresses become unreadable; the rows
    and the chains stay intact. Retention runs this for every month older than 12 months."""
    try:
        with unit_of_work():
            destroyed = audit.forget_period(period)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"audit key of {period} destroyed" if destroyed else f"no audit key left for {period}")


@audit_cli.command("forget-expired")
def forget_expired_audit_periods() -> None:
    """Destroy the audit key of every month older than the retention period (12 months)."""
    with unit_of_work():
        forgotten = audit.forget_expired()
    click.echo(f"audit keys destroyed: {', '.join(forgotten) or 'none'}")


# ---- jobs ----------------------------------------------------------------------------------------


@jobs_cli.command("worker")
@click.option("--burst", is_flag=True, help="Run what is queued, then exit")
def worker(burst: bool) -> None:
    """An rq worker for the marketplace queue (needs REDIS_URL)."""
    backend = jobs.backend()
    if not isinstance(backend, jobs.RqBackend) or current_app.config["SETTINGS"].jobs_mode != "redis":
        raise click.ClickException("JOBS_MODE=redis with REDIS_URL is needed for a separate worker")
    jobs.bind_worker_app(current_app._get_current_object())  # type: ignore[attr-defined]
    Worker([backend.queue], connection=backend.connection).work(burst=burst, with_scheduler=True)


@jobs_cli.command("sweeper")
@click.option("--every", default=60, show_default=True, help="Seconds between sweeps")
@click.option("--once", is_flag=True)
def sweeper(every: int, once: bool) -> None:
    """Re-queue due durable work and run periodic housekeeping."""
    while True:
        count = jobs.sweep()
        jobs.run_periodic()
        click.echo(f"{utcnow().isoformat()} queued {count} due work items")
        if once:
            return
        time.sleep(every)


# ---- demo data ---------------------------------------------------------------------------------

DEMO_FILE = "demo-credentials.txt"


@demo_cli.command("seed")
def seed_demo() -> None:
    """Create demo staff, an agency with vehicles, and a verified customer; print their sign-ins."""
    settings = current_app.config["SETTINGS"]
    if settings.production:
        raise click.ClickException("demo data is never seeded in production")
    path = Path(settings.var_dir) / DEMO_FILE
    if users.find_by_email("admin@demo.carejar.example") is not None:
        click.echo(path.read_text() if path.exists() else "Demo data exists (credentials file missing).")
        return
    with unit_of_work():
        lines, cars = _seed()
    lines += _seed_payments(cars)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(lines)
    click.echo(lines)


def _seed() -> tuple[str, list[str]]:
    agency = agencies.create_verified(
        business_name="Desert Wheels Car Rental LLC", trade_licence_number="DED-1234567", trn="100123456700003",
        address_line1="Sheikh Zayed Road, Al Quoz 1", address_city="Dubai", address_country="AE",
        representative_name="Omar Al Mansoori", contact_email="ops@desertwheels.example",
        contact_phone="+97143001234",
    )
    staff: list[tuple[str, str, list[tuple[Role, int | None]]]] = [
        ("admin@demo.carejar.example", "Aisha Admin", [(Role.ADMIN, None)]),
        ("reviewer@demo.carejar.example", "Rami Reviewer", [(Role.KYC_REVIEWER, None)]),
        ("reviewer2@demo.carejar.example", "Rana Reviewer", [(Role.KYC_REVIEWER, None)]),
        ("disputes@demo.carejar.example", "Dana Disputes", [(Role.DISPUTES_AGENT, None)]),
        ("dpo@demo.carejar.example", "Dariush DPO", [(Role.DPO, None)]),
        ("owner@desertwheels.example", "Omar Owner", [(Role.AGENCY_OWNER, agency.id)]),
        ("desk@desertwheels.example", "Sara Desk", [(Role.AGENCY_STAFF, agency.id)]),
    ]
    out = ["CareJar demo sign-ins (also in var/demo-credentials.txt; local demo only)", ""]
    out.append(f"{'who':<34} {'password':<22} TOTP secret (add to an authenticator app)")
    made: dict[str, User] = {}
    for email, name, roles in staff:
        password = "Demo-" + secrets.token_urlsafe(12)
        user = users.create_staff(email=email, full_name=name, password=password, roles=roles)
        secret = users.enrol_totp(user)
        out.append(f"{email:<34} {password:<22} {secret}")
        made[email] = user
    cars = demo.list_cars(made["owner@desertwheels.example"], agency.public_id)
    password = "Demo-" + secrets.token_urlsafe(12)
    customer = users.create_verified_customer(
        email="layla@demo.carejar.example", phone="+971501234567", password=password, full_name="Layla Haddad",
        date_of_birth=demo.years_before(users.business_today(), 30), nationality="AE",
        address_line1="Marina Gate 1, Apt 1204", address_city="Dubai", address_country="AE",
        emergency_contact_name="Karim Haddad", emergency_contact_phone="+971509876543",
    )
    # cleared the way a real customer is: consents, identity, uploads, and a demo reviewer's approval
    demo.clear_customer(customer, made["reviewer@demo.carejar.example"])
    audit.record(None, "demo:seed", agency)
    out.append(f"{customer.email:<34} {password:<22} (customer: API sign-in, no MFA)")
    out += ["", "Console: /console   Agency app: /agency   API docs: /api/docs",
            "A current TOTP code for a demo account: flask --app wsgi demo totp EMAIL"]
    return "\n".join(out) + "\n", cars  # the paid demo booking in five days takes the last car


DEMO_CUSTOMER = "layla@demo.carejar.example"


def _seed_payments(cars: list[str]) -> str:
    """The demo customer's saved card and a paid, confirmed booking (deposit held, invoices issued), with
    localstripe as Stripe; then today's rentals at the demo agency (``demo.seed_rentals``). Their own units of
    work: without localstripe the rest of the seed stands, and says so."""
    db.session.rollback()  # end the read the seed's callers began, so each unit below begins its own transaction
    try:
        with unit_of_work():
            card = demo.save_test_card(_demo_customer())
        with unit_of_work():
            reference = demo.pay_a_booking(_demo_customer(), cars[-1], card)
    except demo.DemoStripeUnavailable as exc:
        return (f"\nPayments: not seeded ({exc}). `make run` starts localstripe; then save a test card with\n"
                f"  flask --app wsgi demo card {DEMO_CUSTOMER}\n"
                "Today's rentals (pick-up, rental under way, returns with charges) need localstripe too.\n")
    paid = (f"\nPayments (localstripe): {DEMO_CUSTOMER} has a saved Visa ending 4242 and booking {reference},\n"
            f"paid and confirmed, its deposit held and its tax invoices issued.\n"
            f"Save a test card for any customer: flask --app wsgi demo card EMAIL [--number 5555555555554444]\n")
    try:
        with unit_of_work():
            rentals = demo.seed_rentals(_demo_customer(), _staff("desk@desertwheels.example"),
                                        _staff("owner@desertwheels.example"), cars, card)
    except (demo.DemoStripeUnavailable, AppError) as exc:  # the sign-ins are still written and printed
        return paid + f"\nToday's rentals: not seeded ({getattr(exc, 'code', None) or exc}).\n"
    dubai = clock.BUSINESS_TZ
    return (paid + f"\nToday at Desert Wheels (agency app /agency, signed in as desk@ or owner@desertwheels.example):\n"
            f"  pick-up  {rentals.pickup}  at {rentals.pickup_at.astimezone(dubai):%H:%M} Dubai time, paid, "
            f"awaiting the handover check\n"
            f"  return   {rentals.active}  handed over, in progress, due back at "
            f"{rentals.return_at.astimezone(dubai):%H:%M} Dubai time\n"
            f"  returned {rentals.returned}  a fuel charge (AED 157.50, evidence photo) in its 24-hour notice: "
            f"charge {rentals.charge}\n"
            f"  returned {rentals.disputed}  a cleaning charge (AED 262.50) the customer disputed: "
            f"charge {rentals.disputed_charge}\n"
            f"  the disputes team's queue (console, disputes@demo.carejar.example) holds the disputed one\n")


def _staff(email: str) -> User:
    user = users.find_by_email(email)
    assert user is not None
    return user


def _demo_customer() -> User:
    customer = users.find_by_email(DEMO_CUSTOMER)
    assert customer is not None
    return customer


@demo_cli.command("card")
@click.argument("email")
@click.option("--number", default=demo.DEMO_CARD, show_default=True,
              type=click.Choice(sorted(demo.TEST_CARDS)), help="One of Stripe's test card numbers.")
def demo_card(email: str, number: str) -> None:
    """Save a Stripe test card for a customer, playing the mobile SDK's part against localstripe."""
    settings = current_app.config["SETTINGS"]
    if settings.production:
        raise click.ClickException("only outside production, against localstripe")
    try:
        with unit_of_work():  # looked up inside: on SQLite a read begun outside could not turn into the write
            customer = users.find_by_email(email.lower())
            if customer is None or customer.is_staff:
                raise click.ClickException("no such customer account")
            card_id = demo.save_test_card(customer, number)
            shown = customer.email
    except demo.DemoStripeUnavailable as exc:
        raise click.ClickException(f"{exc}; `make run` starts localstripe on 127.0.0.1:8420") from exc
    except (ValueError, AppError) as exc:
        raise click.ClickException(str(getattr(exc, "code", None) or exc)) from exc
    click.echo(f"Saved {demo.TEST_CARDS[number]} (ending {number[-4:]}) for {shown}: card id {card_id}")


@demo_cli.command("totp")
@click.argument("email")
def demo_totp(email: str) -> None:
    """Print the current TOTP code of a demo staff account (never in production)."""
    if current_app.config["SETTINGS"].production or not email.endswith(".example"):
        raise click.ClickException("only for demo accounts outside production")
    code = users.current_totp_code(email.lower())
    if code is None:
        raise click.ClickException("no such demo account with MFA")
    click.echo(code)


# ---- master keys -------------------------------------------------------------------------------

keys_cli = AppGroup("keys", help="Master key ring: rotation and re-wrapping.")


@keys_cli.command("rotate")
@click.option("--resume", is_flag=True, help="Continue an interrupted rotation without adding a key")
@click.option("--batch", default=200, show_default=True)
def rotate_keys(resume: bool, batch: int) -> None:
    """Add a new master key, re-wrap every data key and field secret under it, then retire the old keys.

    Safe to interrupt and rerun: each batch commits, and a key is retired only when nothing still
    uses it (run with --resume to finish without adding another key).
    """
    ring = current_app.extensions["keyring"]
    if not hasattr(ring, "add_key"):
        raise click.ClickException("this key provider rotates outside the app (KMS)")
    if not resume:
        new = ring.add_key()
        click.echo(f"new active master key {new.key_id}")
    active = ring.active_key_id
    moved = audit_moved = 0
    while True:
        with unit_of_work():
            count = vault.rewrap_batch(batch)
            audit_count = audit.rewrap_keys(batch)
        moved += count
        audit_moved += audit_count
        if count == 0 and audit_count == 0:
            break
    # TOTP secrets are sealed directly under the master key
    secrets_moved = 0
    with unit_of_work():
        secrets_moved = users.rewrap_totp_secrets()
    click.echo(f"re-wrapped {moved} data keys and {secrets_moved} TOTP secrets under {active}")
    click.echo(f"re-wrapped {audit_moved} audit month keys (client addresses) under {active}")
    for key in list(ring.keys):
        if key.key_id != active and key.status.value == "retiring":
            if vault.keys_on(key.key_id) or audit.keys_on(key.key_id):
                raise click.ClickException(f"{key.key_id} still wraps data keys; rerun with --resume")
            ring.retire(key.key_id)
            click.echo(f"retired {key.key_id}")
    with unit_of_work():
        audit.record(None, "keys:rotate", None, active=active, rewrapped=moved, audit_keys=audit_moved,
                     totp=secrets_moved)
