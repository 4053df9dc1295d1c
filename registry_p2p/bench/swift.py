"""``registry-p2p bench swift``: read a registry DLO blob with SwiftDriver.open() and with one plain GET.

distribution 2.8's swift driver stores every blob as a Dynamic Large Object:
numbered segments under ``<prefix>/segments/`` and a 0-byte manifest object
whose ``X-Object-Manifest`` header names them. Swift's dlo middleware serves
a GET of the manifest at full speed for the first segments only, then at a
fixed number of segments per second. SwiftDriver.open() lists the segments
and fetches several at a time instead. This scenario starts the sandbox's
single-node Swift, writes one blob in the registry's layout and reads it
both ways, alternating which read goes first, and checks the sha256 of
every read.
"""

import configparser
import datetime
import hashlib
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from registry_p2p import config as configuration, layout, storage
from registry_p2p.bench import BenchError, report, results, running
from registry_p2p.bench.machine import describe_machine, software_versions, source_revision
from registry_p2p.bench.measure import SATURATED_BUSY_FRACTION, measure
from registry_p2p.bench.report import markdown_table, render_environment
from registry_p2p.bench.sizes import format_size
from registry_p2p.errors import DigestMismatch
from registry_p2p.sandbox.process import PROXY_VARIABLES
from registry_p2p.sandbox.swift import Swift

log = logging.getLogger(__name__)

TITLE = "Swift: parallel segment reads against one GET of a DLO manifest"

CONTAINER = "registry"
PREFIX = "registry"
CHUNK_SIZE = 1024 * 1024
MIB = 1024 * 1024

PARALLEL = "parallel"
PLAIN = "plain"
METHOD_NAMES = {PARALLEL: "SwiftDriver.open()", PLAIN: "plain GET"}

# The defaults of Swift 2.30's dlo middleware (swift/common/middleware/dlo.py),
# which it applies when neither its own section nor the proxy's sets them.
DLO_DEFAULTS = {"rate_limit_after_segment": 10, "rate_limit_segments_per_sec": 1}

# Room for Swift's container databases and logs next to the blob's bytes.
DISK_MARGIN = 256 * MIB


def segment_sizes(size, segment_size):
    """Return the sizes of the segments that the registry writes for a blob of ``size`` bytes."""
    full, rest = divmod(size, segment_size)
    return [segment_size] * full + ([rest] if rest else [])


def segments_path(prefix):
    """Return a new segment directory as distribution 2.8 names it: ``<prefix>/segments/<3 hex>/<37 hex>``.

    The registry hashes the upload's path with random bytes (sha1). Here the
    random bytes alone are hashed, which gives names of the same shape.
    """
    hex_name = hashlib.sha1(os.urandom(32)).hexdigest()
    return f"{prefix}/segments/{hex_name[:3]}/{hex_name[3:]}"


def segment_name(directory, number):
    """Return the object name of segment ``number``, counted from 1 and zero-padded to 16 digits."""
    return f"{directory}/{number:016d}"


def manifest_name(prefix, hex_digest):
    return f"{prefix}/files/{layout.blob_data_path(hex_digest)}"


def expected_plain_seconds(segment_count, dlo_settings):
    """Return the minimum seconds of one GET of the manifest that the dlo rate limit alone imposes.

    Swift's RateLimitedIterator lets the first rate_limit_after_segment
    segments and one more through at once, then one segment per
    1 / rate_limit_segments_per_sec seconds.
    """
    limited = segment_count - dlo_settings["rate_limit_after_segment"] - 1
    rate = dlo_settings["rate_limit_segments_per_sec"]
    if limited <= 0 or rate <= 0:
        return 0.0

    return limited / rate


def read_dlo_settings(proxy_conf_path):
    """Return the dlo rate-limit settings in effect for the proxy configured in ``proxy_conf_path``.

    Swift 2.30 takes each setting from the ``[filter:dlo]`` section (which
    includes ``[DEFAULT]``), then from ``[app:proxy-server]``, then its default.
    """
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(proxy_conf_path):
        raise BenchError(f"cannot read the Swift proxy configuration {proxy_conf_path}")

    settings = {}
    for key, default in DLO_DEFAULTS.items():
        value = default
        for section in ("filter:dlo", "app:proxy-server"):
            if parser.has_option(section, key):
                value = int(parser.get(section, key))
                break
        settings[key] = value

    return settings


