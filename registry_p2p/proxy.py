"""Streaming pass-through of one HTTP request to an upstream registry.

Status, headers and body come back as the upstream sent them: bodies are
neither decoded nor re-encoded (a gzip body stays gzip), redirects are not
followed, and only hop-by-hop headers are dropped.
"""

import logging
from urllib.parse import quote, urlsplit

import requests
from flask import Response, request

from registry_p2p.errors import RegistryHTTPError
from registry_p2p.httpclient import end_to_end_headers

log = logging.getLogger(__name__)

STREAM_CHUNK = 256 * 1024

# Headers of the client's request that are not passed upstream: Host is
# set for the upstream URL, and Content-Length is recomputed by requests
# from the body it streams.
_DROPPED_REQUEST_HEADERS = frozenset({"host", "content-length"})


def raw_target():
    """Return the request's path and query exactly as the client sent them.

    gunicorn keeps the raw request-target in RAW_URI; PATH_INFO is
    percent-decoded and would change escaped bytes. For an absolute-form
    target (a proxy request), scheme and authority are dropped.
    """
    raw = request.environ.get("RAW_URI")
    if not raw:
        query = request.environ.get("QUERY_STRING", "")
        raw = quote(request.environ.get("PATH_INFO", "/")) + (f"?{query}" if query else "")

    if not raw.startswith("/"):
        parts = urlsplit(raw)
        raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    return raw


def upstream_request_headers(extra=None):
    """Return the current request's end-to-end headers, minus Host, plus ``extra``."""
    headers = {name: value for name, value in end_to_end_headers(request.headers)
               if name.lower() not in _DROPPED_REQUEST_HEADERS}
    if extra:
        headers.update(extra)

    return headers


def _request_body():
    """Return the request body as something requests can stream, or None."""
    if request.content_length:
        return request.stream

    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return iter(lambda: request.stream.read(STREAM_CHUNK), b"")

    return None


def pass_through(http, url, timeout, extra_headers=None, on_body_bytes=None):
    """Send the current Flask request to ``url`` and stream the answer back.

    ``on_body_bytes(count)`` is called once the body has been sent (or the
    client went away) with the bytes sent. Connection failures become
    registry-style 502 errors naming the upstream.
    """
    headers = upstream_request_headers(extra_headers)
    body = _request_body()
    if body is not None and request.content_length:
        headers["Content-Length"] = str(request.content_length)

    try:
        upstream = http.request(request.method, url, headers=headers, data=body,
                                stream=True, allow_redirects=False, timeout=timeout)
    except requests.RequestException as exc:
        log.warning("upstream %s %s failed: %s", request.method, url, exc)
        raise RegistryHTTPError(502, "UNAVAILABLE", "upstream registry unavailable",
                                detail=f"{request.method} {_without_query(url)}: "
                                       f"{type(exc).__name__}") from None

    return stream_response(upstream, on_body_bytes)


def stream_response(upstream, on_body_bytes=None):
    """Wrap an open ``requests`` response (stream=True) into a Flask Response."""
    def body():
        sent = 0
        try:
            if request_method != "HEAD":
                for chunk in upstream.raw.stream(STREAM_CHUNK, decode_content=False):
                    sent += len(chunk)
                    yield chunk
        except (requests.RequestException, OSError) as exc:
            # Too late for an error status: closing the connection early
            # lets the client see a short body.
            log.warning("upstream body from %s broke after %d bytes: %s",
                        _without_query(upstream.url), sent, exc)
        finally:
            upstream.close()
            if on_body_bytes is not None:
                on_body_bytes(sent)

    request_method = request.method
    response = Response(body(), status=upstream.status_code, direct_passthrough=True)
    response.headers.clear()
    for name, value in end_to_end_headers(upstream.headers):
        response.headers.add(name, value)

    return response


def _without_query(url):
    return url.split("?", 1)[0]
