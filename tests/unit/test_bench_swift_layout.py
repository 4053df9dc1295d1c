"""Pure parts of the swift benchmark: the registry's DLO layout, checks and the Markdown block."""

import hashlib

import pytest

from registry_p2p.bench import swift
from registry_p2p.errors import DigestMismatch

MIB = 1024 * 1024


@pytest.mark.parametrize("size, segment_size, expected", [
    (1024 * MIB, 20 * MIB, [20 * MIB] * 51 + [4 * MIB]),
    (12 * 64 * 1024, 64 * 1024, [64 * 1024] * 12),
    (10, 20, [10]),
])
def test_segment_sizes_as_registry_writes(size, segment_size, expected):
    assert swift.segment_sizes(size, segment_size) == expected


def test_segment_names_sort_in_number_order():
    directory = swift.segments_path("registry")
    names = [swift.segment_name(directory, number) for number in (1, 2, 10, 100)]

    assert names == sorted(names)
    assert names[0] == f"{directory}/0000000000000001"


def test_segments_path_shape():
    prefix, segments, short, rest = swift.segments_path("registry").split("/")

    assert (prefix, segments) == ("registry", "segments")
    assert len(short) == 3
    assert len(rest) == 37
    assert swift.segments_path("registry") != swift.segments_path("registry")


def test_manifest_name_under_files():
    hex_digest = "ab" * 32

    assert swift.manifest_name("registry", hex_digest) == (
        f"registry/files/docker/registry/v2/blobs/sha256/ab/{hex_digest}/data")


@pytest.mark.parametrize("segments, expected", [(52, 41.0), (12, 1.0), (11, 0.0), (3, 0.0)])
def test_expected_plain_seconds_from_rate_limit(segments, expected):
    assert swift.expected_plain_seconds(segments, swift.DLO_DEFAULTS) == expected


def test_dlo_settings_default(tmp_path):
    conf = tmp_path / "proxy-server.conf"
    conf.write_text("[DEFAULT]\nbind_port = 8080\n[filter:dlo]\nuse = egg:swift#dlo\n"
                    "[app:proxy-server]\nuse = egg:swift#proxy\n")

    assert swift.read_dlo_settings(conf) == {"rate_limit_after_segment": 10,
                                             "rate_limit_segments_per_sec": 1}


def test_dlo_settings_overridden(tmp_path):
    conf = tmp_path / "proxy-server.conf"
    conf.write_text("[filter:dlo]\nuse = egg:swift#dlo\nrate_limit_after_segment = 50\n"
                    "[app:proxy-server]\nrate_limit_after_segment = 20\n"
                    "rate_limit_segments_per_sec = 5\n")

    assert swift.read_dlo_settings(conf) == {"rate_limit_after_segment": 50,
                                             "rate_limit_segments_per_sec": 5}


def test_random_segment_hashes_what_it_returns():
    sha256 = hashlib.sha256()
    body = swift._RandomSegment(3 * MIB + 5, sha256)

    chunks = list(iter(lambda: body.read(2 * MIB), b""))

    assert [len(chunk) for chunk in chunks] == [MIB, MIB, MIB, 5]
    assert sha256.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_digest_chunks():
    assert swift.digest_chunks([b"ab", b"", b"c"]) == (hashlib.sha256(b"abc").hexdigest(), 3)


def test_check_blob_accepts_match():
    swift.check_blob(swift.PLAIN, "ab" * 32, 10, "ab" * 32, 10)


def test_check_blob_rejects_wrong_length():
    with pytest.raises(DigestMismatch, match="plain GET returned 9 bytes"):
        swift.check_blob(swift.PLAIN, "ab" * 32, 9, "ab" * 32, 10)


def test_check_blob_rejects_wrong_digest():
    with pytest.raises(DigestMismatch, match=r"SwiftDriver.open\(\) returned bytes with sha256:cd"):
        swift.check_blob(swift.PARALLEL, "cd" * 32, 10, "ab" * 32, 10)


def test_render_tables(swift_record):
    lines = swift.render(swift_record).splitlines()

    assert "| repeat | first read | SwiftDriver.open() | plain GET | plain GET / open() | CPU busy >= 90% |" in lines
    assert "| 1 | SwiftDriver.open() | 5.00 s (215 MB/s) | 45.00 s (24 MB/s) | 9.00x | no |" in lines
    assert "| 2 | plain GET | 5.50 s (195 MB/s) | 44.00 s (24 MB/s) | 8.00x | yes |" in lines
    assert "| 2 | plain GET | 44.00 | 24 | 10% | 1.5 / 4.2 / 0.5 | 60 / 70 |" in lines
    assert "| 2 | SwiftDriver.open() | 5.50 | 195 | 95% | 1.5 / 4.2 / 0.5 | 60 / 160 |" in lines


def test_render_summary(swift_record):
    text = swift.render(swift_record)

    assert "as 52 segments of 20 MiB, written in 12.3 s" in text
    assert "take at least 41 s" in text
    assert "SwiftDriver.open() fetches 4 segments at a time" in text
    assert "Median of 2 repeats: SwiftDriver.open() 5.25 s, plain GET 44.50 s" in text
    assert "8.50 times as long (lowest ratio 8.00)" in text
    assert "at least 90% busy: 1 of 2." in text


def test_render_without_peak_rss(swift_record):
    swift_record["runs"][0]["reads"]["plain"]["peak_rss_bytes"] = None

    assert "| 1 | plain GET | 45.00 | 24 | 10% | 1.5 / 4.2 / 0.5 | 60 / – |" in swift.render(swift_record).splitlines()
