"""Docker Engine: daemon.json registry-mirrors for Docker Hub, and the agent as dockerd's HTTP(S) proxy.

dockerd uses registry mirrors only for Docker Hub images, and a mirror URL
may not have a path, so mirror requests name no registry and the agent
sends them to its default registry. For every other registry dockerd
reaches the agent as its proxy. Debian's docker.io 20.10 reads proxy
settings only from its environment, not from daemon.json, hence the
systemd drop-in.
"""

import json
import logging
import re

from registry_p2p.runtimes.changes import ConfigureError, FileChange, read_text, rooted

log = logging.getLogger(__name__)

DAEMON_JSON = "/etc/docker/daemon.json"
SERVICE_DROP_IN_DIRECTORY = "/etc/systemd/system/docker.service.d"
PROXY_DROP_IN_NAME = "registry-p2p-proxy.conf"
CERTS_DIRECTORY = "/etc/docker/certs.d"
DOCKER_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")
LOOPBACK_NO_PROXY = ["localhost", "127.0.0.0/8", "::1"]
# Docker Hub's token service and the CDN its blob redirects lead to. dockerd
# reaches them itself, so they must not go through the agent, which
# rejects CONNECTs to hosts outside its config.
# NOTE: taken from Docker Hub's public behaviour; not tested here, because
# the test machines reach no external network.
DOCKER_HUB_NO_PROXY = ["auth.docker.io", "production.cloudflare.docker.com"]
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                   "no_proxy")
# Matches one VARIABLE=value assignment of an Environment= line, quoted or not.
_ASSIGNMENT_RE = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)=([^"]*)"|([A-Za-z_][A-Za-z0-9_]*)=(\S*)')
JSON_INDENT = 2


def docker_hub_registry(upstreams):
    """Return the configured Docker Hub registry, or None."""
    return next((registry for registry in upstreams.registries
                 if registry.name in DOCKER_HUB_NAMES), None)


def merge_daemon_json(text, agent_url, source):
    """Return daemon.json ``text`` with ``agent_url`` first in registry-mirrors.

    Other keys and mirrors stay in their order. Text that already has the
    agent first is returned unchanged, whatever its formatting; otherwise
    the JSON is written with two-space indentation and a final newline.
    """
    if text is None or not text.strip():
        document = {}
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigureError(f"{source} is not valid JSON ({exc}); dockerd would not "
                                 f"start with it either; fix it, then run the command again"
                                 ) from None
    if not isinstance(document, dict):
        raise ConfigureError(f"{source} does not contain a JSON object")

    mirrors = document.get("registry-mirrors", [])
    if not isinstance(mirrors, list):
        raise ConfigureError(f"{source}: registry-mirrors is not a list")

    wanted = [agent_url, *[mirror for mirror in mirrors if mirror.rstrip("/") != agent_url]]
    if text is not None and mirrors == wanted:
        return text

    document["registry-mirrors"] = wanted
    return json.dumps(document, indent=JSON_INDENT) + "\n"


def parse_environment(text):
    """Return {name: value} of the Environment= lines of a systemd unit file."""
    values = {}
    for line in (text or "").splitlines():
        key, _, assignments = line.strip().partition("=")
        if key.strip() != "Environment":
            continue
        for match in _ASSIGNMENT_RE.finditer(assignments):
            name = match.group(1) or match.group(3)
            values[name] = match.group(2) if match.group(1) else match.group(4)

    return values


def render_proxy_drop_in(agent_url, no_proxy, source, https=True):
    """Return the systemd drop-in that makes dockerd use the agent as its HTTP proxy, and HTTPS proxy with ``https``."""
    lines = [
        f"# Written by registry-p2p agent configure --runtime docker from {source}.",
        "# dockerd sends registry requests through the registry-p2p agent. Entries",
        "# added to NO_PROXY are kept when the command runs again.",
        "[Service]",
        f'Environment="HTTP_PROXY={agent_url}"',
    ]
    if https:
        lines.append(f'Environment="HTTPS_PROXY={agent_url}"')
    lines.append(f'Environment="NO_PROXY={",".join(no_proxy)}"')

    return "\n".join(lines) + "\n"


def _no_proxy(existing_text, defaults=LOOPBACK_NO_PROXY):
    """Return the default NO_PROXY entries followed by those an operator added to our drop-in."""
    added = parse_environment(existing_text).get("NO_PROXY", "")
    entries = list(defaults)
    for entry in added.split(","):
        entry = entry.strip()
        if entry and entry not in entries:
            entries.append(entry)

    return entries


def _other_proxy_drop_ins(directory, own_name):
    """Return (file, variables) of other docker.service drop-ins that set proxy variables."""
    if not directory.is_dir():
        return []

    found = []
    for path in sorted(directory.glob("*.conf")):
        if path.name == own_name:
            continue
        names = sorted(set(parse_environment(read_text(path))) & set(PROXY_VARIABLES))
        if names:
            found.append((path, names))

    return found


def interception_ca_changes(ca_certificate, registries, root):
    """Return FileChanges that make dockerd trust the agent's TLS interception CA.

    When the CA certificate file exists, it is copied to
    /etc/docker/certs.d/<registry>/ca.crt for each configured registry with
    an https url, the ones whose CONNECTs the agent intercepts. Returns []
    when it does not exist.
    """
    certificate = read_text(ca_certificate)
    if certificate is None:
        return []

    changes = []
    for registry in registries:
        if not registry.url.startswith("https://"):
            continue
        path = rooted(root, f"{CERTS_DIRECTORY}/{registry.name}/ca.crt")
        changes.append(FileChange(path, read_text(path), certificate))

    return changes


def plan(upstreams, agent_address, root, source, ca_certificate, other_hosts="reject"):
    """Return the FileChanges for daemon.json, the proxy drop-in and the CA certificates, and warnings.

    ``ca_certificate`` is the agent's interception CA (None when
    proxy.ca_dir is empty) and ``other_hosts`` its proxy.other_hosts.
    HTTPS_PROXY points at the agent only when the agent can serve dockerd's
    CONNECTs: by intercepting them, or by tunnelling every other one.
    """
    agent_url = f"http://{agent_address}"
    changes = []
    warnings = []
    https = ca_certificate is not None or other_hosts == "tunnel"
    if ca_certificate is None:
        warnings.append("proxy.ca_dir is empty, so HTTPS_PROXY is not set: dockerd pulls "
                        "from https registries directly, without P2P. Run 'registry-p2p "
                        "agent ca' and set proxy.ca_dir to send them through the agent")
    elif not ca_certificate.exists():
        warnings.append(f"{ca_certificate} does not exist; create it with 'registry-p2p "
                        f"agent ca' before the agent starts")
    if https and other_hosts == "reject":
        warnings.append("proxy.other_hosts is \"reject\": while HTTPS_PROXY points at the "
                        "agent, dockerd cannot pull from https registries that are not in "
                        "[[registries]]. Add their hosts to NO_PROXY in the drop-in, or set "
                        "proxy.other_hosts = \"tunnel\"")

    hub = docker_hub_registry(upstreams)
    daemon_json = rooted(root, DAEMON_JSON)
    if hub is None:
        log.debug("no Docker Hub registry configured; %s is left alone", daemon_json)
    elif hub is not upstreams.default:
        warnings.append(
            f"{hub.name} is configured but default_registry is {upstreams.default.name}; "
            f"dockerd's mirror requests name no registry, so the agent would send Docker Hub "
            f"pulls there. {daemon_json} is left alone; set default_registry = "
            f"\"{hub.name}\" to use the agent as Docker Hub mirror")
    else:
        old = read_text(daemon_json)
        changes.append(FileChange(daemon_json, old, merge_daemon_json(old, agent_url,
                                                                       daemon_json)))

    no_proxy_defaults = LOOPBACK_NO_PROXY + (DOCKER_HUB_NO_PROXY if hub is not None else [])
    directory = rooted(root, SERVICE_DROP_IN_DIRECTORY)
    drop_in = directory / PROXY_DROP_IN_NAME
    old = read_text(drop_in)
    changes.append(FileChange(drop_in, old, render_proxy_drop_in(agent_url, _no_proxy(old, no_proxy_defaults),
                                                                 source, https)))
    for path, names in _other_proxy_drop_ins(directory, PROXY_DROP_IN_NAME):
        last = path if path.name > PROXY_DROP_IN_NAME else drop_in
        warnings.append(f"{path} also sets {', '.join(names)}; systemd applies drop-ins in "
                        f"name order, so for a variable set in both files the value in "
                        f"{last} wins")

    if ca_certificate is not None:
        changes += interception_ca_changes(ca_certificate, upstreams.registries, root)

    return changes, warnings


def next_steps():
    return ["run 'systemctl daemon-reload' and 'systemctl restart docker' for the proxy "
            "settings to take effect"]
