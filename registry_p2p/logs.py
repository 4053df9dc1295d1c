"""Logging setup shared by the sidecar, the seeder and the agent.

Each log line carries the id of the HTTP request being served (``-`` outside
requests); the same id is returned to the client in ``X-Request-Id``. Lines
about one blob add ``repository=`` and ``digest=`` fields, so that every
line of a pull can be found by its digest. No log line includes request
headers or query strings, so credentials sent in them do not reach the log.
"""

import contextvars
import logging
import os
import uuid

REQUEST_ID_HEADER = "X-Request-Id"

_request_id = contextvars.ContextVar("request_id", default="-")
_fields = contextvars.ContextVar("fields", default="")


class _ContextFilter(logging.Filter):
    def filter(self, record):
        record.request_id = _request_id.get()
        record.fields = _fields.get()
        return True


def stderr_is_journal():
    """Return whether stderr is connected to journald, which stamps each line itself.

    systemd sets JOURNAL_STREAM to the device and inode of the stream it
    connects, so a process started by a service but writing elsewhere is not
    mistaken for one writing to the journal.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(2)
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def setup(level="info", process_name="registry-p2p"):
    """Send logs to stderr, one line per event, with level, process name and request id.

    Under journald the timestamp is left out, because the journal records one.
    """
    timestamp = "" if stderr_is_journal() else "%(asctime)s "
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(logging.Formatter(
        f"{timestamp}%(levelname)s {process_name}[%(process)d] %(name)s "
        f"[%(request_id)s%(fields)s] %(message)s"))

    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())

    # urllib3 logs every retry at WARNING with the URL, which is enough;
    # its DEBUG lines would repeat each request.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))


def new_request_id(incoming=None):
    """Start a request: adopt a sane incoming id or create one, and return it.

    The blob fields of an earlier request on the same thread are cleared.
    """
    if incoming and len(incoming) <= 64 and incoming.replace("-", "").isalnum():
        request_id = incoming
    else:
        request_id = uuid.uuid4().hex[:16]
    _request_id.set(request_id)
    _fields.set("")

    return request_id


def set_blob(repository=None, digest=None):
    """Add the repository and digest that the following log lines are about."""
    parts = [f"repository={printable(repository)}" if repository else "",
             f"digest={printable(digest)}" if digest else ""]
    _fields.set("".join(" " + part for part in parts if part))


def printable(text, limit=300):
    """Return client-supplied ``text`` for a log line: control characters escaped, cut at ``limit``.

    A request path may decode to a newline, which would otherwise start a
    forged log line.
    """
    escaped = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text[:limit])

    return escaped + ("..." if len(text) > limit else "")


def clear_request_id():
    """Mark log lines as outside any request, for work between requests."""
    _request_id.set("-")
    _fields.set("")


def current_request_id():
    return _request_id.get()
