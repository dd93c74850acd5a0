"""``didmos serve``: the API under gunicorn, configured from the settings."""

from __future__ import annotations

from gunicorn.app.base import BaseApplication

from didmos_host import observability
from didmos_host.app import _build
from didmos_host.host import Host


class _Gunicorn(BaseApplication):
    def __init__(self, host: Host, options: dict):
        self.host = host
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from didmos_host.central import live_app

        return live_app(_build(self.host))  # follows the central settings, when central.url is set


def serve(*, bind_host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    """Load plugins and settings once (so bad settings fail before any worker forks), then serve."""
    host = Host.create()
    observability.configure_logging(host.settings, replace=True)  # gunicorn's loggers use it too
    api = host.settings.api
    with observability.shared_metrics():  # the workers' metrics, summed by every worker's /metrics
        _Gunicorn(
            host,
            {
                "bind": f"{bind_host or api.host}:{port or api.port}",
                "workers": workers or api.workers,
                "threads": api.threads,
                "worker_class": "gthread",
                # no gunicorn access log: didmos logs each request itself (didmos.access), with its route,
                # actor and request id
                "logger_class": observability.gunicorn_logger_class(),
                "child_exit": observability.worker_exited,
                "graceful_timeout": 10,
                # gunicorn's control socket sits at one fixed path per user; two instances would collide.
                "control_socket_disable": True,
            },
        ).run()