class _RandomSegment:
    """A file-like body of ``size`` random bytes that also feeds every byte it returns to ``sha256``."""

    def __init__(self, size, sha256):
        self._remaining = size
        self._sha256 = sha256

    def read(self, size=-1):
        if size < 0 or size > self._remaining:
            size = self._remaining
        size = min(size, CHUNK_SIZE)

        chunk = os.urandom(size)
        self._sha256.update(chunk)
        self._remaining -= size

        return chunk


def upload_blob(connection, size, segment_size):
    """Write a random blob as the registry's swift driver does: segments, then the manifest.

    Returns (hex digest, manifest object name, segment count). Only one
    chunk of CHUNK_SIZE bytes is in memory at a time.
    """
    sha256 = hashlib.sha256()
    directory = segments_path(PREFIX)
    connection.put_container(CONTAINER)

    sizes = segment_sizes(size, segment_size)
    for number, length in enumerate(sizes, start=1):
        connection.put_object(CONTAINER, segment_name(directory, number),
                              contents=_RandomSegment(length, sha256), content_length=length,
                              chunk_size=CHUNK_SIZE, content_type="application/octet-stream")

    hex_digest = sha256.hexdigest()
    name = manifest_name(PREFIX, hex_digest)
    connection.put_object(CONTAINER, name, contents=b"", content_type="application/octet-stream",
                          headers={"X-Object-Manifest": f"{CONTAINER}/{directory}"})

    return hex_digest, name, len(sizes)


def digest_chunks(chunks):
    """Return the sha256 hex digest and the length of the bytes in ``chunks``."""
    sha256 = hashlib.sha256()
    length = 0
    for chunk in chunks:
        sha256.update(chunk)
        length += len(chunk)

    return sha256.hexdigest(), length


def check_blob(method, hex_digest, length, expected_digest, expected_length):
    """Raise DigestMismatch unless a read returned the expected bytes."""
    if length != expected_length:
        raise DigestMismatch(f"{METHOD_NAMES[method]} returned {length} bytes of blob "
                             f"sha256:{expected_digest}, expected {expected_length}")
    if hex_digest != expected_digest:
        raise DigestMismatch(f"{METHOD_NAMES[method]} returned bytes with sha256:{hex_digest} "
                             f"for blob sha256:{expected_digest}")


def _driver_config(swift):
    """Return a sidecar configuration whose storage is this Swift, with every other option at its default."""
    text = "\n".join([
        "[storage]",
        'driver = "swift"',
        "[storage.swift]",
        f'authurl = "{swift.auth_url}"',
        f'username = "{swift.user}"',
        f'password = "{swift.key}"',
        f'container = "{CONTAINER}"',
        f'prefix = "/{PREFIX}"',
    ])
    return configuration.load(configuration.SIDECAR_OPTIONS, text=text)


def _connect(swift, retries):
    from swiftclient.client import Connection

    return Connection(authurl=swift.auth_url, user=swift.user, key=swift.key,
                      retries=retries, timeout=60)


def _read_parallel(swift, hex_digest):
    driver = storage.open_driver(_driver_config(swift))
    try:
        with driver.open(hex_digest) as body:
            return digest_chunks(iter(lambda: body.read(CHUNK_SIZE), b""))
    finally:
        driver.close()


def _read_plain(swift, name):
    from swiftclient.client import ClientException

    connection = _connect(swift, retries=0)
    try:
        _, body = connection.get_object(CONTAINER, name, resp_chunk_size=CHUNK_SIZE)
        return digest_chunks(body)
    except ClientException as error:
        raise BenchError(f"plain GET of {CONTAINER}/{name} failed: {error}. "
                         f"Run again with --keep to look at Swift's logs in {swift.log_dir}") from error
    finally:
        connection.close()


def _measured_read(method, swift, blob):
    hex_digest, name, size = blob["sha256"], blob["manifest"], blob["size"]
    service_pids = [process.pid for process in swift.processes]

    with measure(service_pids) as measurement:
        if method == PARALLEL:
            digest, length = _read_parallel(swift, hex_digest)
        else:
            digest, length = _read_plain(swift, name)

    check_blob(method, digest, length, hex_digest, size)

    return {
        "method": method,
        **measurement.as_record(),
        "mb_per_s": round(size / measurement.seconds / 1e6, 1),
        "sha256_verified": True,
    }


