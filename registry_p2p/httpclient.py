"""HTTP clients for registries and sidecars, with the one retry policy.

Retries use capped exponential backoff and happen only on connection
errors and on the statuses in RETRY_STATUSES, and only for idempotent
methods. Streaming bodies are never retried mid-transfer.
"""

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from registry_p2p import __version__

RETRY_STATUSES = (502, 503, 504)
RETRY_TOTAL = 3
RETRY_BACKOFF_FACTOR = 0.2
RETRY_BACKOFF_MAX = 5.0

# Hop-by-hop headers (RFC 9110 section 7.6.1) belong to one connection
# and are never forwarded by a proxy.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})


class _Retry(Retry):
    # A class attribute, because urllib3 1.26 (Debian bookworm) has no
    # backoff_max argument and Retry.new() copies only arguments.
    DEFAULT_BACKOFF_MAX = RETRY_BACKOFF_MAX


def retry_policy():
    return _Retry(
        total=RETRY_TOTAL,
        connect=RETRY_TOTAL,
        read=0,
        status=RETRY_TOTAL,
        backoff_factor=RETRY_BACKOFF_FACTOR,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,
        respect_retry_after_header=True,
    )


class _CABundleAdapter(HTTPAdapter):
    """An adapter that verifies TLS certificates against one CA bundle instead of the system's CAs."""

    def __init__(self, ca_bundle, **kwargs):
        self.ca_bundle = ca_bundle
        super().__init__(**kwargs)

    def send(self, request, verify=True, **kwargs):
        # Only the session default (True) is replaced; verify=False or
        # another bundle from a caller is kept.
        return super().send(request, verify=self.ca_bundle if verify is True else verify,
                            **kwargs)


def trust_ca_bundle(session, url, ca_bundle, pool_size=64):
    """Verify the TLS certificates of every URL under ``url`` against ``ca_bundle`` (PEM file)."""
    adapter = _CABundleAdapter(ca_bundle, max_retries=retry_policy(), pool_connections=16,
                               pool_maxsize=pool_size)
    session.mount(url.rstrip("/") + "/", adapter)


def new_session(pool_size=64):
    """Return a requests.Session with the retry policy on http and https.

    The session ignores proxy environment variables, because the agent and
    sidecar contact configured hosts directly.
    """
    session = requests.Session()
    session.trust_env = False
    session.headers["User-Agent"] = f"registry-p2p/{__version__}"
    adapter = HTTPAdapter(max_retries=retry_policy(), pool_connections=16, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)

    return session


def end_to_end_headers(headers):
    """Return (name, value) pairs of ``headers`` without hop-by-hop headers."""
    connection_tokens = {token.strip().lower()
                         for token in headers.get("Connection", "").split(",") if token.strip()}

    return [(name, value) for name, value in headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() not in connection_tokens]
