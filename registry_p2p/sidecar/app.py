"""The sidecar's WSGI app: registry proxy, metainfo endpoint, tracker, health and stats."""

import logging
import re

from flask import Response, jsonify, request

from registry_p2p import httpclient, storage
from registry_p2p.blobcache import BlobCache
from registry_p2p.errors import P2PError, RegistryHTTPError, unavailable
from registry_p2p.metrics import CONTENT_TYPE_LATEST
from registry_p2p.proxy import pass_through, raw_target
from registry_p2p.webapp import create_flask_app
from registry_p2p.sidecar import notifications
from registry_p2p.sidecar.announce import AnnounceEndpoint
from registry_p2p.sidecar.ipc import MONITORING_REPLY_TIMEOUT, SeederClient
from registry_p2p.sidecar.origin import Origin
from registry_p2p.sidecar.seeder import tracker_urls
from registry_p2p.sidecar.sweeper import StorageSweeper

log = logging.getLogger(__name__)

BLOB_PATH_RE = re.compile(r"/v2/.+/blobs/sha256:[0-9a-f]{64}\Z")
PROXY_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def create_app(config):
    app = create_flask_app("registry-p2p-sidecar")
    http = httpclient.new_session(pool_size=config["threads"])
    registry_url = config["registry_url"]
    if config["registry_ca_bundle"]:
        httpclient.trust_ca_bundle(http, registry_url, config["registry_ca_bundle"],
                                   config["threads"])
    timeout = config["upstream_timeout"]
    seeder = SeederClient(config["cache_dir"])
    origin = Origin(
        registry_url=registry_url,
        http=http,
        timeout=timeout,
        driver=storage.open_driver(config),
        cache=BlobCache(config["cache_dir"]),
        seeder=seeder,
        trackers=tracker_urls(config),
    )
    events = notifications.Notifications(origin, config["notifications.preheat_min_size"])
    StorageSweeper(origin, config["cache_sweep_interval"]).start()

    def count_proxied_blob_bytes(sent):
        try:
            seeder.call("count", name="proxied_blob_bytes", value=sent)
        except P2PError as exc:
            log.warning("cannot count %d proxied blob bytes: %s", sent, exc)

    @app.route("/v2/", methods=PROXY_METHODS)
    @app.route("/v2/<path:_rest>", methods=PROXY_METHODS)
    def registry_proxy(_rest=""):
        url = registry_url + raw_target()
        forwarded = {
            "X-Forwarded-Host": request.host,
            "X-Forwarded-Proto": request.scheme,
            "X-Forwarded-For": request.remote_addr or "",
        }
        on_body_bytes = None
        if request.method == "GET" and BLOB_PATH_RE.match(request.path):
            on_body_bytes = count_proxied_blob_bytes

        return pass_through(http, url, timeout, forwarded, on_body_bytes)

    @app.get("/p2p/v1/<path:repository>/blobs/<digest>/torrent")
    def blob_torrent(repository, digest):
        try:
            metainfo = origin.metainfo(repository, digest, request.headers.get("Authorization"))
        except P2PError as exc:
            log.error("seeder unavailable for %s@%s: %s", repository, digest, exc)
            raise unavailable("seeder process unavailable") from None

        return Response(metainfo, content_type="application/x-bittorrent",
                        headers={"Docker-Content-Digest": digest})

    @app.post("/p2p/v1/notifications")
    def registry_notifications():
        secret = config["notifications.secret"]
        if not secret:
            raise RegistryHTTPError(404, "UNSUPPORTED", "notifications are off on this sidecar",
                                    detail="set notifications.secret to turn them on")
        notifications.check_secret(request.headers.get("Authorization"), secret)
        if request.mimetype not in (notifications.EVENTS_MEDIA_TYPE, "application/json"):
            raise RegistryHTTPError(415, "UNSUPPORTED", "unsupported media type",
                                    detail=f"expected {notifications.EVENTS_MEDIA_TYPE}")

        body = request.stream.read(notifications.MAX_ENVELOPE_BYTES + 1)
        if len(body) > notifications.MAX_ENVELOPE_BYTES:
            raise RegistryHTTPError(413, "SIZE_INVALID", "notification envelope too large",
                                    detail=f"at most {notifications.MAX_ENVELOPE_BYTES} bytes")
        accepted = notifications.parse_envelope(body)
        events.accept(accepted)

        return jsonify({"accepted": len(accepted)})

    @app.get("/p2p/v1/stats")
    def stats():
        try:
            return jsonify(seeder.call("stats", reply_timeout=MONITORING_REPLY_TIMEOUT))
        except P2PError as exc:
            raise unavailable(str(exc)) from None

    @app.get("/metrics")
    def metrics():
        # The seeder keeps the metrics of the whole sidecar (sidecar.metrics).
        try:
            return Response(seeder.call("metrics", reply_timeout=MONITORING_REPLY_TIMEOUT),
                            content_type=CONTENT_TYPE_LATEST)
        except P2PError as exc:
            log.error("metrics request to the seeder failed: %s", exc)
            raise unavailable(str(exc)) from None

    @app.get("/healthz")
    def healthz():
        try:
            seeder.call("ping", reply_timeout=MONITORING_REPLY_TIMEOUT)
        except P2PError as exc:
            log.error("health check: %s", exc)
            return jsonify({"status": "unhealthy", "seeder": str(exc)}), 503

        return jsonify({"status": "ok"})

    @app.get("/announce")
    def announce():
        # AnnounceEndpoint serves GET and HEAD before Flask routes them. The
        # route remains so that other methods get Flask's 405 with an Allow
        # header.
        raise RuntimeError("GET /announce reached Flask: AnnounceEndpoint must wrap app.wsgi_app")

    app.wsgi_app = AnnounceEndpoint(app.wsgi_app, seeder)

    return app
