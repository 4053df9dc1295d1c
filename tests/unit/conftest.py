"""Fixtures shared by unit tests."""

import pytest

GIB = 1024 ** 3


def _read(method, seconds, busy, peak_rss_mib):
    return {
        "method": method,
        "seconds": seconds,
        "machine_cpu_busy": busy,
        "cpu_saturated": busy >= 0.9,
        "machine_cpu_seconds": 2 * busy * seconds,
        "bench_cpu_seconds": 1.5,
        "service_cpu_seconds": 4.25,
        "other_cpu_seconds": 0.5,
        "rss_at_start_bytes": 60 * 1024 * 1024,
        "peak_rss_bytes": peak_rss_mib * 1024 * 1024,
        "max_rss_bytes": 200 * 1024 * 1024,
        "mb_per_s": round(GIB / seconds / 1e6, 1),
        "sha256_verified": True,
    }


@pytest.fixture
def swift_record():
    """A record of `registry-p2p bench swift` with two repeats, as stored in benchmarks.json."""
    return {
        "scenario": "swift",
        "command": "registry-p2p bench swift --size 1GiB --segment-size 20MiB --repeat 2",
        "recorded_at": "2025-01-02T03:04:05+00:00",
        "source_revision": "0123456789abcdef0123456789abcdef01234567",
        "machine": {
            "cpu_model": "Example CPU",
            "nproc": 2,
            "cpu_count": 2,
            "virtual_machine": True,
            "memory_bytes": int(23.5 * GIB),
            "kernel": "6.1.0-18-amd64",
            "debian_version": "12.5",
        },
        "software": {
            "python": "3.11.2",
            "python_executable": "/usr/bin/python3",
            "python-swiftclient": "4.1.0",
            "deb:swift": "2.30.1-0+deb12u3",
        },
        "parameters": {
            "size_bytes": GIB,
            "segment_size_bytes": 20 * 1024 * 1024,
            "segment_count": 52,
            "repeat": 2,
            "read_chunk_bytes": 1024 * 1024,
            "segments_read_at_once": 4,
            "cpu_saturated_at": 0.9,
        },
        "dlo_settings": {"rate_limit_after_segment": 10, "rate_limit_segments_per_sec": 1},
        "expected_plain_seconds_min": 41.0,
        "upload_seconds": 12.34,
        "runs": [
            {
                "repeat": 1,
                "order": ["parallel", "plain"],
                "load_average_1min_before": 0.5,
                "reads": {"parallel": _read("parallel", 5.0, 0.8, 150),
                          "plain": _read("plain", 45.0, 0.1, 70)},
                "plain_over_parallel": 9.0,
                "cpu_saturated": False,
            },
            {
                "repeat": 2,
                "order": ["plain", "parallel"],
                "load_average_1min_before": 1.2,
                "reads": {"plain": _read("plain", 44.0, 0.1, 70),
                          "parallel": _read("parallel", 5.5, 0.95, 160)},
                "plain_over_parallel": 8.0,
                "cpu_saturated": True,
            },
        ],
        "summary": {
            "parallel_seconds_median": 5.25,
            "plain_seconds_median": 44.5,
            "plain_over_parallel_median": 8.5,
            "plain_over_parallel_min": 8.0,
            "cpu_saturated_runs": 1,
        },
    }
