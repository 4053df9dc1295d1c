"""Flask plumbing shared by the sidecar and the agent."""

import logging
import re

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from registry_p2p import digest as digests
from registry_p2p import logs
from registry_p2p.errors import RegistryHTTPError

log = logging.getLogger(__name__)


HTTP_ERROR_CODES = {404: "NOT_FOUND", 405: "UNSUPPORTED", 416: "RANGE_INVALID"}

# Blob, manifest and torrent paths, whose repository and reference go into the log fields.
_OBJECT_PATH_RE = re.compile(
    r"/(?:v2|p2p/v1)/(?P<repository>.+)/(?:blobs|manifests)/(?P<reference>[^/]+)(?:/torrent)?\Z",
    re.DOTALL)

# Paths that monitoring polls; their successful requests are logged at DEBUG.
_QUIET_PREFIXES = ("/p2p/v1/stats", "/p2p/v1/status", "/metrics", "/healthz")


def error_response(error):
    """Render a RegistryHTTPError as the registry would render it."""
    response = Response(error.body(), status=error.status,
                        content_type="application/json; charset=utf-8")
    for name, value in error.headers.items():
        response.headers[name] = value

    return response


class _PathConverter(PathConverter):
    # werkzeug's path converter stops at a newline, so a request for
    # ".../blobs/sha256:<hex>%0A" would match no route and get a bare 404
    # instead of DIGEST_INVALID.
    regex = "[^/](?s:.*?)"


def create_flask_app(name):
    """Return a Flask app that tags requests with an id and renders project errors."""
    app = Flask(name)
    app.url_map.converters["path"] = _PathConverter

    # werkzeug would respond to "//" in a path with an HTML redirect to the
    # merged path. validate_api_path() rejects such paths in the registry's format.
    app.url_map.merge_slashes = False

    @app.before_request
    def start_request():
        logs.new_request_id(request.headers.get(logs.REQUEST_ID_HEADER))
        match = _OBJECT_PATH_RE.match(request.path)
        if match and match.group("reference") != "uploads":
            reference = match.group("reference")
            logs.set_blob(match.group("repository"),
                          reference if ":" in reference else None)

        digests.validate_api_path(request.path)

    @app.after_request
    def tag_response(response):
        response.headers.setdefault(logs.REQUEST_ID_HEADER, logs.current_request_id())
        if response.status_code < 400:
            quiet = request.path.startswith(_QUIET_PREFIXES)
            log.log(logging.DEBUG if quiet else logging.INFO, "%s %s -> %d%s", request.method,
                    logs.printable(request.path), response.status_code,
                    "" if response.content_length is None
                    else f" ({response.content_length} bytes)")

        return response

    @app.errorhandler(RegistryHTTPError)
    def registry_error(error):
        log.info("%s %s -> %d %s: %s", request.method, logs.printable(request.path),
                 error.status, error.code, error.detail or error.message)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error):
        # werkzeug's own errors: unknown path, wrong method, an unsatisfiable
        # Range (416, whose Content-Range header is kept), and so on.
        code = HTTP_ERROR_CODES.get(error.code, "UNSUPPORTED")
        headers = {name: value for name, value in error.get_headers()
                   if name.lower() != "content-type"}
        log.info("%s %s -> %d %s", request.method, logs.printable(request.path), error.code,
                 code)
        return error_response(RegistryHTTPError(error.code, code, error.name,
                                                detail=f"{request.method} {request.path}",
                                                headers=headers))

    @app.errorhandler(Exception)
    def unexpected(error):
        log.exception("%s %s failed", request.method, logs.printable(request.path))
        return error_response(RegistryHTTPError(500, "UNKNOWN", "internal error",
                                                detail=type(error).__name__))

    return app
