"""Registry storage driver: read blobs through the registry's own HTTP API.

For storage that the sidecar cannot reach directly. The driver logs in with
``storage.registry.username`` and ``password`` (Basic auth, or a token from
the service that the registry's Bearer challenge names) and sends its
requests to the registry itself, so the registry's link check and access
control apply:

- ``is_linked``: ``HEAD /v2/<repository>/blobs/sha256:<hex>`` returns 200,
  or a redirect to the blob's storage;
- ``stat``: the Content-Length of that HEAD, after redirects;
- ``open``: a streamed GET, after redirects.

Redirects to another host, as from a registry that redirects to S3 or a
CDN, are followed without the Authorization header. requests drops it when
the host, port or scheme changes, except for an http-to-https upgrade on
the default ports of the same host.
"""

import json
import logging
import re
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from registry_p2p import httpclient
from registry_p2p.errors import BlobNotFound, ConfigError, RegistryAuthError, StorageError
from registry_p2p.registry_api import blob_url
from registry_p2p.registry_auth import RegistryAuth, pull_scope
from registry_p2p.storage.base import StorageDriver

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Bytes of an error body read to show the registry's error code.
ERROR_BODY_LIMIT = 4096

# A query string in a URL or in an exception message. Pre-signed storage
# URLs carry their signature there, so it is never logged.
_QUERY = re.compile(r"\?[^\s'\")]*")


def without_query(url):
    """Return ``url`` without its query string and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def describe_exception(exc):
    """Return an exception's type and message with query strings removed."""
    return f"{type(exc).__name__}: {_QUERY.sub('?...', str(exc))}"


