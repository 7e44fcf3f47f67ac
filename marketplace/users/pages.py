"""The pages the customer e-mails link to: confirm an e-mail address, choose a new password.

Plain HTML with a script (``static/code-form.js``) that reads the code from the link's fragment, so the
code never reaches a server log, and sends it to the public API as ``token``. Nothing here reads or
writes data itself: the API routes do, with their own rate limits.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from marketplace.security import public

customer_pages_bp = Blueprint("customer_pages", __name__)


@customer_pages_bp.get("/confirm-email")
@public
def confirm_email() -> str:
    return render_template("public/confirm_email.html", title="Confirm your e-mail address")


@customer_pages_bp.get("/reset-password")
@public
def reset_password() -> str:
    return render_template("public/reset_password.html", title="Choose a new password")
