"""CareJar marketplace backend: ``create_app()`` wires the pieces together and nothing else."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Response

from marketplace.config import Settings, load_settings
from marketplace.errors import PayloadTooLarge, register_error_handlers
from marketplace.webhelpers import StrictJSONProvider, StrictRequest


def create_app(overrides: dict[str, Any] | None = None, *, start_background: bool = True) -> Flask:
    """Build the app. ``overrides`` replace environment settings (tests); ``None`` removes one."""
    settings = load_settings(overrides)
    from marketplace import logs

    logs.configure(settings.log_level)

    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.request_class = StrictRequest
    app.json = StrictJSONProvider(app)
    app.config.update(settings.flask_config())
    app.config["PASSWORD_HASH_PROFILE"] = (overrides or {}).get("PASSWORD_HASH_PROFILE", "default")
    if settings.trusted_proxy_count:
        n = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]

    settings.var_dir.mkdir(parents=True, exist_ok=True)
    _init_extensions(app, settings, start_background=start_background)
    register_error_handlers(app)
    _register_routes(app)
    _register_hooks(app, settings)
    from marketplace import cli

    cli.register(app)
    return app


def _init_extensions(app: Flask, settings: Settings, *, start_background: bool) -> None:
    from marketplace import imagepool, jobs
    from marketplace.crypto import KeyRing
    from marketplace.extensions import db, limiter, migrate

    _import_models()
    db.init_app(app)
    from marketplace.extensions import ping_after_idle

    with app.app_context():
        ping_after_idle(db.engine)
    migrate.init_app(app, db, directory=str(_migrations_dir()))
    limiter.init_app(app)
    if settings.master_keyring:
        app.extensions["keyring"] = KeyRing.from_env_value(settings.master_keyring)
    else:
        app.extensions["keyring"] = KeyRing.load(settings.keyring_path, create=not settings.production)
    jobs.init_app(app, start_background=start_background)
    imagepool.init_app(app)  # decoder processes start on the first upload, in the process that serves it


def _migrations_dir() -> Any:
    from marketplace.config import PROJECT_ROOT

    return PROJECT_ROOT / "migrations"


def _import_models() -> None:
    """Every model module, so metadata (and Alembic autogenerate) sees all tables."""
    from marketplace import audit, jobs  # noqa: F401
    from marketplace.agencies import models as _agencies  # noqa: F401
    from marketplace.availability import models as _availability  # noqa: F401
    from marketplace.bookings import jobs as _booking_jobs  # noqa: F401
    from marketplace.bookings import models as _bookings  # noqa: F401
    from marketplace.charges import jobs as _charge_jobs  # noqa: F401 - and the listeners charges.service registers
    from marketplace.charges import models as _charges  # noqa: F401
    from marketplace.fleet import models as _fleet  # noqa: F401
    from marketplace.handover import jobs as _handover_jobs  # noqa: F401
    from marketplace.handover import models as _handover  # noqa: F401
    from marketplace.handover import service as _handover_purpose  # noqa: F401 - registers the image purpose
    from marketplace.kyc import jobs as _kyc_jobs  # noqa: F401
    from marketplace.kyc import models as _kyc  # noqa: F401
    from marketplace.notifications import models as _notifications  # noqa: F401
    from marketplace.notifications import service as _notification_jobs  # noqa: F401
    from marketplace.payments import invoices as _invoices  # noqa: F401
    from marketplace.payments import jobs as _payment_jobs  # noqa: F401
    from marketplace.payments import models as _payments  # noqa: F401
    from marketplace.users import jobs as _user_jobs  # noqa: F401
    from marketplace.users import models as _users  # noqa: F401
    from marketplace.vault import models as _vault  # noqa: F401


def _register_routes(app: Flask) -> None:
    from agency_app import views as agency_views
    from marketplace.api import create_api
    from marketplace.console import views as console_views
    from marketplace.security import Gate, GateKind, register_gated

    api = create_api(app)
    from marketplace.health import health_bp
    from marketplace.users.views import auth_bp, legal_bp, me_bp

    register_gated(app, health_bp, Gate(GateKind.PUBLIC), api=api)
    register_gated(app, legal_bp, Gate(GateKind.PUBLIC), api=api)
    register_gated(app, auth_bp, Gate(GateKind.API), api=api)
    register_gated(app, me_bp, Gate(GateKind.API), api=api)
    from marketplace.kyc.views import kyc_bp

    register_gated(app, kyc_bp, Gate(GateKind.API), api=api)
    from marketplace.agencies.views import agencies_bp, agency_api_bp
    from marketplace.bookings.views import agency_bookings_bp, bookings_bp
    from marketplace.fleet.views import agency_fleet_bp, vehicles_bp
    from marketplace.permissions import Permission

    register_gated(app, agencies_bp, Gate(GateKind.PUBLIC), api=api)
    register_gated(app, vehicles_bp, Gate(GateKind.PUBLIC), api=api)
    register_gated(app, bookings_bp, Gate(GateKind.API), api=api)
    for blueprint in (agency_api_bp, agency_fleet_bp, agency_bookings_bp):
        register_gated(app, blueprint, Gate(GateKind.API_STAFF, Permission.AGENCY_ACCESS), api=api)
    from marketplace.payments.invoice_views import agency_invoices_bp, invoices_bp

    register_gated(app, invoices_bp, Gate(GateKind.API), api=api)
    register_gated(app, agency_invoices_bp, Gate(GateKind.API_STAFF, Permission.AGENCY_ACCESS), api=api)

    from marketplace.payments.views import agency_payouts_bp, booking_payments_bp, cards_bp, webhook_bp

    register_gated(app, cards_bp, Gate(GateKind.API), api=api)
    register_gated(app, booking_payments_bp, Gate(GateKind.API), api=api)
    register_gated(app, webhook_bp, Gate(GateKind.PUBLIC), api=api)  # Stripe-Signature is its gate
    register_gated(app, agency_payouts_bp, Gate(GateKind.API_STAFF, Permission.AGENCY_ACCESS), api=api)
    from marketplace.handover.views import agency_handover_bp, customer_inspections_bp

    register_gated(app, agency_handover_bp, Gate(GateKind.API_STAFF, Permission.AGENCY_ACCESS), api=api)
    register_gated(app, customer_inspections_bp, Gate(GateKind.API), api=api)
    from marketplace.charges.views import agency_charges_bp, charges_bp

    register_gated(app, charges_bp, Gate(GateKind.API), api=api)
    register_gated(app, agency_charges_bp, Gate(GateKind.API_STAFF, Permission.AGENCY_ACCESS), api=api)

    from marketplace.console.views import console_bp

    register_gated(app, console_bp, Gate(GateKind.CONSOLE, console_views.REQUIRED))
    from agency_app.views import agency_bp

    register_gated(app, agency_bp, Gate(GateKind.AGENCY, agency_views.REQUIRED))
    from marketplace.devmail import dev_mail_bp
    from marketplace.users.pages import customer_pages_bp

    register_gated(app, customer_pages_bp, Gate(GateKind.PUBLIC))
    register_gated(app, dev_mail_bp, Gate(GateKind.PUBLIC))


def _register_hooks(app: Flask, settings: Settings) -> None:
    from marketplace import transactions
    from marketplace.extensions import db

    @app.before_request
    def _request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        # accept a caller's id only if it is a plain UUID (never echo arbitrary text into logs)
        try:
            g.request_id = str(uuid.UUID(incoming)) if incoming else str(uuid.uuid4())
        except ValueError:
            g.request_id = str(uuid.uuid4())

    # the request's unit of work opens before any gate reads; its view's edge commits it
    app.before_request(transactions.begin_request)

    @app.before_request
    def _unsized_body() -> None:
        # Werkzeug silently cuts a body without Content-Length (chunked) off at MAX_CONTENT_LENGTH; read it
        # here and refuse one that reached the limit, so nothing ever parses a truncated body
        if request.content_length is None and request.headers.get("Transfer-Encoding"):
            request.get_data(cache=True)
            if getattr(request.stream, "is_exhausted", False):
                raise PayloadTooLarge()

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # staff pages: "same-origin", because under "no-referrer" browsers send "Origin: null" with every form
        # post, which the CSRF check (rightly) refuses; the referrer still never leaves this site
        staff_page = request.path.startswith(("/console", "/agency"))
        response.headers.setdefault("Referrer-Policy", "same-origin" if staff_page else "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        )
        if settings.production:
            response.headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
        if not request.path.startswith(("/static/", "/api/docs/assets/")):
            response.headers.setdefault("Cache-Control", "no-store")
        origin = request.headers.get("Origin")
        if origin and origin in settings.cors_origins and request.path.startswith("/api/"):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        new_csrf = g.get("new_csrf_cookie")
        if new_csrf:
            response.set_cookie("cj_csrf", new_csrf, httponly=True, secure=settings.production, samesite="Strict",
                                path="/")
        return response

    app.after_request(transactions.finish_request)  # registered last: runs first, before the headers

    @app.teardown_request
    def _rollback_uncommitted(_exc: BaseException | None) -> None:
        # anything a failed request flushed is discarded: nothing is half-written
        transactions.end_request()
        db.session.rollback()
