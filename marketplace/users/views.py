"""Customer and staff accounts over the JSON API: thin views, one service call, one commit."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from marketplace import ratelimits
from marketplace.api import ApiBlueprint as Blueprint
from marketplace.errors import Unprocessable
from marketplace.extensions import limiter
from marketplace.notifications import service as notifications
from marketplace.schemas import PageArgsSchema, StatusSchema, decode_id_cursor, paginate
from marketplace.security import current_actor, pre_mfa, public
from marketplace.users import schemas as s
from marketplace.users import service
from marketplace.users.consent_texts import CURRENT as CURRENT_TEXTS
from marketplace.users.models import ConsentKind
from marketplace.users.sessions import IssuedTokens
from marketplace.webhelpers import configured_limit as _limit

auth_bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Registration, sign-in and tokens")
me_bp = Blueprint("me", __name__, url_prefix="/api/v1/me", description="The signed-in account")
legal_bp = Blueprint("legal", __name__, url_prefix="/api/v1/legal", description="Consent texts (public)")


# keyed hashes, never the address itself (issue 7 item 7); normalised like the account lookup
_account_key = ratelimits.json_account_key
_client_key = ratelimits.client_key


def _failed(response: Any) -> bool:
    return bool(response.status_code in (401, 403))


def _tokens(issued: IssuedTokens) -> dict[str, Any]:
    session = issued.session
    return {
        "token_type": "Bearer",
        "access_token": issued.access_token,
        "expires_in": int((issued.access_expires_at - session.last_seen_at).total_seconds()),
        "refresh_token": issued.refresh_token,
        "refresh_expires_in": int((issued.refresh_expires_at - session.last_seen_at).total_seconds())
        if issued.refresh_expires_at else 0,
        "mfa_required": session.user.is_staff and session.mfa_at is None,
    }


@auth_bp.route("/register", methods=["POST"])
@limiter.limit(_limit("register_client"), key_func=_client_key)
@auth_bp.arguments(s.RegisterIn)
@auth_bp.response(202, StatusSchema)
@public
def register(args: dict[str, Any]) -> dict[str, str]:
    """Create a customer account (21+); a confirmation code is e-mailed (send it to /auth/verify-email)."""
    service.register(service.Registration(**args))
    return {"status": "verification_sent",
            "message": "If this e-mail can be used, a confirmation code is on its way."}


@auth_bp.route("/verify-email", methods=["POST"])
@limiter.limit(_limit("reset_client"), key_func=_client_key)
@auth_bp.arguments(s.TokenIn)
@auth_bp.response(200, StatusSchema)
@public
def verify_email(args: dict[str, Any]) -> dict[str, str]:
    """Confirm an e-mail address: send the code from the confirmation e-mail as ``token``."""
    service.verify_email(args["token"])
    return {"status": "verified"}


@auth_bp.route("/login", methods=["POST"])
@limiter.limit(_limit("login_account"), key_func=_account_key, deduct_when=_failed)
@limiter.limit(_limit("login_client"), key_func=_client_key)
@auth_bp.arguments(s.LoginIn)
@auth_bp.response(200, s.TokenOut)
@public
def login(args: dict[str, Any]) -> dict[str, Any]:
    """Sign in; staff get tokens that only reach POST /auth/mfa until a TOTP code is given."""
    issued = service.login_api(args["email"], args["password"])
    return _tokens(issued)


@auth_bp.route("/mfa", methods=["POST"])
# per account (not per token: a new login is a new token) and per client, shared with the web MFA pages
@limiter.shared_limit(_limit("mfa_account"), scope="mfa_account", key_func=ratelimits.signed_in_account_key)
@limiter.shared_limit(_limit("mfa_client"), scope="mfa_client", key_func=_client_key)
@auth_bp.arguments(s.MfaIn)
@auth_bp.response(200, s.TokenOut)
@pre_mfa
def mfa(args: dict[str, Any]) -> dict[str, Any]:
    """Staff: complete sign-in with a TOTP code; returns new tokens with full access."""
    issued = service.complete_mfa_api(current_actor(), args["code"])
    return _tokens(issued)


@auth_bp.route("/refresh", methods=["POST"])
@limiter.limit(_limit("refresh_client"), key_func=_client_key)
@auth_bp.arguments(s.RefreshIn)
@auth_bp.response(200, s.TokenOut)
@public
def refresh(args: dict[str, Any]) -> dict[str, Any]:
    """Swap a refresh token for a new token pair; the old refresh token stops working."""
    issued = service.refresh(args["refresh_token"])
    return _tokens(issued)


@auth_bp.route("/logout", methods=["POST"])
@auth_bp.arguments(s.LogoutIn)
@auth_bp.response(204)
@pre_mfa
def logout(args: dict[str, Any]) -> None:
    """Sign out: this session's tokens (or every session's) stop working at once."""
    service.logout(current_actor(), everywhere=args["all_sessions"])


@auth_bp.route("/reauth", methods=["POST"])
@limiter.limit(_limit("login_client"), key_func=_client_key)
@auth_bp.arguments(s.ReauthIn)
@auth_bp.response(204)
def reauth(args: dict[str, Any]) -> None:
    """Confirm the password again (and a TOTP code for staff) before a sensitive action."""
    service.reauthenticate(current_actor(), args["password"], args.get("code"))


@auth_bp.route("/password-reset", methods=["POST"])
@limiter.limit(_limit("reset_account"), key_func=_account_key)
@limiter.limit(_limit("reset_client"), key_func=_client_key)
@auth_bp.arguments(s.ResetRequestIn)
@auth_bp.response(202, StatusSchema)
@public
def password_reset(args: dict[str, Any]) -> dict[str, str]:
    """Ask for a password-reset code by e-mail (same answer whether or not the account exists)."""
    service.request_password_reset(args["email"])
    return {"status": "reset_sent", "message": "If an account uses this e-mail, a reset code is on its way."}


@auth_bp.route("/password-reset/confirm", methods=["POST"])
@limiter.limit(_limit("reset_client"), key_func=_client_key)
@auth_bp.arguments(s.ResetConfirmIn)
@auth_bp.response(200, StatusSchema)
@public
def password_reset_confirm(args: dict[str, Any]) -> dict[str, str]:
    """Set a new password with the e-mailed single-use code (as ``token``); every session is signed out."""
    service.confirm_password_reset(args["token"], args["new_password"])
    return {"status": "password_changed"}


# ---- /me ---------------------------------------------------------------------------------------


@me_bp.route("")
class Me(MethodView):
    @me_bp.response(200, s.MeOut)
    def get(self) -> Any:
        """Read your own account."""
        return current_actor().user

    @me_bp.arguments(s.MePatchIn)
    @me_bp.response(200, s.MeOut)
    def patch(self, args: dict[str, Any]) -> Any:
        """Correct your account data (e-mail and phone changes need a recent sign-in)."""
        user = service.update_profile(current_actor(), args)
        return user


@me_bp.route("/password", methods=["POST"])
@me_bp.arguments(s.PasswordChangeIn)
@me_bp.response(204)
def change_password(args: dict[str, Any]) -> None:
    """Change your password; your other sessions are signed out."""
    service.change_password(current_actor(), args["current_password"], args["new_password"])


@me_bp.route("/consents")
class Consents(MethodView):
    @me_bp.response(200, s.ConsentListOut)
    def get(self) -> dict[str, Any]:
        """Every consent you gave or withdrew, newest first."""
        return {"items": service.list_consents(current_actor().user)}

    @me_bp.arguments(s.ConsentIn)
    @me_bp.response(201, s.ConsentOut)
    @me_bp.alt_response(200, schema=s.ConsentOut, description="Already given for this text version")
    def post(self, args: dict[str, Any]) -> Any:
        """Give a consent for the current version of its text."""
        consent, created = service.give_consent(current_actor(), args["kind"], args["text_version"],
                                                args.get("device"))
        return consent, (201 if created else 200)


@me_bp.route("/consents/<string:kind>", methods=["DELETE"])
@me_bp.doc(parameters=[{"in": "path", "name": "kind", "required": True,
                        "schema": {"type": "string", "enum": [k.value for k in ConsentKind]}}])
@me_bp.response(204)
def withdraw_consent(kind: str) -> None:
    """Withdraw a consent; it takes effect at once."""
    try:
        consent_kind = ConsentKind(kind)
    except ValueError as exc:
        raise Unprocessable(details={"fields": {"kind": ["Unknown consent kind."]}}) from exc
    service.withdraw_consent(current_actor(), consent_kind)


@me_bp.route("/notification-preferences")
class Preferences(MethodView):
    @me_bp.response(200, s.PreferencesOut)
    def get(self) -> dict[str, bool]:
        """Your notification channels and marketing choice."""
        return service.preferences(current_actor().user)

    @me_bp.arguments(s.PreferencesIn)
    @me_bp.response(200, s.PreferencesOut)
    def patch(self, args: dict[str, bool]) -> dict[str, bool]:
        """Change notification channels or opt in/out of marketing (effective at once)."""
        prefs = service.update_preferences(current_actor(), args)
        return prefs


@me_bp.route("/notifications")
@me_bp.arguments(PageArgsSchema, location="query")
@me_bp.response(200, s.NotificationPageOut)
def list_notifications(args: dict[str, Any]) -> dict[str, Any]:
    """Your in-app notices, newest first (cursor pagination)."""
    after = decode_id_cursor("notifications", args["cursor"])
    user = current_actor().user
    return paginate("notifications", args["limit"],
                    lambda n: notifications.list_in_app(user, after_id=after, limit=n)).out()


@me_bp.route("/notifications/<string:notification_id>/read", methods=["POST"])
@me_bp.response(200, s.NotificationOut)
def read_notification(notification_id: str) -> Any:
    """Mark one in-app notice as read."""
    notice = notifications.mark_read(current_actor().user, notification_id)
    return notice


@legal_bp.route("/consent-texts")
@legal_bp.response(200, s.ConsentTextListOut)
@public
def consent_texts() -> dict[str, Any]:
    """The current text and version of every consent, to show before asking."""
    return {"items": [
        {"kind": t.kind, "version": t.version, "title": t.title, "text": t.text, "sha256": t.sha256,
         "required_for": t.required_for}
        for t in CURRENT_TEXTS.values()
    ]}
