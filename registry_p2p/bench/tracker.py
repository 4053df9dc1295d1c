"""``registry-p2p bench tracker``: announces per second and latency of the sidecar's tracker.

The scenario starts docker-registry and a sidecar on loopback, pushes one
image whose layers are small random blobs, and requests each layer's
torrent from the sidecar, which makes the sidecar seed it. The tracker accepts
announces only for torrents it seeds, so each layer becomes one swarm. Load
generator processes (``registry_p2p.bench.announce_load``) then send a fixed
number of announces for many peers over keep-alive connections to the
sidecar's ``GET /announce``. The gunicorn workers forward each announce to
the seeder process, which owns the peer table. The record holds the
throughput, latency percentiles, errors and the CPU seconds of the
generators, the gunicorn processes and the seeder.
"""

import datetime
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from registry_p2p import config as configuration, torrent
from registry_p2p.bench import BenchError, announce_load, report, results, running
from registry_p2p.bench.machine import describe_machine, software_versions, source_revision
from registry_p2p.bench.measure import SATURATED_BUSY_FRACTION, measure, percentile, process_cpu_seconds
from registry_p2p.bench.sizes import format_size, size_argument
from registry_p2p.bench import tracker_report
from registry_p2p.bench.tracker_report import run_summary
from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.p2p import SidecarService
from registry_p2p.sandbox.process import clean_environment
from registry_p2p.sandbox.registry import Registry

log = logging.getLogger(__name__)

# The scenario's render(record), which report.render_file() calls.
render = tracker_report.render

TITLE = "Tracker: announces per second and latency of one sidecar"

REPOSITORY = "bench/tracker"
TARGET_ANNOUNCES_PER_SECOND = 2000
TARGET_P99_MS = 50
# Earlier runs whose summaries a record keeps, newest last.
EARLIER_RUNS_KEPT = 10
GENERATOR_READY_TIMEOUT = 120.0
# The run's own timeout: a generator that takes longer is stopped.
SECONDS_PER_REQUEST_LIMIT = 0.05
MIN_RUN_TIMEOUT = 120.0


def latency_summary(latencies_us):
    """Return the count, mean, p50, p95, p99 and max of latencies given in microseconds, in milliseconds."""
    values = sorted(latencies_us)
    if not values:
        return {"count": 0}

    return {
        "count": len(values),
        "mean_ms": round(sum(values) / len(values) / 1000, 2),
        "p50_ms": round(percentile(values, 0.50) / 1000, 2),
        "p95_ms": round(percentile(values, 0.95) / 1000, 2),
        "p99_ms": round(percentile(values, 0.99) / 1000, 2),
        "max_ms": round(values[-1] / 1000, 2),
    }


def merge_generator_results(outputs):
    """Combine the result documents of the generator processes into the run's figures."""
    latencies = [value for output in outputs for value in output["latencies_us"]]
    events = "".join(output["events"] for output in outputs)
    errors = {}
    for output in outputs:
        for kind, count in output["errors"].items():
            errors[kind] = errors.get(kind, 0) + count

    seconds = (max(output["finished_monotonic"] for output in outputs)
               - min(output["started_monotonic"] for output in outputs))
    succeeded = len(latencies)
    by_event = {}
    for event, code in announce_load.EVENT_CODES.items():
        by_event[event] = latency_summary([value for value, letter in zip(latencies, events)
                                           if letter == code])

    return {
        "requests": sum(output["requests"] for output in outputs),
        "succeeded": succeeded,
        "error_count": sum(errors.values()),
        "errors": errors,
        "error_samples": [sample for output in outputs for sample in output["error_samples"]][:10],
        "seconds": round(seconds, 3),
        "announces_per_s": round(succeeded / seconds, 1) if seconds > 0 else 0.0,
        "latency": latency_summary(latencies),
        "by_event": by_event,
        "peers_per_reply_mean": round(sum(output["peers_returned"] for output in outputs)
                                      / succeeded, 1) if succeeded else 0.0,
        "generator_cpu_seconds": round(sum(output["cpu_seconds"] for output in outputs), 2),
    }


