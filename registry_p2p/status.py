"""``registry-p2p status``: a readable summary of a running agent or sidecar.

The command reads the process's JSON ``/p2p/v1/stats`` over HTTP, from
the ``listen`` address of its config file or from ``--url``.
"""

import datetime
import logging
import re

import requests

from registry_p2p import config as configuration
from registry_p2p.errors import RegistryP2PError

log = logging.getLogger(__name__)

DEFAULT_CONFIGS = {"agent": "/etc/registry-p2p/agent.toml",
                   "sidecar": "/etc/registry-p2p/sidecar.toml"}
ARTICLES = {"agent": "an", "sidecar": "a"}
# Swarms listed by name in a sidecar's summary, the largest first.
SHOWN_SWARMS = 10
_UNITS = ("KiB", "MiB", "GiB", "TiB")
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class StatusError(RegistryP2PError):
    """The process could not be reached or did not return its stats."""


def url_from_listen(host, port):
    """Return the URL of a process listening on ``host:port``; a wildcard host becomes loopback."""
    host = _WILDCARD_HOSTS.get(host, host)
    if ":" in host:
        host = f"[{host}]"

    return f"http://{host}:{port}"


def url_from_config(process, config_path):
    """Return the URL of the process that ``config_path`` configures; ConfigError if it is invalid."""
    options = {"agent": configuration.AGENT_OPTIONS, "sidecar": configuration.SIDECAR_OPTIONS}
    config = configuration.load(options[process], config_path)

    return url_from_listen(*config["listen"])


def fetch_stats(process, url, timeout):
    """GET the process's JSON stats, or raise StatusError with the reason they could not be read."""
    stats_url = f"{url}/p2p/v1/stats"
    with requests.Session() as http:
        # The process is local or named by --url, never reached through a proxy.
        http.trust_env = False
        try:
            response = http.get(stats_url, timeout=timeout)
        except requests.RequestException as exc:
            raise StatusError(f"cannot reach the {process} at {url}: {_cause(exc)}; check that "
                              f"it runs and listens there (its config's listen, or --url)"
                              ) from None

    if response.status_code != 200:
        raise StatusError(f"the {process} at {url} returned HTTP {response.status_code} for "
                          f"GET /p2p/v1/stats: {response.text[:200].strip()}")
    try:
        stats = response.json()
    except ValueError:
        raise StatusError(f"{stats_url} did not return JSON; is {url} a registry-p2p "
                          f"{process}?") from None

    kind = None
    if "totals" in stats:
        kind = "agent"
    elif "swarms" in stats:
        kind = "sidecar"
    if kind is None:
        raise StatusError(f"{stats_url} did not return the stats of a registry-p2p {process}")
    if kind != process:
        raise StatusError(f"{url} is a registry-p2p {kind}, not {ARTICLES[process]} {process}; "
                          f"run: registry-p2p status {kind} --url {url}")

    return stats


def _cause(exc):
    """Return the reason of a failed request, such as "Connection refused", without urllib3's wrapping."""
    if isinstance(exc, requests.Timeout):
        return "timed out"

    match = _ERRNO_RE.search(str(exc))

    return match.group(1) if match else type(exc).__name__


def human_bytes(size):
    """Return ``size`` bytes in binary units with one decimal, such as "1.5 GiB"."""
    if size < 1024:
        return f"{size} B"

    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"


def _bytes(size):
    return f"{human_bytes(size)} ({size} bytes)" if size >= 1024 else human_bytes(size)


def _when(timestamp):
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_agent(url, stats):
    """Return the summary of an agent's JSON stats as lines of text."""
    totals = stats["totals"]
    served = stats.get("served", {})
    lines = [
        f"agent at {url}",
        f"  torrents:   {stats['seeding_torrents']} seeding, "
        f"{stats['downloading_torrents']} downloading",
        f"  peers:      {stats['peers_connected']} connected",
        f"  cache:      {stats['cache_blobs']} blobs, {_bytes(stats['cache_bytes'])}",
        "  received:   "
        f"peers {_bytes(totals['from_peers'])}, origin {_bytes(totals['from_sidecars'])}, "
        f"registry {_bytes(totals['from_registry'] - totals['from_fallback'])}, "
        f"fallback {_bytes(totals['from_fallback'])}",
        f"  uploaded:   {_bytes(stats['uploaded_bytes'])} to peers",
        "  blob GETs:  " + ", ".join(f"{source} {count}" for source, count in served.items()),
        f"  streaming:  {stats['stream_readers']} readers",
    ]
    lines += _format_fallbacks(stats["totals"]["fallbacks"], stats.get("fallback_reasons", {}),
                               stats.get("recent_fallbacks", []))

    return "\n".join(lines)


def _format_fallbacks(count, reasons, recent):
    counted = ", ".join(f"{reason} {number}" for reason, number in reasons.items() if number)
    lines = [f"  fallbacks:  {count}" + (f" ({counted})" if counted else "")]
    if not recent:
        return lines

    lines.append("  recent fallbacks, newest first:")
    for entry in reversed(recent):
        where = f" in {entry['repository']}" if entry.get("repository") else ""
        lines.append(f"    {_when(entry['time'])}  {entry['digest']}{where}: "
                     f"{entry['reason']}: {entry['message']}")

    return lines


def format_sidecar(url, stats):
    """Return the summary of a sidecar's JSON stats as lines of text."""
    swarms = stats["swarms"]
    digests = stats.get("swarm_digests", {})
    lines = [
        f"sidecar at {url}",
        f"  tracker:    {len(swarms)} swarms, {sum(swarms.values())} peers",
        f"  seeding:    {stats['seeded_blobs']} blobs, {stats['peers_connected']} peers "
        f"connected",
        f"  cache:      {stats['cache_blobs']} blobs, {_bytes(stats['cache_bytes'])}",
        f"  uploaded:   {_bytes(stats['uploaded_bytes'])} to peers",
        f"  storage:    {_bytes(stats['storage_read_bytes'])} read in "
        f"{stats['cache_fills']} cache fills",
        f"  torrents:   {stats['metainfo_served']} .torrent files served",
        f"  proxy:      {_bytes(stats['proxied_blob_bytes'])} of blobs proxied from the registry",
    ]

    largest = sorted(swarms.items(), key=lambda item: (-item[1], item[0]))[:SHOWN_SWARMS]
    if largest:
        lines.append("  largest swarms:" if len(swarms) > SHOWN_SWARMS else "  swarms:")
    for info_hash, peers in largest:
        blob = digests.get(info_hash, "blob not seeded here")
        lines.append(f"    {info_hash}  {peers} peers  {blob}")

    return "\n".join(lines)


def status(process, url, timeout):
    """Return the summary of the process at ``url``; StatusError if it cannot be read."""
    stats = fetch_stats(process, url, timeout)
    formatter = format_agent if process == "agent" else format_sidecar

    return formatter(url, stats)
