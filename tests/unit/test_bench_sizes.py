"""Sizes on the bench command line."""

import pytest

from registry_p2p.bench.sizes import format_size, parse_size


@pytest.mark.parametrize("text, expected", [
    ("1GiB", 1024 ** 3),
    ("20MiB", 20 * 1024 ** 2),
    ("64KiB", 64 * 1024),
    ("1TiB", 1024 ** 4),
    ("500MB", 500 * 1000 ** 2),
    ("2GB", 2 * 1000 ** 3),
    ("4096", 4096),
    ("4096B", 4096),
    ("1.5GiB", 3 * 512 * 1024 ** 2),
    ("1gib", 1024 ** 3),
    (" 20 MiB ", 20 * 1024 ** 2),
])
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "expected a number and a unit"),
    ("GiB", "expected a number and a unit"),
    ("-1GiB", "expected a number and a unit"),
    ("1 GiB 2", "expected a number and a unit"),
    ("1GiBs", "unknown unit 'GiBs'"),
    ("1G", "unknown unit 'G'"),
    ("0", "at least 1 byte"),
    ("0MiB", "at least 1 byte"),
    ("1.5", "not a whole number of bytes"),
    ("0.1KiB", "not a whole number of bytes"),
])
def test_parse_size_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size(text)


@pytest.mark.parametrize("size, expected", [
    (1024 ** 3, "1 GiB"),
    (20 * 1024 ** 2, "20 MiB"),
    (64 * 1024, "64 KiB"),
    (1536 * 1024 ** 2, "1536 MiB"),
    (1000, "1000 B"),
    (1, "1 B"),
])
def test_format_size_largest_unit(size, expected):
    assert format_size(size) == expected


def test_format_size_parses_back():
    for size in (1, 1000, 64 * 1024, 20 * 1024 ** 2 + 1, 1024 ** 3):
        assert parse_size(format_size(size).replace(" ", "")) == size
