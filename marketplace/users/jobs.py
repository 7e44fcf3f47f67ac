"""Account housekeeping on the sweeper's clock."""

from __future__ import annotations

from flask import current_app

from marketplace import jobs
from marketplace.users import sessions


@jobs.periodic
def forget_retired_refresh_tokens() -> None:
    sessions.forget_retired_refresh_tokens(current_app.config["SETTINGS"])
