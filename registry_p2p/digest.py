"""Parsing of blob digests and repository names as distribution accepts them."""

import re

from registry_p2p.errors import RegistryHTTPError, digest_invalid, name_invalid

# Only sha256 is accepted: it is what every registry computes, and the cache
# and torrent layouts are keyed by its hex form.
_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})\Z")

# Repository name grammar of distribution 2.8: NameRegexp in
# reference/regexp.go, which its handlers check with reference.WithName.
# A name is an optional host part such as "localhost:5000/" or
# "Host.example/", then path components of lowercase alphanumerics joined
# by separators and split by "/", at most 255 characters in all. The
# registry accepts names with the host part, so the proxy must accept them.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*\Z")
MAX_NAME_LENGTH = 255

# The repository part of an API path: everything before the last blobs,
# manifests, tags or referrers segment, as distribution's router reads it.
_API_NAME_RE = re.compile(r"/v2/(?P<name>.+)/(?:blobs|manifests|tags|referrers)/", re.DOTALL)


def parse_digest(value):
    """Return the hex part of a ``sha256:<hex>`` digest.

    Raises RegistryHTTPError (400 DIGEST_INVALID) for anything else.
    """
    match = _DIGEST_RE.match(value or "")
    if match is None:
        raise digest_invalid(value)

    return match.group(1)


def is_digest(value):
    return _DIGEST_RE.match(value or "") is not None


def validate_repository(name):
    """Raise RegistryHTTPError (400 NAME_INVALID) unless ``name`` is a valid repository."""
    if not name or len(name) > MAX_NAME_LENGTH or _NAME_RE.match(name) is None:
        raise name_invalid(name)


def validate_api_path(path):
    """Raise RegistryHTTPError (400 NAME_INVALID) for a /v2/ path that no registry would route.

    ``path`` is the decoded request path. Empty, "." and ".." segments are
    rejected before any proxying, because the registry would redirect to
    the cleaned path or resolve them itself, and so is a repository name
    outside distribution's grammar.
    """
    if not path.startswith("/v2/"):
        return

    segments = path[len("/v2/"):].split("/")
    if any(segment in ("", ".", "..") for segment in segments[:-1]) \
            or segments[-1] in (".", ".."):
        raise RegistryHTTPError(400, "NAME_INVALID", "invalid repository name",
                                detail=f"path {path!r} has an empty, '.' or '..' segment")

    match = _API_NAME_RE.match(path)
    if match is not None:
        validate_repository(match.group("name"))