class RegistryDriver(StorageDriver):
    name = "registry"
    needs_repository = True

    def __init__(self, registry_url, username="", password="", timeout=30.0, http=None):
        self.registry_url = registry_url.rstrip("/")
        self.username = username
        self.timeout = timeout
        self.http = http or httpclient.new_session()
        self.auth = RegistryAuth(self.http, username, password, timeout)

    @classmethod
    def from_config(cls, config):
        username = config["storage.registry.username"]
        if config["storage.registry.password"] and not username:
            raise ConfigError("storage.registry.password is set but storage.registry.username "
                              "is empty; set both, or neither for a registry without auth")

        return cls(config["storage.registry.url"] or config["registry_url"], username,
                   config["storage.registry.password"], timeout=config["upstream_timeout"],
                   http=httpclient.new_session(pool_size=config["threads"]))

    def stat(self, hex_digest, repository=None):
        response = self._request("HEAD", repository, hex_digest, follow_redirects=True)
        with response:
            self._check(response, "HEAD", repository, hex_digest)
            try:
                return int(response.headers["Content-Length"])
            except (KeyError, ValueError):
                raise self._failure(f"{self._where(response)} sent no valid Content-Length",
                                    repository, hex_digest) from None

    def is_linked(self, repository, hex_digest):
        # A redirect means the registry found the blob linked and sends the
        # client on to storage, so it is not followed here.
        response = self._request("HEAD", repository, hex_digest, follow_redirects=False)
        with response:
            if response.status_code == 404:
                return False
            if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                return True

            self._check(response, "HEAD", repository, hex_digest)

        return True

    def open(self, hex_digest, repository=None):
        response = self._request("GET", repository, hex_digest, follow_redirects=True,
                                 stream=True)
        try:
            self._check(response, "GET", repository, hex_digest)
        except StorageError:
            response.close()
            raise

        return _BlobReader(response, f"blob sha256:{hex_digest} in repository {repository} "
                                     f"from {self._where(response)}")

    def close(self):
        self.http.close()

    def _request(self, method, repository, hex_digest, follow_redirects, stream=False):
        """Send a request for the blob, and once more with a token after a Bearer challenge."""
        if repository is None:
            raise ValueError("the registry storage driver needs the repository of a blob")

        url = blob_url(self.registry_url, repository, f"sha256:{hex_digest}")
        scope = pull_scope(repository)
        response = self._send(method, url, self.auth.authorization(scope), follow_redirects,
                              stream, repository, hex_digest)
        if response.status_code != 401 or response.history:
            return response

        challenge = response.headers.get("WWW-Authenticate")
        response.close()
        try:
            authorization = self.auth.renew(challenge, scope)
        except RegistryAuthError as exc:
            if exc.rejected:
                raise self._rejected(str(exc), repository, hex_digest) from None
            raise self._failure(str(exc), repository, hex_digest) from None

        if authorization is None:
            return response

        return self._send(method, url, authorization, follow_redirects, stream, repository,
                          hex_digest)

    def _send(self, method, url, authorization, follow_redirects, stream, repository,
              hex_digest):
        headers = {"Authorization": authorization} if authorization else {}
        try:
            return self.http.request(method, url, headers=headers, timeout=self.timeout,
                                     allow_redirects=follow_redirects, stream=stream)
        except requests.RequestException as exc:
            target = exc.request.url if exc.request is not None else url
            raise self._failure(f"{method} {without_query(target)} failed: "
                                f"{describe_exception(exc)}", repository, hex_digest) from None

    def _check(self, response, method, repository, hex_digest):
        """Raise BlobNotFound or StorageError unless the response is 200."""
        status = response.status_code
        if status == 200:
            return

        where = self._where(response)
        if status == 404:
            raise BlobNotFound(f"blob sha256:{hex_digest} not found in repository {repository} "
                               f"at {where}")
        if status in (401, 403) and not response.history:
            raise self._rejected(f"HTTP {status} for {method} of the blob", repository,
                                 hex_digest)

        raise self._failure(f"{where} returned HTTP {status}{_error_code(response)} for "
                            f"{method} of the blob", repository, hex_digest)

    def _where(self, response):
        """Name the registry, or the storage that the registry redirected to."""
        if not response.history:
            return f"registry {self.registry_url}"

        return f"{without_query(response.url)}, where registry {self.registry_url} redirected"

    def _rejected(self, reason, repository, hex_digest):
        if self.username:
            message = (f"registry {self.registry_url} rejected the sidecar's storage.registry "
                       f"credentials (username {self.username!r}) for blob sha256:{hex_digest} "
                       f"in repository {repository}: {reason}. Set storage.registry.username "
                       f"and storage.registry.password to an account that may pull from "
                       f"every repository")
        else:
            message = (f"registry {self.registry_url} requires credentials for blob "
                       f"sha256:{hex_digest} in repository {repository}: {reason}. Set "
                       f"storage.registry.username and storage.registry.password")

        return StorageError(message)

    def _failure(self, reason, repository, hex_digest):
        return StorageError(f"registry storage {self.registry_url}: cannot read blob "
                            f"sha256:{hex_digest} in repository {repository}: {reason}")


def _error_code(response):
    """Return " (CODE: message)" from a registry error body, or ""."""
    if response.request.method == "HEAD":
        return ""

    try:
        body = response.raw.read(ERROR_BODY_LIMIT, decode_content=True)
        error = json.loads(body)["errors"][0]
        return f" ({error['code']}: {error['message']})"
    except (urllib3.exceptions.HTTPError, OSError, ValueError, KeyError, IndexError,
            TypeError) as exc:
        log.debug("no registry error code in the body of HTTP %d: %s", response.status_code,
                  type(exc).__name__)
        return ""


class _BlobReader:
    """A read-only binary file over a streamed response, with the bytes exactly as sent.

    Content-Encoding is not decoded, because the digest covers the stored
    bytes. A failed read raises StorageError.
    """

    def __init__(self, response, description):
        self._response = response
        self._description = description

    def read(self, size=-1):
        amount = None if size is None or size < 0 else size
        try:
            return self._response.raw.read(amount, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"reading {self._description} failed: "
                               f"{describe_exception(exc)}") from exc

    def readable(self):
        return True

    def close(self):
        self._response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
