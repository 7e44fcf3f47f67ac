"""Staff sign-in pages shared by the two staff front doors (``/console`` and ``/agency``).

Password, then a TOTP code (enrolment with a QR code on first sign-in), then a session cookie that
is HttpOnly, SameSite=Strict, Secure and ``__Host-`` prefixed in production, and rotated when MFA is
passed. Every form carries a CSRF token; the gate checks it and the Origin header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from marketplace import audit, ratelimits, transactions
from marketplace.errors import AppError
from marketplace.extensions import limiter, utcnow
from marketplace.permissions import Permission, permissions_for
from marketplace.security import F, csrf_token, optional_actor, pre_mfa, public, settings, staff_cookie_name
from marketplace.users import mfa, service, sessions
from marketplace.users.models import SessionChannel
from marketplace.webhelpers import configured_limit as _limit

# keyed hashes, never the address itself (issue 7 item 7)
_form_account_key = ratelimits.form_account_key
_client_key = ratelimits.client_key


def _failed(response: Any) -> bool:
    return bool(response.status_code in (401, 403) or getattr(g, "login_failed", False))


def set_session_cookie(response: Response, token: str) -> None:
    s = settings()
    response.set_cookie(
        staff_cookie_name(), token, max_age=int(s.staff_session_max.total_seconds()), path="/",
        secure=s.production, httponly=True, samesite="Strict",
    )


def _door_scoped(door: str) -> Callable[[F], F]:
    """Give each door's copy of a view its own qualified name.

    Flask-Limiter keys route limits by the view's qualified name; the two doors' views come from one
    closure, so without this each door's limits applied to both and every attempt counted twice.
    """

    def rename(view: F) -> F:
        view.__qualname__ = f"{view.__qualname__}[{door}]"
        return view

    return rename


def add_auth_routes(  # noqa: PLR0915 - four small nested views that share the door's settings
    bp: Blueprint, *, door: str, title: str, permission: Permission
) -> None:
    """Add login, MFA, logout and invitation pages to a staff blueprint."""

    def render(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
        actor = optional_actor()
        return render_template(template, door=door, title=title, csrf_token=csrf_token(actor),
                               actor=actor, **context), status

    @bp.route("/login", methods=["GET", "POST"], endpoint="login")
    @limiter.limit(_limit("login_account"), key_func=_form_account_key, deduct_when=_failed,
                   methods=["POST"])
    @limiter.limit(_limit("login_client"), key_func=_client_key, methods=["POST"])
    @public
    @_door_scoped(door)
    def login() -> Any:
        if request.method == "GET":
            return render("auth/login.html")
        email = request.form.get("email", "")[:254]
        password = request.form.get("password", "")[:256]
        try:
            user = service.authenticate(email, password, channel=SessionChannel.WEB)
        except AppError as exc:
            g.login_failed = True
            return render("auth/login.html", status=exc.status, error=exc.text, email=email)
        if not user.is_staff or permission not in _permissions(user):
            audit.record_now(None, "auth:login", user, outcome="denied", door=door)
            g.login_failed = True
            return render("auth/login.html", status=403,
                          error=f"This account has no access to the {title}.", email=email)
        issued = service.start_web_session(user)
        response = redirect(url_for(f"{bp.name}.mfa"))
        set_session_cookie(response, issued.access_token)
        return response

    @bp.route("/mfa", methods=["GET", "POST"], endpoint="mfa")
    @transactions.writes  # the first visit stores a pending enrolment secret
    # one count per account for both doors and the API (shared scopes), and per client
    @limiter.shared_limit(_limit("mfa_account"), scope="mfa_account", key_func=ratelimits.signed_in_account_key,
                          methods=["POST"])
    @limiter.shared_limit(_limit("mfa_client"), scope="mfa_client", key_func=_client_key, methods=["POST"])
    @pre_mfa
    @_door_scoped(door)
    def mfa_step() -> Any:
        actor = g.actor
        user = actor.user
        if request.method == "POST":
            code = request.form.get("code", "")[:16]
            try:
                if mfa.is_enrolled(user):
                    mfa.verify_code(user, code)
                else:
                    mfa.confirm_enrolment(user, code)
            except AppError as exc:
                transactions.commit_error_response()  # keeps a pending enrolment secret across the retry
                return _mfa_page(render, user, error=exc.text, status=exc.status)
            actor.session.mfa_at = utcnow()
            actor.session.auth_at = utcnow()
            token = sessions.rotate_web(actor.session)
            audit.record(actor, "auth:mfa", user, channel="web", door=door)
            target = request.args.get("next", "")
            response = redirect(target if _safe_next() else url_for(f"{bp.name}.home"))
            set_session_cookie(response, token)
            return response
        if actor.mfa_complete:
            return redirect(url_for(f"{bp.name}.home"))
        page = _mfa_page(render, user)
        return page

    @bp.route("/logout", methods=["POST"], endpoint="logout")
    @pre_mfa
    def logout() -> Response:
        service.logout(g.actor)
        response = redirect(url_for(f"{bp.name}.login"))
        response.delete_cookie(staff_cookie_name(), path="/", secure=settings().production, httponly=True,
                               samesite="Strict")
        return response

    @bp.route("/invitations/accept", methods=["GET", "POST"], endpoint="accept_invitation")
    @limiter.limit(_limit("reset_client"), key_func=_client_key, methods=["POST"])
    @public
    @_door_scoped(door)
    def accept_invitation() -> Any:
        if request.method == "GET":
            return render("auth/invitation.html")
        code = request.form.get("code", "").strip()[:200]
        password = request.form.get("password", "")[:256]
        if password != request.form.get("password_again", "")[:256]:
            return render("auth/invitation.html", status=422, error="The two passwords differ.", code=code)
        try:
            service.accept_invitation(code, password)
        except AppError as exc:
            message = exc.text
            fields = exc.details.get("fields", {})
            if "password" in fields:
                message = "Password: " + "; ".join(fields["password"])
            return render("auth/invitation.html", status=exc.status, error=message, code=code)
        return redirect(url_for(f"{bp.name}.login", ready=1))


def _safe_next() -> bool:
    target = request.args.get("next", "")
    if any(ch.isspace() or not ch.isprintable() for ch in target):
        return False  # browsers drop tabs and newlines from URLs: "/\t/evil.example" would become "//evil.example"
    return target.startswith("/") and not target.startswith("//") and "\\" not in target


def _permissions(user: Any) -> frozenset[Permission]:
    return permissions_for(user.role_set())


def _mfa_page(render: Any, user: Any, *, error: str | None = None, status: int = 200) -> Any:
    if mfa.is_enrolled(user):
        return render("auth/mfa.html", status=status, enrolled=True, error=error)
    secret = mfa.pending_secret(user) or mfa.begin_enrolment(user)
    uri = mfa.provisioning_uri(user, secret)
    return render("auth/mfa.html", status=status, enrolled=False, error=error, secret=secret,
                  qr_svg=mfa.qr_svg(uri))
