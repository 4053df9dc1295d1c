"""Child processes in their own process group, with a log file and readiness checks."""

import logging
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from registry_p2p.sandbox import SandboxError

log = logging.getLogger(__name__)

# Removed by clean_environment(), which the sandbox uses for every program it
# starts, so that a developer's proxy settings cannot route sandbox traffic elsewhere.
PROXY_VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
)

POLL_INTERVAL = 0.1

_FREE_PORT_SCRIPT = (
    "import socket, sys\n"
    "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "with socket.socket(family) as sock:\n"
    "    sock.bind((sys.argv[1], 0))\n"
    "    print(sock.getsockname()[1])\n"
)


def require_binary(name: str, package: str) -> str:
    """Return the path of the executable `name`, or raise SandboxError naming its Debian package."""
    path = shutil.which(name)
    if path is None:
        raise SandboxError(f"{name} not found on PATH: apt-get install {package}")

    return path


def clean_environment(remove: tuple[str, ...] = ()) -> dict[str, str]:
    """Return a copy of os.environ without the proxy variables and without the names in `remove`."""
    dropped = set(PROXY_VARIABLES) | set(remove)
    return {key: value for key, value in os.environ.items() if key not in dropped}


# Ports picked for services lie below the kernel's ephemeral range, from
# which bind(0) would also pick them: there, the local end of any outgoing
# connection could take a port between the pick and the service's bind.
_SERVICE_PORTS = range(20000, 32768)


