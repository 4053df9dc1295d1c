"""Unit tests of registry_p2p.storage.filesystem on a tree laid out as distribution 2.8 writes it."""

import hashlib

import pytest

from registry_p2p import config
from registry_p2p.errors import BlobNotFound, StorageError
from registry_p2p.storage import open_driver
from registry_p2p.storage.filesystem import FilesystemDriver

BLOB = b"layer bytes\n" * 1000
HEX = hashlib.sha256(BLOB).hexdigest()
MISSING_HEX = "0" * 64
REPOSITORY = "library/app"


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


@pytest.fixture
def root(tmp_path):
    """A registry root directory holding one blob linked from library/app."""
    v2 = tmp_path / "docker" / "registry" / "v2"
    write(v2 / "blobs" / "sha256" / HEX[:2] / HEX / "data", BLOB)
    write(v2 / "repositories" / "library" / "app" / "_layers" / "sha256" / HEX / "link",
          f"sha256:{HEX}".encode())
    return tmp_path


@pytest.fixture
def driver(root):
    return FilesystemDriver(root)


def link_path(root, repository, hex_digest):
    return (root / "docker" / "registry" / "v2" / "repositories" / repository
            / "_layers" / "sha256" / hex_digest / "link")


def test_stat(driver):
    assert driver.stat(HEX) == len(BLOB)


def test_open_reads_blob(driver):
    with driver.open(HEX) as blob:
        assert blob.read() == BLOB


def test_open_at_start(driver):
    with driver.open(HEX) as blob:
        assert blob.tell() == 0


def test_is_linked(driver):
    assert driver.is_linked(REPOSITORY, HEX)


def test_is_linked_link_with_newline(driver, root):
    write(link_path(root, "team/app", HEX), f"sha256:{HEX}\n".encode())

    assert driver.is_linked("team/app", HEX)


def test_is_linked_other_repository(driver):
    assert not driver.is_linked("library/other", HEX)


def test_is_linked_repository_prefix(driver):
    assert not driver.is_linked("library", HEX)


def test_is_linked_other_digest(driver):
    assert not driver.is_linked(REPOSITORY, MISSING_HEX)


def test_is_linked_link_directory_without_file(driver, root):
    link_path(root, "team/app", HEX).parent.mkdir(parents=True)

    assert not driver.is_linked("team/app", HEX)


@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(f"sha256:{MISSING_HEX}".encode(), id="other-digest"),
    pytest.param(HEX.encode(), id="without-algorithm"),
    pytest.param(f"sha256:{HEX[:-1]}".encode(), id="truncated"),
    pytest.param(f"sha256:{HEX}x".encode(), id="extra-byte"),
])
def test_is_linked_wrong_content(driver, root, content):
    write(link_path(root, "team/app", HEX), content)

    assert not driver.is_linked("team/app", HEX)


def test_is_linked_link_is_directory(driver, root):
    link_path(root, "team/app", HEX).mkdir(parents=True)

    with pytest.raises(StorageError):
        driver.is_linked("team/app", HEX)


def test_stat_missing_blob(driver):
    with pytest.raises(BlobNotFound):
        driver.stat(MISSING_HEX)


def test_open_missing_blob(driver):
    with pytest.raises(BlobNotFound):
        driver.open(MISSING_HEX)


def test_missing_root(tmp_path):
    driver = FilesystemDriver(tmp_path / "absent")

    with pytest.raises(BlobNotFound):
        driver.stat(HEX)


def test_open_data_is_directory(tmp_path):
    data = tmp_path / "docker" / "registry" / "v2" / "blobs" / "sha256" / HEX[:2] / HEX / "data"
    data.mkdir(parents=True)
    driver = FilesystemDriver(tmp_path)

    with pytest.raises(StorageError) as caught:
        driver.open(HEX)

    assert caught.type is StorageError


def test_from_config(root):
    loaded = config.load(config.SIDECAR_OPTIONS,
                         text=f'[storage.filesystem]\nrootdirectory = "{root}"\n')

    assert open_driver(loaded).stat(HEX) == len(BLOB)
