"""A private Docker Engine (dockerd) with its own data root, socket and containerd."""

import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.process import ManagedProcess, clean_environment, require_binary

log = logging.getLogger(__name__)

# containerd 1.6 rejects socket paths longer than 104 bytes. Its longest
# socket path is <exec-root>/containerd/containerd-debug.sock.
_MAX_SOCKET_PATH = 104
_LONGEST_SOCKET = "exec/containerd/containerd-debug.sock"
_STOP_TIMEOUT = 20.0
_UNMOUNT_ROUNDS = 5


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection to a Unix socket, for the Docker Engine API."""

    def __init__(self, socket_path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._socket_path = str(socket_path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._socket_path)


class Dockerd:
    """dockerd with vfs storage, no iptables rules and no bridge, started by start() or `with`.

    It writes into `workdir`: data/ (data root), exec/ (exec root, which
    contains the socket of its own containerd), docker.sock, docker.pid,
    daemon.json, dockerd.log and cli/ (the docker CLI's DOCKER_CONFIG, where
    login() stores credentials). When `workdir` is too long for containerd's
    socket paths, exec/ and docker.sock go to a new directory under /tmp
    instead, which stop() deletes. daemon.json is passed with --config-file,
    so /etc/docker/daemon.json is not read, and the CLI never reads or
    writes ~/.docker.
    """

    def __init__(
        self,
        workdir: Path,
        insecure_registries: list[str] | None = None,
        http_proxy: str | None = None,
        registry_mirrors: list[str] | None = None,
    ):
        """Describe a dockerd, which start() runs.

        `insecure_registries` are "host:port" entries that dockerd may reach over
        plain HTTP. `http_proxy` becomes HTTP_PROXY and HTTPS_PROXY of dockerd,
        with NO_PROXY unset. Go's net/http still connects directly to
        localhost and loopback addresses. `registry_mirrors` are mirror URLs
        that dockerd uses for Docker Hub images only.
        """
        self.workdir = Path(workdir).absolute()
        self.insecure_registries = list(insecure_registries or [])
        self.http_proxy = http_proxy
        self.registry_mirrors = list(registry_mirrors or [])
        self.data_root = self.workdir / "data"
        self.runtime_dir = self.workdir
        self.pid_path = self.workdir / "docker.pid"
        self.config_path = self.workdir / "daemon.json"
        self.log_path = self.workdir / "dockerd.log"
        self._process: ManagedProcess | None = None
        self._docker: str | None = None
        self._temporary_runtime_dir = False

    @property
    def exec_root(self) -> Path:
        """dockerd's --exec-root."""
        return self.runtime_dir / "exec"

    @property
    def socket_path(self) -> Path:
        """Unix socket of the Docker Engine API."""
        return self.runtime_dir / "docker.sock"

    @property
    def host(self) -> str:
        """Value for `docker -H` and DOCKER_HOST."""
        return f"unix://{self.socket_path}"

    @property
    def cli_config_dir(self) -> Path:
        """DOCKER_CONFIG of every docker CLI command run by docker()."""
        return self.workdir / "cli"

    @property
    def containerd_address(self) -> str:
        """Socket of the containerd that this dockerd started, for `ctr -a`."""
        return str(self.exec_root / "containerd" / "containerd.sock")

    @property
    def process(self) -> ManagedProcess | None:
        """The dockerd process, or None before start()."""
        return self._process

    def start(self, timeout: float = 60.0) -> "Dockerd":
        """Start dockerd, wait until its API responds to /_ping and return self."""
        dockerd = require_binary("dockerd", "docker.io")
        self._docker = require_binary("docker", "docker.io")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(str(self.workdir / _LONGEST_SOCKET)) > _MAX_SOCKET_PATH:
            # /tmp rather than $TMPDIR, which can be just as long.
            self.runtime_dir = Path(tempfile.mkdtemp(prefix="rp2p-dockerd-", dir="/tmp"))
            self._temporary_runtime_dir = True
            log.info("workdir %s is too long for containerd's socket paths, "
                     "so exec root and API socket are in %s", self.workdir, self.runtime_dir)

        config = {
            "insecure-registries": self.insecure_registries,
            "registry-mirrors": self.registry_mirrors,
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

        env = clean_environment()
        if self.http_proxy is not None:
            env["HTTP_PROXY"] = env["HTTPS_PROXY"] = self.http_proxy

        argv = [
            dockerd,
            "--config-file", str(self.config_path),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pid_path),
            "-H", self.host,
            "--iptables=false", "--ip6tables=false", "--bridge=none",
            "--storage-driver=vfs",
        ]
        try:
            self._process = ManagedProcess("dockerd", argv, self.log_path, env=env)
            self._process.start()
            self._process.wait_for(self._ping, timeout, f"HTTP 200 from /_ping on {self.socket_path}")
        except BaseException:
            self.stop()
            raise

        log.info("dockerd ready on %s", self.host)
        return self

    def stop(self) -> None:
        """Stop dockerd and its containerd, and unmount what dockerd mounted under workdir.

        dockerd stops its containerd on SIGTERM. That containerd runs in a session
        of its own, so one that survives is killed by process id: any dockerd or
        containerd process whose command line contains workdir or runtime_dir.
        """
        if self._process is not None:
            self._process.stop(timeout=_STOP_TIMEOUT)
            self._kill_leftovers()
            self._unmount_leftovers()

        if self._temporary_runtime_dir and self.runtime_dir.exists():
            shutil.rmtree(self.runtime_dir)

    def __enter__(self) -> "Dockerd":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def docker(self, *args: str, timeout: float | None = 300.0,
               input: str | None = None) -> subprocess.CompletedProcess:
        """Run the docker CLI against this dockerd and return its result, with output as text.

        `input` is sent to the command's stdin.
        """
        if self._docker is None:
            raise SandboxError("dockerd was not started")

        argv = [self._docker, "-H", self.host, *args]
        env = clean_environment(remove=("DOCKER_HOST", "DOCKER_CONTEXT"))
        env["DOCKER_CONFIG"] = str(self.cli_config_dir)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input,
                              env=env, check=False)

    def login(self, registry: str, username: str, password: str) -> subprocess.CompletedProcess:
        """Run `docker login` to `registry` ("host:port") and return its result unchecked.

        dockerd checks the credentials against the registry, through its
        proxy if it has one, and the CLI stores them in cli_config_dir for
        later pulls. The password goes to stdin, not onto the command line.
        """
        return self.docker("login", "--username", username, "--password-stdin", registry,
                           input=password)

    def pull(self, reference: str) -> subprocess.CompletedProcess:
        """Run `docker pull reference` and return its result without checking the exit status."""
        started = time.monotonic()
        result = self.docker("pull", reference)
        log.info("docker pull %s finished with status %d in %.1f s",
                 reference, result.returncode, time.monotonic() - started)
        return result

    def image_ids(self) -> list[str]:
        """Return the ids ("sha256:<hex>", the config digest) of all images in this dockerd."""
        result = self.docker("images", "--quiet", "--no-trunc", "--all")
        if result.returncode != 0:
            raise SandboxError(f"docker images failed with status {result.returncode}: {result.stderr.strip()}")

        return sorted(set(result.stdout.split()))

    def _ping(self) -> bool:
        connection = _UnixHTTPConnection(self.socket_path, timeout=2.0)
        try:
            connection.request("GET", "/_ping")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _kill_leftovers(self) -> None:
        """SIGKILL dockerd and containerd processes whose command line mentions workdir or runtime_dir."""
        markers = {f"{self.workdir}/", f"{self.runtime_dir}/"}
        for pid in _daemon_pids_with_argument(markers):
            log.warning("killing pid %d, left behind by dockerd in %s", pid, self.workdir)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _unmount_leftovers(self) -> None:
        """Unmount mount points at or below workdir or runtime_dir, deepest first.

        Repeats while any remain, because a point can be mounted more than once.
        """
        for _ in range(_UNMOUNT_ROUNDS):
            mount_points = set(_mount_points_under(self.workdir)) | set(_mount_points_under(self.runtime_dir))
            if not mount_points:
                return

            for mount_point in sorted(mount_points, key=len, reverse=True):
                log.warning("unmounting %s, left mounted by dockerd", mount_point)
                result = subprocess.run(["umount", "--lazy", mount_point],
                                        capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise SandboxError(f"failed to unmount {mount_point}: {result.stderr.strip()}")

        raise SandboxError(f"mount points under {self.workdir} or {self.runtime_dir} remain "
                           f"after {_UNMOUNT_ROUNDS} rounds of umount; see /proc/self/mountinfo")


def _daemon_pids_with_argument(markers: set[str]) -> list[int]:
    """Return the ids of dockerd and containerd* processes with one of `markers` in their command line."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().decode(errors="replace").split("\0")
        except OSError:
            continue

        program = os.path.basename(argv[0])
        is_daemon = program == "dockerd" or program.startswith("containerd")
        if is_daemon and any(marker in arg for marker in markers for arg in argv):
            pids.append(int(entry))

    return pids


def _mount_points_under(directory: Path) -> list[str]:
    """Return the mount points of this mount namespace that are `directory` or below it."""
    prefix = str(directory)
    mount_points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with spaces and backslashes octal-escaped.
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                mount_points.append(mount_point)

    return mount_points
