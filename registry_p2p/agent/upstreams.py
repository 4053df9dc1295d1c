"""Choice of the upstream registry for an agent request, limited to the configured ones."""

import logging
from urllib.parse import urlsplit

from registry_p2p.errors import ConfigError, denied

log = logging.getLogger(__name__)


class Upstreams:
    """The agent's allowlist: the registries of its config and nothing else."""

    def __init__(self, registries, default_name=""):
        if not registries:
            raise ConfigError("no [[registries]] configured: the agent would have no "
                              "upstream to serve; add at least one")

        self.registries = registries
        self._by_name = {}
        for registry in registries:
            self._by_name[registry.name] = registry
            self._by_name.setdefault(urlsplit(registry.url).netloc.lower(), registry)

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

    def announce_urls(self):
        """Return the tracker URLs of every configured sidecar."""
        urls = []
        for registry in self.registries:
            for sidecar in registry.sidecars:
                url = sidecar + "/announce"
                if url not in urls:
                    urls.append(url)
        return urls
