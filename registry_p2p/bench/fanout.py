"""``registry-p2p bench fanout``: N nodes pull one blob at once, over shaped links, with and without P2P.

The scenario builds a simulated LAN (registry_p2p/sandbox/cluster.py): one
registry host running docker-registry and the sidecar, and N agent hosts,
every link shaped to the same rate in both directions. Each run starts a new
sidecar and new agents with empty caches, then one client per agent host
GETs the blob through its agent (registry_p2p/bench/fetcher.py), as a
container runtime fetches a layer. Modes:

- ``direct``: agents configured without sidecars, so every agent streams
  the blob from the registry: the baseline without P2P.
- ``cold``: the sidecar has not seen the blob; the first torrent request
  fills its cache from storage.
- ``preheated``: the sidecar was asked for the torrent before the clients
  start, so it is seeding already.
- ``late``: as cold, but half of the clients start only when the first half
  has received half of their bytes.

Every time is also given as a multiple of the lower bound S/B, the time one
link needs to carry the blob once.
"""

import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from registry_p2p import layout
from registry_p2p.bench import BenchError, report, results, running
from registry_p2p.bench.fanout_report import plot, render  # noqa: F401 (the scenario's hooks)
from registry_p2p.bench.machine import describe_machine, software_versions, source_revision
from registry_p2p.bench.measure import (SATURATED_BUSY_FRACTION, busy_fraction, percentile,
                                        read_cpu_times)
from registry_p2p.sandbox.cluster import Cluster
from registry_p2p.sandbox.p2p import AgentService, SidecarService, python_environment
from registry_p2p.sandbox.process import require_binary
from registry_p2p.sandbox.registry import Registry

log = logging.getLogger(__name__)

TITLE = "Fan-out: N nodes pull one blob over shaped links"
MODES = ("direct", "cold", "preheated", "late")
REPOSITORY = "bench/fanout"
REGISTRY_NAME = "registry"
CHUNK = 1024 * 1024
MIB = 1024 * 1024
CPU_SAMPLE_SECONDS = 0.5
LINK_TRACE_SECONDS = 0.5
# Room for logs and the sidecar's copy next to the caches.
DISK_MARGIN = 512 * MIB


