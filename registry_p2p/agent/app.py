"""The agent's WSGI app: registry mirror (/v2/, containerd ?ns=, path prefix) and plain HTTP proxy."""

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import Response, jsonify, request

from registry_p2p import digest as digests
from registry_p2p.agent.connect import tunnel_registry
from registry_p2p.agent.metrics import agent_registry
from registry_p2p.agent.upstreams import remove_first_segment
from registry_p2p.errors import RegistryHTTPError
from registry_p2p.metrics import exposition
from registry_p2p.proxy import pass_through, raw_target
from registry_p2p.server import CONNECT_EXTENSION
from registry_p2p.webapp import create_flask_app

log = logging.getLogger(__name__)

BLOB_PATH_RE = re.compile(r"/v2/(?P<repository>.+)/blobs/(?P<digest>[^/]+)\Z")
PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def _proxy_host():
    """Return the registry an intercepted tunnel leads to, the authority of an absolute-form request target, or None."""
    tunnel = tunnel_registry(request.environ)
    if tunnel is not None:
        return tunnel.name

    raw = request.environ.get("RAW_URI", "")
    if raw.startswith(("http://", "https://")):
        return urlsplit(raw).netloc

    return None


def upstream_target(prefixed=False):
    """Return the request's raw path and query without the agent's own ``ns`` parameter.

    With ``prefixed``, the first path segment after ``/v2/``, which names
    the registry, is removed too.
    """
    target = raw_target()
    path, separator, query = target.partition("?")
    if prefixed:
        path = remove_first_segment(path)
    if "ns=" not in query:
        return path + separator + query

    params = [(key, value) for key, value in parse_qsl(query, keep_blank_values=True)
              if key != "ns"]

    return path + (f"?{urlencode(params)}" if params else "")


def _session_torrents(session):
    """Return {"sha256:<hex>": hex infohash} of the torrents in the libtorrent session."""
    torrents = session.torrents().result(10)

    return {f"sha256:{name}": info_hash for info_hash, name in sorted(torrents.items())}


def create_app(config, upstreams, blobs, session):
    app = create_flask_app("registry-p2p-agent")
    http = blobs.http
    timeout = config["upstream_timeout"]
    metrics_registry = agent_registry(blobs.stats, session, blobs.cache, blobs.quota)

    @app.route("/v2/", methods=PROXY_METHODS)
    @app.route("/v2/<path:_rest>", methods=PROXY_METHODS)
    def registry_request(_rest=""):
        # Inside a tunnel the registry is the CONNECT's, and ?ns= is ignored.
        ns = None if tunnel_registry(request.environ) else request.args.get("ns")
        registry, prefixed = upstreams.route(ns, _proxy_host(), request.path)
        target = upstream_target(prefixed)
        path = remove_first_segment(request.path) if prefixed else request.path

        match = BLOB_PATH_RE.match(path)
        if match and match.group("digest") != "uploads" and request.method == "GET":
            repository = match.group("repository")
            digests.validate_repository(repository)
            hex_digest = digests.parse_digest(match.group("digest"))
            return blobs.get(registry, repository, match.group("digest"), hex_digest, target)

        return pass_through(http, registry.url + target, timeout)

    @app.before_request
    def reject_non_registry_proxying():
        # As an HTTP proxy the agent forwards registry API requests only.
        # The gunicorn worker serves the CONNECTs it accepts, so those that
        # reach the app are rejected, as are proxy requests and requests in
        # tunnels for other paths, the agent's own /healthz included.
        raw = request.environ.get("RAW_URI", "")
        if request.method == "CONNECT":
            client = f"{request.remote_addr}:{request.environ.get('REMOTE_PORT')}"
            handler = app.extensions.get(CONNECT_EXTENSION)
            if handler is not None:
                raise handler.rejection(raw, client)
            log.warning("rejected CONNECT %s from %s: the agent serves no CONNECT", raw, client)

        if request.method == "CONNECT" or (_proxy_host() is not None
                                           and not request.path.startswith("/v2")):
            raise RegistryHTTPError(
                403, "DENIED", "the agent forwards registry API requests only",
                detail=f"{request.method} {raw} is not a /v2/ request of a configured registry")

    @app.get("/p2p/v1/stats")
    def stats():
        served, fallback_reasons, recent_fallbacks = blobs.stats.events()
        cache_blobs, cache_bytes = blobs.cache.usage()

        return jsonify({**blobs.stats.snapshot(), **session.counters(),
                        "stream_readers": session.stream_readers(),
                        "served": served,
                        "fallback_reasons": fallback_reasons,
                        "recent_fallbacks": recent_fallbacks,
                        "cache_blobs": cache_blobs,
                        "cache_bytes": cache_bytes,
                        **blobs.quota.state(),
                        "torrents": _session_torrents(session)})

    @app.get("/metrics")
    def metrics():
        body, content_type = exposition(metrics_registry)
        return Response(body, content_type=content_type)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app
