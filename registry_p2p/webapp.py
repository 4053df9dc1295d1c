"""Flask plumbing shared by the sidecar and the agent."""

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from registry_p2p import logs
from registry_p2p.errors import RegistryHTTPError

log = logging.getLogger(__name__)


HTTP_ERROR_CODES = {404: "NOT_FOUND", 405: "UNSUPPORTED", 416: "RANGE_INVALID"}


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

    @app.before_request
    def start_request():
        logs.new_request_id(request.headers.get(logs.REQUEST_ID_HEADER))

    @app.after_request
    def tag_response(response):
        response.headers.setdefault(logs.REQUEST_ID_HEADER, logs.current_request_id())
        return response

    @app.errorhandler(RegistryHTTPError)
    def registry_error(error):
        log.info("%s %s -> %d %s: %s", request.method, request.path, error.status,
                 error.code, error.detail or error.message)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error):
        # werkzeug's own errors: unknown path, wrong method, an unsatisfiable
        # Range (416, whose Content-Range header is kept), and so on.
        code = HTTP_ERROR_CODES.get(error.code, "UNSUPPORTED")
        headers = {name: value for name, value in error.get_headers()
                   if name.lower() != "content-type"}
        log.info("%s %s -> %d %s", request.method, request.path, error.code, code)
        return error_response(RegistryHTTPError(error.code, code, error.name,
                                                detail=f"{request.method} {request.path}",
                                                headers=headers))

    @app.errorhandler(Exception)
    def unexpected(error):
        log.exception("%s %s failed", request.method, request.path)
        return error_response(RegistryHTTPError(500, "UNKNOWN", "internal error",
                                                detail=type(error).__name__))

    return app