def _free_port_below_ephemeral(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in random.sample(_SERVICE_PORTS, 200):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port

    raise SandboxError(f"no free TCP port on {host} in {_SERVICE_PORTS.start}-"
                       f"{_SERVICE_PORTS.stop - 1} after 200 tries")


def free_port(host: str = "127.0.0.1", netns: str | None = None) -> int:
    """Return a TCP port that is free on `host`, inside network namespace `netns` if given.

    The port is only free at the time of the call: another process can bind it
    before the caller does.
    """
    if netns is None:
        return _free_port_below_ephemeral(host)

    ip = require_binary("ip", "iproute2")
    result = subprocess.run(
        [ip, "netns", "exec", netns, sys.executable, "-c", _FREE_PORT_SCRIPT, host],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SandboxError(
            f"failed to find a free port on {host} in network namespace {netns}: {result.stderr.strip()}"
        )

    return int(result.stdout)


class ManagedProcess:
    """A child process in its own process group, with stdout and stderr appended to a log file.

    stop() signals the whole group, so it also stops helpers that the program
    forks, except helpers that start a session of their own. The child is only
    reaped inside stop(): until then its process id, which is also the group id,
    cannot be reused by an unrelated process that stop() would then signal.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        netns: str | None = None,
    ):
        """Describe the process, which start() runs.

        `env` is the complete environment of the child (None inherits this
        process's environment). With `netns`, the child runs under
        `ip netns exec <netns>`, which execs the program in place.
        """
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = env
        self.netns = netns
        self._popen: subprocess.Popen | None = None
        self._stopped = False

    @property
    def pid(self) -> int | None:
        """Process id of the child, or None before start()."""
        return None if self._popen is None else self._popen.pid

    @property
    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self._popen is not None and self._exit_description() is None

    def start(self) -> "ManagedProcess":
        """Start the child in a new session and return self."""
        if self._popen is not None:
            raise SandboxError(f"{self.name} was already started (pid {self._popen.pid})")

        argv = self.argv
        if self.netns is not None:
            argv = [require_binary("ip", "iproute2"), "netns", "exec", self.netns, *argv]

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log_file.write(f"--- {stamp} starting {shlex.join(argv)}\n".encode())
            log_file.flush()
            try:
                self._popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            except OSError as error:
                raise SandboxError(f"failed to start {self.name} ({shlex.join(argv)}): {error}") from error

        log.info("started %s (pid %d), log %s", self.name, self._popen.pid, self.log_path)
        return self

    def wait_for(self, check: Callable[[], bool], timeout: float, description: str) -> None:
        """Call `check` until it returns True.

        Raises SandboxError with the end of the log if the child exits first or
        `timeout` seconds pass. `description` names what is awaited in that message.
        """
        if self._popen is None:
            raise SandboxError(f"{self.name} was not started")

        deadline = time.monotonic() + timeout
        while True:
            exit_description = self._exit_description()
            if exit_description is not None:
                raise SandboxError(
                    f"{self.name} {exit_description} while waiting for {description}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )

            if check():
                return

            if time.monotonic() >= deadline:
                raise SandboxError(
                    f"{self.name} did not reach {description} within {timeout:g} s; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )

            time.sleep(POLL_INTERVAL)

    def wait_http(self, url: str, timeout: float = 30.0, expect_status: int | None = None,
                  ca_bundle: Path | None = None) -> None:
        """Poll `url` with GET until any HTTP response arrives, or one with `expect_status` if given.

        `ca_bundle` is the PEM file of the CAs that an https server's
        certificate must chain to. Proxy variables of this process are
        ignored. Raises SandboxError like wait_for().
        """
        http = requests.Session()
        http.trust_env = False
        if ca_bundle is not None:
            http.verify = str(ca_bundle)
        last_result = "no request sent"

        def responded() -> bool:
            nonlocal last_result
            try:
                response = http.get(url, timeout=2.0, allow_redirects=False)
            except requests.RequestException as error:
                last_result = f"{type(error).__name__}: {error}"
                return False

            response.close()
            last_result = f"HTTP {response.status_code}"
            return expect_status is None or response.status_code == expect_status

        expected = "any HTTP response" if expect_status is None else f"HTTP {expect_status}"
        try:
            self.wait_for(responded, timeout, f"{expected} from {url}")
        except SandboxError as error:
            raise SandboxError(f"{error}\nlast result from {url}: {last_result}") from None
        finally:
            http.close()

    def log_tail(self, lines: int = 30) -> str:
        """Return the last `lines` lines of the log file, or "" if it does not exist."""
        window = max(lines, 1) * 4096
        try:
            with open(self.log_path, "rb") as log_file:
                size = log_file.seek(0, os.SEEK_END)
                log_file.seek(max(0, size - window))
                data = log_file.read()
        except FileNotFoundError:
            return ""

        return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the process group: SIGTERM, then SIGKILL after `timeout` seconds.

        Processes of the group that outlive the child get SIGKILL. Returns the
        child's exit status (negative for a signal), or None if it was never started.
        Calling stop() again only returns the status.
        """
        popen = self._popen
        if popen is None:
            return None

        if self._stopped:
            return popen.returncode

        try:
            if self._exit_description() is None:
                log.info("stopping %s (pid %d)", self.name, popen.pid)
                self._signal_group(signal.SIGTERM)
                if not self._wait_exit(timeout):
                    log.warning("%s (pid %d) still running %g s after SIGTERM; sending SIGKILL",
                                self.name, popen.pid, timeout)
                    self._signal_group(signal.SIGKILL)
                    self._wait_exit(None)
        except KeyboardInterrupt:
            self._signal_group(signal.SIGKILL)
            raise
        finally:
            # The unreaped child keeps the group id in use, so this reaches only
            # processes that this child started.
            if self._signal_group(signal.SIGKILL):
                log.debug("sent SIGKILL to what remained of the process group of %s", self.name)
            popen.wait()
            self._stopped = True

        log.info("%s (pid %d) stopped with status %s", self.name, popen.pid, popen.returncode)
        return popen.returncode

    def kill(self) -> int | None:
        """Send SIGKILL to the whole process group at once, as a crash would, and reap the child.

        Returns the child's exit status, or None if it was never started.
        """
        popen = self._popen
        if popen is None:
            return None

        if not self._stopped:
            log.info("killing %s (pid %d) with SIGKILL", self.name, popen.pid)
            self._signal_group(signal.SIGKILL)
            popen.wait()
            self._stopped = True

        return popen.returncode

    def __enter__(self) -> "ManagedProcess":
        if self._popen is None:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _signal_group(self, signum: int) -> bool:
        """Send `signum` to the child's process group and return False if the group is gone."""
        try:
            os.killpg(self._popen.pid, signum)
        except ProcessLookupError:
            return False

        return True

    def _wait_exit(self, timeout: float | None) -> bool:
        """Wait, without reaping, until the child exits. Return False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._exit_description() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL / 2)

        return True

    def _exit_description(self) -> str | None:
        """Describe how the child exited ("exited with status 1"), or return None while it runs.

        Uses WNOWAIT so that the child stays unreaped, keeping its group id reserved.
        """
        if self._popen.returncode is not None:
            return f"exited with status {self._popen.returncode}"

        try:
            info = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return "exited"

        if info is None:
            return None

        if info.si_code == os.CLD_EXITED:
            return f"exited with status {info.si_status}"

        return f"was killed by signal {info.si_status}"
