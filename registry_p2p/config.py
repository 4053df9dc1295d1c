"""Configuration of the sidecar and the agent.

Each option is declared once below with its key, parser, default and help
text. A process reads one TOML file; keys not declared are rejected, so a
typo fails at start instead of being ignored. ``example_config`` renders
the commented example files shipped in ``etc/``.

A secret option (``secret=True``) also accepts ``<key>_file``, the path of
a file that contains the value, so that the secret need not be in the
config file itself.
"""

import os
import re
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from registry_p2p.cache_quota import Percentage
from registry_p2p.errors import ConfigError
from registry_p2p.secret_file import read_secret_file
from registry_p2p.tracker import PEER_SELECTIONS

# Appended to a secret option's key to name the file that contains its value.
FILE_SUFFIX = "_file"


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    # A secret value is never shown in error messages and can be read from
    # the file named by <key>_file.
    secret: bool = False
    # The value is a file path, and a relative one is relative to the
    # config file, as the paths of <key>_file are.
    relative_path: bool = False


def positive_int(value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a positive integer")
    return value


def non_negative_int(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def cache_size(value):
    """Parse a cache size limit: a byte count, or a percentage string such as "50%"."""
    if isinstance(value, str) and value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            raise ValueError("expected a number before '%'") from None
        if not 0 < percent <= 100:
            raise ValueError("expected a percentage above 0 and at most 100")
        return Percentage(percent)

    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("expected a positive number of bytes, or a percentage such as \"50%\"")

    return value


def positive_seconds(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("expected a positive number of seconds")
    return float(value)


def host_port(value):
    """Parse ``host:port`` (``[v6]:port`` for IPv6) into (host, port)."""
    if not isinstance(value, str):
        raise ValueError("expected a string 'host:port'")

    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected 'host:port' with a port from 0 to 65535")

    return host.strip("[]"), int(port)


def http_url(value):
    if not isinstance(value, str):
        raise ValueError("expected a URL string")

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("expected a URL without query or fragment")

    return value.rstrip("/")


def optional_http_url(value):
    """Parse an http(s) URL, or the empty string for "not set"."""
    if value == "":
        return value
    return http_url(value)


def url_list(value):
    if not isinstance(value, list):
        raise ValueError("expected a list of URLs")
    return [http_url(item) for item in value]


def path(value):
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty path string")
    return Path(value)


def string(value):
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def ca_bundle_file(value):
    """Parse the path of an existing PEM CA bundle, or the empty string for the system's CAs."""
    if not isinstance(value, str):
        raise ValueError("expected a path string")
    if value and not os.path.isfile(value):
        raise ValueError(f"CA bundle {value} is not a file")

    return value


def optional_file(value):
    """Parse a file path, or the empty string for "not set". The file is checked later."""
    if not isinstance(value, str):
        raise ValueError("expected a path string")
    return value


def boolean(value):
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def swift_auth_version(value):
    """Parse storage.swift.authversion: 0 (from authurl), 1 or 3."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1, 2, 3):
        raise ValueError("expected 0, 1 or 3")
    if value == 2:
        raise ValueError("Keystone v2 is not supported; use 3 with Keystone's v3 URL")

    return value


def libtorrent_settings(value):
    """Parse a [torrent.settings] table: libtorrent settings_pack names mapped to values.

    Here only the value types that libtorrent's settings have (integer,
    boolean, string) are checked; session.check_settings() checks each name
    and its type against libtorrent's own list.
    """
    if not isinstance(value, dict):
        raise ValueError("expected a table of libtorrent setting names and values")

    for name, setting in value.items():
        if not isinstance(setting, (bool, int, str)):
            raise ValueError(f"setting {name!r}: expected an integer, true or false, or a string")
        if name == "validate_https_trackers" and setting is not True:
            raise ValueError("setting 'validate_https_trackers' cannot be turned off: "
                             "https trackers are always verified; give their CA with "
                             "tracker_ca_bundle (sidecar) or ca_bundle (agent)")

    return dict(value)


def choice(*allowed):
    def parse(value):
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value
    return parse


@dataclass(frozen=True)
class Registry:
    """An upstream registry the agent may contact, and the sidecars in front of it."""

    name: str
    url: str
    sidecars: tuple
    # PEM file of the CAs that the registry's TLS certificate must chain to;
    # empty trusts the system's CAs.
    ca_bundle: str = ""


def registries(value):
    """Parse the agent's ``[[registries]]`` tables."""
    if not isinstance(value, list):
        raise ValueError("expected [[registries]] tables")

    parsed = []
    for index, table in enumerate(value):
        where = f"registries[{index}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected a table")

        unknown = set(table) - {"name", "url", "sidecars", "ca_bundle"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; "
                             "known keys are name, url, sidecars, ca_bundle")

        for required in ("name", "url"):
            if required not in table:
                raise ValueError(f"{where}: {required} is missing")

        fields = {}
        parsers = (("name", string, None), ("url", http_url, None),
                   ("sidecars", url_list, []), ("ca_bundle", ca_bundle_file, ""))
        for field, parse, default in parsers:
            try:
                fields[field] = parse(table.get(field, default))
            except ValueError as exc:
                raise ValueError(f"{where}.{field}: {exc}") from None
        name, url, ca_bundle = fields["name"], fields["url"], fields["ca_bundle"]
        sidecars = tuple(fields["sidecars"])

        if not name or "/" in name:
            raise ValueError(f"{where}: name must be the registry host as it appears "
                             f"in image names, e.g. 'registry.example.org:5000'")
        parsed.append(Registry(name=name.lower(), url=url, sidecars=sidecars,
                               ca_bundle=ca_bundle))

    names = [registry.name for registry in parsed]
    if len(set(names)) != len(names):
        raise ValueError("registry names must be unique")

    return tuple(parsed)


LOG_LEVELS = choice("debug", "info", "warning", "error")

TORRENT_SETTINGS_OPTION = Option(
    "torrent.settings", libtorrent_settings, {},
    "libtorrent settings_pack values that replace registry-p2p's own, such as "
    "{ connections_limit = 400 }; see libtorrent's reference for the names. "
    "registry-p2p's values are in docs/benchmarks.md with their measured "
    "effect. An unknown name or a wrong type is rejected by check-config and "
    "at start.")

SIDECAR_OPTIONS = (
    Option("listen", host_port, "0.0.0.0:5050",
           "Address and port of the sidecar's HTTP server (registry proxy, "
           "metainfo endpoint, tracker)."),
    Option("workers", positive_int, 4, "Gunicorn worker processes."),
    Option("threads", positive_int, 16,
           "Threads per worker process; each thread serves one request at a time."),
    Option("registry_url", http_url, "http://127.0.0.1:5000",
           "URL of the registry this sidecar fronts."),
    Option("registry_ca_bundle", ca_bundle_file, "",
           "PEM file of the CAs that the TLS certificate of an https registry_url "
           "must chain to, for the sidecar's /v2/ proxy and blob authorization "
           "requests; empty trusts the system's CAs. The \"registry\" storage "
           "driver does not use it."),
    Option("public_url", http_url, "http://127.0.0.1:5050",
           "URL under which agents reach this sidecar. Torrents announce to "
           "<public_url>/announce. It must be https:// when tls_certificate is "
           "set and http:// when it is not."),
    Option("tls_certificate", optional_file, "",
           "PEM file of the certificate with which the sidecar serves HTTPS on "
           "listen, followed by any intermediate CA certificates. Set it and "
           "tls_key to serve HTTPS; leave both empty to serve plain HTTP. A "
           "relative path is relative to this file.", relative_path=True),
    Option("tls_key", optional_file, "",
           "PEM file of the unencrypted private key of tls_certificate; keep it "
           "readable by the service user only. A relative path is relative to "
           "this file.", relative_path=True),
    Option("tracker_ca_bundle", ca_bundle_file, "",
           "PEM file of the CAs that the TLS certificates of https announce URLs "
           "(public_url and trackers) must chain to, in addition to the system's "
           "CAs, for the seeder's announces. Set it when the sidecars' "
           "certificates come from a private CA, or the seeder cannot announce "
           "to its own tracker. A relative path is relative to this file.",
           relative_path=True),
    Option("trackers", url_list, [],
           "Announce URLs of the other sidecars' trackers, added to every torrent."),
    Option("cache_dir", path, "/var/cache/registry-p2p/sidecar",
           "Directory of verified blobs, their torrents and the seeder's socket."),
    Option("cache_max_size", cache_size, "50%",
           "Largest total size of the cached blobs: a number of bytes, or a "
           "percentage of the size of the file system that holds cache_dir, "
           "measured at start. Before a new blob is read from storage, the "
           "least recently requested blobs are evicted to make room; agents "
           "fetch a blob that does not fit from the registry."),
    Option("cache_min_free_bytes", non_negative_int, 1024 * 1024 * 1024,
           "Bytes to keep free on the file system of cache_dir. Blobs are "
           "evicted, or a new blob is not cached, when caching it would leave "
           "less free. 0 turns the check off: a fill that finds the file "
           "system full then fails, and agents fetch the blob from the registry."),
    Option("cache_sweep_interval", non_negative_int, 3600,
           "Seconds between checks of every cached blob against storage; blobs "
           "that the registry's garbage collection removed are purged. 0 turns "
           "the checks off."),
    Option("storage.driver", choice("filesystem", "s3", "swift", "registry"), "filesystem",
           "Storage driver that reads the registry's blobs: the same storage the "
           "registry's config uses, or \"registry\" to read them through the "
           "registry's HTTP API."),
    Option("storage.read_concurrency", positive_int, 4,
           "Parts of a large blob (Swift segments, S3 byte ranges) that the "
           "sidecar reads at once. Memory use per blob read is about one part "
           "more than this."),
    Option("storage.filesystem.rootdirectory", path, "/var/lib/docker-registry",
           "The registry's storage.filesystem.rootdirectory."),
    Option("storage.s3.bucket", string, "", "The registry's storage.s3.bucket."),
    Option("storage.s3.region", string, "us-east-1", "The registry's storage.s3.region."),
    Option("storage.s3.regionendpoint", string, "",
           "The registry's storage.s3.regionendpoint, for Ceph RGW, Swift s3api or "
           "MinIO; empty for AWS."),
    Option("storage.s3.rootdirectory", string, "", "The registry's storage.s3.rootdirectory."),
    Option("storage.s3.accesskey", string, "",
           "Access key; empty uses boto3's usual sources (environment, "
           "~/.aws, instance role)."),
    Option("storage.s3.secretkey", string, "",
           "Secret key; keep this file readable by the service user only.", secret=True),
    Option("storage.swift.authurl", string, "",
           "The registry's storage.swift.authurl: Swift v1 auth such as tempauth's "
           ".../auth/v1.0, or Keystone's .../v3."),
    Option("storage.swift.authversion", swift_auth_version, 0,
           "The registry's storage.swift.authversion: 1 (tempauth, swauth) or 3 "
           "(Keystone v3). 0 takes the version from authurl as the registry does: "
           "3 if it contains 'v3', 1 if it contains 'v1'."),
    Option("storage.swift.username", string, "", "The registry's storage.swift.username."),
    Option("storage.swift.password", string, "",
           "The registry's storage.swift.password; keep this file readable by the "
           "service user only.", secret=True),
    Option("storage.swift.tenant", string, "",
           "The registry's storage.swift.tenant: with Keystone v3, the name of the "
           "project that the token is scoped to."),
    Option("storage.swift.tenantid", string, "",
           "The registry's storage.swift.tenantid: with Keystone v3, the ID of the "
           "project; used instead of tenant when set."),
    Option("storage.swift.domain", string, "",
           "The registry's storage.swift.domain: with Keystone v3, the name of the "
           "user's domain, and of the project's domain when tenantdomain and "
           "tenantdomainid are empty."),
    Option("storage.swift.domainid", string, "",
           "The registry's storage.swift.domainid: with Keystone v3, the ID of the "
           "user's domain, used when domain is empty."),
    Option("storage.swift.tenantdomain", string, "",
           "The registry's storage.swift.tenantdomain: with Keystone v3, the name of "
           "the project's domain. When it, tenantdomainid, domain and domainid are "
           "all empty, the project is looked up in the domain named Default."),
    Option("storage.swift.tenantdomainid", string, "",
           "The registry's storage.swift.tenantdomainid: with Keystone v3, the ID of "
           "the project's domain, used when tenantdomain is empty."),
    Option("storage.swift.trustid", string, "",
           "The registry's storage.swift.trustid: with Keystone v3, the ID of a trust "
           "that the token is scoped to instead of a project."),
    Option("storage.swift.region", string, "",
           "The registry's storage.swift.region: with Keystone v3, the region of the "
           "object-store endpoint in the catalog; empty takes the first endpoint."),
    Option("storage.swift.endpointtype", choice("public", "internal", "admin"), "public",
           "The registry's storage.swift.endpointtype: with Keystone v3, the "
           "interface of the object-store endpoint in the catalog."),
    Option("storage.swift.insecureskipverify", boolean, False,
           "The registry's storage.swift.insecureskipverify: true skips the check of "
           "the TLS certificates of Keystone and Swift."),
    Option("storage.swift.container", string, "", "The registry's storage.swift.container."),
    Option("storage.swift.prefix", string, "", "The registry's storage.swift.prefix."),
    Option("storage.registry.url", optional_http_url, "",
           "URL of the registry API that the \"registry\" driver reads blobs "
           "through; empty uses registry_url."),
    Option("storage.registry.username", string, "",
           "User name with which the \"registry\" driver logs in to the registry "
           "(Basic auth, or the token service that the registry names). It needs pull "
           "access to every repository. Empty sends no credentials."),
    Option("storage.registry.password", string, "",
           "Password of storage.registry.username; keep this file readable by the "
           "service user only.", secret=True),
    Option("torrent.listen", host_port, "0.0.0.0:6881",
           "Address and port on which the seeder accepts BitTorrent peers."),
    TORRENT_SETTINGS_OPTION,
    Option("torrent.super_seeding", boolean, False,
           "Seed in super-seeding mode (BEP 16): each peer is offered pieces that "
           "no other peer has, so that each piece tends to leave this host once."),
    Option("torrent.upload_rate_limit", non_negative_int, 0,
           "Bytes per second that the seeder uploads in all, to keep bandwidth "
           "for the registry itself; 0 is unlimited. Applies to peers on local "
           "networks too."),
    Option("tracker.interval", positive_int, 30,
           "Seconds between announces that the tracker asks peers for."),
    Option("tracker.origin_fanout", positive_int, 1,
           "Leechers of a blob that the tracker hands this host's seeder at a "
           "time; the other nodes get the blob from peers. 1 sends each blob "
           "from the registry host about once."),
    Option("tracker.peer_selection", choice(*PEER_SELECTIONS), "chain",
           "Nodes that the tracker hands a node. \"chain\": each leecher gets the two "
           "nodes that announced just before it, so pieces are pipelined down a chain "
           "of nodes and each link carries a blob about once. \"random\": a random "
           "sample of the swarm."),
    Option("tracker.peer_ttl", positive_int, 75,
           "Seconds after its last announce that a peer is dropped from the tracker."),
    Option("notifications.secret", string, "",
           "Shared secret of the registry's notification endpoint, which sends it "
           "as 'Authorization: Bearer <secret>'. Empty turns /p2p/v1/notifications "
           "off. Keep this file readable by the service user only.", secret=True),
    Option("notifications.preheat_min_size", non_negative_int, 1024 * 1024,
           "Pushed blobs smaller than this many bytes are not preheated, because "
           "agents fetch them from the registry (the agents' p2p.min_blob_size)."),
    Option("upstream_timeout", positive_seconds, 30.0,
           "Seconds to wait for the registry to connect or send data."),
    Option("log_level", LOG_LEVELS, "info", "Log level."),
)

AGENT_OPTIONS = (
    Option("listen", host_port, "127.0.0.1:5080",
           "Address and port of the agent's registry mirror and HTTP proxy."),
    Option("threads", positive_int, 64,
           "Request threads; each serves one request at a time."),
    Option("cache_dir", path, "/var/cache/registry-p2p/agent",
           "Directory of downloaded blobs, which the agent keeps seeding."),
    Option("cache_max_size", cache_size, "50%",
           "Largest total size of the cached blobs: a number of bytes, or a "
           "percentage of the size of the file system that holds cache_dir, "
           "measured at start. Before a new blob is downloaded, the least "
           "recently served blobs are evicted to make room; a blob that does "
           "not fit is served from the registry without being cached."),
    Option("cache_min_free_bytes", non_negative_int, 1024 * 1024 * 1024,
           "Bytes to keep free on the file system of cache_dir, for the images "
           "that the container runtime unpacks there. Blobs are evicted, or a "
           "new blob is not cached, when caching it would leave less free. 0 "
           "turns the check off: a download that fills the file system then "
           "fails, and the blob is served from the registry."),
    Option("torrent.listen", host_port, "0.0.0.0:6882",
           "Address and port on which the agent accepts BitTorrent peers."),
    TORRENT_SETTINGS_OPTION,
    Option("default_registry", string, "",
           "Name of the registry used when a request names none (no ?ns= and "
           "not a proxy request). Empty: the first of [[registries]]."),
    Option("registries", registries, [],
           "Registries the agent may contact: name (host[:port] as in image "
           "names), url, the sidecars in front of it, and ca_bundle, a PEM file "
           "of the CAs that the certificates of an https url and of https "
           "sidecars must chain to (empty: the system's CAs). libtorrent "
           "verifies https trackers against the system's CAs and every "
           "registry's ca_bundle. Nothing else is contacted."),
    Option("proxy.ca_dir", string, "",
           "Directory of the agent's CA (ca.crt, ca.key; create them with "
           "'registry-p2p agent ca'). When set, the agent answers a CONNECT to "
           "the name of a registry with an https url by terminating TLS with a "
           "certificate from this CA, and serves the requests inside as mirror "
           "requests. Empty turns TLS interception off."),
    Option("proxy.other_hosts", choice("reject", "tunnel"), "reject",
           "What the agent does with a CONNECT to any other host:port, including a "
           "registry's host on another port: reject (403) or tunnel (relay the "
           "bytes untouched). With tunnel, every client that reaches listen can "
           "open TLS connections to any host through the agent, except to "
           "loopback, link-local (such as the metadata service at 169.254.169.254), "
           "multicast and other cloud metadata addresses, and to the agent's own "
           "ports on this host's addresses. Those get 403 and a 'rejected CONNECT' "
           "log line."),
    Option("proxy.idle_timeout", positive_seconds, 60.0,
           "Seconds a CONNECT tunnel may stay idle before the agent closes it. "
           "Each open tunnel holds one of the agent's threads."),
    Option("p2p.min_blob_size", non_negative_int, 1024 * 1024,
           "Blobs smaller than this many bytes are fetched from the registry directly."),
    Option("p2p.metainfo_timeout", positive_seconds, 60.0,
           "Seconds to wait for a sidecar's torrent, which includes the "
           "sidecar reading the blob from storage."),
    Option("p2p.stall_timeout", positive_seconds, 20.0,
           "Seconds without download progress after which the agent gives up "
           "on BitTorrent and fetches the blob from the registry."),
    Option("p2p.stream", boolean, False,
           "Send a blob that is not cached to the client while it downloads, "
           "in order as its pieces arrive, instead of after the whole download "
           "is verified. If the download fails after part of the blob was sent, "
           "the rest comes from the registry. Off by default: a streamed "
           "download has been seen to stall with one piece missing (see "
           "docs/architecture.md)."),
    Option("p2p.stream_deadline_bytes", non_negative_int, 0,
           "Bytes ahead of a streaming client whose pieces get libtorrent "
           "deadlines, so they are fetched first; the piece the client waits "
           "for always gets one. While a piece has a deadline, libtorrent keeps "
           "at most one other request per peer, which slows a swarm down: see "
           "docs/benchmarks.md."),
    Option("upstream_timeout", positive_seconds, 30.0,
           "Seconds to wait for a registry or sidecar to connect or send data."),
    Option("log_level", LOG_LEVELS, "info", "Log level."),
)


class Config:
    """Validated option values, looked up by dotted key: ``config["p2p.stall_timeout"]``."""

    def __init__(self, values, source):
        self._values = values
        self.source = source

    def __getitem__(self, key):
        return self._values[key]

    def replace(self, **changes):
        """Return a copy with some values changed (keys with '.' written as '__')."""
        values = dict(self._values)
        for name, value in changes.items():
            key = name.replace("__", ".")
            if key not in values:
                raise KeyError(key)
            values[key] = value
        return Config(values, self.source)


def create_cache_dir(path):
    """Create a cache directory (mode 0750) or raise ConfigError saying why not."""
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create cache_dir {path}: {exc.strerror}; create it or "
                          f"set cache_dir to a writable directory") from None


