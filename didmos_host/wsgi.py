"""WSGI entry point for servers other than `didmos serve`: ``gunicorn 'didmos_host.wsgi:app'``."""

from didmos_host.app import create_app
from didmos_host.central import live_app

app = live_app(create_app())  # follows the central settings, when central.url is set
