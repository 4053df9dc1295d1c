"""containerd: a hosts.toml per registry that lists the agent before the registry itself.

containerd 1.6 tries the hosts of a hosts.toml in file order and then its
``server``. A refused connection, a 404 or any other error status from a
host sends it on to the next one, so a dead agent costs one attempt and the
pull still succeeds from the registry.
"""

import logging
import tomllib
from pathlib import PurePosixPath

from registry_p2p.runtimes.changes import ConfigureError, FileChange, read_text, rooted
from registry_p2p.runtimes.toml_text import render_table, toml_string

log = logging.getLogger(__name__)

CONFIG_FILE = "/etc/containerd/config.toml"
DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CAPABILITIES = ["pull", "resolve"]
HOST_INDENT = "  "


def render_hosts_toml(server, agent_url):
    """Return a new hosts.toml: the agent first, then ``server``, the registry's URL (None: none)."""
    lines = [f"server = {toml_string(server)}", ""] if server is not None else []
    lines += render_table(("host", agent_url), {"capabilities": CAPABILITIES}, HOST_INDENT)

    return "\n".join(lines) + "\n"


def _header_path(line):
    """Return the key path of a table header line such as ``[host."http://a"]``, or None.

    The line is parsed with tomllib on its own, so quoting and spacing
    follow TOML exactly. Lines that are not a header return None.
    """
    stripped = line.strip()
    if not stripped.startswith("["):
        return None

    try:
        parsed = tomllib.loads(stripped)
    except tomllib.TOMLDecodeError:
        return None

    path = []
    node = parsed
    while node:
        if isinstance(node, list):
            # An [[array]] header: the new element is the last one.
            node = node[-1]
            continue
        if not isinstance(node, dict) or len(node) != 1:
            return None
        (key, node), = node.items()
        path.append(key)

    return tuple(path)


