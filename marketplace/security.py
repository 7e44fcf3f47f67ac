"""Who is calling, and whether they may: actors, gates, MFA and permission checks.

Every blueprint is registered with exactly one gate (``register_gated``). A gate runs before every
view of its blueprint and sets ``g.actor``; views marked ``@public`` or ``@pre_mfa`` relax it
explicitly. ``tests/test_route_gates.py`` fails if any route is reachable without a gate.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, g, redirect, request
from sqlalchemy import update
from werkzeug.wrappers import Response

from marketplace import transactions
from marketplace.config import Settings
from marketplace.errors import (
    CsrfFailed,
    Forbidden,
    MfaRequired,
    ReauthRequired,
    Unauthenticated,
    UnsupportedMediaType,
)
from marketplace.extensions import db, utcnow
from marketplace.permissions import AGENCY_ROLES, Permission, Role, permissions_for
from marketplace.users import sessions
from marketplace.users.models import AuthSession, RoleAssignment, SessionChannel, User

F = TypeVar("F", bound=Callable[..., Any])


def settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


@dataclass
class Actor:
    user: User
    session: AuthSession
    roles: frozenset[Role]
    permissions: frozenset[Permission]

    @classmethod
    def for_session(cls, session: AuthSession) -> Actor:
        roles = session.user.role_set()
        return cls(session.user, session, roles, permissions_for(roles))

    @property
    def is_staff(self) -> bool:
        return self.user.is_staff

    @property
    def mfa_complete(self) -> bool:
        return self.session.mfa_at is not None

    @property
    def agency_ids(self) -> frozenset[int]:
        return frozenset(
            a.agency_id for a in self.user.roles if a.agency_id is not None and Role(a.role) in AGENCY_ROLES
        )

    def agency_roles(self, agency_id: int) -> frozenset[Role]:
        return frozenset(Role(a.role) for a in self.user.roles if a.agency_id == agency_id)

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def audit_identity(self) -> tuple[str, str | None, str | None]:
        kind = "staff" if self.is_staff else "customer"
        return kind, self.user.public_id, ",".join(sorted(self.roles))


@dataclass(frozen=True)
class SystemActor:
    """Jobs and CLI commands act as the system."""

    name: str = "system"

    @property
    def audit_identity(self) -> tuple[str, str | None, str | None]:
        return "system", None, self.name


def current_actor() -> Actor:
    actor: Actor | None = g.get("actor")
    if actor is None:
        raise Unauthenticated()
    return actor


def optional_actor() -> Actor | None:
    return g.get("actor")


def require(actor: Actor, *permissions: Permission) -> None:
    missing = [p for p in permissions if not actor.can(p)]
    if missing:
        raise Forbidden(details={"missing": [str(p) for p in missing]})


def can_in_agency(actor: Actor, agency_id: int, permission: Permission) -> bool:
    """The one agency-scope check: permissions come from the roles held *in that agency* (a manager in one
    agency may be desk staff in another, and a role elsewhere grants nothing here)."""
    return agency_id in actor.agency_ids and permission in permissions_for(actor.agency_roles(agency_id))


def require_in_agency(actor: Actor, agency_id: int, permission: Permission) -> None:
    if not can_in_agency(actor, agency_id, permission):
        raise Forbidden(details={"missing": [str(permission)]})


def require_recent_auth(actor: Actor, window: timedelta | None = None) -> None:
    """Step-up: sensitive actions need a password check inside the re-authentication window."""
    limit = window or settings().reauth_window
    if utcnow() - actor.session.auth_at > limit:
        raise ReauthRequired()


def require_fresh_mfa(actor: Actor, window: timedelta | None = None) -> None:
    limit = window or settings().reauth_window
    if actor.session.mfa_at is None or utcnow() - actor.session.mfa_at > limit:
        raise ReauthRequired(details={"needs": "mfa"})


# ---- view markers -------------------------------------------------------------------------------


def public(view: F) -> F:
    """No sign-in needed (listed explicitly; the route-gate test knows these).

    The OpenAPI document says so too: the operation overrides the global bearer requirement with
    ``security: []`` (flask-smorest reads ``_apidoc["manual_doc"]``, as its ``Blueprint.doc`` does).
    """
    view._gate_exempt = "public"  # type: ignore[attr-defined]
    apidoc: dict[str, Any] = dict(getattr(view, "_apidoc", {}))
    apidoc["manual_doc"] = {**apidoc.get("manual_doc", {}), "security": []}
    view._apidoc = apidoc  # type: ignore[attr-defined]
    return view


def pre_mfa(view: F) -> F:
    """Signed in with a password, MFA not yet passed (the MFA step itself, logout)."""
    view._gate_exempt = "pre_mfa"  # type: ignore[attr-defined]
    return view


def requires(*permissions: Permission) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            require(current_actor(), *permissions)
            return view(*args, **kwargs)

        wrapper._permissions = permissions  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def _exemption() -> str | None:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "_gate_exempt", None)


# ---- gates --------------------------------------------------------------------------------------


class GateKind(StrEnum):
    PUBLIC = "public"
    API = "api"  # bearer token: customers, and staff who passed MFA
    API_STAFF = "api_staff"  # bearer token, staff only, MFA passed
    CONSOLE = "console"  # cookie session, platform staff with console access, MFA passed
    AGENCY = "agency"  # cookie session, agency staff, MFA passed


STAFF_COOKIE = "cj_staff"
CSRF_COOKIE = "cj_csrf"


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _load_api_actor() -> Actor:
    token = bearer_token()
    if token is None:
        raise Unauthenticated(headers={"WWW-Authenticate": "Bearer"})
    session = _keep_alive(sessions.find_active(token, SessionChannel.API, settings()))
    if session is None:
        raise Unauthenticated(headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return Actor.for_session(session)


def staff_cookie_name() -> str:
    return "__Host-" + STAFF_COOKIE if settings().production else STAFF_COOKIE


def load_web_actor() -> Actor | None:
    token = request.cookies.get(staff_cookie_name())
    if not token:
        return None
    session = _keep_alive(sessions.find_active(token, SessionChannel.WEB, settings()))
    return Actor.for_session(session) if session is not None else None


def _keep_alive(session: AuthSession | None) -> AuthSession | None:
    """A moved ``last_seen_at`` (at most once a minute) is kept work: it rides in the request's commit,
    and a failed request writes it after its rollback, so the staff idle timeout counts from the last
    request, not the last successful write. On SQLite the GET that carries it begins again as a writer."""
    if session is not None and db.session.is_modified(session):
        seen, session_id = session.last_seen_at, session.id
        if transactions.upgrade():
            session.last_seen_at = seen  # the restart dropped the unflushed change
        transactions.keep(lambda: _touch(session_id, seen))
    return session


def _touch(session_id: int, seen: Any) -> None:
    db.session.execute(
        update(AuthSession).where(AuthSession.id == session_id, AuthSession.last_seen_at < seen)
        .values(last_seen_at=seen).execution_options(synchronize_session=False)
    )


def check_csrf(actor: Actor | None) -> None:
    """Unsafe web requests need a same-origin Origin (when sent) and the form's CSRF token."""
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    origin = request.headers.get("Origin")
    if origin and origin != request.host_url.rstrip("/"):
        raise CsrfFailed()
    sent = request.form.get("csrf_token", "") or request.headers.get("X-CSRF-Token", "")
    expected = csrf_token(actor)
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        raise CsrfFailed()


