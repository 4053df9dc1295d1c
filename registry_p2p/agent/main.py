"""Start an agent: gunicorn with one worker process that owns the node's libtorrent session."""

import logging

from registry_p2p import httpclient, tls
from registry_p2p.agent import certificates
from registry_p2p.agent.app import create_app
from registry_p2p.agent.blobs import BlobService
from registry_p2p.agent.connect import ConnectHandler
from registry_p2p.agent.connect_policy import ConnectPolicy, registry_target
from registry_p2p.agent.upstreams import Upstreams
from registry_p2p.blobcache import BlobCache
from registry_p2p.config import create_cache_dir
from registry_p2p.errors import ConfigError
from registry_p2p.server import CONNECT_EXTENSION, GunicornServer, gunicorn_options
from registry_p2p.session import TorrentSession

log = logging.getLogger(__name__)

_worker_session = []


def build_connect_handler(config):
    """Return the agent's ConnectHandler; ConfigError if its CA is missing or does not fit."""
    ca_dir = config["proxy.ca_dir"]
    own_ports = (config["listen"][1], config["torrent.listen"][1])
    policy = ConnectPolicy(config["registries"], intercept=bool(ca_dir),
                           other_hosts=config["proxy.other_hosts"], own_ports=own_ports)
    leaf_contexts = None
    if ca_dir:
        ca = certificates.load_ca(ca_dir)
        for registry in policy.intercepted_registries():
            if not certificates.ca_permits(ca, registry_target(registry.name).host):
                raise ConfigError(
                    f"the CA in {ca_dir} has name constraints that exclude registry "
                    f"{registry.name}; recreate it for the current [[registries]] with: "
                    f"registry-p2p agent ca --force --dir {ca_dir} -c <this config>")
        leaf_contexts = certificates.LeafContexts(ca)

    return ConnectHandler(policy, leaf_contexts, config["proxy.idle_timeout"],
                          config["upstream_timeout"])


def new_http_session(config):
    """Return the HTTP session for registries and sidecars, trusting each registry's ca_bundle.

    A registry's ca_bundle verifies its url and the urls of its sidecars,
    which serve the same registry and usually get certificates from the
    same CA.
    """
    http = httpclient.new_session(config["threads"])
    for registry in config["registries"]:
        if not registry.ca_bundle:
            continue
        for url in (registry.url, *registry.sidecars):
            httpclient.trust_ca_bundle(http, url, registry.ca_bundle, config["threads"])

    return http


def build_app(config):
    """Create the session, cache and app inside the worker process."""
    upstreams = Upstreams(config["registries"], config["default_registry"])
    connect_handler = build_connect_handler(config)
    cache = BlobCache(config["cache_dir"])
    cache.remove_leftovers()

    host, port = config["torrent.listen"]
    session = TorrentSession(host, port, role="A", overrides=config["torrent.settings"])
    session.start()
    _worker_session.append(session)

    blobs = BlobService(config, session, cache, new_http_session(config), upstreams)
    blobs.reseed_cache()

    app = create_app(config, upstreams, blobs, session)
    app.extensions[CONNECT_EXTENSION] = connect_handler

    return app


def _stop_session(_arbiter, _worker):
    for session in _worker_session:
        session.stop()


def run(config):
    create_cache_dir(config["cache_dir"])
    # Validate the registries and the CA before forking, so a bad config
    # fails at once.
    Upstreams(config["registries"], config["default_registry"])
    handler = build_connect_handler(config)
    # The worker that gunicorn forks inherits SSL_CERT_FILE, which its
    # libtorrent session reads.
    tls.trust_for_https_trackers([registry.ca_bundle for registry in config["registries"]],
                                 config["cache_dir"])
    log.info("agent serving on %s:%d", *config["listen"])
    intercepted = [registry.name for registry in handler.policy.intercepted_registries()]
    if intercepted:
        log.info("intercepting CONNECT for %s with the CA in %s", ", ".join(intercepted),
                 config["proxy.ca_dir"])
    log.info("CONNECT to other hosts: %s", config["proxy.other_hosts"])

    # One worker: the node has one libtorrent session and one cache owner.
    options = gunicorn_options(config["listen"], 1, config["threads"], config["log_level"])
    GunicornServer(lambda: build_app(config), options, hooks={"worker_exit": _stop_session}).run()
