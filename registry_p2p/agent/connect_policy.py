"""Policy for ``CONNECT host:port`` on the agent: intercept, tunnel or reject (no I/O here).

A CONNECT is intercepted only when its host and port are exactly those of
a configured registry's ``name`` (port 443 when the name has none), that
registry's ``url`` is https, and TLS interception is on. Every other
target, including a configured registry's host on another port, is
"another host", which is rejected or, when configured, tunnelled
untouched. A tunnel never leads to loopback, link-local or cloud metadata
addresses, nor to the agent's own ports on this host (screen_tunnel).
"""

import ipaddress
import logging
import re
from dataclasses import dataclass, replace

from registry_p2p.errors import ConfigError, denied

log = logging.getLogger(__name__)

INTERCEPT = "intercept"
TUNNEL = "tunnel"
REJECT = "reject"

HTTPS_PORT = 443
# A registered name (RFC 3986 reg-name) as DNS and registries use it:
# letters, digits, hyphens, underscores and dots.
_REG_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\Z")

# Instance metadata services outside the link-local ranges: AWS's IPv6
# endpoint and Alibaba Cloud's. The 169.254.169.254 of AWS, GCP, Azure and
# OpenStack is link-local and refused as such.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254"),
                                ipaddress.ip_address("100.100.100.200")})
# The well-known NAT64 prefix (RFC 6052): through a NAT64 gateway,
# 64:ff9b::a9fe:a9fe reaches 169.254.169.254.
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class ConnectTarget:
    """The host and port of a CONNECT request; ``host`` is lowercase, IPv6 without brackets."""

    host: str
    port: int

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _parse_host(text):
    """Return ``text`` as a lowercase host (IPv6 unbracketed) or raise ValueError."""
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise ValueError(f"invalid IPv6 address {text!r}") from None

    if _REG_NAME.match(text) is None:
        raise ValueError(f"invalid host {text!r}: expected a DNS name, an IPv4 address or "
                         f"an IPv6 address in brackets")

    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return text.lower()


def _parse_port(text):
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"invalid port {text!r}: expected a number from 1 to 65535")

    return int(text)


def parse_connect_target(raw):
    """Parse a CONNECT request-target (authority-form, ``host:port``) or raise ValueError."""
    host, separator, port = raw.rpartition(":")
    if not separator or not host:
        raise ValueError(f"invalid CONNECT target {raw!r}: expected host:port")

    return ConnectTarget(_parse_host(host), _parse_port(port))


def registry_target(name):
    """Return the host and port that a registry ``name`` (host[:port]) stands for."""
    if name.startswith("[") and name.endswith("]") or ":" not in name:
        return ConnectTarget(_parse_host(name), HTTPS_PORT)

    host, _, port = name.rpartition(":")

    return ConnectTarget(_parse_host(host), _parse_port(port))


@dataclass(frozen=True)
class ConnectDecision:
    action: str
    # The raw target as the client sent it, for log lines.
    raw_target: str
    target: ConnectTarget | None = None
    # The configured registry, for INTERCEPT.
    registry: object = None
    # Why the target is not intercepted, for logs and 403 details.
    reason: str = ""
    # For TUNNEL, the target's addresses that screen_tunnel accepted: the
    # tunnel connects to these and does not resolve the name again.
    addresses: tuple = ()
    # For a REJECT by screen_tunnel, the address that a tunnel must not reach.
    refused_address: str = ""


def _embedded_ipv4(address):
    """Return the IPv4 address that an IPv6 address carries (mapped, 6to4, NAT64), or None."""
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)

    return None


def refused_address_reason(text):
    """Return why no tunnel may reach the IP address ``text``, or None if one may.

    An IPv6 address that carries an IPv4 address (IPv4-mapped, 6to4 or
    NAT64) is judged by both.
    """
    address = ipaddress.ip_address(text.partition("%")[0])
    for candidate in filter(None, (address, _embedded_ipv4(address))):
        if candidate in METADATA_ADDRESSES:
            return f"{text} is a cloud metadata address"
        if candidate.is_loopback:
            return f"{text} is a loopback address"
        if candidate.is_link_local:
            return f"{text} is a link-local address, where cloud metadata services listen"
        if candidate.is_unspecified:
            return f"{text} is the unspecified address, which reaches this host"
        if candidate.is_multicast:
            return f"{text} is a multicast address"

    return None


