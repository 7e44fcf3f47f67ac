"""gunicorn's access log without secrets: single-use link tokens in paths, and credentials, redacted.

Enabled for every gunicorn started from the project directory by ``gunicorn.conf.py``
(``logger_class``), so ``make run``, the README's command, the tests and the benchmarks all log the same way.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from marketplace.logs import REDACTED, redact_path

_SECRET_HEADERS = ("{authorization}i", "{cookie}i", "{set-cookie}o", "{x-csrf-token}i")


class RedactingLogger(Logger):
    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if isinstance(value, str) and "/" in value:  # paths, request lines, referers, raw URIs
                atoms[key] = redact_path(value)
        for key in _SECRET_HEADERS:
            if key in atoms:
                atoms[key] = REDACTED
        return atoms
