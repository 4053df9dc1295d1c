"""Run a Flask app under gunicorn from a registry-p2p config (no gunicorn.conf needed)."""

import logging

from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)


class GunicornServer(BaseApplication):
    """Gunicorn with options given in code and an app factory called in each worker."""

    def __init__(self, app_factory, options, hooks=None):
        self._app_factory = app_factory
        self._options = options
        self._hooks = hooks or {}
        super().__init__()

    def load_config(self):
        for key, value in {**self._options, **self._hooks}.items():
            self.cfg.set(key, value)

    def load(self):
        return self._app_factory()


def gunicorn_options(listen, workers, threads, log_level):
    host, port = listen
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    return {
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "worker_class": "registry_p2p.worker.PlainHTTPThreadWorker",
        # Blob responses stream for minutes; the gthread worker's heartbeat
        # does not depend on request duration, so this only bounds a hung
        # worker.
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 75,
        "loglevel": log_level,
        "accesslog": "-",
        "access_log_format": '%(h)s "%(r)s" %(s)s %(B)s %(D)sus rid=%({x-request-id}o)s',
        "errorlog": "-",
        "preload_app": False,
    }
