"""Flask plumbing shared by the sidecar and the agent."""

import logging

from flask import Flask, Response, request
from werkzeug.routing import PathConverter

from registry_p2p import logs
from registry_p2p.errors import RegistryHTTPError

log = logging.getLogger(__name__)


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

    @app.errorhandler(404)
    def not_found(_):
        return error_response(RegistryHTTPError(404, "NOT_FOUND", "no such endpoint",
                                                detail=request.path))

    @app.errorhandler(405)
    def method_not_allowed(_):
        return error_response(RegistryHTTPError(405, "UNSUPPORTED", "method not allowed",
                                                detail=f"{request.method} {request.path}"))

    @app.errorhandler(Exception)
    def unexpected(error):
        log.exception("%s %s failed", request.method, request.path)
        return error_response(RegistryHTTPError(500, "UNKNOWN", "internal error",
                                                detail=type(error).__name__))

    return app