def split_connections(connections, processes):
    """Return the connection ids of each generator process: process i runs i, i + processes, ..."""
    return [list(range(index, connections, processes)) for index in range(processes)]


def _generator_environment():
    """Return the environment of a generator process: no proxy variables, this checkout on PYTHONPATH."""
    env = clean_environment()
    source_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    return env


def _say(message):
    print(message, flush=True)


def _http_session():
    http = requests.Session()
    http.trust_env = False
    return http


def _create_swarms(registry, sidecar, swarms, blob_size, workdir):
    """Push an image of ``swarms`` random layers and have the sidecar seed each; return the swarms.

    Each swarm is {"digest", "length", "info_hash"}, in the order of the
    image's layers.
    """
    started = time.perf_counter()
    image = build_image(workdir / "image", [RandomLayer(blob_size, seed=index)
                                            for index in range(swarms)])
    push_image(image, f"{registry.hostport}/{REPOSITORY}:latest")
    pushed = time.perf_counter()

    created = []
    with _http_session() as http:
        for layer in image.layers:
            url = f"{sidecar.url}/p2p/v1/{REPOSITORY}/blobs/{layer.digest}/torrent"
            response = http.get(url, timeout=60)
            if response.status_code != 200:
                raise BenchError(f"the sidecar returned HTTP {response.status_code} for {url}: "
                                 f"{response.text[:200]}")
            hex_digest = layer.digest.split(":", 1)[1]
            metainfo = torrent.parse_metainfo(response.content, hex_digest, layer.size)
            created.append({"digest": layer.digest, "length": layer.size,
                            "info_hash": metainfo.info_hash})
    finished = time.perf_counter()

    distinct = len({swarm["info_hash"] for swarm in created})
    if distinct != swarms:
        raise BenchError(f"the {swarms} layers have only {distinct} distinct infohashes, so some "
                         f"layers have the same bytes; each layer needs its own random seed")

    return created, {"push_seconds": round(pushed - started, 2),
                     "torrent_seconds": round(finished - pushed, 2)}


def _sidecar_processes(root_pid):
    """Return {"gunicorn": [pids], "seeder": [pids]} of the sidecar process ``root_pid`` and its descendants."""
    parents = {}
    commands = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])

    tree = [root_pid]
    for pid in tree:
        tree.extend(child for child, parent in parents.items() if parent == pid)

    groups = {"gunicorn": [], "seeder": []}
    for pid in tree:
        role = "seeder" if b"registry_p2p.sidecar.seeder" in commands.get(pid, b"") else "gunicorn"
        groups[role].append(pid)

    return groups


def _cpu_seconds_of(pids):
    return sum(value for value in map(process_cpu_seconds, pids) if value is not None)


class _Generators:
    """The load generator processes of one run, started by start() and stopped by stop()."""

    def __init__(self, plan, processes, workdir):
        self.plan_path = workdir / "load-plan.json"
        self.plan_path.write_text(json.dumps(plan))
        self.workdir = workdir
        self.assignments = split_connections(plan["connections"], processes)
        self.processes = []

    def _log_path(self, index):
        return self.workdir / f"generator-{index}.log"

    def _result_path(self, index):
        return self.workdir / f"generator-{index}.json"

    def start(self):
        """Start every generator and wait until each has opened its connections."""
        for index, connections in enumerate(self.assignments):
            with open(self._log_path(index), "wb") as log_file:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "registry_p2p.bench.announce_load",
                     "--plan", str(self.plan_path),
                     "--connections", ",".join(map(str, connections)),
                     "--result", str(self._result_path(index))],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                    env=_generator_environment()))

        deadline = time.monotonic() + GENERATOR_READY_TIMEOUT
        for index, process in enumerate(self.processes):
            readable, _, _ = select.select([process.stdout], [], [],
                                           max(0.0, deadline - time.monotonic()))
            line = process.stdout.readline() if readable else b""
            if line.strip() != b"ready":
                raise BenchError(f"load generator {index} did not get ready within "
                                 f"{GENERATOR_READY_TIMEOUT:.0f} s (output {line!r}); "
                                 f"see {self._log_path(index)}:\n{self._log_tail(index)}")

    def run(self, timeout):
        """Let every generator send its announces and return their result documents."""
        for process in self.processes:
            process.stdin.write(b"go\n")
            process.stdin.flush()

        deadline = time.monotonic() + timeout
        for index, process in enumerate(self.processes):
            try:
                status = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"load generator {index} did not finish within {timeout:.0f} s; "
                                 f"see {self._log_path(index)}") from None
            if status != 0:
                raise BenchError(f"load generator {index} exited with status {status}; "
                                 f"see {self._log_path(index)}:\n{self._log_tail(index)}")

        return [json.loads(self._result_path(index).read_text())
                for index in range(len(self.processes))]

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()

    def _log_tail(self, index):
        return "\n".join(self._log_path(index).read_text(errors="replace").splitlines()[-20:])


