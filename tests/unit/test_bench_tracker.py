"""Percentiles, merged generator results and the Markdown block of the tracker scenario."""

import copy

import pytest

from registry_p2p.bench import measure, results, tracker, tracker_report


@pytest.mark.parametrize("fraction, expected", [
    (0.01, 1),
    (0.5, 50),
    (0.95, 95),
    (0.99, 99),
    (0.991, 100),
    (1.0, 100),
])
def test_percentile_nearest_rank(fraction, expected):
    assert measure.percentile(list(range(1, 101)), fraction) == expected


def test_percentile_single_value():
    assert measure.percentile([7], 0.99) == 7


def test_percentile_small_list_rounds_up():
    # 0.5 * 3 = 1.5, so the nearest rank is 2.
    assert measure.percentile([10, 20, 30], 0.5) == 20


def test_percentile_empty_raises():
    with pytest.raises(ValueError, match="no values"):
        measure.percentile([], 0.5)


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_percentile_invalid_fraction_raises(fraction):
    with pytest.raises(ValueError, match="invalid percentile fraction"):
        measure.percentile([1, 2], fraction)


def test_latency_summary_milliseconds():
    summary = tracker.latency_summary([4000, 1000, 3000, 2000])

    assert summary == {"count": 4, "mean_ms": 2.5, "p50_ms": 2.0, "p95_ms": 4.0, "p99_ms": 4.0,
                       "max_ms": 4.0}


def test_latency_summary_empty():
    assert tracker.latency_summary([]) == {"count": 0}


def generator_output(latencies, events, started, finished, errors=None, cpu=1.0):
    return {
        "connections": 2, "requests": len(latencies) + sum((errors or {}).values()),
        "started_monotonic": started, "finished_monotonic": finished, "cpu_seconds": cpu,
        "latencies_us": latencies, "events": events, "peers_returned": 10 * len(latencies),
        "errors": errors or {}, "error_samples": [f"sample {kind}" for kind in (errors or {})],
    }


def test_merge_spans_all_processes():
    merged = tracker.merge_generator_results([
        generator_output([1000, 2000], "sr", started=100.0, finished=101.0),
        generator_output([3000, 4000], "rc", started=100.5, finished=102.0, errors={"HTTP 503": 2}),
    ])

    assert merged["requests"] == 6
    assert merged["succeeded"] == 4
    assert merged["error_count"] == 2
    assert merged["errors"] == {"HTTP 503": 2}
    assert merged["seconds"] == 2.0
    assert merged["announces_per_s"] == 2.0
    assert merged["peers_per_reply_mean"] == 10.0
    assert merged["generator_cpu_seconds"] == 2.0


def test_merge_latencies_by_event():
    merged = tracker.merge_generator_results([
        generator_output([1000, 2000, 5000], "src", started=0.0, finished=1.0),
        generator_output([3000], "r", started=0.0, finished=1.0),
    ])

    assert merged["by_event"]["started"]["count"] == 1
    assert merged["by_event"]["started"]["max_ms"] == 1.0
    assert merged["by_event"]["regular"]["count"] == 2
    assert merged["by_event"]["regular"]["max_ms"] == 3.0
    assert merged["by_event"]["completed"]["max_ms"] == 5.0
    assert merged["latency"]["max_ms"] == 5.0


def test_merge_adds_error_kinds():
    merged = tracker.merge_generator_results([
        generator_output([], "", 0.0, 1.0, errors={"HTTP 503": 1, "TimeoutError": 2}),
        generator_output([], "", 0.0, 1.0, errors={"HTTP 503": 3}),
    ])

    assert merged["errors"] == {"HTTP 503": 4, "TimeoutError": 2}
    assert merged["announces_per_s"] == 0.0
    assert merged["latency"] == {"count": 0}


def test_split_connections_round_robin():
    assert tracker.split_connections(5, 2) == [[0, 2, 4], [1, 3]]


RECORD = {
    "scenario": "tracker",
    "command": "registry-p2p bench tracker --peers 10000 --swarms 100",
    "recorded_at": "2026-01-02T03:04:05+00:00",
    "source_revision": "0123456789abcdef0123456789abcdef01234567",
    "change": "Serve GET /announce in front of Flask",
    "machine": {"nproc": 2, "cpu_model": "Test CPU", "memory_bytes": 2 * 1024 ** 3},
    "software": {"python": "3.11.2"},
    "parameters": {
        "peers": 10000, "swarms": 100, "requests": 50000, "concurrency": 32, "processes": 2,
        "numwant": 50, "timeout": 10.0, "blob_size_bytes": 16384,
        "sidecar": {"workers": 4, "threads": 16, "worker_class": "gthread", "log_level": "info",
                    "tracker_interval": 30, "peer_ttl": 75},
        "targets": {"announces_per_s": 2000, "p99_ms": 50},
        "cpu_saturated_at": 0.9,
    },
    "setup": {"push_seconds": 1.9, "torrent_seconds": 0.66},
    "result": {
        "requests": 50000, "succeeded": 50000, "error_count": 0, "errors": {},
        "error_samples": [], "seconds": 19.877, "announces_per_s": 2515.5,
        "latency": {"count": 50000, "mean_ms": 12.49, "p50_ms": 10.12, "p95_ms": 29.84,
                    "p99_ms": 49.06, "max_ms": 263.09},
        "by_event": {
            "started": {"count": 10000, "p50_ms": 9.86, "p99_ms": 44.38, "max_ms": 263.09},
            "regular": {"count": 30032, "p50_ms": 10.74, "p99_ms": 51.4, "max_ms": 169.94},
            "completed": {"count": 9968, "p50_ms": 8.6, "p99_ms": 48.42, "max_ms": 95.36},
        },
        "peers_per_reply_mean": 44.9, "generator_cpu_seconds": 4.67,
    },
    "cpu": {
        "seconds": 19.936, "machine_cpu_busy": 0.948, "cpu_saturated": True,
        "machine_cpu_seconds": 37.61, "generator_cpu_seconds": 4.67, "gunicorn_cpu_seconds": 18.02,
        "seeder_cpu_seconds": 9.06, "bench_cpu_seconds": 0.02, "other_cpu_seconds": 5.84,
        "gunicorn_processes": 5, "load_average_1min_before": 3.32,
    },
    "tracker_state": {"swarms_with_peers": 100, "peers_min": 101, "peers_max": 101,
                      "peers_total": 10100, "rejected_announces": 0},
    "earlier_runs": [],
}


