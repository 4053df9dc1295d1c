"""Policy for ``CONNECT host:port`` on the agent: intercept, tunnel or reject (no I/O here).

A CONNECT is intercepted only when its host and port are exactly those of
a configured registry's ``name`` (port 443 when the name has none), that
registry's ``url`` is https, and TLS interception is on. Every other
target, including a configured registry's host on another port, is
"another host", which is rejected or, when configured, tunnelled
untouched.
"""

import ipaddress
import logging
import re
from dataclasses import dataclass

from registry_p2p.errors import ConfigError, denied

log = logging.getLogger(__name__)

INTERCEPT = "intercept"
TUNNEL = "tunnel"
REJECT = "reject"

HTTPS_PORT = 443
# A registered name (RFC 3986 reg-name) as DNS and registries use it:
# letters, digits, hyphens, underscores and dots.
_REG_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\Z")


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


class ConnectPolicy:
    """Decides on CONNECT targets from the registries, interception and the other-hosts option."""

    def __init__(self, registries, intercept, other_hosts=REJECT):
        """``intercept`` turns TLS interception on; ``other_hosts`` is REJECT or TUNNEL."""
        if other_hosts not in (REJECT, TUNNEL):
            raise ValueError(f"other_hosts must be {REJECT!r} or {TUNNEL!r}, not {other_hosts!r}")

        self.intercept = intercept
        self.other_hosts = other_hosts
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


def rejection(decision, client):
    """Log a rejected CONNECT and return the 403 DENIED error for it."""
    log.warning("rejected CONNECT %s from %s: %s", decision.raw_target, client, decision.reason)

    return denied(f"CONNECT {decision.raw_target}: {decision.reason}; the agent intercepts "
                  f"CONNECT only for the https registries in its [[registries]]")
