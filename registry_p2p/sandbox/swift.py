"""A single-node OpenStack Swift (proxy, account, container and object servers) with tempauth and s3api, or with Keystone."""

import logging
import os
import pwd
import secrets
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.keystone import Keystone
from registry_p2p.sandbox.process import ManagedProcess, clean_environment, free_port, require_binary

log = logging.getLogger(__name__)

# The pipeline of Swift 2.30's sample proxy-server.conf without container_sync
# and symlink, plus s3api just before tempauth as the sample's s3api notes
# require. s3api turns multipart uploads off unless slo comes after it.
PROXY_PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl "
    "ratelimit s3api tempauth copy container-quotas account-quotas slo dlo versioned_writes "
    "proxy-logging proxy-server"
)
# With Keystone: authtoken validates the token with Keystone and keystoneauth
# maps the token's roles on its project to the account AUTH_<project id>.
# s3api is left out because it would need s3token and EC2 credentials.
KEYSTONE_PROXY_PIPELINE = PROXY_PIPELINE.replace("s3api tempauth", "authtoken keystoneauth")

# Middleware sections that need nothing but their entry point.
_PLAIN_FILTERS = (
    "catch_errors", "gatekeeper", "healthcheck", "proxy-logging", "listing_formats", "bulk",
    "tempurl", "ratelimit", "copy", "container-quotas", "account-quotas", "slo", "dlo",
    "versioned_writes",
)

# Storage server name (as in swift-<name>-server and <name>.ring.gz) and the
# Debian package that contains its program.
_STORAGE_SERVERS = (
    ("account", "swift-account"),
    ("container", "swift-container"),
    ("object", "swift-object"),
)

# s3api builds the SigV4 credential scope with its `location` option, so
# clients must sign for this region.
S3_REGION = "us-east-1"


