"""A simulated LAN on one machine: network namespaces joined by one bridge, every link shaped with tc.

Layout, for a cluster with suffix ``<s>``::

    root namespace            rp2p-<s>-sw (switch)             rp2p-<s>-h<i> (host i)
    rp2pm<s> 10.x.y.254 ----- mgmt
                              br0 --- p<i> ==== shaped ====== eth0 10.x.y.<i+1>

Each host's ``eth0`` is shaped on egress (the host's upload) and the
switch's port ``p<i>`` on egress (the host's download), both at the same
rate with HTB (see shaping_commands()). The root namespace joins the
bridge through an unshaped management link, so that the benchmark can
reach every host's HTTP ports for health checks. The subnet is a free /24
of CLUSTER_BLOCK, which overlaps no route of the root namespace.
"""

import dataclasses
import ipaddress
import json
import logging
import os
import secrets
import signal
import subprocess

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.netns import NAME_PREFIX, free_subnet
from registry_p2p.sandbox.process import require_binary

log = logging.getLogger(__name__)

CLUSTER_BLOCK = ipaddress.IPv4Network("10.216.0.0/16")
HOST_INTERFACE = "eth0"
BRIDGE = "br0"
# Addresses .1 to .253 go to hosts; .254 is the root namespace's.
MAX_HOSTS = 253
# Time a full queue of each shaped link takes to drain. A deeper queue only
# adds latency; a shallower one drops packets of TCP bursts at low rates.
QUEUE_SECONDS = 0.05
# Minimum byte limit of the queue, because with segmentation offload one
# queued packet can be 64 KiB.
MIN_QUEUE_BYTES = 256 * 1024


def queue_bytes(rate_bits):
    """Return the byte limit of a shaped link's FIFO queue at ``rate_bits`` bits/s."""
    return max(MIN_QUEUE_BYTES, int(rate_bits / 8 * QUEUE_SECONDS))


