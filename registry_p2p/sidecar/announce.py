"""The tracker's HTTP endpoint, ``GET /announce``, served in front of the Flask app.

Flask's request context, routing, hooks and response object cost more CPU
per announce than the tracker's own work in the seeder. Announces are the
most frequent request a sidecar gets (every peer of every swarm, once per
``tracker.interval``), so this WSGI middleware serves GET and HEAD of
``/announce`` itself and passes every other request to Flask. It keeps what
the Flask app adds to each response: the request id in ``X-Request-Id``
and in log lines, and registry-style errors.
"""

import logging

from registry_p2p import logs
from registry_p2p.errors import P2PError, unavailable
from registry_p2p.webapp import error_response

log = logging.getLogger(__name__)

ANNOUNCE_PATH = "/announce"
ANNOUNCE_METHODS = ("GET", "HEAD")
# The Content-Type that Flask sent for the tracker's replies.
CONTENT_TYPE = "text/plain; charset=utf-8"


class AnnounceEndpoint:
    """WSGI middleware: GET and HEAD /announce go to the seeder, other requests to ``app``.

    The raw query string goes to the seeder undecoded, because info_hash
    and peer_id are arbitrary bytes. The seeder returns the bencoded reply,
    a ``failure reason`` included.
    """

    def __init__(self, app, seeder):
        self.app = app
        self.seeder = seeder

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") != ANNOUNCE_PATH or method not in ANNOUNCE_METHODS:
            return self.app(environ, start_response)

        request_id = logs.new_request_id(environ.get("HTTP_X_REQUEST_ID"))
        try:
            reply = self.seeder.call("announce", query=environ.get("QUERY_STRING", ""),
                                     remote_addr=environ.get("REMOTE_ADDR"))
        except P2PError as exc:
            log.error("tracker unavailable: %s", exc)
            response = error_response(unavailable("tracker unavailable"))
            response.headers[logs.REQUEST_ID_HEADER] = request_id
            return response(environ, start_response)

        start_response("200 OK", [("Content-Type", CONTENT_TYPE),
                                  ("Content-Length", str(len(reply))),
                                  (logs.REQUEST_ID_HEADER, request_id)])

        return [b""] if method == "HEAD" else [reply]