def _measured_load(sidecar, plan, processes, workdir):
    """Run the generators under measure() and return (merged figures, CPU figures)."""
    generators = _Generators(plan, processes, workdir)
    try:
        generators.start()
        groups = _sidecar_processes(sidecar.process.pid)
        before = {role: _cpu_seconds_of(pids) for role, pids in groups.items()}
        timeout = max(MIN_RUN_TIMEOUT, plan["requests"] * SECONDS_PER_REQUEST_LIMIT)
        load_average = os.getloadavg()[0]
        with measure() as measurement:
            outputs = generators.run(timeout)
        after = {role: _cpu_seconds_of(pids) for role, pids in groups.items()}
    finally:
        generators.stop()

    figures = merge_generator_results(outputs)
    gunicorn = after["gunicorn"] - before["gunicorn"]
    seeder = after["seeder"] - before["seeder"]
    cpu = {
        "seconds": round(measurement.seconds, 3),
        "machine_cpu_busy": round(measurement.machine_cpu_busy, 3),
        "cpu_saturated": measurement.cpu_saturated,
        "machine_cpu_seconds": round(measurement.machine_cpu_seconds, 2),
        "generator_cpu_seconds": figures["generator_cpu_seconds"],
        "gunicorn_cpu_seconds": round(gunicorn, 2),
        "seeder_cpu_seconds": round(seeder, 2),
        "bench_cpu_seconds": round(measurement.bench_cpu_seconds, 2),
        "other_cpu_seconds": round(max(0.0, measurement.machine_cpu_seconds - gunicorn - seeder
                                       - figures["generator_cpu_seconds"]
                                       - measurement.bench_cpu_seconds), 2),
        "gunicorn_processes": len(groups["gunicorn"]),
        "load_average_1min_before": round(load_average, 2),
    }

    return figures, cpu


def _tracker_state(sidecar, info_hashes):
    """Return the swarm sizes and the rejected-announce count that the sidecar reports after the run."""
    stats = sidecar.stats()
    sizes = [stats["swarms"].get(info_hash, 0) for info_hash in info_hashes]

    return {
        "swarms_with_peers": sum(1 for size in sizes if size),
        "peers_min": min(sizes),
        "peers_max": max(sizes),
        "peers_total": sum(sizes),
        "rejected_announces": stats["rejected_announces"],
    }


def _commit_subject(revision):
    """Return the subject line of commit ``revision`` of this checkout, or None."""
    if not revision:
        return None
    checkout = Path(__file__).resolve().parents[2]
    try:
        return subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%s",
                               revision.removesuffix("+dirty")],
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError) as error:
        log.info("no commit subject for %s: %s", revision, error)
        return None


def _earlier_runs(output):
    """Return the summaries of earlier runs to keep in the new record: the last record's and its list."""
    previous = results.load(output)["scenarios"].get("tracker")
    if previous is None:
        return []

    earlier = [*previous.get("earlier_runs", []), run_summary(previous)]
    return earlier[-EARLIER_RUNS_KEPT:]


