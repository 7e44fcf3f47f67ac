"""Structured JSON logs: one event per line, every value encoded (no log injection), no secrets.

Log records carry only what ``extra={"event": {...}}`` names plus the request id; request bodies,
headers, tokens and personal data are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from flask import g, has_request_context

# Paths that carry a single-use secret (signed image links): logged as "<prefix>/[redacted]". A test
# checks every URL rule with a ``token`` variable is covered (tests/test_access_log.py).
TOKEN_PATH_PREFIXES = ("/api/v1/images/", "/console/kyc/images/", "/console/agencies/images/",
                       "/api/v1/agency/handover-photos/", "/agency/handover-photos/")
# "/+" between segments: werkzeug merges repeated slashes (and redirects), so "//api/v1//images/x" is a link too
_TOKEN_PATHS = re.compile(
    "(" + "|".join("/+".join(re.escape(part) for part in p.split("/")) for p in TOKEN_PATH_PREFIXES) + r")[^/?#\s\"]+",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def redact_path(text: str) -> str:
    """Replace the secret segment of any token path inside ``text`` (a path, a request line, a URL).

    Percent-encoded text is decoded first: ``/api/v1/%69mages/<token>`` routes to the same link.
    """
    if "%" in text:
        decoded = unquote(text)
        if _TOKEN_PATHS.search(decoded):
            text = decoded
    return _TOKEN_PATHS.sub(lambda m: m.group(1) + REDACTED, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_path(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or _current_request_id()
        if request_id:
            payload["request_id"] = request_id
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            payload["event"] = event
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=True)


def _current_request_id() -> str | None:
    if has_request_context():
        return g.get("request_id")
    return None


def configure(level: str) -> None:
    root = logging.getLogger("marketplace")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = True
    # werkzeug's access log (the development server) prints full request lines: keep it terse, tokens out
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.WARNING)
    if not any(isinstance(f, RedactingFilter) for f in werkzeug.filters):
        werkzeug.addFilter(RedactingFilter())


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with token paths redacted (for loggers we do not format ourselves)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_path(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def security_event(action: str, outcome: str, **fields: Any) -> None:
    logging.getLogger("marketplace.security").info(
        action, extra={"event": {"action": action, "outcome": outcome, **fields}}
    )
