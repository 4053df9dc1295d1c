"""Parsing of blob digests and repository names as distribution accepts them."""

import re

from registry_p2p.errors import digest_invalid, name_invalid

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
