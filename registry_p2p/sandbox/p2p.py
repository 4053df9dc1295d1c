"""A sidecar and agents of this package, started as separate processes with their own configs."""

import json
import logging
import os
import ssl
import sys
import urllib.request
from pathlib import Path

import registry_p2p
from registry_p2p.sandbox.process import ManagedProcess, clean_environment, free_port

log = logging.getLogger(__name__)

_SOURCE_ROOT = str(Path(registry_p2p.__file__).resolve().parent.parent)


def _toml(value):
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def write_toml(path, top, sections=None, tables=None):
    """Write a small TOML file: top-level keys, [section] tables and [[array]] tables."""
    lines = [f"{key} = {_toml(value)}" for key, value in top.items()]
    for name, values in (sections or {}).items():
        lines += ["", f"[{name}]"] + [f"{key} = {_toml(value)}" for key, value in values.items()]
    for name, entries in (tables or {}).items():
        for values in entries:
            lines += ["", f"[[{name}]]"] + [f"{key} = {_toml(value)}"
                                            for key, value in values.items()]
    Path(path).write_text("\n".join(lines) + "\n")


def merge_tables(tables, extra):
    """Return config ``tables`` with the keys of ``extra``'s tables added, table by table."""
    merged = {name: dict(values) for name, values in tables.items()}
    for name, values in (extra or {}).items():
        merged.setdefault(name, {}).update(values)
    return merged


def python_environment():
    """Return the environment for a Python process of this package: no proxy variables, this source on PYTHONPATH."""
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, env.get("PYTHONPATH")]))
    return env


class _Service:
    name = "service"

    def __init__(self, workdir, host="127.0.0.1", netns=None, python=None, port=None):
        """``python`` is the interpreter to run it with, this one by default.

        ``port`` is the HTTP port; None picks a free one. A caller that
        needs the URL before the service's config is written, such as a
        sidecar whose ``trackers`` name another one, picks it itself.
        """
        self.python = python or sys.executable
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.netns = netns
        self.port = port or free_port(host, netns)
        self.torrent_port = free_port(host, netns)
        self.config_path = self.workdir / f"{self.name}.toml"
        self.cache_dir = self.workdir / "cache"
        self.process = None
        # PEM file of the CA of the service's HTTPS certificate, or None for plain HTTP.
        self.ca_path = None

    @property
    def url(self):
        scheme = "http" if self.ca_path is None else "https"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self):
        self.process = ManagedProcess(
            self.name, [self.python, "-m", "registry_p2p", self.name, "-c",
                        str(self.config_path)],
            self.workdir / f"{self.name}.log", env=python_environment(), netns=self.netns)
        self.process.start()
        self.process.wait_http(f"{self.url}/healthz", timeout=60, expect_status=200,
                               ca_bundle=self.ca_path)
        return self

    def stop(self):
        if self.process is not None:
            self.process.stop(timeout=20)

    def kill(self):
        """Kill every process of the service with SIGKILL, as a crash or power loss would."""
        if self.process is not None:
            self.process.kill()

    def stats(self):
        context = None if self.ca_path is None else ssl.create_default_context(
            cafile=str(self.ca_path))
        with urllib.request.urlopen(f"{self.url}/p2p/v1/stats", timeout=10,
                                    context=context) as response:
            return json.load(response)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


class SidecarService(_Service):
    name = "sidecar"

    def __init__(self, workdir, registry_url, storage_root, host="127.0.0.1", netns=None,
                 workers=2, storage=None, sections=None, tls=None, port=None, **options):
        """``storage`` ({"s3": {...}}) replaces the filesystem driver at ``storage_root``.

        ``tls`` (a sandbox.tls.ServerCertificate) makes the sidecar serve
        HTTPS with that certificate, and its seeder trust that CA for its
        announces.

        ``sections`` adds config tables, such as {"notifications": {"secret": ...}},
        or keys to the service's own tables, such as {"tracker": {"origin_fanout": 4}}.
        ``upload_rate_limit`` is the seeder's torrent.upload_rate_limit in bytes/s.
        """
        super().__init__(workdir, host, netns, port=port)
        if tls is not None:
            self.ca_path = tls.ca_path
            options = {"tls_certificate": str(tls.certificate_path), "tls_key": str(tls.key_path),
                       "tracker_ca_bundle": str(tls.ca_path), **options}
        storage = storage or {"filesystem": {"rootdirectory": str(storage_root)}}
        (driver, driver_options), = storage.items()
        tables = {
            "storage": {"driver": driver},
            f"storage.{driver}": driver_options,
            "torrent": {"listen": f"{host}:{self.torrent_port}",
                        "upload_rate_limit": options.pop("upload_rate_limit", 0)},
            "tracker": {"interval": options.pop("tracker_interval", 10)},
        }
        top = {
            "listen": f"{host}:{self.port}",
            "workers": workers,
            "threads": 8,
            "registry_url": registry_url,
            "public_url": self.url,
            "cache_dir": str(self.cache_dir),
            "log_level": "info",
            **options,
        }
        write_toml(self.config_path, top, merge_tables(tables, sections))


class AgentService(_Service):
    name = "agent"

    def __init__(self, workdir, registries, host="127.0.0.1", netns=None, python=None,
                 proxy=None, sections=None, **options):
        """``registries`` is a list of dicts with name, url, sidecars and ca_bundle.

        ``proxy`` is the config's [proxy] table, such as {"ca_dir": ...}.
        ``sections`` adds config tables, such as {"torrent.settings": {...}}.
        """
        super().__init__(workdir, host, netns, python)
        p2p = {"stall_timeout": options.pop("stall_timeout", 20),
               "min_blob_size": options.pop("min_blob_size", 1024 * 1024),
               "stream": options.pop("stream", False),
               "stream_deadline_bytes": options.pop("stream_deadline_bytes", 0)}
        top = {
            "listen": f"{host}:{self.port}",
            "threads": 32,
            "cache_dir": str(self.cache_dir),
            "log_level": "info",
            **options,
        }
        tables = {"torrent": {"listen": f"{host}:{self.torrent_port}"}, "p2p": p2p}
        if proxy:
            tables["proxy"] = proxy
        write_toml(self.config_path, top, merge_tables(tables, sections), {"registries": registries})
