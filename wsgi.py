"""Entry point for gunicorn and ``flask --app wsgi``: ``app = create_app()``."""

from marketplace import create_app

app = create_app()
