"""A docker-registry (CNCF distribution 2.8) with filesystem or other storage, and a parser for its request log."""

import json
import logging
import re
import secrets
import subprocess
from pathlib import Path

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.process import ManagedProcess, clean_environment, free_port, require_binary
from registry_p2p.sandbox.tls import ServerCertificate

log = logging.getLogger(__name__)

# A blob download: GET /v2/<name>/blobs/<digest>, without a query string.
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")

# One key=value field of a logrus text line. Quoted values use Go's %q escaping.
_LOGFMT_FIELD = re.compile(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')
_ESCAPE = re.compile(r"\\(.)")


def parse_log_fields(line: str) -> dict[str, str]:
    """Return the key=value fields of a logrus text log line, with quoted values unescaped.

    Only \\" and \\\\ are unescaped, which is enough for the URIs, addresses
    and user agents that distribution logs.
    """
    fields = {}
    for key, value in _LOGFMT_FIELD.findall(line):
        if value.startswith('"'):
            value = _ESCAPE.sub(r"\1", value[1:-1])
        fields[key] = value

    return fields


def _merge(base: dict, overrides: dict) -> dict:
    """Merge `overrides` into `base` recursively and return `base`."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value

    return base


class Registry:
    """docker-registry serving one filesystem storage directory or another storage driver, started by start() or `with`.

    Every completed request is logged by the registry as a logrus text line like:

        time="..." level=info msg="response completed" ... http.request.method=GET
        http.request.uri=/v2/app/blobs/sha256:ab12... http.response.status=200
        http.response.written=1048576

    (a 4xx or 5xx response has msg="response completed with error"), followed by
    an access log line in Apache combined format. blob_requests() and
    blob_bytes_sent() read the logrus lines.
    """

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        netns: str | None = None,
        users: dict[str, str] | None = None,
        config_overrides: dict | None = None,
        storage: dict | None = None,
        tls: ServerCertificate | None = None,
    ):
        """Describe a registry, which start() runs.

        `workdir` contains config.yml, registry.log, htpasswd and the storage
        root. Port 0 picks a free port. `netns` is the name of a network
        namespace to run in, and `host` must then be an address in it. `users`
        maps user names to passwords and turns on htpasswd authentication.
        `config_overrides` is merged into the generated configuration, key by key.
        `storage` replaces the filesystem driver section, for example
        {"swift": {...}}, because distribution refuses a configuration with two
        storage drivers. Keys that are not drivers, such as "redirect", may go
        in either argument. `tls` (a sandbox.tls.ServerCertificate) makes the
        registry serve HTTPS only, with that certificate.
        """
        self.workdir = Path(workdir)
        self.host = host
        self.port = port
        self.netns = netns
        self.users = dict(users or {})
        self.config_overrides = config_overrides or {}
        self.storage = storage
        self.tls = tls
        self.config_path = self.workdir / "config.yml"
        self.log_path = self.workdir / "registry.log"
        self._process: ManagedProcess | None = None
        self._log_offset = 0

    @property
    def hostport(self) -> str:
        """Address of the registry as "host:port", as used in image references."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the registry, "http://host:port", or "https://host:port" with `tls`."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.hostport}"

    @property
    def root_directory(self) -> Path:
        """Filesystem storage root (`rootdirectory`), with blobs under docker/registry/v2/blobs/sha256/.

        The directory stays empty when `storage` selects another driver.
        """
        return self.workdir / "storage"

    @property
    def process(self) -> ManagedProcess | None:
        """The docker-registry process, or None before start()."""
        return self._process

    def blob_path(self, digest: str) -> Path:
        """Return the path of the data file of blob `digest` ("sha256:<hex>") in the storage root."""
        algorithm, _, hex_digest = digest.partition(":")
        return (self.root_directory / "docker/registry/v2/blobs" / algorithm
                / hex_digest[:2] / hex_digest / "data")

    def start(self) -> "Registry":
        """Write the configuration, start docker-registry, wait until it responds to HTTP and return self."""
        binary = require_binary("docker-registry", "docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root_directory.mkdir(exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host, self.netns)

        # JSON is valid YAML, and distribution's YAML parser reads it.
        self.config_path.write_text(json.dumps(self._config(), indent=2) + "\n")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

        # Distribution 2.8's s3 driver panics at start when AWS_CA_BUNDLE is set.
        env = clean_environment(remove=("AWS_CA_BUNDLE",))
        self._process = ManagedProcess(
            f"docker-registry {self.hostport}",
            [binary, "serve", str(self.config_path)],
            self.log_path,
            env=env,
            netns=self.netns,
        )
        self._process.start()
        try:
            self._process.wait_http(f"{self.url}/v2/",
                                    ca_bundle=self.tls.ca_path if self.tls else None)
        except BaseException:
            self._process.stop()
            raise

        storage = self.root_directory if self.storage is None else ", ".join(self.storage)
        log.info("registry ready at %s, storage %s", self.url, storage)
        return self

    def stop(self) -> None:
        """Stop docker-registry. The storage directory and the log stay in workdir."""
        if self._process is not None:
            self._process.stop()

    def __enter__(self) -> "Registry":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def blob_requests(self) -> list[dict]:
        """Return the logged requests whose path contains /blobs/, oldest first.

        Each entry has "method", "uri", "status" (int) and "written" (int, bytes
        of response body). Only lines logged since the last start() are read.
        """
        entries = []
        for fields in self._request_fields():
            uri = fields["http.request.uri"]
            if "/blobs/" not in uri.partition("?")[0]:
                continue
            entries.append({
                "method": fields.get("http.request.method", ""),
                "uri": uri,
                "status": int(fields["http.response.status"]),
                "written": int(fields.get("http.response.written", "0")),
            })

        return entries

    def blob_bytes_sent(self) -> int:
        """Return the body bytes of all successful (2xx) GET /v2/<name>/blobs/<digest> responses.

        A query string such as containerd's ?ns= does not exclude a request.
        Counts only requests logged since the last start().
        """
        total = 0
        for request in self.blob_requests():
            path = request["uri"].partition("?")[0]
            if request["method"] == "GET" and 200 <= request["status"] < 300 and _BLOB_PATH.match(path):
                total += request["written"]

        return total

    def _request_fields(self) -> list[dict[str, str]]:
        """Return the fields of every logged completed request since the last start()."""
        if not self.log_path.exists():
            return []

        with open(self.log_path, "rb") as log_file:
            log_file.seek(self._log_offset)
            text = log_file.read().decode("utf-8", errors="replace")

        entries = []
        for line in text.splitlines():
            if "http.response.status=" not in line:
                continue
            fields = parse_log_fields(line)
            if "http.request.uri" in fields and "http.response.status" in fields:
                entries.append(fields)

        return entries

    def _config(self) -> dict:
        config = {
            "version": "0.1",
            "log": {
                "level": "info",
                "formatter": "text",
                "accesslog": {"disabled": False},
            },
            "storage": {
                **(self.storage or {"filesystem": {"rootdirectory": str(self.root_directory)}}),
                "delete": {"enabled": True},
            },
            # A fixed secret silences the start-up warning about a generated one.
            "http": {"addr": self.hostport, "secret": secrets.token_hex(16)},
        }
        if self.tls is not None:
            config["http"]["tls"] = {"certificate": str(self.tls.certificate_path),
                                     "key": str(self.tls.key_path)}
        if self.users:
            config["auth"] = {
                "htpasswd": {"realm": "registry-p2p-sandbox", "path": str(self._write_htpasswd())},
            }

        return _merge(config, self.config_overrides)

    def _write_htpasswd(self) -> Path:
        """Write bcrypt entries for self.users to workdir/htpasswd and return its path."""
        htpasswd = require_binary("htpasswd", "apache2-utils")
        entries = []
        for user, password in self.users.items():
            # -i reads the password from stdin, so it never appears in a process list.
            result = subprocess.run(
                [htpasswd, "-niB", user], input=password, capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise SandboxError(f"htpasswd failed for user {user!r}: {result.stderr.strip()}")
            entries.append(result.stdout.strip())

        path = self.workdir / "htpasswd"
        path.write_text("\n".join(entries) + "\n")
        return path