class Swift:
    """Swift on loopback with one device and one replica, started by start() or `with`.

    Everything lives in `workdir`: the configuration directory (`swift_dir`
    with swift.conf, the server configurations and the rings), the device
    directory `devices/d1` and one log file per process under `logs/`. Each
    server listens on its own free port, and the proxy uses a memcached that
    this class starts, not the system one, to store tempauth tokens.

    Clients authenticate with tempauth v1 at `auth_url` using `user` and `key`,
    or speak S3 to `endpoint` with `user` as access key and `key` as secret
    key (region `region`, path-style addressing).

    With a started `keystone`, the proxy authenticates with Keystone instead
    of tempauth and s3api: start() registers the proxy as the object-store
    endpoint `<endpoint>/v1/AUTH_$(project_id)s`, and `auth_url` is
    Keystone's v3 URL. Tokens are validated with Keystone on every request,
    without a cache, so a revoked token is rejected at once.
    """

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        user: str = "test:tester",
        key: str = "testing",
        start_timeout: float = 60.0,
        keystone: Keystone | None = None,
    ):
        """Describe a Swift, which start() runs.

        `user` is "<account>:<user>" for tempauth, and the user gets `.admin`
        rights on the account AUTH_<account>. `start_timeout` is the number of
        seconds that start() waits for each server to respond.
        """
        if user.count(":") != 1:
            raise SandboxError(f"invalid tempauth user {user!r}: expected \"<account>:<user>\"")

        self.workdir = Path(workdir)
        self.host = host
        self.user = user
        self.key = key
        self.start_timeout = start_timeout
        self.keystone = keystone
        self.region = S3_REGION
        self.proxy_port = 0
        self.memcached_port = 0
        self.storage_ports: dict[str, int] = {}
        self._processes: list[ManagedProcess] = []
        # Swift servers always add a syslog handler. Without /dev/log they send
        # to UDP port 514 on localhost, so they get this socket, which nothing
        # reads, instead of a system syslog daemon.
        self._syslog_sink: socket.socket | None = None

    @property
    def swift_dir(self) -> Path:
        """Configuration directory with swift.conf, the server configurations and the rings."""
        return self.workdir / "etc"

    @property
    def devices_dir(self) -> Path:
        """Parent directory of the single device `d1`."""
        return self.workdir / "devices"

    @property
    def log_dir(self) -> Path:
        """Directory with one log file per process."""
        return self.workdir / "logs"

    @property
    def endpoint(self) -> str:
        """Base URL of the proxy, "http://host:port", also the S3 endpoint."""
        return f"http://{self.host}:{self.proxy_port}"

    @property
    def auth_url(self) -> str:
        """Tempauth v1 URL, which returns X-Auth-Token and X-Storage-Url for X-Auth-User and X-Auth-Key.

        With Keystone, Keystone's v3 URL.
        """
        if self.keystone is not None:
            return self.keystone.auth_url
        return f"{self.endpoint}/auth/v1.0"

    @property
    def account(self) -> str:
        """Swift account of `user`, "AUTH_<account>"."""
        return f"AUTH_{self.user.partition(':')[0]}"

    @property
    def processes(self) -> list[ManagedProcess]:
        """The started processes: memcached, the storage servers and the proxy."""
        return list(self._processes)

    def start(self) -> "Swift":
        """Write the configuration and rings, start all servers, wait until tempauth issues a token and return self."""
        memcached = require_binary("memcached", "memcached")
        ring_builder = require_binary("swift-ring-builder", "swift")
        proxy = require_binary("swift-proxy-server", "swift-proxy")
        storage_binaries = {
            name: require_binary(f"swift-{name}-server", package) for name, package in _STORAGE_SERVERS
        }
        if self._processes or self._syslog_sink is not None:
            raise SandboxError(f"Swift in {self.workdir} was already started")

        self.swift_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.devices_dir / "d1").mkdir(parents=True, exist_ok=True)
        _check_user_xattrs(self.devices_dir / "d1")

        self.proxy_port = free_port(self.host)
        self.memcached_port = free_port(self.host)
        self.storage_ports = {name: free_port(self.host) for name, _ in _STORAGE_SERVERS}
        self._syslog_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        started = time.monotonic()
        try:
            self._syslog_sink.bind((self.host, 0))
            if self.keystone is not None:
                self.keystone.add_object_store(f"{self.endpoint}/v1/AUTH_$(project_id)s")
            self._write_configuration()
            self._build_rings(ring_builder)
            self._start_processes(memcached, proxy, storage_binaries)
        except BaseException:
            self.stop()
            raise

        log.info("Swift ready at %s in %.1f s, work directory %s",
                 self.endpoint, time.monotonic() - started, self.workdir)
        return self

    def stop(self) -> None:
        """Stop the proxy, the storage servers and memcached. Data, configuration and logs stay in workdir."""
        for process in reversed(self._processes):
            process.stop()
        self._processes = []

        if self._syslog_sink is not None:
            self._syslog_sink.close()
            self._syslog_sink = None

    def __enter__(self) -> "Swift":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def get_token(self) -> tuple[str, str]:
        """Authenticate with tempauth and return (storage URL, token). Raises SandboxError on failure.

        With Keystone, authenticate as Keystone's admin on its project.
        """
        if self.keystone is not None:
            return self._keystone_admin_token()

        with requests.Session() as http:
            http.trust_env = False
            try:
                response = http.get(
                    self.auth_url, headers={"X-Auth-User": self.user, "X-Auth-Key": self.key}, timeout=5.0,
                )
            except requests.RequestException as error:
                raise SandboxError(f"tempauth request to {self.auth_url} failed: {error}") from error

        if response.status_code != 200 or "X-Auth-Token" not in response.headers:
            raise SandboxError(
                f"tempauth at {self.auth_url} returned HTTP {response.status_code} without a token "
                f"for user {self.user!r}; see {self.log_dir}"
            )

        return response.headers["X-Storage-Url"], response.headers["X-Auth-Token"]

    def _start_processes(self, memcached: str, proxy: str, storage_binaries: dict[str, str]) -> None:
        """Start memcached and all servers, then wait for each. The caller stops them on failure."""
        env = clean_environment()
        # As root, memcached refuses to start without -u. -U 0 turns off UDP.
        memcached_process = self._add_process(
            "memcached",
            [memcached, "-l", self.host, "-p", str(self.memcached_port), "-U", "0", "-u", "root", "-m", "64"],
            env,
        )
        # All servers start at once, because each spends half a second or more
        # importing Swift (measured on a 2-core VM, like swift-ring-builder below).
        # -v copies the server's log lines to stderr, which goes to its log file.
        storage_processes = {
            name: self._add_process(
                f"swift-{name}-server", [binary, str(self._conf_path(name)), "-v"], env,
            )
            for name, binary in storage_binaries.items()
        }
        proxy_process = self._add_process("swift-proxy-server", [proxy, str(self._conf_path("proxy")), "-v"], env)

        memcached_process.wait_for(self._memcached_responds, self.start_timeout,
                                   f"memcached on port {self.memcached_port}")
        for name, process in storage_processes.items():
            process.wait_http(f"http://{self.host}:{self.storage_ports[name]}/healthcheck",
                              self.start_timeout, expect_status=200)
        proxy_process.wait_http(f"{self.endpoint}/healthcheck", self.start_timeout, expect_status=200)
        proxy_process.wait_for(self._token_available, self.start_timeout, f"a token from {self.auth_url}")
        if self.keystone is not None:
            proxy_process.wait_for(self._keystone_token_accepted, self.start_timeout,
                                   "the proxy to accept a Keystone token")

    def _add_process(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.log_dir / f"{name}.log", env=env)
        self._processes.append(process)
        process.start()
        return process

    def _memcached_responds(self) -> bool:
        try:
            with socket.create_connection((self.host, self.memcached_port), timeout=1.0) as connection:
                connection.sendall(b"version\r\n")
                return connection.recv(64).startswith(b"VERSION")
        except OSError:
            return False

    def _token_available(self) -> bool:
        try:
            self.get_token()
        except SandboxError:
            return False

        return True

    def _keystone_admin_token(self) -> tuple[str, str]:
        token, body = self.keystone.authenticate(self.keystone.admin_user, self.keystone.admin_password,
                                                 self.keystone.admin_project)
        for service in body.get("catalog", []):
            if service["type"] != "object-store":
                continue
            for endpoint in service["endpoints"]:
                if endpoint["interface"] == "public":
                    return endpoint["url"], token

        raise SandboxError(f"Keystone at {self.keystone.url} returned no public object-store endpoint")

    def _keystone_token_accepted(self) -> bool:
        """Whether the proxy accepts Keystone's admin token on its account (HEAD returns 2xx)."""
        storage_url, token = self._keystone_admin_token()
        with requests.Session() as http:
            http.trust_env = False
            try:
                response = http.head(storage_url, headers={"X-Auth-Token": token}, timeout=5.0)
            except requests.RequestException:
                return False

        return response.ok

    def _conf_path(self, server: str) -> Path:
        return self.swift_dir / f"{server}-server.conf"

    def _build_rings(self, ring_builder: str) -> None:
        # Each of the nine swift-ring-builder runs spends about half a second
        # importing Swift on a 2-core VM, so the three rings are built at once.
        with ThreadPoolExecutor(max_workers=len(self.storage_ports)) as executor:
            builds = [executor.submit(self._build_ring, ring_builder, name, port)
                      for name, port in self.storage_ports.items()]
            for build in builds:
                build.result()

    def _build_ring(self, ring_builder: str, name: str, port: int) -> None:
        """Build <name>.ring.gz with 2^4 partitions, one replica and the one device d1 on `port`."""
        builder_file = str(self.swift_dir / f"{name}.builder")
        steps = [
            ["create", "4", "1", "1"],
            ["add", f"r1z1-{self.host}:{port}/d1", "1"],
            ["rebalance"],
        ]
        for step in steps:
            argv = [ring_builder, builder_file, *step]
            result = subprocess.run(argv, capture_output=True, text=True, env=clean_environment(), check=False)
            # swift-ring-builder exits with 1 for warnings, such as a ring that
            # cannot be balanced well, and with 2 for errors.
            if result.returncode not in (0, 1):
                raise SandboxError(
                    f"{' '.join(argv)} failed with status {result.returncode}: "
                    f"{(result.stdout + result.stderr).strip()}"
                )

    def _write_configuration(self) -> None:
        account, _, user = self.user.partition(":")
        (self.swift_dir / "swift.conf").write_text(_ini({
            "swift-hash": {"swift_hash_path_suffix": secrets.token_hex(16)},
            "storage-policy:0": {"name": "Policy-0", "default": "yes"},
        }))

        for name, port in self.storage_ports.items():
            self._conf_path(name).write_text(_ini({
                "DEFAULT": {**self._common_options(port), "devices": str(self.devices_dir), "mount_check": "false"},
                "pipeline:main": {"pipeline": f"healthcheck {name}-server"},
                f"app:{name}-server": {"use": f"egg:swift#{name}"},
                "filter:healthcheck": {"use": "egg:swift#healthcheck"},
            }))

        proxy_sections = {
            "DEFAULT": self._common_options(self.proxy_port),
            "pipeline:main": {"pipeline": PROXY_PIPELINE if self.keystone is None else KEYSTONE_PROXY_PIPELINE},
            "app:proxy-server": {
                "use": "egg:swift#proxy",
                "allow_account_management": "true",
                "account_autocreate": "true",
            },
            "filter:cache": {"use": "egg:swift#memcache", "memcache_servers": f"{self.host}:{self.memcached_port}"},
        }
        if self.keystone is None:
            proxy_sections["filter:s3api"] = {"use": "egg:swift#s3api", "location": self.region}
            proxy_sections["filter:tempauth"] = {"use": "egg:swift#tempauth",
                                                 f"user_{account}_{user}": f"{self.key} .admin"}
        else:
            proxy_sections.update(self._keystone_filters())
        for name in _PLAIN_FILTERS:
            proxy_sections[f"filter:{name}"] = {"use": f"egg:swift#{name.replace('-', '_')}"}
        # Swift 2.30 warns at start that SHA-1, which it still allows by default, is deprecated.
        proxy_sections["filter:tempurl"]["allowed_digests"] = "sha256 sha512"
        self._conf_path("proxy").write_text(_ini(proxy_sections))

    def _keystone_filters(self) -> dict[str, dict[str, str]]:
        """Return the authtoken and keystoneauth sections; authtoken validates tokens as Keystone's admin."""
        return {
            "filter:authtoken": {
                "paste.filter_factory": "keystonemiddleware.auth_token:filter_factory",
                "www_authenticate_uri": self.keystone.url,
                "auth_url": self.keystone.url,
                "auth_type": "password",
                "username": self.keystone.admin_user,
                "password": self.keystone.admin_password,
                "project_name": self.keystone.admin_project,
                "user_domain_id": "default",
                "project_domain_id": "default",
                "delay_auth_decision": "true",
                # -1 turns the token cache off, so a revoked token fails at once.
                "token_cache_time": "-1",
            },
            "filter:keystoneauth": {"use": "egg:swift#keystoneauth", "operator_roles": "admin, member"},
        }

    def _common_options(self, port: int) -> dict[str, str]:
        return {
            "bind_ip": self.host,
            "bind_port": str(port),
            # 0 serves requests in the started process itself, without forked
            # workers, so wait_for() sees a crash as the exit of that process.
            "workers": "0",
            # Servers started as root switch to this user, "swift" by default,
            # who cannot write to the work directory. The current user avoids the switch.
            "user": pwd.getpwuid(os.geteuid()).pw_name,
            "swift_dir": str(self.swift_dir),
            "log_udp_host": self.host,
            "log_udp_port": str(self._syslog_sink.getsockname()[1]),
        }


def _ini(sections: dict[str, dict[str, str]]) -> str:
    """Format `sections` as a paste.deploy INI file."""
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in options.items())
        lines.append("")

    return "\n".join(lines)


def _check_user_xattrs(directory: Path) -> None:
    """Raise SandboxError unless `directory` supports user.* extended attributes, where Swift keeps object metadata."""
    probe = directory / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.registry-p2p-probe", b"1")
    except OSError as error:
        raise SandboxError(
            f"{directory} does not support user extended attributes ({error}), which the Swift object "
            "server needs: use a work directory on ext4 or XFS (tmpfs supports them from Linux 6.6)"
        ) from error
    finally:
        probe.unlink()
