"""Wall time, CPU use and peak memory of one measured step, read from /proc and getrusage."""

import contextlib
import dataclasses
import logging
import os
import re
import resource
import time
from pathlib import Path

log = logging.getLogger(__name__)

# A step during which the machine's CPUs were busy at least this fraction of
# the time was limited by CPU, by this benchmark or by other processes.
SATURATED_BUSY_FRACTION = 0.9

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class CpuTimes:
    """Clock ticks summed over all CPUs since boot, from the "cpu" line of /proc/stat."""

    busy: int
    total: int


def percentile(sorted_values, fraction):
    """Return the nearest-rank percentile of ``sorted_values`` (ascending): the smallest value
    that at least ``fraction`` of the values do not exceed.

    Raises ValueError for an empty list or a fraction outside (0, 1].
    """
    if not sorted_values:
        raise ValueError("no values for a percentile")
    if not 0 < fraction <= 1:
        raise ValueError(f"invalid percentile fraction {fraction}: must be above 0 and at most 1")

    rank = -(-len(sorted_values) * fraction // 1)
    return sorted_values[int(rank) - 1]


def parse_proc_stat(text):
    """Return the CpuTimes in the text of /proc/stat.

    Idle and iowait ticks count as idle. Steal ticks, when a hypervisor runs
    something else on this machine's CPUs, count as busy. Guest ticks are
    left out because the kernel already counts them in user and nice.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:9]]
            idle = ticks[3] + ticks[4]
            return CpuTimes(busy=sum(ticks) - idle, total=sum(ticks))

    raise ValueError("no \"cpu\" line in /proc/stat")


def read_cpu_times():
    return parse_proc_stat(Path("/proc/stat").read_text())


def busy_fraction(before, after):
    """Return the fraction of CPU time that was busy between two CpuTimes, from 0 to 1."""
    total = after.total - before.total
    if total <= 0:
        return 0.0

    return (after.busy - before.busy) / total


def process_cpu_seconds(pid):
    """Return the user plus system CPU seconds of process ``pid``, or None if it has exited."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError as error:
        log.info("no CPU time for process %d: %s", pid, error)
        return None

    # The command name in brackets may contain spaces, so fields are counted
    # from its closing bracket: utime and stime are fields 14 and 15 of proc(5).
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def reset_peak_rss():
    """Reset this process's peak RSS (VmHWM) to its current RSS. Return False if the kernel rejects it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as error:
        log.warning("cannot reset the peak RSS through /proc/self/clear_refs: %s", error)
        return False

    return True


def _status_bytes(field):
    match = re.search(rf"^{field}:\s+(\d+) kB$", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024


def rss_bytes():
    """Return this process's resident set size (VmRSS in /proc/self/status) in bytes."""
    return _status_bytes("VmRSS")


def peak_rss_bytes():
    """Return this process's peak RSS (VmHWM in /proc/self/status) in bytes."""
    return _status_bytes("VmHWM")


def max_rss_bytes():
    """Return this process's peak RSS since it started, as getrusage reports it, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _own_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class Measurement:
    """Wall time, CPU use and peak RSS of one step, filled in by measure(). CPU seconds are summed over all CPUs."""

    seconds: float = 0.0
    machine_cpu_busy: float = 0.0
    machine_cpu_seconds: float = 0.0
    bench_cpu_seconds: float = 0.0
    service_cpu_seconds: float = 0.0
    # RSS at the start of the step, which includes memory that earlier steps
    # freed but the allocator kept.
    rss_at_start_bytes: int = 0
    # Peak RSS of this process during the step alone; None when the kernel
    # did not allow the reset at its start.
    peak_rss_bytes: int | None = None
    max_rss_bytes: int = 0

    @property
    def cpu_saturated(self):
        return self.machine_cpu_busy >= SATURATED_BUSY_FRACTION

    @property
    def other_cpu_seconds(self):
        """CPU seconds of processes other than this one and the services, such as other users' jobs."""
        return max(0.0, self.machine_cpu_seconds - self.bench_cpu_seconds - self.service_cpu_seconds)

    def as_record(self):
        return {
            "seconds": round(self.seconds, 3),
            "machine_cpu_busy": round(self.machine_cpu_busy, 3),
            "cpu_saturated": self.cpu_saturated,
            "machine_cpu_seconds": round(self.machine_cpu_seconds, 2),
            "bench_cpu_seconds": round(self.bench_cpu_seconds, 2),
            "service_cpu_seconds": round(self.service_cpu_seconds, 2),
            "other_cpu_seconds": round(self.other_cpu_seconds, 2),
            "rss_at_start_bytes": self.rss_at_start_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "max_rss_bytes": self.max_rss_bytes,
        }


def _services_cpu_seconds(pids):
    seconds = [process_cpu_seconds(pid) for pid in pids]
    return sum(value for value in seconds if value is not None)


@contextlib.contextmanager
def measure(service_pids=()):
    """Measure the block: wall time, CPU use of the machine, of this process and of ``service_pids``, peak RSS.

    Yields a Measurement that is filled in when the block ends without an
    exception.
    """
    measurement = Measurement()
    peak_reset = reset_peak_rss()
    measurement.rss_at_start_bytes = rss_bytes()
    cpu_before = read_cpu_times()
    own_before = _own_cpu_seconds()
    services_before = _services_cpu_seconds(service_pids)
    started = time.perf_counter()

    yield measurement

    measurement.seconds = time.perf_counter() - started
    cpu_after = read_cpu_times()
    measurement.machine_cpu_busy = busy_fraction(cpu_before, cpu_after)
    measurement.machine_cpu_seconds = (cpu_after.busy - cpu_before.busy) / CLOCK_TICKS
    measurement.bench_cpu_seconds = _own_cpu_seconds() - own_before
    measurement.service_cpu_seconds = _services_cpu_seconds(service_pids) - services_before
    measurement.peak_rss_bytes = peak_rss_bytes() if peak_reset else None
    measurement.max_rss_bytes = max_rss_bytes()