def shaping_commands(interface, rate_bits, management_address, upload):
    """Return the tc argument lists that limit egress of ``interface`` to ``rate_bits`` bits/s.

    An HTB class at the rate contains two classes: one for the benchmark's
    traffic, with a byte-limited FIFO, and one served first for ARP, for
    TCP acknowledgements without data and for traffic with the root
    namespace's ``management_address`` (its destination on a host's own
    link, ``upload``; its source on a switch port). Without it a full data
    queue drops ARP replies, so hosts lose sight of each other for
    seconds, and delays the acknowledgements of a host's downloads behind
    its uploads, which slows its downloads several times over. fq_codel,
    the default qdisc of current distributions, also serves such small
    flows first; it is not available in every kernel. The class quantum is set because
    HTB's default (rate / 10) exceeds its own limit at these rates.
    """
    if rate_bits <= 0:
        raise ValueError(f"link rate must be positive, got {rate_bits} bit/s")

    rate = int(rate_bits)
    control = max(1, min(1_000_000, rate // 10))
    field = "dst" if upload else "src"

    def htb_class(parent, classid, class_rate, *extra):
        return ["class", "add", "dev", interface, "parent", parent, "classid", classid, "htb",
                "rate", f"{class_rate}bit", "ceil", f"{rate}bit", *extra, "quantum", "60000"]

    return [
        ["qdisc", "add", "dev", interface, "root", "handle", "1:", "htb", "default", "10"],
        htb_class("1:", "1:1", rate),
        htb_class("1:1", "1:10", rate - control, "prio", "1"),
        htb_class("1:1", "1:20", control, "prio", "0"),
        ["qdisc", "add", "dev", interface, "parent", "1:10", "bfifo",
         "limit", str(queue_bytes(rate_bits))],
        ["filter", "add", "dev", interface, "parent", "1:", "protocol", "arp", "prio", "1",
         "u32", "match", "u32", "0", "0", "flowid", "1:20"],
        ["filter", "add", "dev", interface, "parent", "1:", "protocol", "ip", "prio", "2",
         "u32", "match", "ip", field, f"{management_address}/32", "flowid", "1:20"],
        # A TCP segment with only the ACK flag and under 64 bytes in all: an
        # IPv4 header of 20 bytes (the first byte is 0x45), a total length
        # below 64, and the flags byte at offset 33 equal to 0x10.
        ["filter", "add", "dev", interface, "parent", "1:", "protocol", "ip", "prio", "3",
         "u32", "match", "ip", "protocol", "6", "0xff", "match", "u8", "0x05", "0x0f", "at", "0",
         "match", "u16", "0x0000", "0xffc0", "at", "2", "match", "u8", "0x10", "0xff", "at", "33",
         "flowid", "1:20"],
    ]


def interface_counters(ip_json):
    """Return (rx_bytes, tx_bytes) from the output of ``ip -s -j link show dev X``."""
    links = json.loads(ip_json)
    if not links:
        raise ValueError("ip printed no link")

    stats = links[0].get("stats64") or links[0].get("stats")
    return stats["rx"]["bytes"], stats["tx"]["bytes"]


@dataclasses.dataclass
class Host:
    """One simulated machine: a network namespace with one shaped link to the switch."""

    label: str
    index: int
    netns: str
    address: str
    switch_port: str


class Cluster:
    """A switch namespace with a bridge, a management link from the root namespace and shaped hosts.

    start() creates the switch and the management link; add_host() adds a
    host; stop() removes everything, killing processes left in any of its
    namespaces. Requires root.
    """

    def __init__(self, rate_bits):
        self.rate_bits = rate_bits
        self.suffix = secrets.token_hex(3)
        self.switch = f"{NAME_PREFIX}{self.suffix}-sw"
        self.root_interface = f"rp2pm{self.suffix}"
        self.hosts = []
        self._subnet = None
        self._ip = None
        self._tc = None
        self._namespaces = []

    @property
    def root_address(self):
        """The root namespace's address on the bridge."""
        return str(self._require_subnet()[254])

    def start(self):
        self._ip = require_binary("ip", "iproute2")
        self._tc = require_binary("tc", "iproute2")
        self._subnet = free_subnet(self._ip, CLUSTER_BLOCK, 24)
        prefix = self._subnet.prefixlen

        try:
            self._add_namespace(self.switch)
            self._run(self._ip, "-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
            self._run(self._ip, "-n", self.switch, "link", "set", BRIDGE, "up")
            self._run(self._ip, "link", "add", self.root_interface, "type", "veth",
                      "peer", "name", "mgmt", "netns", self.switch)
            self._run(self._ip, "-n", self.switch, "link", "set", "mgmt", "master", BRIDGE, "up")
            self._run(self._ip, "addr", "add", f"{self.root_address}/{prefix}",
                      "dev", self.root_interface)
            self._run(self._ip, "link", "set", self.root_interface, "up")
        except BaseException:
            self.stop()
            raise

        log.info("cluster switch %s on %s, links shaped at %d bit/s", self.switch, self._subnet,
                 self.rate_bits)
        return self

    def add_host(self, label):
        """Create a host namespace linked to the bridge, with both directions shaped; return its Host."""
        index = len(self.hosts)
        if index >= MAX_HOSTS:
            raise SandboxError(f"a cluster has at most {MAX_HOSTS} hosts")

        netns = f"{NAME_PREFIX}{self.suffix}-h{index}"
        host = Host(label=label, index=index, netns=netns,
                    address=str(self._require_subnet()[index + 1]), switch_port=f"p{index}")
        self._add_namespace(netns)
        self._run(self._ip, "-n", self.switch, "link", "add", host.switch_port, "type", "veth",
                  "peer", "name", HOST_INTERFACE, "netns", netns)
        self._run(self._ip, "-n", self.switch, "link", "set", host.switch_port, "master", BRIDGE, "up")
        self._run(self._ip, "-n", netns, "link", "set", "lo", "up")
        self._run(self._ip, "-n", netns, "addr", "add",
                  f"{host.address}/{self._subnet.prefixlen}", "dev", HOST_INTERFACE)
        self._run(self._ip, "-n", netns, "link", "set", HOST_INTERFACE, "up")
        for command in shaping_commands(HOST_INTERFACE, self.rate_bits, self.root_address, True):
            self._run(self._tc, "-n", netns, *command)
        for command in shaping_commands(host.switch_port, self.rate_bits, self.root_address, False):
            self._run(self._tc, "-n", self.switch, *command)

        self.hosts.append(host)
        log.info("cluster host %s: %s in %s", label, host.address, netns)
        return host

    def counters(self, host):
        """Return (rx_bytes, tx_bytes) of the host's link, counted inside its namespace."""
        result = self._run(self._ip, "-n", host.netns, "-s", "-j", "link", "show", "dev", HOST_INTERFACE)
        return interface_counters(result.stdout)

    def stop(self):
        """Kill the processes in the cluster's namespaces and delete the namespaces and links."""
        if self._ip is None:
            return

        for netns in reversed(self._namespaces):
            self._kill_processes(netns)
            self._run(self._ip, "netns", "delete", netns, check=False)
        self._namespaces.clear()
        self.hosts.clear()

        # Deleting the switch namespace destroys the management link's far
        # end, and with it this one; delete it explicitly in case it remains.
        if os.path.exists(f"/sys/class/net/{self.root_interface}"):
            self._run(self._ip, "link", "delete", self.root_interface, check=False)
        log.info("removed cluster %s", self.switch)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _add_namespace(self, netns):
        self._namespaces.append(netns)
        self._run(self._ip, "netns", "add", netns)

    def _kill_processes(self, netns):
        result = subprocess.run([self._ip, "netns", "pids", netns], capture_output=True, text=True,
                                check=False)
        for pid in result.stdout.split():
            log.warning("killing pid %s, still running in network namespace %s", pid, netns)
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _require_subnet(self):
        if self._subnet is None:
            raise SandboxError("the cluster was not started")
        return self._subnet

    @staticmethod
    def _run(*argv, check=True):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise SandboxError(f"{' '.join(argv)} failed with status {result.returncode}: "
                               f"{result.stderr.strip()}")
        if result.returncode != 0:
            log.debug("%s failed: %s", " ".join(argv), result.stderr.strip())
        return result
