"""Logging setup shared by the sidecar, the seeder and the agent.

Each log line carries the id of the HTTP request being served (``-`` outside
requests); the same id is returned to the client in ``X-Request-Id``.
No log line includes request headers, so credentials sent in them do not
reach the log.
"""

import contextvars
import logging
import uuid

REQUEST_ID_HEADER = "X-Request-Id"

_request_id = contextvars.ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.request_id = _request_id.get()
        return True


def setup(level="info", process_name="registry-p2p"):
    """Send logs to stderr with timestamps, process name and request id."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s %(levelname)s {process_name}[%(process)d] %(name)s "
        f"[%(request_id)s] %(message)s"))

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())

    # urllib3 logs every retry at WARNING with the URL, which is enough;
    # its DEBUG lines would repeat each request.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))


def new_request_id(incoming=None):
    """Start a request: adopt a sane incoming id or create one, and return it."""
    if incoming and len(incoming) <= 64 and incoming.replace("-", "").isalnum():
        request_id = incoming
    else:
        request_id = uuid.uuid4().hex[:16]
    _request_id.set(request_id)

    return request_id


def clear_request_id():
    """Mark log lines as outside any request, for work between requests."""
    _request_id.set("-")


def current_request_id():
    return _request_id.get()