def _check_parameters(peers, swarms, requests_count, concurrency, processes, numwant, timeout):
    if swarms < 1 or peers < swarms:
        raise BenchError(f"invalid --peers {peers} for --swarms {swarms}: need at least one "
                         f"swarm and one peer per swarm")
    if peers > announce_load.max_peers():
        raise BenchError(f"invalid --peers {peers}: at most {announce_load.max_peers()} peers get "
                         f"distinct ports")
    if not 1 <= concurrency <= peers:
        raise BenchError(f"invalid --concurrency {concurrency}: must be from 1 to --peers ({peers})")
    if not 1 <= processes <= concurrency:
        raise BenchError(f"invalid --processes {processes}: must be from 1 to --concurrency "
                         f"({concurrency})")
    if requests_count < peers:
        raise BenchError(f"invalid --requests {requests_count}: must be at least --peers ({peers}), "
                         f"so that every peer announces")
    if numwant < 0:
        raise BenchError(f"invalid --numwant {numwant}: must be 0 or more")
    if timeout <= 0:
        raise BenchError(f"invalid --timeout {timeout:g}: must be above 0 seconds")


def run(options, output, markdown, command, workdir=None, keep=False):
    """Run the scenario, store its record in ``output``, regenerate ``markdown`` and return the record.

    ``options`` has peers, swarms, requests, concurrency, processes,
    numwant, timeout, blob_size, workers and threads. docker-registry and
    the sidecar are stopped, and a temporary work directory removed, also
    when the run fails or is interrupted.
    """
    _check_parameters(options["peers"], options["swarms"], options["requests"],
                      options["concurrency"], options["processes"], options["numwant"],
                      options["timeout"])
    earlier_runs = _earlier_runs(output)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="registry-p2p-bench-tracker-"))
    machine = describe_machine()
    sidecar_defaults = configuration.load(configuration.SIDECAR_OPTIONS, text="")
    try:
        root.mkdir(parents=True, exist_ok=True)
        registry = Registry(root / "registry")
        _say(f"Starting docker-registry and a sidecar with {options['workers']} workers of "
             f"{options['threads']} threads in {root} ...")
        with running(registry):
            sidecar = SidecarService(
                root / "sidecar", registry.url, registry.root_directory, workers=options["workers"],
                threads=options["threads"], tracker_interval=sidecar_defaults["tracker.interval"])
            with running(sidecar):
                swarms, setup = _create_swarms(registry, sidecar, options["swarms"],
                                               options["blob_size"], root)
                _say(f"Pushed {options['swarms']} layers in {setup['push_seconds']:.1f} s; "
                     f"the sidecar made and seeded their torrents in {setup['torrent_seconds']:.1f} s")
                plan = {
                    "host": sidecar.host, "port": sidecar.port,
                    "info_hashes": [swarm["info_hash"] for swarm in swarms],
                    "lengths": [swarm["length"] for swarm in swarms],
                    "peers": options["peers"], "requests": options["requests"],
                    "connections": options["concurrency"], "numwant": options["numwant"],
                    "timeout": options["timeout"],
                }
                _say(f"Sending {options['requests']} announces for {options['peers']} peers over "
                     f"{options['concurrency']} connections from {options['processes']} processes ...")
                figures, cpu = _measured_load(sidecar, plan, options["processes"], root)
                tracker_state = _tracker_state(sidecar, plan["info_hashes"])
    finally:
        if keep or workdir:
            _say(f"Logs and data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    revision = source_revision()
    record = {
        "scenario": "tracker",
        "command": command,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_revision": revision,
        "change": _commit_subject(revision),
        "machine": machine,
        "software": software_versions(
            python_distributions=("flask", "werkzeug", "gunicorn", "requests"),
            debian_packages=("docker-registry", "skopeo", "python3-libtorrent")),
        "parameters": {
            **{name: options[name] for name in ("peers", "swarms", "requests", "concurrency",
                                                "processes", "numwant", "timeout")},
            "blob_size_bytes": options["blob_size"],
            "sidecar": {"workers": options["workers"], "threads": options["threads"],
                        "worker_class": "gthread", "log_level": "info",
                        "tracker_interval": sidecar_defaults["tracker.interval"],
                        "peer_ttl": sidecar_defaults["tracker.peer_ttl"]},
            "targets": {"announces_per_s": TARGET_ANNOUNCES_PER_SECOND, "p99_ms": TARGET_P99_MS},
            "cpu_saturated_at": SATURATED_BUSY_FRACTION,
        },
        "setup": setup,
        "result": figures,
        "cpu": cpu,
        "tracker_state": tracker_state,
        "earlier_runs": earlier_runs,
    }
    results.record_result(output, record)
    report.render_file(output, markdown)
    _say(f"{figures['announces_per_s']:.0f} announces/s, p99 {figures['latency'].get('p99_ms')} ms, "
         f"{figures['error_count']} errors, machine CPU {100 * cpu['machine_cpu_busy']:.0f}% busy; "
         f"recorded in {output} and {markdown}")

    return record


def _from_arguments(args):
    """Run the scenario from the parsed ``registry-p2p bench tracker`` arguments."""
    from registry_p2p import logs
    from registry_p2p.sandbox import SandboxError

    logs.setup("warning", "registry-p2p-bench")
    markdown = args.markdown or str(Path(args.output).with_suffix(".md"))
    options = {name: getattr(args, name) for name in ("peers", "swarms", "requests", "concurrency",
                                                      "processes", "numwant", "timeout",
                                                      "workers", "threads")}
    options["blob_size"] = args.blob_size
    command = (f"registry-p2p bench tracker --peers {args.peers} --swarms {args.swarms} "
               f"--requests {args.requests} --concurrency {args.concurrency} "
               f"--processes {args.processes} --numwant {args.numwant} "
               f"--blob-size {format_size(args.blob_size).replace(' ', '')} "
               f"--workers {args.workers} --threads {args.threads}")
    try:
        run(options, args.output, markdown, command, workdir=args.workdir, keep=args.keep)
    except SandboxError as exc:
        print(f"registry-p2p: error: the sandbox registry or sidecar failed: {exc}", file=sys.stderr)
        return 2


def add_parser(scenarios):
    """Add ``tracker`` to the ``registry-p2p bench`` subcommands."""
    defaults = configuration.load(configuration.SIDECAR_OPTIONS)
    tracker = scenarios.add_parser(
        "tracker", help="start docker-registry and a sidecar on loopback, make one swarm per "
                        "pushed layer, and measure announces per second and latency of the "
                        "sidecar's tracker (needs docker-registry and skopeo)")
    tracker.add_argument("--peers", type=int, default=10000,
                         help="distinct peers (peer id and port) that announce (default 10000)")
    tracker.add_argument("--swarms", type=int, default=100,
                         help="swarms, one per pushed layer; peers are spread evenly "
                              "(default 100)")
    tracker.add_argument("--requests", type=int, default=50000,
                         help="announces to send in all; each peer's first is event=started "
                              "(default 50000)")
    tracker.add_argument("--concurrency", type=int, default=32,
                         help="keep-alive connections, each with one announce in flight "
                              "(default 32)")
    tracker.add_argument("--processes", type=int, default=2,
                         help="load generator processes that share the connections (default 2)")
    tracker.add_argument("--numwant", type=int, default=50,
                         help="numwant of every announce (default 50)")
    tracker.add_argument("--timeout", type=float, default=10.0,
                         help="seconds to wait for one reply before counting an error "
                              "(default 10)")
    tracker.add_argument("--blob-size", type=size_argument, default="16KiB",
                         help="size of the random file in each layer (default 16KiB)")
    tracker.add_argument("--workers", type=int, default=defaults["workers"],
                         help=f"the sidecar's gunicorn workers (default {defaults['workers']}, "
                              f"the sidecar's default)")
    tracker.add_argument("--threads", type=int, default=defaults["threads"],
                         help=f"threads per gunicorn worker (default {defaults['threads']}, "
                              f"the sidecar's default)")
    tracker.add_argument("--output", default="docs/benchmarks.json",
                         help="JSON file of benchmark records to update (default docs/benchmarks.json)")
    tracker.add_argument("--markdown",
                         help="Markdown file whose generated blocks are rewritten "
                              "(default: --output with the suffix .md)")
    tracker.add_argument("--workdir", help="directory for the registry's and the sidecar's data "
                                           "and logs (default: a new temporary directory, "
                                           "removed at the end)")
    tracker.add_argument("--keep", action="store_true", help="keep the work directory")
    tracker.set_defaults(func=_from_arguments)
