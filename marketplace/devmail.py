"""A local mail catcher for development: the outbox at ``/dev/mail``, readable without signing in.

With no SMTP server, e-mail (sign-up and reset codes included) is kept in the outbox, which otherwise only an
admin can read in the console. A newcomer running ``make run`` needs those codes, so this page lists them, but
only when ``DEV_MAILBOX`` is on (the default in development; refused in production) and only to a request
from this machine addressed to a loopback name. Anything else is a plain 404, as if the page did not exist.
"""

from __future__ import annotations

import ipaddress

from flask import Blueprint, abort, current_app, render_template, request

from marketplace.notifications import service as notifications
from marketplace.security import public

dev_mail_bp = Blueprint("dev_mail", __name__)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def mailbox_allowed() -> bool:
    settings = current_app.config["SETTINGS"]
    if settings.production or not settings.dev_mailbox:
        return False
    # the Host check keeps a web page on another site from reading this through DNS rebinding
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return _loopback(request.remote_addr) and host.lower() in LOOPBACK_HOSTS


@dev_mail_bp.get("/dev/mail")
@public
def mailbox() -> str:
    if not mailbox_allowed():
        abort(404)
    return render_template("public/dev_mail.html", title="Development mailbox",
                           messages=notifications.recent_emails(limit=50))
