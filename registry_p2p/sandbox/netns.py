"""A network namespace joined to the root namespace by one veth pair and nothing else."""

import ipaddress
import logging
import os
import secrets
import signal
import subprocess

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.process import require_binary

log = logging.getLogger(__name__)

NAME_PREFIX = "rp2p-"
# Each namespace gets a random /30 from this private block.
ADDRESS_BLOCK = ipaddress.IPv4Network("10.213.0.0/16")
# Interface name of the namespace's end of the veth pair.
NAMESPACE_INTERFACE = "veth0"
_ATTEMPTS = 20
# Keywords that `ip route` prints before the destination of a non-unicast route.
_ROUTE_TYPES = {"unicast", "local", "broadcast", "multicast", "anycast", "unreachable",
                "prohibit", "blackhole", "throw", "nat"}


def free_subnet(ip: str, block: ipaddress.IPv4Network, prefix_length: int) -> ipaddress.IPv4Network:
    """Return a random subnet of `block` with `prefix_length` that overlaps no IPv4 route of the root namespace.

    `ip` is the path of the ip binary.
    """
    result = subprocess.run([ip, "-4", "-o", "route", "show", "table", "all"],
                            capture_output=True, text=True, check=True)
    routes = []
    for line in result.stdout.splitlines():
        tokens = line.split()
        if tokens and tokens[0] in _ROUTE_TYPES:
            tokens = tokens[1:]
        if not tokens or tokens[0] == "default":
            continue
        routes.append(ipaddress.IPv4Network(tokens[0], strict=False))

    subnet_size = 2 ** (32 - prefix_length)
    subnets_in_block = block.num_addresses // subnet_size
    for _ in range(_ATTEMPTS):
        candidate = ipaddress.IPv4Network(
            (int(block.network_address) + subnet_size * secrets.randbelow(subnets_in_block), prefix_length)
        )
        if not any(candidate.overlaps(route) for route in routes):
            return candidate

    raise SandboxError(f"found no free /{prefix_length} in {block} after {_ATTEMPTS} attempts. "
                       f"Delete stale rp2p* veth interfaces (see ip -4 route show).")


class NetworkNamespace:
    """A network namespace `rp2p-<random>` with loopback and one veth link to the root namespace.

    The root end of the veth pair gets the first address of a random /30 from
    ADDRESS_BLOCK and the namespace end the second. The namespace has no default
    route, so processes in it reach only loopback and the root namespace's
    address on the link. Requires root. create() or `with` sets it up, and
    remove() tears it down.
    """

    def __init__(self):
        suffix = secrets.token_hex(4)
        self.name = NAME_PREFIX + suffix
        # Interface names are limited to 15 characters.
        self.host_interface = "rp2p" + suffix
        self._ip = None
        self._subnet: ipaddress.IPv4Network | None = None
        self._created = False

    @property
    def host_address(self) -> str:
        """IPv4 address of the root namespace's end of the link."""
        return str(self._require_subnet()[1])

    @property
    def ns_address(self) -> str:
        """IPv4 address of the namespace's end of the link."""
        return str(self._require_subnet()[2])

    @property
    def prefix_length(self) -> int:
        """Prefix length of the link's subnet (30)."""
        return self._require_subnet().prefixlen

    def create(self) -> "NetworkNamespace":
        """Create the namespace, the veth pair and the addresses, and return self."""
        self._ip = require_binary("ip", "iproute2")
        self._subnet = self._pick_subnet()
        host_cidr = f"{self.host_address}/{self.prefix_length}"
        ns_cidr = f"{self.ns_address}/{self.prefix_length}"

        self._created = True
        try:
            self._run_ip("netns", "add", self.name)
            self._run_ip("link", "add", self.host_interface, "type", "veth",
                         "peer", "name", NAMESPACE_INTERFACE, "netns", self.name)
            self._run_ip("addr", "add", host_cidr, "dev", self.host_interface)
            self._run_ip("link", "set", self.host_interface, "up")
            self._run_ip("-n", self.name, "link", "set", "lo", "up")
            self._run_ip("-n", self.name, "addr", "add", ns_cidr, "dev", NAMESPACE_INTERFACE)
            self._run_ip("-n", self.name, "link", "set", NAMESPACE_INTERFACE, "up")
        except BaseException:
            self.remove()
            raise

        log.info("created network namespace %s: %s (root, %s) <-> %s (namespace)",
                 self.name, host_cidr, self.host_interface, ns_cidr)
        return self

    def run(self, argv: list[str], check: bool = True, timeout: float | None = 60.0) -> subprocess.CompletedProcess:
        """Run `argv` inside the namespace and return its result, with stdout and stderr as text.

        With `check`, a non-zero exit status raises SandboxError with the output.
        """
        self._require_subnet()
        result = subprocess.run([self._ip, "netns", "exec", self.name, *argv],
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise SandboxError(
                f"{argv[0]} in network namespace {self.name} failed with status {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )

        return result

    def pids(self) -> list[int]:
        """Return the ids of the processes running inside the namespace."""
        result = subprocess.run([self._ip, "netns", "pids", self.name], capture_output=True, text=True, check=False)
        return [int(pid) for pid in result.stdout.split()]

    def remove(self) -> None:
        """Delete the namespace and the veth pair, after killing processes still inside it.

        A process left inside would keep the namespace alive after `ip netns
        delete`. The name is random, so the processes inside were started
        through this object.
        """
        if not self._created:
            return

        for pid in self.pids():
            log.warning("killing pid %d, still running in network namespace %s", pid, self.name)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        self._run_ip("netns", "delete", self.name, check=False)
        # Deleting the namespace destroys its veth end, and with it the root end.
        # Delete the root end explicitly in case the namespace was never populated.
        if os.path.exists(f"/sys/class/net/{self.host_interface}"):
            self._run_ip("link", "delete", self.host_interface, check=False)

        self._created = False
        log.info("removed network namespace %s", self.name)

    def __enter__(self) -> "NetworkNamespace":
        return self.create()

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _require_subnet(self) -> ipaddress.IPv4Network:
        if self._subnet is None:
            raise SandboxError(f"network namespace {self.name} was not created")

        return self._subnet

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        return free_subnet(self._ip, ADDRESS_BLOCK, 30)

    def _run_ip(self, *args: str, check: bool = True) -> None:
        result = subprocess.run([self._ip, *args], capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise SandboxError(f"ip {' '.join(args)} failed with status {result.returncode}: {result.stderr.strip()}")
        if result.returncode != 0:
            log.debug("ip %s failed: %s", " ".join(args), result.stderr.strip())
