"""Choice of the upstream registry for an agent request, limited to the configured ones."""

import logging
import re
from urllib.parse import urlsplit

from registry_p2p.errors import ConfigError, denied

log = logging.getLogger(__name__)

# A registries.conf mirror location such as "127.0.0.1:5080/registry.example.org"
# makes containers/image request "/v2/registry.example.org/<repository>/...".
# The upstream's name is the first path segment, and a repository follows
# it with one of the API's endpoints, so that a lone "/v2/<name>/tags/list"
# stays the tag list of a repository called <name>.
PATH_PREFIX_RE = re.compile(r"/v2/(?P<segment>[^/]+)/(?P<rest>.+/(?:manifests|blobs|tags)/.*)\Z")

# containers/image rejects a mirror location whose path contains ':' (a
# reference's path components may not contain it), so a registry name's
# port is written after this character instead, which host names cannot
# contain: "localhost:5000" becomes "localhost_5000".
PATH_PORT_SEPARATOR = "_"


def path_segment(name):
    """Return the path segment that names registry ``name`` (host[:port]) in a mirror location.

    Returns None for an IPv6 address, which no reference path can contain.
    """
    if name.startswith("["):
        return None

    host, separator, port = name.rpartition(":")
    if separator:
        return f"{host}{PATH_PORT_SEPARATOR}{port}"

    return name


def remove_first_segment(path):
    """Return ``/v2/<segment>/<rest>`` as ``/v2/<rest>``, for a raw or a decoded path."""
    rest = path[len("/v2/"):]
    return "/v2/" + rest.partition("/")[2]


class Upstreams:
    """The agent's allowlist: the registries of its config and nothing else."""

    def __init__(self, registries, default_name=""):
        if not registries:
            raise ConfigError("no [[registries]] configured: the agent would have no "
                              "upstream to serve; add at least one")

        self.registries = registries
        self._by_name = {}
        self._by_path_segment = {}
        for registry in registries:
            self._by_name[registry.name] = registry
            self._by_name.setdefault(urlsplit(registry.url).netloc.lower(), registry)
            self._by_path_segment[registry.name] = registry
            segment = path_segment(registry.name)
            if segment is not None:
                self._by_path_segment[segment] = registry

        if default_name:
            if default_name.lower() not in self._by_name:
                raise ConfigError(f"default_registry {default_name!r} is not the name of "
                                  f"any [[registries]] entry")
            self.default = self._by_name[default_name.lower()]
        else:
            self.default = registries[0]

    def lookup(self, name):
        """Return the configured registry called ``name`` (host[:port]) or None."""
        return self._by_name.get(name.lower())

    def resolve(self, ns, proxy_host):
        """Pick the upstream of a request.

        ``ns`` is containerd's ``?ns=`` value and ``proxy_host`` the authority
        of an absolute-form (HTTP proxy) request target. Either must name a
        configured registry, otherwise the request is rejected with DENIED
        before anything is contacted; ``ns`` wins when both are given. Plain
        mirror requests go to the default.
        """
        chosen = None
        for name in (ns, proxy_host):
            if not name:
                continue
            registry = self.lookup(name)
            if registry is None:
                log.warning("rejected request for registry %r, which is not configured", name)
                raise denied(f"registry {name!r} is not configured on this agent")
            chosen = chosen or registry

        return chosen or self.default

    def route(self, ns, proxy_host, path):
        """Pick the upstream of a request and report whether its path names it.

        Returns ``(registry, prefixed)``. ``prefixed`` is true when the
        first segment of ``path`` (decoded, after ``/v2/``) names the
        registry, as for a registries.conf mirror location
        ``<agent>/<registry>``. The caller removes that segment before
        sending the request upstream. The path is read that way only when
        neither ``ns`` nor ``proxy_host`` names a registry, only when a
        repository and an endpoint follow the segment, and only for the
        names of configured registries (``host``, ``host:port`` or
        ``host_port``); any other first segment is part of a repository of
        the default registry.
        """
        if ns or proxy_host:
            return self.resolve(ns, proxy_host), False

        match = PATH_PREFIX_RE.match(path)
        if match:
            registry = self._by_path_segment.get(match.group("segment").lower())
            if registry is not None:
                return registry, True

        return self.default, False

    def announce_urls(self):
        """Return the tracker URLs of every configured sidecar."""
        urls = []
        for registry in self.registries:
            for sidecar in registry.sidecars:
                url = sidecar + "/announce"
                if url not in urls:
                    urls.append(url)
        return urls
