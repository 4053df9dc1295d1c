"""Requests that registry-p2p itself sends to a registry's API."""

import logging

import requests

from registry_p2p.errors import unavailable

log = logging.getLogger(__name__)


def blob_url(registry_url, repository, digest):
    """Return the URL of ``/v2/<repository>/blobs/<digest>`` under a registry's base URL."""
    return f"{registry_url.rstrip('/')}/v2/{repository}/blobs/{digest}"


def head_blob(http, registry_url, repository, digest, authorization, timeout):
    """Send ``HEAD /v2/<repository>/blobs/<digest>`` with the client's Authorization.

    This is how the agent and the sidecar ask the registry whether a client
    may read a blob. Returns the response, whatever its status; a connection
    failure raises RegistryHTTPError 503 UNAVAILABLE.

    A registry whose storage serves blobs itself (distribution's s3 and
    swift drivers, unless ``redirect.disable``) responds with a redirect to
    a URL signed for HEAD, which is followed for the size. requests drops
    the Authorization header when the redirect leaves the registry's host.
    """
    url = blob_url(registry_url, repository, digest)
    headers = {"Authorization": authorization} if authorization else {}
    try:
        return http.head(url, headers=headers, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        log.warning("registry unreachable for HEAD %s: %s", url, exc)
        raise unavailable(f"registry {registry_url} unreachable: {type(exc).__name__}") from None
