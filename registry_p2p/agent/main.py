"""Start an agent: gunicorn with one worker process that owns the node's libtorrent session."""

import logging

from registry_p2p import httpclient
from registry_p2p.agent.app import create_app
from registry_p2p.agent.blobs import BlobService
from registry_p2p.agent.upstreams import Upstreams
from registry_p2p.blobcache import BlobCache
from registry_p2p.config import create_cache_dir
from registry_p2p.server import GunicornServer, gunicorn_options
from registry_p2p.session import TorrentSession

log = logging.getLogger(__name__)

_worker_session = []


def build_app(config):
    """Create the session, cache and app inside the worker process."""
    upstreams = Upstreams(config["registries"], config["default_registry"])
    cache = BlobCache(config["cache_dir"])
    cache.remove_leftovers()

    host, port = config["torrent.listen"]
    session = TorrentSession(host, port, role="A")
    session.start()
    _worker_session.append(session)

    blobs = BlobService(config, session, cache, httpclient.new_session(config["threads"]),
                        upstreams)
    blobs.reseed_cache()

    return create_app(config, upstreams, blobs, session)


def _stop_session(_arbiter, _worker):
    for session in _worker_session:
        session.stop()


def run(config):
    create_cache_dir(config["cache_dir"])
    # Validate the registries before forking, so a bad config fails at once.
    Upstreams(config["registries"], config["default_registry"])
    log.info("agent serving on %s:%d", *config["listen"])

    # One worker: the node has one libtorrent session and one cache owner.
    options = gunicorn_options(config["listen"], 1, config["threads"], config["log_level"])
    GunicornServer(lambda: build_app(config), options, hooks={"worker_exit": _stop_session}).run()