def guess_process(config_path):
    """Return "sidecar" or "agent" for a config file, from the keys only one of them has.

    A file with neither kind of key, such as an empty one, is identified by
    its name (sidecar.toml, agent.toml). Raises ConfigError when neither works.
    """
    document = _read_document(config_path)
    keys = set(_flatten(document, SIDECAR_OPTIONS)) | set(_flatten(document, AGENT_OPTIONS))
    sidecar_keys, agent_keys = _known_keys(SIDECAR_OPTIONS), _known_keys(AGENT_OPTIONS)
    is_sidecar = bool(keys & (sidecar_keys - agent_keys))
    is_agent = bool(keys & (agent_keys - sidecar_keys))

    if is_sidecar != is_agent:
        return "sidecar" if is_sidecar else "agent"
    stem = Path(config_path).stem
    if not is_sidecar and stem in ("sidecar", "agent"):
        return stem
    raise ConfigError(f"cannot tell whether {config_path} is a sidecar or an agent config; "
                      f"run: registry-p2p check-config sidecar|agent {config_path}")


_URL_PASSWORD_RE = re.compile(r"(://[^/@:]*:)[^/@]*@")


def _without_password(value):
    """Return ``value`` with the password of any URL in it replaced by ***, for messages."""
    if isinstance(value, str):
        return _URL_PASSWORD_RE.sub(r"\1***@", value)

    return value