class ConnectPolicy:
    """Decides on CONNECT targets from the registries, interception and the other-hosts option."""

    def __init__(self, registries, intercept, other_hosts=REJECT, own_ports=()):
        """``intercept`` turns TLS interception on; ``other_hosts`` is REJECT or TUNNEL.

        ``own_ports`` are the TCP ports the agent listens on, which no
        tunnel may reach on an address of this host.
        """
        if other_hosts not in (REJECT, TUNNEL):
            raise ValueError(f"other_hosts must be {REJECT!r} or {TUNNEL!r}, not {other_hosts!r}")

        self.intercept = intercept
        self.other_hosts = other_hosts
        self.own_ports = frozenset(own_ports)
        self._https = {}
        self._plain = set()
        for registry in registries:
            try:
                target = registry_target(registry.name)
            except ValueError as exc:
                raise ConfigError(f"[[registries]] name {registry.name!r}: {exc}") from None

            if registry.url.startswith("https://"):
                self._https[target] = registry
            else:
                self._plain.add(target)

    def intercepted_registries(self):
        """Return the registries whose CONNECTs are intercepted (none when interception is off)."""
        return list(self._https.values()) if self.intercept else []

    def decide(self, raw_target):
        """Return the ConnectDecision for a CONNECT to ``raw_target``."""
        try:
            target = parse_connect_target(raw_target)
        except ValueError as exc:
            return ConnectDecision(REJECT, raw_target, reason=str(exc))

        registry = self._https.get(target)
        if registry is not None and self.intercept:
            return ConnectDecision(INTERCEPT, raw_target, target, registry)

        if registry is not None:
            reason = "TLS interception is off (proxy.ca_dir is empty)"
        elif target in self._plain:
            reason = "the registry's url is http://, so the agent does not serve it over TLS"
        else:
            reason = "not a configured registry"

        if self.other_hosts == TUNNEL:
            return ConnectDecision(TUNNEL, raw_target, target, reason=reason)

        return ConnectDecision(REJECT, raw_target, target, reason=reason)

    def screen_tunnel(self, decision, addresses, is_local_address):
        """Return the TUNNEL ``decision`` with the target's resolved ``addresses``, or a REJECT.

        With other_hosts = "tunnel", every client of the agent could
        otherwise reach through it what only this host can reach: its
        loopback services, the cloud metadata service at a link-local
        address, and the agent itself, which a chain of CONNECTs to its own
        port would tie up thread by thread. So a target is rejected when
        any of its addresses is refused by refused_address_reason, or is an
        address of this host (``is_local_address(address)`` is true) with
        one of the agent's own ports.
        """
        assert decision.action == TUNNEL
        for address in addresses:
            reason = refused_address_reason(address)
            own_port = decision.target.port in self.own_ports
            if reason is None and own_port and is_local_address(address):
                reason = (f"{address} is an address of this host and port "
                          f"{decision.target.port} is the agent's own")
            if reason is not None:
                return replace(decision, action=REJECT, reason=reason, refused_address=address)

        return replace(decision, addresses=tuple(addresses))


def rejection(decision, client):
    """Log a rejected CONNECT and return the 403 DENIED error for it."""
    log.warning("rejected CONNECT %s from %s: %s", decision.raw_target, client, decision.reason)

    if decision.refused_address:
        return denied(f"CONNECT {decision.raw_target}: {decision.reason}; tunnels never lead "
                      f"to loopback, link-local or cloud metadata addresses, nor to the "
                      f"agent's own ports")

    return denied(f"CONNECT {decision.raw_target}: {decision.reason}; the agent intercepts "
                  f"CONNECT only for the https registries in its [[registries]]")
