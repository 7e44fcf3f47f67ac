"""The internal console (platform staff): web pages over the same services as the API."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from marketplace import audit, transactions
from marketplace.agencies import service as agency_service
from marketplace.errors import AppError
from marketplace.extensions import db
from marketplace.notifications import service as notifications
from marketplace.permissions import AGENCY_ROLES, PLATFORM_ROLES, Permission, Role
from marketplace.security import csrf_token, current_actor, requires
from marketplace.users import service as users
from marketplace.webauth import add_auth_routes

REQUIRED = Permission.CONSOLE_ACCESS
TITLE = "Console"

console_bp = Blueprint("console", __name__, url_prefix="/console")
add_auth_routes(console_bp, door="console", title=TITLE, permission=REQUIRED)


def _render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    actor = current_actor()
    return render_template(template, door="console", title=TITLE, actor=actor, csrf_token=csrf_token(actor),
                           P=Permission, **context), status


@console_bp.get("/", endpoint="home")
def home() -> Any:
    return _render("console/home.html")


@console_bp.get("/outbox")
@requires(Permission.OUTBOX_READ)
def outbox() -> Any:
    return _render("console/outbox.html", messages=notifications.recent_emails(limit=100))


@console_bp.get("/outbox/<string:message_id>")
@transactions.writes
@requires(Permission.OUTBOX_READ)
def outbox_message(message_id: str) -> Any:
    message = notifications.get_email(message_id)
    audit.record(current_actor(), "console:outbox_view", message)
    return _render("console/outbox_message.html", message=message)


@console_bp.get("/staff")
@requires(Permission.STAFF_MANAGE)
def staff() -> Any:
    return _staff_page()


def _staff_page(status: int = 200, error: str | None = None) -> Any:
    agencies = agency_service.list_all()
    return _render("console/staff.html", status=status, error=error, staff=users.list_staff(),
                   roles=sorted(PLATFORM_ROLES | AGENCY_ROLES), agencies=agencies,
                   agencies_by_id={a.id: a.public_id for a in agencies})


@console_bp.post("/staff/invite")
@requires(Permission.STAFF_MANAGE)
def invite() -> Any:
    try:
        role = Role(request.form.get("role", ""))
        agency_id = agency_service.agency_id_from_public(request.form.get("agency") or None)
        users.invite_staff(current_actor(), email=request.form.get("email", "")[:254],
                           full_name=request.form.get("full_name", "")[:200], role=role, agency_id=agency_id)
    except (AppError, ValueError) as exc:
        db.session.rollback()
        message = exc.text if isinstance(exc, AppError) else "Choose a role."
        if isinstance(exc, AppError) and exc.details.get("fields"):
            message += " " + "; ".join(f"{k}: {', '.join(v)}" for k, v in exc.details["fields"].items())
        return _staff_page(422, message)
    return redirect(url_for("console.staff", invited=1))


@console_bp.post("/staff/<string:user_id>/roles/remove")
@requires(Permission.STAFF_MANAGE)
def remove_role(user_id: str) -> Response:
    member = users.get_staff(user_id)
    try:
        role = Role(request.form.get("role", ""))
    except ValueError:
        abort(422)
    agency_id = agency_service.agency_id_from_public(request.form.get("agency") or None)
    users.remove_role(current_actor(), member, role, agency_id)
    return redirect(url_for("console.staff"))


@console_bp.get("/audit")
@transactions.writes
@requires(Permission.AUDIT_READ)
def audit_log() -> Any:
    filters = {k: request.args.get(k, "").strip()[:64] or None for k in ("action", "actor", "subject")}
    events = audit.search(limit=200, **filters)
    report = audit.verify_chain(db.session) if request.args.get("verify") else None
    if report is not None:
        audit.record(current_actor(), "audit:verify", None, ok=report.ok, checked=report.checked)
    return _render("console/audit.html", events=events, filters=filters, report=report)


@console_bp.app_template_filter("when")
def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


from marketplace.console import agency_views as _agency_views  # noqa: E402,F401  (registers the agency pages)
from marketplace.console import charge_views as _charge_views  # noqa: E402,F401  (post-rental charges)
from marketplace.console import kyc_views as _kyc_views  # noqa: E402,F401  (registers the KYC pages)
from marketplace.console import payment_views as _payment_views  # noqa: E402,F401  (payments and disputes pages)