def test_render_figures_table():
    block = tracker.render(RECORD)

    assert "| 50,000 | 0 | 19.88 | 2,516 | 10.1 | 29.8 | 49.1 | 263.1 | 44.9 |" in block


def test_render_settings_and_load():
    block = tracker.render(RECORD)

    assert "4 gunicorn workers of 16 threads (gthread)" in block
    assert "50,000 announces for 10,000 peers (100 per swarm) over 32 keep-alive connections" in block
    assert "from 2 generator processes" in block


def test_render_cpu_split():
    block = tracker.render(RECORD)

    assert "| 3.32 | 95% | yes | 4.7 / 18.0 / 9.1 / 5.8 |" in block


def test_render_events():
    block = tracker.render(RECORD)

    assert "| regular (no event) | 30,032 | 10.7 | 51.4 | 169.9 |" in block


def test_render_targets_met():
    block = tracker.render(RECORD)

    assert "at least 2,000 announces/s: met (2,516)." in block
    assert "p99 under 50 ms: met (49.1 ms, 0.9 ms under)." in block


def test_render_flags_saturation():
    record = copy.deepcopy(RECORD)

    saturated = tracker.render(record)
    record["cpu"].update(cpu_saturated=False, machine_cpu_busy=0.5)
    not_saturated = tracker.render(record)

    assert "CPUs were at least 90% busy during the run" in saturated
    assert "CPUs were at least 90% busy" not in not_saturated


def test_render_targets_missed():
    record = copy.deepcopy(RECORD)
    record["result"]["announces_per_s"] = 1500.0
    record["result"]["latency"]["p99_ms"] = 75.0

    block = tracker.render(record)

    assert "missed, 1,500 is 25% short." in block
    assert "missed, 75.0 ms is 1.5 times the target." in block


def test_render_errors():
    record = copy.deepcopy(RECORD)
    record["result"].update(error_count=3, errors={"HTTP 503": 2, "TimeoutError": 1},
                            error_samples=["started: HTTP 503"])

    block = tracker.render(record)

    assert "Failed announces by kind: HTTP 503 2, TimeoutError 1." in block
    assert "`started: HTTP 503`" in block


def test_render_without_earlier_runs_has_no_history():
    assert "Runs of this scenario" not in tracker.render(RECORD)


def test_render_earlier_runs_oldest_first():
    earlier = copy.deepcopy(RECORD)
    earlier.update(source_revision="fedcba9876543210fedcba9876543210fedcba98+dirty",
                   change="Add the tracker benchmark scenario",
                   recorded_at="2026-01-01T00:00:00+00:00")
    earlier["result"]["announces_per_s"] = 788.0
    record = copy.deepcopy(RECORD)
    record["earlier_runs"] = [tracker_report.run_summary(earlier)]

    lines = tracker.render(record).splitlines()
    rows = [line for line in lines if line.startswith("| 2026-")]

    assert rows[0].startswith("| 2026-01-01 00:00 | fedcba9876+dirty | Add the tracker benchmark scenario "
                              "| 4 × 16 | 32 | 788 |")
    assert rows[0].endswith("| 0 | 3.32 | 95% | 4.7 / 18.0 / 9.1 |")
    assert rows[1].startswith("| 2026-01-02 03:04 | 0123456789 | Serve GET /announce in front of Flask")


def test_earlier_runs_keep_previous_record_last(tmp_path):
    path = tmp_path / "benchmarks.json"
    previous = copy.deepcopy(RECORD)
    previous["earlier_runs"] = [{"recorded_at": f"run {number}"}
                                for number in range(tracker.EARLIER_RUNS_KEPT)]
    results.save(path, {"format": results.FORMAT, "scenarios": {"tracker": previous}})

    earlier = tracker._earlier_runs(path)

    assert len(earlier) == tracker.EARLIER_RUNS_KEPT
    assert earlier[0] == {"recorded_at": "run 1"}
    assert earlier[-1] == tracker_report.run_summary(previous)


def test_earlier_runs_empty_without_record(tmp_path):
    assert tracker._earlier_runs(tmp_path / "missing.json") == []