def _known_keys(options):
    """Return the keys a config file may contain: the options and their secret files."""
    return ({option.key for option in options}
            | {option.key + FILE_SUFFIX for option in options if option.secret})


def _read_document(config_path, text=None):
    """Parse the TOML of ``config_path`` (or ``text``); ConfigError names the file."""
    source = str(config_path) if config_path is not None else "<defaults>"
    if text is None and config_path is not None:
        try:
            text = Path(config_path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {source}: {exc.strerror}") from None

    try:
        return tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None


def load(options, config_path=None, text=None):
    """Read and validate a TOML config; ConfigError names the file, key and value."""
    source = str(config_path) if config_path is not None else "<defaults>"
    document = _read_document(config_path, text)

    flat = _flatten(document, options)
    unknown = sorted(set(flat) - _known_keys(options))
    if unknown:
        raise ConfigError(f"config file {source}: unknown key {unknown[0]!r}; "
                          f"see the example config for the known keys")

    # Relative secret file paths and relative_path options are relative to
    # the config file, so that the sidecar finds them whatever its working
    # directory is.
    base_dir = Path(config_path).parent if config_path is not None else Path.cwd()
    values = {}
    for option in options:
        if option.secret and option.key + FILE_SUFFIX in flat:
            raw = _secret_from_file(option, flat, source, base_dir)
        else:
            raw = flat.get(option.key, option.default)
        if option.relative_path and isinstance(raw, str) and raw:
            raw = str(base_dir / raw)

        try:
            values[option.key] = option.parse(raw)
        except ValueError as exc:
            shown_value = "(not shown: secret)" if option.secret else repr(_without_password(raw))
            raise ConfigError(f"config file {source}: key {option.key!r} has invalid "
                              f"value {shown_value}: {exc}") from None

    return Config(values, source)


def _secret_from_file(option, flat, source, base_dir):
    """Return the value of secret ``option`` read from the file that ``<key>_file`` names."""
    file_key = option.key + FILE_SUFFIX
    if option.key in flat:
        raise ConfigError(f"config file {source}: both {option.key!r} and {file_key!r} "
                          f"are set; remove one of them")

    raw_path = flat[file_key]
    if not isinstance(raw_path, str) or not raw_path:
        raise ConfigError(f"config file {source}: key {file_key!r} has invalid value "
                          f"{raw_path!r}: expected a non-empty path string")

    return read_secret_file(base_dir / raw_path, file_key)


def _flatten(document, options, prefix=""):
    """Flatten nested tables to dotted keys, stopping at keys that are options."""
    declared = {option.key for option in options}
    flat = {}
    for key, value in document.items():
        dotted = prefix + key
        if isinstance(value, dict) and dotted not in declared:
            flat.update(_flatten(value, options, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def example_config(options, title):
    """Render a commented TOML file listing every option with its default.

    Top-level keys come first and ``[[registries]]`` last, because in TOML a
    key after a table header belongs to that table.
    """
    lines = [f"# {title}", "# Every option is shown with its default value.", ""]
    plain = [option for option in options if option.key != "registries"]
    ordered = sorted(plain, key=lambda option: "." in option.key)

    section = ""
    for option in ordered:
        head, _, leaf = option.key.rpartition(".")
        if head != section:
            lines += ["", f"[{head}]"]
            section = head
        lines += _comment(option.help)
        if option.secret:
            lines += _comment(f"Instead of {leaf}, {leaf}{FILE_SUFFIX} may name a file "
                              f"that contains the value (without {leaf}; mode 0600 or "
                              f"0400; one trailing newline is removed; a relative path "
                              f"is relative to this file).")
        lines.append(f"{leaf} = {_toml_value(option.default)}")

    for option in options:
        if option.key == "registries":
            lines += _registries_example(option)

    return "\n".join(lines) + "\n"


def _comment(text):
    return ["# " + line for line in textwrap.wrap(text, width=76)]


# The registry and sidecar of the default sidecar config on the same host
# (registry_url, public_url). An agent needs at least one registry, so the
# example config names this one and the installed agent package starts.
EXAMPLE_REGISTRY = {
    "name": "127.0.0.1:5000",
    "url": "http://127.0.0.1:5000",
    "sidecars": ["http://127.0.0.1:5050"],
    "ca_bundle": "",
}


def _registries_example(option):
    return [
        "",
        *_comment(option.help),
        "# The table below names the docker-registry and sidecar of the default",
        "# sidecar config on the same host. Replace it with your registry's, and add",
        "# one [[registries]] table per registry, for example:",
        '#   name = "registry.example.org"',
        '#   url = "https://registry.example.org"',
        '#   sidecars = ["https://registry-host-1.example.org:5050"]',
        "[[registries]]",
        *(f"{key} = {_toml_value(value)}" for key, value in EXAMPLE_REGISTRY.items()),
    ]


def _toml_value(value):
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