def _summary(runs):
    def median(method):
        return round(statistics.median(run["reads"][method]["seconds"] for run in runs), 3)

    ratios = [run["plain_over_parallel"] for run in runs]
    return {
        "parallel_seconds_median": median(PARALLEL),
        "plain_seconds_median": median(PLAIN),
        "plain_over_parallel_median": round(statistics.median(ratios), 2),
        "plain_over_parallel_min": min(ratios),
        "cpu_saturated_runs": sum(run["cpu_saturated"] for run in runs),
    }


def _say(message):
    print(message, flush=True)


def _check_disk(root, size):
    free = shutil.disk_usage(root).free
    if free < size + DISK_MARGIN:
        raise BenchError(f"{root} has {format_size(free)} free but the blob needs "
                         f"{format_size(size + DISK_MARGIN)} with Swift's databases. "
                         f"Free some space or choose another --workdir")


def _drop_proxy_variables():
    # swiftclient sends requests through a proxy named in the environment,
    # also to loopback, where the sandbox Swift listens.
    dropped = [name for name in PROXY_VARIABLES if os.environ.pop(name, None) is not None]
    if dropped:
        log.info("ignoring proxy variables %s for requests to the sandbox Swift", ", ".join(dropped))


def _upload(swift, size, segment_size):
    from swiftclient.client import ClientException

    started = time.perf_counter()
    connection = _connect(swift, retries=0)
    try:
        hex_digest, name, segment_count = upload_blob(connection, size, segment_size)
    except ClientException as error:
        raise BenchError(f"writing the blob to Swift failed: {error}. "
                         f"Run again with --keep to look at Swift's logs in {swift.log_dir}") from error
    finally:
        connection.close()
    seconds = time.perf_counter() - started

    _say(f"Wrote a {format_size(size)} blob as {segment_count} segments of "
         f"{format_size(segment_size)} in {seconds:.1f} s: {CONTAINER}/{name}")
    return {"sha256": hex_digest, "manifest": name, "size": size,
            "segment_count": segment_count, "upload_seconds": round(seconds, 2)}


def _repeat_reads(swift, blob, repeat):
    """Read the blob both ways ``repeat`` times, the parallel read first in odd repeats, and return the runs."""
    runs = []
    for index in range(repeat):
        order = [PARALLEL, PLAIN] if index % 2 == 0 else [PLAIN, PARALLEL]
        load_average = os.getloadavg()[0]

        reads = {}
        for method in order:
            read = reads[method] = _measured_read(method, swift, blob)
            _say(f"  repeat {index + 1}: {METHOD_NAMES[method]:18} {read['seconds']:7.2f} s "
                 f"{read['mb_per_s']:7.1f} MB/s, machine CPU {100 * read['machine_cpu_busy']:3.0f}% busy, "
                 f"sha256 ok")

        runs.append({
            "repeat": index + 1,
            "order": order,
            "load_average_1min_before": round(load_average, 2),
            "reads": reads,
            "plain_over_parallel": round(reads[PLAIN]["seconds"] / reads[PARALLEL]["seconds"], 2),
            "cpu_saturated": any(read["cpu_saturated"] for read in reads.values()),
        })

    return runs


def run(size, segment_size, repeat, output, markdown, command, workdir=None, keep=False):
    """Run the scenario, store its record in ``output``, regenerate ``markdown`` and return the record.

    Swift is stopped and a temporary work directory removed also when a
    read fails or the run is interrupted.
    """
    if repeat < 1:
        raise BenchError(f"invalid --repeat {repeat}: must be at least 1")

    _drop_proxy_variables()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="registry-p2p-bench-swift-"))
    machine = describe_machine()
    try:
        root.mkdir(parents=True, exist_ok=True)
        _check_disk(root, size)
        swift = Swift(root / "swift")
        _say(f"Starting Swift in {swift.workdir} ...")
        with running(swift):
            dlo_settings = read_dlo_settings(swift.swift_dir / "proxy-server.conf")
            read_concurrency = _driver_config(swift)["storage.read_concurrency"]
            _say(f"Swift at {swift.endpoint}, dlo middleware settings {dlo_settings}, "
                 f"SwiftDriver reads {read_concurrency} segments at a time")
            blob = _upload(swift, size, segment_size)
            runs = _repeat_reads(swift, blob, repeat)
    finally:
        if keep or workdir:
            _say(f"Swift's data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    record = {
        "scenario": "swift",
        "command": command,
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_revision": source_revision(),
        "machine": machine,
        "software": software_versions(
            python_distributions=("python-swiftclient", "requests", "urllib3"),
            debian_packages=("swift", "swift-proxy", "swift-object", "python3-swiftclient")),
        "parameters": {
            "size_bytes": size,
            "segment_size_bytes": segment_size,
            "segment_count": blob["segment_count"],
            "repeat": repeat,
            "read_chunk_bytes": CHUNK_SIZE,
            "segments_read_at_once": read_concurrency,
            "cpu_saturated_at": SATURATED_BUSY_FRACTION,
        },
        "blob_sha256": blob["sha256"],
        "dlo_settings": dlo_settings,
        "expected_plain_seconds_min": expected_plain_seconds(blob["segment_count"], dlo_settings),
        "upload_seconds": blob["upload_seconds"],
        "runs": runs,
        "summary": _summary(runs),
    }
    results.record_result(output, record)
    report.render_file(output, markdown)
    _say(f"Median plain GET / SwiftDriver.open(): {record['summary']['plain_over_parallel_median']:.2f}; "
         f"recorded in {output} and {markdown}")

    return record

