"""CPU times from /proc/stat and the measure() context manager."""

import os

import pytest

from registry_p2p.bench import measure

PROC_STAT = """\
cpu  100 5 50 800 20 3 2 10 7 0
cpu0 50 2 25 400 10 1 1 5 3 0
cpu1 50 3 25 400 10 2 1 5 4 0
intr 12345
"""


def test_parse_proc_stat_counts_steal_as_busy():
    times = measure.parse_proc_stat(PROC_STAT)

    assert times.total == 100 + 5 + 50 + 800 + 20 + 3 + 2 + 10
    assert times.busy == 100 + 5 + 50 + 3 + 2 + 10


def test_parse_proc_stat_without_cpu_line():
    with pytest.raises(ValueError, match="no \"cpu\" line"):
        measure.parse_proc_stat("intr 1\n")


@pytest.mark.parametrize("busy, total, expected", [(90, 100, 0.9), (0, 100, 0.0), (0, 0, 0.0)])
def test_busy_fraction(busy, total, expected):
    before = measure.CpuTimes(busy=1000, total=5000)
    after = measure.CpuTimes(busy=1000 + busy, total=5000 + total)

    assert measure.busy_fraction(before, after) == pytest.approx(expected)


def test_saturated_at_threshold():
    assert measure.Measurement(machine_cpu_busy=measure.SATURATED_BUSY_FRACTION).cpu_saturated
    assert not measure.Measurement(machine_cpu_busy=0.5).cpu_saturated


def test_other_cpu_seconds_not_negative():
    rounded_below = measure.Measurement(machine_cpu_seconds=1.0, bench_cpu_seconds=0.7,
                                        service_cpu_seconds=0.4)

    assert rounded_below.other_cpu_seconds == 0.0


def test_measure_fills_in_the_step():
    with measure.measure() as measurement:
        sum(range(200_000))

    assert measurement.seconds > 0
    assert 0.0 <= measurement.machine_cpu_busy <= 1.0
    assert measurement.bench_cpu_seconds >= 0
    assert measurement.max_rss_bytes > 0
    assert measurement.rss_at_start_bytes > 0
    assert measurement.peak_rss_bytes >= measurement.rss_at_start_bytes


def test_process_cpu_seconds_of_own_process():
    sum(range(200_000))

    assert measure.process_cpu_seconds(os.getpid()) > 0
