"""gunicorn settings, read from the project directory (``make serve``, the README, tests and benches).

Only what must hold wherever gunicorn runs here; workers, threads and the bind address are given on the
command line. The access log redacts single-use link tokens in paths (issue 7 item 7).
"""

logger_class = "marketplace.accesslog.RedactingLogger"
