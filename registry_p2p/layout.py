"""Paths of distribution 2.8's storage layout.

Every storage driver (filesystem, S3, Swift) stores the same relative
paths under its own root. These functions return them with "/" separators
and no leading slash.
"""

_V2 = "docker/registry/v2"


def blob_data_path(hex_digest):
    """Path of a blob's bytes: ``docker/registry/v2/blobs/sha256/<2 hex>/<hex>/data``."""
    return f"{_V2}/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"


def layer_link_path(repository, hex_digest):
    """Path of the link that makes a blob part of a repository.

    distribution writes it on upload and removes it on a blob delete; its
    content is the blob's digest.
    """
    return f"{_V2}/repositories/{repository}/_layers/sha256/{hex_digest}/link"
