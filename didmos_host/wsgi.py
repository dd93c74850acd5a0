"""WSGI entry point for servers other than `didmos serve`: ``gunicorn 'didmos_host.wsgi:app'``."""

from didmos_host.app import create_app

app = create_app()
