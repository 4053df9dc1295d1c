"""Project exceptions and registry-style error bodies.

Every error that reaches an HTTP client is rendered the way the registry
renders its own (``{"errors": [{"code", "message", "detail"}]}``), so
docker, containerd and skopeo print it as they print registry errors.
"""

import json


class RegistryP2PError(Exception):
    """Base class of every error raised by registry-p2p."""


class ConfigError(RegistryP2PError):
    """A configuration file is missing, unreadable or has an invalid value."""


class StorageError(RegistryP2PError):
    """A storage driver could not read the registry's storage."""


class BlobNotFound(StorageError):
    """The blob, or the repository's link to it, does not exist in storage."""


class DigestMismatch(StorageError):
    """Bytes read for a blob do not hash to its digest or have the wrong size."""


class RegistryAuthError(RegistryP2PError):
    """A registry's token service rejected fixed credentials or sent no usable token.

    ``rejected`` is True when the service returned 401 or 403, which means
    that the credentials are wrong or lack access.
    """

    def __init__(self, message, rejected=False):
        super().__init__(message)
        self.rejected = rejected


class P2PError(RegistryP2PError):
    """A BitTorrent transfer failed; callers fall back to the registry.

    ``reason`` is one of FALLBACK_REASONS, the ``reason`` label of the
    agent's fallback metric, so the label has a small fixed set of values
    while the message carries the details.
    """

    def __init__(self, message, reason="other"):
        super().__init__(message)
        self.reason = reason


# Reasons for an agent's fallback to the registry. No sidecar returned a torrent, or
# a sidecar returned an invalid one. The download stopped making progress,
# or libtorrent reported an error. The downloaded bytes failed the sha256
# check, or a streamed piece could not be read. The cache could not hold the
# blob: it was over its limit with nothing left to evict, or its file system
# was full. Last come unexpected errors and anything else.
FALLBACK_REASONS = ("no_metainfo", "invalid_metainfo", "stalled", "torrent_error",
                    "digest_mismatch", "piece_read", "cache_full", "internal_error", "other")


class RegistryHTTPError(RegistryP2PError):
    """An error to return to an HTTP client in the registry's format.

    ``code`` is one of the distribution API error codes (BLOB_UNKNOWN,
    DIGEST_INVALID, NAME_INVALID, DENIED, UNAUTHORIZED, UNAVAILABLE, ...).
    """

    def __init__(self, status, code, message, detail=None, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})

    def body(self):
        """Return the JSON body as bytes."""
        error = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail

        return json.dumps({"errors": [error]}).encode() + b"\n"


def digest_invalid(value):
    return RegistryHTTPError(
        400, "DIGEST_INVALID", "provided digest did not match uploaded content",
        detail=f"invalid digest {value!r}: expected sha256:<64 lowercase hex digits>")


def name_invalid(value):
    return RegistryHTTPError(
        400, "NAME_INVALID", "invalid repository name",
        detail=f"invalid repository name {value!r}")


def blob_unknown(digest):
    return RegistryHTTPError(404, "BLOB_UNKNOWN", "blob unknown to registry", detail=digest)


def denied(detail):
    return RegistryHTTPError(403, "DENIED", "requested access to the resource is denied",
                             detail=detail)


def unavailable(detail):
    return RegistryHTTPError(503, "UNAVAILABLE", "service unavailable", detail=detail)