def lower_bound_seconds(size, rate_bits):
    """Return S/B: the seconds one link at ``rate_bits`` bits/s needs to carry ``size`` bytes."""
    return size * 8 / rate_bits


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named set of configuration changes under which runs happen.

    ``changes`` maps keys to values: ``sidecar.<table>.<key>`` and
    ``agent.<table>.<key>`` set a key of the sidecar's or the agents'
    config (such as ``sidecar.tracker.origin_fanout``), and any other key is
    a libtorrent setting for both, as in [torrent.settings].
    """

    label: str
    changes: tuple = ()

    def sections(self, role):
        """Return the config tables that this variant adds for ``role`` ("sidecar" or "agent")."""
        tables = {}
        for key, value in self.changes:
            head, _, rest = key.partition(".")
            if head in ("sidecar", "agent"):
                if head == role:
                    table, _, name = rest.rpartition(".")
                    tables.setdefault(table, {})[name] = value
            else:
                tables.setdefault("torrent.settings", {})[key] = value
        return tables

    def as_record(self):
        return {"label": self.label, "changes": dict(self.changes)}


DEFAULT_VARIANT = Variant("default")


def _setting_value(text):
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


def parse_variant(text):
    """Parse ``LABEL`` or ``LABEL:KEY=VALUE,KEY=VALUE`` into a Variant; VALUE is an integer, true/false or text."""
    label, _, rest = text.partition(":")
    if not label.strip():
        raise ValueError(f"variant {text!r} has no label; expected LABEL:KEY=VALUE,...")

    changes = []
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"variant {label!r}: expected KEY=VALUE, got {item!r}")
        if key.split(".")[0] in ("sidecar", "agent") and key.count(".") < 2:
            raise ValueError(f"variant {label!r}: {key!r} needs a table and a key, "
                             f"such as sidecar.tracker.origin_fanout")
        changes.append((key, _setting_value(value)))

    return Variant(label.strip(), tuple(changes))


def write_blob(storage_root, repository, size, seed=0):
    """Write ``size`` random bytes as a blob of ``repository`` in the registry's filesystem layout.

    Returns the blob's digest. The bytes go to a temporary file first and
    are moved into place once their sha256 is known. Then the repository's
    layer link is written, as the registry does on upload.
    """
    storage_root = Path(storage_root)
    generator = random.Random(seed)
    sha256 = hashlib.sha256()
    temporary = storage_root / "blob.tmp"
    temporary.parent.mkdir(parents=True, exist_ok=True)
    with open(temporary, "wb") as blob:
        remaining = size
        while remaining:
            chunk = generator.randbytes(min(CHUNK, remaining))
            sha256.update(chunk)
            blob.write(chunk)
            remaining -= len(chunk)

    hex_digest = sha256.hexdigest()
    data_path = storage_root / layout.blob_data_path(hex_digest)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temporary, data_path)
    link_path = storage_root / layout.layer_link_path(repository, hex_digest)
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.write_text(f"sha256:{hex_digest}")

    return f"sha256:{hex_digest}"


class Sampler:
    """Samples, every CPU_SAMPLE_SECONDS in a thread, the machine's CPU busy fraction and the
    anonymous memory of the largest process of each watched process group.

    Anonymous memory (RssAnon) is what a process allocated itself. Its RSS
    also counts pages of files it maps, such as libtorrent's mapped blob
    files, which the kernel can drop at any time.
    """

    def __init__(self, groups=None):
        self.samples = []
        self.groups = dict(groups or {})
        self.peak_anon = dict.fromkeys(self.groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._first = None
        self._last = None

    def __enter__(self):
        self._first = self._last = read_cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._last = read_cpu_times()

    def _run(self):
        previous = self._first
        while not self._stop.wait(CPU_SAMPLE_SECONDS):
            current = read_cpu_times()
            self.samples.append(busy_fraction(previous, current))
            previous = current
            for name, pgids in self.groups.items():
                largest = max((group_memory(pgid, "RssAnon:") for pgid in pgids), default=0)
                self.peak_anon[name] = max(self.peak_anon[name], largest)

    @property
    def busy(self):
        return busy_fraction(self._first, self._last)


class LinkTrace:
    """Samples, every LINK_TRACE_SECONDS in a thread, the byte counters of the registry
    host's link and of each agent host's link (``--trace-links``).

    Each sample is [seconds since start, [registry rx, tx], [agent0 rx, tx], ...].
    link_use() turns consecutive samples into rates.
    """

    def __init__(self, cluster, registry_host, agent_hosts):
        self.cluster = cluster
        self.hosts = [registry_host, *agent_hosts]
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-link-trace", daemon=True)
        self._started = None

    def __enter__(self):
        self._started = time.monotonic()
        self.samples.append(self._sample())
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.samples.append(self._sample())

    def _run(self):
        while not self._stop.wait(LINK_TRACE_SECONDS):
            self.samples.append(self._sample())

    def _sample(self):
        seconds = round(time.monotonic() - self._started, 3)
        return [seconds, *[list(self.cluster.counters(host)) for host in self.hosts]]

    def as_record(self, rate_bits):
        return {"rate_bits": rate_bits, "interval_seconds": LINK_TRACE_SECONDS,
                "hosts": ["registry"] + [f"agent{index}" for index in range(len(self.hosts) - 1)],
                "samples": self.samples}


def link_use(trace):
    """Return, per pair of consecutive samples of a LinkTrace record, what each link carried
    as a fraction of the link rate B.

    Each item is (seconds at the end of the interval, registry host out,
    [each agent in], [each agent out]).
    """
    bytes_per_second = trace["rate_bits"] / 8
    intervals = []
    for before, after in zip(trace["samples"], trace["samples"][1:]):
        elapsed = after[0] - before[0]
        if elapsed <= 0:
            continue
        fractions = [[(new - old) / elapsed / bytes_per_second for old, new in zip(first, second)]
                     for first, second in zip(before[1:], after[1:])]
        intervals.append((after[0], fractions[0][1],
                          [rx for rx, _ in fractions[1:]], [tx for _, tx in fractions[1:]]))

    return intervals


def group_memory(pgid, field):
    """Return the largest value of ``field`` (a /proc/<pid>/status line such as "VmHWM:"), in
    bytes, among the live processes of process group ``pgid``."""
    largest = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith(field):
                    largest = max(largest, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            continue

    return largest


_GET_SCRIPT = ("import sys, urllib.request\n"
               "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as response:\n"
               "    sys.stdout.buffer.write(response.read())\n")


def get_in_namespace(netns, url, timeout=60):
    """GET ``url`` from inside network namespace ``netns`` and return the body.

    Requests to a host's own services stay on that host's loopback, so they
    neither cross the shaped links nor depend on the management link.
    """
    argv = [require_binary("ip", "iproute2"), "netns", "exec", netns, sys.executable, "-c",
            _GET_SCRIPT, url, str(timeout)]
    result = subprocess.run(argv, capture_output=True, timeout=timeout + 30, check=False)
    if result.returncode != 0:
        raise BenchError(f"GET {url} in {netns} failed: "
                         f"{result.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    return result.stdout


class FanoutBench:
    """One cluster and one registry, on which the runs of the scenario happen one after another."""

    def __init__(self, size, rate_bits, workdir):
        self.size = size
        self.rate_bits = rate_bits
        self.workdir = Path(workdir)
        self.variant = DEFAULT_VARIANT
        self.cluster = Cluster(rate_bits)
        self.registry = None
        self.registry_host = None
        self.agent_hosts = []
        self.digest = None
        self.trace_links = False
        self._run_number = 0

    @property
    def lower_bound(self):
        return lower_bound_seconds(self.size, self.rate_bits)

    def prepare(self, agent_count):
        """Create the hosts, write the blob and start the registry (the cluster is already started)."""
        self.registry_host = self.cluster.add_host("registry")
        self.agent_hosts = [self.cluster.add_host(f"agent{index}") for index in range(agent_count)]
        registry_dir = self.workdir / "registry"
        self.registry = Registry(registry_dir, host=self.registry_host.address,
                                 netns=self.registry_host.netns)
        self.digest = write_blob(self.registry.root_directory, REPOSITORY, self.size)
        log.info("blob %s of %d bytes written", self.digest, self.size)

    def run(self, mode, agent_count):
        """Run one mode with ``agent_count`` agents; return its record."""
        if mode not in MODES:
            raise BenchError(f"unknown fan-out mode {mode!r}; known modes: {', '.join(MODES)}")

        self._run_number += 1
        run_dir = self.workdir / f"run{self._run_number}-{mode}-{agent_count}"
        hosts = self.agent_hosts[:agent_count]
        sidecar = None
        agents = []
        try:
            if mode != "direct":
                sidecar = SidecarService(run_dir / "sidecar", self.registry.url,
                                         self.registry.root_directory,
                                         host=self.registry_host.address,
                                         netns=self.registry_host.netns,
                                         sections=self.variant.sections("sidecar"))
                sidecar.start()
            agents = self._start_agents(run_dir, hosts, sidecar)
            if mode == "preheated":
                self._preheat(sidecar)
            record = self._measure(run_dir, mode, hosts, agents, sidecar)
        finally:
            for agent in agents:
                agent.stop()
            if sidecar is not None:
                sidecar.stop()
            shutil.rmtree(run_dir / "sidecar" / "cache", ignore_errors=True)
            for index in range(len(hosts)):
                shutil.rmtree(run_dir / f"agent{index}" / "cache", ignore_errors=True)

        return record

    def _start_agents(self, run_dir, hosts, sidecar):
        sidecars = [sidecar.url] if sidecar is not None else []
        agents = [AgentService(run_dir / f"agent{index}",
                               [{"name": REGISTRY_NAME, "url": self.registry.url,
                                 "sidecars": sidecars}],
                               host=host.address, netns=host.netns, stall_timeout=60,
                               sections=self.variant.sections("agent"))
                  for index, host in enumerate(hosts)]

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            started = [pool.submit(agent.start) for agent in agents]
            errors = [future.exception() for future in started]
        failed = [error for error in errors if error is not None]
        if failed:
            for agent in agents:
                agent.stop()
            raise BenchError(f"{len(failed)} of {len(agents)} agents did not start: {failed[0]}")

        return agents

    def _preheat(self, sidecar):
        url = f"{sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{self.digest}/torrent"
        get_in_namespace(self.registry_host.netns, url, timeout=600)

        deadline = time.monotonic() + 60
        while self._sidecar_stats(sidecar).get("seeded_blobs", 0) < 1:
            if time.monotonic() > deadline:
                raise BenchError("the sidecar did not start seeding the preheated blob in 60 s")
            time.sleep(0.2)

    def _fetcher(self, run_dir, index, host, agent, start_file):
        files = run_dir / "clients"
        files.mkdir(parents=True, exist_ok=True)
        progress = files / f"agent{index}.progress"
        result = files / f"agent{index}.json"
        argv = [require_binary("ip", "iproute2"), "netns", "exec", host.netns,
                sys.executable, "-m", "registry_p2p.bench.fetcher",
                "--url", f"{agent.url}/v2/{REPOSITORY}/blobs/{self.digest}",
                "--stats-url", f"{agent.url}/p2p/v1/stats",
                "--digest", self.digest, "--start-file", str(start_file),
                "--progress", str(progress), "--result", str(result)]
        with open(files / f"agent{index}.err", "wb") as errors:
            process = subprocess.Popen(argv, env=python_environment(), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=errors,
                                       start_new_session=True)
        return process, progress, result

    def _measure(self, run_dir, mode, hosts, agents, sidecar):
        count = len(hosts)
        first_group = count if mode != "late" or count < 2 else (count + 1) // 2
        start_files = [run_dir / "start-first", run_dir / "start-second"]
        clients = [self._fetcher(run_dir, index, host, agent,
                                 start_files[0 if index < first_group else 1])
                   for index, (host, agent) in enumerate(zip(hosts, agents))]
        # Let every client reach its wait for the start file.
        self._wait_for_progress_files(clients)

        registry_before = self.cluster.counters(self.registry_host)
        agents_before = [self.cluster.counters(host) for host in hosts]
        timeout = 180 + 4 * self.lower_bound * (count + 1)
        second_started = None
        groups = {"agent": [agent.process.pid for agent in agents]}
        if sidecar is not None:
            groups["sidecar"] = [sidecar.process.pid]
        trace = (LinkTrace(self.cluster, self.registry_host, hosts) if self.trace_links
                 else contextlib.nullcontext())
        with Sampler(groups) as sampler, trace:
            started = time.time()
            start_files[0].touch()
            deadline = time.monotonic() + timeout
            while any(process.poll() is None for process, _, _ in clients):
                if time.monotonic() > deadline:
                    self._kill_clients(clients)
                    raise BenchError(f"{mode} run with {count} agents did not finish in {timeout:.0f} s")
                if second_started is None and first_group < count:
                    received = sum(self._progress(path) for _, path, _ in clients[:first_group])
                    if received >= 0.5 * first_group * self.size:
                        second_started = time.time()
                        start_files[1].touch()
                time.sleep(0.05)

        if self.trace_links:
            (run_dir / "links.json").write_text(json.dumps(trace.as_record(self.rate_bits)))
        registry_after = self.cluster.counters(self.registry_host)
        agents_after = [self.cluster.counters(host) for host in hosts]
        outcomes = [json.loads(result.read_text()) if result.exists() else {"error": "no result"}
                    for _, _, result in clients]

        record = self._summarize(mode, count, started, second_started, outcomes)
        record["registry_egress_bytes"] = registry_after[1] - registry_before[1]
        record["registry_egress_multiple"] = round(record["registry_egress_bytes"] / self.size, 3)
        record["agent_received_bytes"] = [after[0] - before[0]
                                          for before, after in zip(agents_before, agents_after)]
        record["agent_sent_bytes"] = [after[1] - before[1]
                                      for before, after in zip(agents_before, agents_after)]
        record["agent_peak_rss_bytes"] = max(group_memory(agent.process.pid, "VmHWM:")
                                             for agent in agents)
        record["sidecar_peak_rss_bytes"] = (group_memory(sidecar.process.pid, "VmHWM:")
                                            if sidecar is not None else None)
        record["agent_peak_anon_bytes"] = sampler.peak_anon["agent"]
        record["sidecar_peak_anon_bytes"] = sampler.peak_anon.get("sidecar")
        record["machine_cpu_busy"] = round(sampler.busy, 3)
        record["machine_cpu_busy_max_sample"] = round(max(sampler.samples, default=sampler.busy), 3)
        record["cpu_saturated"] = sampler.busy >= SATURATED_BUSY_FRACTION
        if sidecar is not None:
            record["sidecar"] = {key: value for key, value in self._sidecar_stats(sidecar).items()
                                 if isinstance(value, (int, float))}
        return record

    def _summarize(self, mode, count, started, second_started, outcomes):
        bound = self.lower_bound
        failures = [f"agent{index}: {outcome.get('error') or outcome.get('sha256')}"
                    for index, outcome in enumerate(outcomes)
                    if outcome.get("sha256") != self.digest or outcome.get("status") != 200]
        if failures:
            raise BenchError(f"{mode} run with {count} agents: {len(failures)} clients did not get "
                             f"the blob: {'; '.join(failures[:5])}")

        durations = [outcome["ended"] - outcome["started"] for outcome in outcomes]
        first_bytes = [outcome["first_byte"] - outcome["started"] for outcome in outcomes]
        agent_stats = [outcome.get("agent", {}) for outcome in outcomes]
        completion = max(outcome["ended"] for outcome in outcomes) - started

        def multiple(seconds):
            return None if seconds is None else round(seconds / bound, 3)

        return {
            "mode": mode,
            "variant": self.variant.label,
            "agents": count,
            "size_bytes": self.size,
            "rate_bits": self.rate_bits,
            "lower_bound_seconds": round(bound, 3),
            "completion_seconds": round(completion, 3),
            "completion_multiple": multiple(completion),
            "agent_seconds": [round(value, 3) for value in durations],
            "p50_multiple": multiple(percentile(sorted(durations), 0.5)),
            "p99_multiple": multiple(percentile(sorted(durations), 0.99)),
            "first_byte_seconds": [round(value, 3) for value in first_bytes],
            "first_byte_p50_seconds": round(percentile(sorted(first_bytes), 0.5), 3),
            "first_byte_max_seconds": round(max(first_bytes), 3),
            "second_group_start_seconds": (round(second_started - started, 3)
                                           if second_started is not None else None),
            "from_peers_bytes": [stats.get("from_peers", 0) for stats in agent_stats],
            "from_sidecars_bytes": [stats.get("from_sidecars", 0) for stats in agent_stats],
            "from_registry_bytes": [stats.get("from_registry", 0) for stats in agent_stats],
            "fallbacks": sum(stats.get("fallbacks", 0) for stats in agent_stats),
            "sources": sorted({stats.get("source", "unknown") for stats in agent_stats}),
        }

    def _sidecar_stats(self, sidecar):
        return json.loads(get_in_namespace(self.registry_host.netns, f"{sidecar.url}/p2p/v1/stats"))

    @staticmethod
    def _progress(path):
        try:
            return int(path.read_text() or 0)
        except (OSError, ValueError):
            return 0

    @staticmethod
    def _wait_for_progress_files(clients):
        deadline = time.monotonic() + 60
        while not all(path.exists() for _, path, _ in clients):
            if time.monotonic() > deadline:
                raise BenchError("the benchmark clients did not start in 60 s")
            time.sleep(0.05)

    @staticmethod
    def _kill_clients(clients):
        for process, _, _ in clients:
            if process.poll() is None:
                process.kill()
                process.wait()


def _say(message):
    print(message, flush=True)


def _check_environment(workdir, size, agent_count):
    if os.geteuid() != 0:
        raise BenchError("bench fanout creates network namespaces and needs root")
    for binary, package in (("ip", "iproute2"), ("tc", "iproute2"),
                            ("docker-registry", "docker-registry")):
        require_binary(binary, package)

    needed = size * (agent_count + 2) + DISK_MARGIN
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise BenchError(f"{workdir} has {free / MIB:.0f} MiB free; a run with {agent_count} "
                         f"agents and a {size / MIB:.0f} MiB blob needs about {needed / MIB:.0f} MiB")


def run(size, rate_bits, agent_counts, modes, repeat, output, markdown, command,
        workdir=None, keep=False, variants=(DEFAULT_VARIANT,), scenario="fanout",
        trace_links=False):
    """Run every mode for every agent count and variant ``repeat`` times; store and render the record.

    With ``trace_links``, each run's directory gets a links.json of its
    LinkTrace, and the work directory is kept.
    """
    keep = keep or trace_links
    own_workdir = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="registry-p2p-fanout-"))
    workdir.mkdir(parents=True, exist_ok=True)
    _check_environment(workdir, size, max(agent_counts))
    bench = FanoutBench(size, rate_bits, workdir)
    bench.trace_links = trace_links
    runs = []
    try:
        with running(bench.cluster):
            bench.prepare(max(agent_counts))
            with running(bench.registry):
                for count, variant, mode, attempt in itertools.product(
                        agent_counts, variants, modes, range(repeat)):
                    bench.variant = variant
                    _say(f"{mode} with {count} agents, variant {variant.label} "
                         f"({attempt + 1}/{repeat})...")
                    record = bench.run(mode, count)
                    runs.append(record)
                    _say(f"  done in {record['completion_seconds']:.1f} s "
                                 f"({record['completion_multiple']:.2f} x S/B), registry sent "
                                 f"{record['registry_egress_multiple']:.2f} x S, CPU busy "
                                 f"{record['machine_cpu_busy']:.0%}")
    finally:
        if own_workdir and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif keep:
            _say(f"work directory kept: {workdir}")

    record = {
        "scenario": scenario,
        "command": command,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_revision": source_revision(),
        "machine": describe_machine(),
        "software": software_versions(
            python_distributions=("libtorrent", "flask", "gunicorn"),
            debian_packages=("docker-registry", "python3-libtorrent", "iproute2")),
        "parameters": {"size_bytes": size, "rate_bits": rate_bits, "agents": list(agent_counts),
                       "modes": list(modes), "repeat": repeat,
                       "variants": [variant.as_record() for variant in variants]},
        "runs": runs,
    }
    results.record_result(output, record)
    report.render_file(output, markdown)
    _say(f"recorded in {output} and {markdown}")
    return record
