"""Streaming pass-through of one HTTP request to an upstream registry.

Status, headers and body come back as the upstream sent them: bodies are
neither decoded nor re-encoded (a gzip body stays gzip), redirects are not
followed, and only hop-by-hop headers are dropped.
"""

import errno
import hashlib
import logging
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
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


class _SizedBody:
    """A request body of known length.

    requests sends a file-like body of unknown length chunked, even next to
    an explicit Content-Length, and registries reject that. With a
    ``__len__``, requests sends the bytes as they are.
    """

    def __init__(self, stream, length):
        self._stream = stream
        self._length = length

    def __len__(self):
        return self._length

    def read(self, size=-1):
        return self._stream.read(size)


def _request_body():
    """Return the request body as something requests can stream, or None."""
    if request.content_length:
        return _SizedBody(request.stream, request.content_length)

    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return iter(lambda: request.stream.read(STREAM_CHUNK), b"")

    return None


def pass_through(http, url, timeout, extra_headers=None, on_body_bytes=None,
                 expected_digest=None):
    """Send the current Flask request to ``url`` and stream the response back.

    ``on_body_bytes(count)`` is called once the body has been sent (or the
    client went away) with the bytes sent. With ``expected_digest`` (hex
    sha256), a complete 200 body is hashed as it streams and its last chunk
    is withheld unless it matches. Connection failures become
    registry-style 502 errors naming the upstream.
    """
    headers = upstream_request_headers(extra_headers)
    body = _request_body()

    try:
        upstream = http.request(request.method, url, headers=headers, data=body,
                                stream=True, allow_redirects=False, timeout=timeout)
    except requests.RequestException as exc:
        log.warning("upstream %s %s failed: %s", request.method, url, exc)
        raise RegistryHTTPError(502, "UNAVAILABLE", "upstream registry unavailable",
                                detail=f"{request.method} {_without_query(url)}: "
                                       f"{type(exc).__name__}") from None

    if upstream.status_code != 200:
        expected_digest = None

    return stream_response(upstream, on_body_bytes, expected_digest)


class BodyDigestMismatch(Exception):
    """Error raised when a streamed blob does not hash to its digest, which drops the connection."""


class ShortUpstreamBody(ConnectionResetError):
    """Error raised when an upstream body breaks or ends before its Content-Length, which drops the connection.

    As a connection reset, gunicorn closes the client's connection and logs
    it at debug level only: this module has logged the reason already.
    """

    def __init__(self, url):
        super().__init__(errno.ECONNRESET, f"upstream body from {url} ended early")


def _declared_length(upstream):
    """Return the upstream response's Content-Length as an int, or None."""
    try:
        return int(upstream.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def stream_response(upstream, on_body_bytes=None, expected_digest=None):
    """Wrap an open ``requests`` response (stream=True) into a Flask Response.

    With ``expected_digest``, each chunk is sent only once the next one has
    arrived, and the final one only if the whole body hashes to the digest.
    Otherwise BodyDigestMismatch is raised inside the WSGI iterator, which
    makes the server drop the connection, so the client never receives a
    complete body with wrong bytes.

    A body that breaks, or ends before the upstream's Content-Length, raises
    ShortUpstreamBody there for the same reason: the registry (Go's
    net/http) closes the connection after a short body, for instance after
    the message of a 416, whose Content-Length is the blob's. Left open,
    the client's connection would wait for the missing bytes until the
    keep-alive timeout.
    """
    def chunks():
        return upstream.raw.stream(STREAM_CHUNK, decode_content=False)

    def verified(source):
        sha256 = hashlib.sha256()
        last_chunk = None
        for chunk in source:
            sha256.update(chunk)
            if last_chunk is not None:
                yield last_chunk
            last_chunk = chunk

        if sha256.hexdigest() != expected_digest:
            log.error("blob from %s hashes to sha256:%s, expected sha256:%s; dropping the "
                      "connection before its last bytes", _without_query(upstream.url),
                      sha256.hexdigest(), expected_digest)
            raise BodyDigestMismatch(expected_digest)
        if last_chunk is not None:
            yield last_chunk

    def body():
        sent = 0
        broken = False
        try:
            if request_method != "HEAD":
                source = chunks() if expected_digest is None else verified(chunks())
                for chunk in source:
                    sent += len(chunk)
                    yield chunk
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # Too late for an error status: the connection is dropped below,
            # so the client sees a short body.
            log.warning("upstream body from %s broke after %d bytes: %s",
                        _without_query(upstream.url), sent, exc)
            broken = True
        finally:
            upstream.close()
            if on_body_bytes is not None:
                on_body_bytes(sent)

        if broken:
            raise ShortUpstreamBody(_without_query(upstream.url))

        if expected_length is not None and sent < expected_length:
            # docker-registry does this after every 416, so only a short
            # success is worth a warning.
            level = logging.WARNING if upstream.status_code < 400 else logging.INFO
            log.log(level, "upstream body from %s (HTTP %d) ended after %d of its %d bytes; "
                    "dropping the client connection", _without_query(upstream.url),
                    upstream.status_code, sent, expected_length)
            raise ShortUpstreamBody(_without_query(upstream.url))

    request_method = request.method
    expected_length = None
    if request_method != "HEAD" and upstream.status_code not in (204, 304):
        expected_length = _declared_length(upstream)
    response = Response(body(), status=upstream.status_code, direct_passthrough=True)
    response.headers.clear()
    for name, value in end_to_end_headers(upstream.headers):
        response.headers.add(name, value)

    return response


def _without_query(url):
    return url.split("?", 1)[0]