def _split_blocks(text):
    """Split TOML text into the lines before the first header and (header path, lines) blocks."""
    prelude = []
    blocks = []
    for line in text.splitlines(keepends=True):
        path = _header_path(line)
        if path is not None:
            blocks.append((path, [line]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            prelude.append(line)

    return prelude, blocks


def _ensure_newline(lines):
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"


def merge_hosts_toml(text, server, agent_url, source):
    """Return ``text`` (an existing hosts.toml) with the agent as its first host.

    The operator's other keys, hosts and comments stay. A ``server`` that
    is already set is kept. The agent's table is rewritten with the pull and
    resolve capabilities and the other keys it had. The result is parsed
    back, and ConfigureError is raised when it does not hold exactly the
    expected settings, for layouts that the line-based merge cannot handle.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigureError(f"{source} is not valid TOML ({exc}); fix or remove it, "
                             f"then run the command again") from None

    hosts = document.get("host", {})
    if not isinstance(hosts, dict):
        raise ConfigureError(f"{source}: 'host' is not a table; fix the file, then run the "
                             f"command again")

    agent_entry = dict(hosts.get(agent_url, {}))
    agent_entry["capabilities"] = CAPABILITIES
    expected = dict(document)
    if server is not None:
        expected.setdefault("server", server)
    expected["host"] = {agent_url: agent_entry,
                        **{url: entry for url, entry in hosts.items() if url != agent_url}}
    if expected == document and list(hosts)[:1] == [agent_url]:
        return text

    prelude, blocks = _split_blocks(text)
    blocks = [(path, lines) for path, lines in blocks if path[:2] != ("host", agent_url)]
    agent_lines = render_table(("host", agent_url), agent_entry, HOST_INDENT)
    agent_block = (("host", agent_url), [line + "\n" for line in agent_lines] + ["\n"])
    first_host = next((index for index, (path, _) in enumerate(blocks) if path[:1] == ("host",)),
                      len(blocks))
    blocks.insert(first_host, agent_block)
    if "server" not in document and server is not None:
        _ensure_newline(prelude)
        prelude += [f"server = {toml_string(server)}\n", "\n"]

    parts = list(prelude)
    for _, lines in blocks:
        _ensure_newline(parts)
        if lines is agent_block[1] and parts and parts[-1].strip():
            parts.append("\n")
        parts += lines
    merged = "".join(parts).rstrip("\n") + "\n"

    if tomllib.loads(merged) != expected or list(tomllib.loads(merged)["host"])[0] != agent_url:
        raise ConfigureError(
            f"cannot add the agent to {source} without rewriting it; add this table "
            f"before its other [host.\"...\"] tables by hand:\n" + "\n".join(agent_lines))

    return merged


def hosts_directory(config_text, source):
    """Return the hosts directory that containerd's CRI plugin reads, and warnings about it.

    ``config_text`` is containerd's config.toml, or None when it does not
    exist. Without ``config_path`` the CRI plugin ignores hosts directories,
    and only ``ctr --hosts-dir`` uses them.
    """
    if config_text is None:
        return DEFAULT_HOSTS_DIR, [f"{source} does not exist; containerd's CRI plugin reads "
                                   f"hosts.toml files only when its registry.config_path is set"]

    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigureError(f"{source} is not valid TOML ({exc})") from None

    registry = config.get("plugins", {}).get(CRI_PLUGIN, {}).get("registry", {})
    config_path = registry.get("config_path", "")
    warnings = []
    if registry.get("mirrors"):
        warnings.append(f"{source} sets [plugins.\"{CRI_PLUGIN}\".registry.mirrors], which "
                        f"containerd 1.6 does not allow next to config_path; move those "
                        f"mirrors to hosts.toml files")
    if not config_path:
        warnings.append(
            f"{source} does not set [plugins.\"{CRI_PLUGIN}\".registry] config_path, so "
            f"Kubernetes pulls ignore the hosts.toml files; set config_path = "
            f"\"{DEFAULT_HOSTS_DIR}\" and restart containerd")
        return DEFAULT_HOSTS_DIR, warnings

    # config_path may list several directories, separated by ':'; containerd
    # uses the first in which a registry's directory exists.
    return config_path.split(":")[0], warnings


def _host_directories(name):
    """Return the directory names containerd 1.6 looks for, in its order, for registry ``name``."""
    host, separator, port = name.rpartition(":")
    if separator and host:
        return [f"{host}_{port}_", name]
    return [name]


def plan(registries, agent_address, root, all_registries=False):
    """Return the FileChange of each configured registry's hosts.toml, and warnings.

    With ``all_registries``, ``_default/hosts.toml`` also lists the agent, for
    registries without a directory of their own. It names no server, so
    containerd falls back to each registry's own address, after a 403 from
    the agent for registries outside its config.
    """
    config_file = rooted(root, CONFIG_FILE)
    hosts_dir, warnings = hosts_directory(read_text(config_file), config_file)
    agent_url = f"http://{agent_address}"

    changes = []
    for registry in registries:
        candidates = [rooted(root, PurePosixPath(hosts_dir) / directory)
                      for directory in _host_directories(registry.name)]
        # containerd reads the first of these that exists, so an existing
        # one is the file to change.
        directory = next((path for path in candidates if path.is_dir()), candidates[-1])
        path = directory / "hosts.toml"
        old = read_text(path)
        if old is None or not old.strip():
            new = render_hosts_toml(registry.url, agent_url)
        else:
            new = merge_hosts_toml(old, registry.url, agent_url, path)
            _warn_about_server(old, registry, path, warnings)
        changes.append(FileChange(path, old, new))

    if all_registries:
        path = rooted(root, PurePosixPath(hosts_dir) / "_default" / "hosts.toml")
        old = read_text(path)
        if old is None or not old.strip():
            new = render_hosts_toml(None, agent_url)
        else:
            new = merge_hosts_toml(old, None, agent_url, path)
        changes.append(FileChange(path, old, new))

    return changes, warnings


def _warn_about_server(text, registry, path, warnings):
    server = tomllib.loads(text).get("server")
    if server is not None and server.rstrip("/") != registry.url:
        warnings.append(f"{path} keeps server = {toml_string(server)}, but the agent's config "
                        f"has url {toml_string(registry.url)} for {registry.name}; containerd "
                        f"falls back to the former when the agent fails")


def next_steps():
    return ["containerd reads hosts.toml files at each pull; no restart is needed once "
            "config_path is set"]