def csrf_token(actor: Actor | None) -> str:
    """Bound to the session once signed in; before that, to a random cookie (double submit)."""
    if actor is not None and actor.session.csrf_secret:
        return actor.session.csrf_secret
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie:
        cookie = g.get("new_csrf_cookie") or _new_csrf_cookie()
    return hmac.new(settings().secret_key.encode(), cookie.encode(), "sha256").hexdigest()


def _new_csrf_cookie() -> str:
    g.new_csrf_cookie = secrets.token_urlsafe(24)
    return str(g.new_csrf_cookie)


class Gate:
    def __init__(self, kind: GateKind, permission: Permission | None = None) -> None:
        self.kind = kind
        self.permission = permission

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.permission}" if self.permission else str(self.kind)

    def __call__(self) -> Response | None:
        response = self._authorise()
        if response is None and request.path.startswith("/api/"):
            check_content_type()  # after authentication: strangers learn nothing about a route
        return response

    def _authorise(self) -> Response | None:
        exemption = _exemption()
        if self.kind == GateKind.PUBLIC or exemption == "public":
            if self.kind in (GateKind.CONSOLE, GateKind.AGENCY):
                g.actor = load_web_actor()
                check_csrf(g.actor)
            return None
        if self.kind in (GateKind.API, GateKind.API_STAFF):
            actor = _load_api_actor()
            g.actor = actor
            if actor.is_staff and not actor.mfa_complete and exemption != "pre_mfa":
                raise MfaRequired()
            if self.kind == GateKind.API_STAFF and not actor.is_staff:
                raise Forbidden()
        else:
            web_actor = load_web_actor()
            if web_actor is None:
                return self._to_login()
            g.actor = web_actor
            check_csrf(web_actor)
            if not web_actor.mfa_complete and exemption != "pre_mfa":
                if request.method == "GET":
                    return self._redirect(f"/{self.kind}/mfa")
                raise MfaRequired()
            actor = web_actor
        if self.permission is not None and exemption != "pre_mfa":
            require(actor, self.permission)
        return None

    def _to_login(self) -> Response:
        if request.method == "GET":
            return self._redirect(f"/{self.kind}/login")
        raise Unauthenticated()

    @staticmethod
    def _redirect(location: str) -> Response:
        return redirect(location)


def check_content_type() -> None:
    """JSON routes take JSON bodies only; upload routes take multipart only (415 otherwise)."""
    if request.method not in {"POST", "PUT", "PATCH"}:
        return
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "_accepts_multipart", False):
        if request.mimetype != "multipart/form-data":
            raise UnsupportedMediaType(details={"expected": "multipart/form-data"})
        return
    has_body = (request.content_length or 0) > 0 or request.headers.get("Transfer-Encoding")
    if has_body and not request.is_json:
        raise UnsupportedMediaType(details={"expected": "application/json"})


def register_gated(app: Flask, blueprint: Blueprint, gate: Gate, *, api: Any = None, **options: Any) -> None:
    """Register a blueprint with its one gate; the registry is what the route-gate test reads.

    The gate is attached to this app (first among the blueprint's before-request functions), not to
    the module-level blueprint, so ``create_app()`` can build more than one app in a process. Every
    view of the blueprint becomes one unit of work (``transactions.edge``): it commits once, at the end.
    """
    name = options.get("name", blueprint.name)
    gates: dict[str, str] = app.extensions.setdefault("route_gates", {})
    gates[name] = gate.name
    if api is not None:
        api.register_blueprint(blueprint, **options)
    else:
        app.register_blueprint(blueprint, **options)
    app.before_request_funcs.setdefault(name, []).insert(0, gate)
    for endpoint, view in list(app.view_functions.items()):
        if endpoint.startswith(name + ".") and not getattr(view, "_unit_of_work", False):
            app.view_functions[endpoint] = transactions.edge(view)


def role_assignments_for(user: User) -> list[RoleAssignment]:
    return list(user.roles)