def _rss(read):
    peak = "–" if read["peak_rss_bytes"] is None else f"{read['peak_rss_bytes'] / MIB:.0f}"
    return f"{read['rss_at_start_bytes'] / MIB:.0f} / {peak}"


def _cpu_seconds(read):
    return f"{read['bench_cpu_seconds']:.1f} / {read['service_cpu_seconds']:.1f} / {read['other_cpu_seconds']:.1f}"


def render(record):
    """Return the generated Markdown block of a swift record: environment, parameters, two tables, summary."""
    parameters, summary, dlo = record["parameters"], record["summary"], record["dlo_settings"]
    runs = record["runs"]
    saturated = f"{100 * parameters['cpu_saturated_at']:.0f}%"

    setup = (
        f"Blob: {format_size(parameters['size_bytes'])} of random bytes as "
        f"{parameters['segment_count']} segments of {format_size(parameters['segment_size_bytes'])}, "
        f"written in {record['upload_seconds']:.1f} s. "
        f"dlo middleware: rate_limit_after_segment = {dlo['rate_limit_after_segment']}, "
        f"rate_limit_segments_per_sec = {dlo['rate_limit_segments_per_sec']}, so the rate limit "
        f"alone makes one plain GET take at least {record['expected_plain_seconds_min']:.0f} s. "
        f"SwiftDriver.open() fetches {parameters['segments_read_at_once']} segments at a time."
    )

    per_repeat = markdown_table(
        ["repeat", "first read", "SwiftDriver.open()", "plain GET", "plain GET / open()",
         f"CPU busy >= {saturated}"],
        [[run["repeat"], METHOD_NAMES[run["order"][0]],
          f"{run['reads'][PARALLEL]['seconds']:.2f} s ({run['reads'][PARALLEL]['mb_per_s']:.0f} MB/s)",
          f"{run['reads'][PLAIN]['seconds']:.2f} s ({run['reads'][PLAIN]['mb_per_s']:.0f} MB/s)",
          f"{run['plain_over_parallel']:.2f}x",
          "yes" if run["cpu_saturated"] else "no"]
         for run in runs],
        align="rlrrrl")

    per_read = markdown_table(
        ["repeat", "read", "time (s)", "MB/s", "machine CPU busy",
         "CPU s: bench / Swift / other", "RSS at start / peak (MiB)"],
        [[run["repeat"], METHOD_NAMES[method], f"{read['seconds']:.2f}", f"{read['mb_per_s']:.0f}",
          f"{100 * read['machine_cpu_busy']:.0f}%", _cpu_seconds(read), _rss(read)]
         for run in runs for method, read in ((name, run["reads"][name]) for name in run["order"])],
        align="rlrrrrr")

    result = (
        f"Median of {len(runs)} repeats: SwiftDriver.open() {summary['parallel_seconds_median']:.2f} s, "
        f"plain GET {summary['plain_seconds_median']:.2f} s, so the plain GET took "
        f"{summary['plain_over_parallel_median']:.2f} times as long "
        f"(lowest ratio {summary['plain_over_parallel_min']:.2f}). "
        f"Repeats with a read during which the machine's CPUs were at least {saturated} busy: "
        f"{summary['cpu_saturated_runs']} of {len(runs)}."
    )

    return "\n\n".join([render_environment(record), setup, per_repeat, per_read, result])
