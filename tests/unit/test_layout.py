"""Unit tests of registry_p2p.layout against the paths distribution 2.8 writes."""

import pytest

from registry_p2p import layout

HEX = "ab" + "12" * 31
OTHER_HEX = "0f" + "e" * 62


@pytest.mark.parametrize("hex_digest, expected", [
    (HEX, f"docker/registry/v2/blobs/sha256/ab/{HEX}/data"),
    (OTHER_HEX, f"docker/registry/v2/blobs/sha256/0f/{OTHER_HEX}/data"),
])
def test_blob_data_path(hex_digest, expected):
    assert layout.blob_data_path(hex_digest) == expected


@pytest.mark.parametrize("repository, expected", [
    ("app", f"docker/registry/v2/repositories/app/_layers/sha256/{HEX}/link"),
    ("library/ubuntu",
     f"docker/registry/v2/repositories/library/ubuntu/_layers/sha256/{HEX}/link"),
    ("a/b/c", f"docker/registry/v2/repositories/a/b/c/_layers/sha256/{HEX}/link"),
])
def test_layer_link_path(repository, expected):
    assert layout.layer_link_path(repository, HEX) == expected


def test_paths_are_relative():
    assert not layout.blob_data_path(HEX).startswith("/")


def test_link_path_is_relative():
    assert not layout.layer_link_path("app", HEX).startswith("/")
