"""CRI-O, podman and skopeo: a registries.conf drop-in with the agent as each registry's first mirror.

containers/image requests ``/v2/<segment>/<repository>/...`` from a mirror
whose location is ``<agent>/<segment>``, and the agent routes by that
segment (see ``registry_p2p.agent.upstreams.path_segment``). A
``[[registry]]`` table in a drop-in replaces every earlier table with the
same prefix, from the main file or from drop-ins whose names sort first,
so the drop-in carries the earlier table's settings over.
"""

import logging
import tomllib

from registry_p2p.agent.upstreams import path_segment
from registry_p2p.runtimes.changes import ConfigureError, FileChange, read_text, rooted
from registry_p2p.runtimes.toml_text import render_table

log = logging.getLogger(__name__)

MAIN_FILE = "/etc/containers/registries.conf"
DROP_IN_DIRECTORY = "/etc/containers/registries.conf.d"
DROP_IN_NAME = "registry-p2p.conf"


def _prefix(entry):
    """Return the prefix of a [[registry]] table as containers/image computes it."""
    return (entry.get("prefix") or entry.get("location") or "").rstrip("/")


def mirror_location(agent_address, registry_name):
    """Return the mirror location that makes containers/image name ``registry_name`` in its path.

    Raises ConfigureError for a registry named by an IPv6 address, which no
    mirror path can contain.
    """
    segment = path_segment(registry_name)
    if segment is None:
        raise ConfigureError(f"registry {registry_name!r} is named by an IPv6 address, which "
                             f"a registries.conf mirror location cannot carry; give it a host "
                             f"name in the agent's config")

    return f"{agent_address}/{segment}"


def registry_entry(registry, agent_address, earlier=None):
    """Return the [[registry]] table for ``registry``, starting from an ``earlier`` table.

    The agent's mirror goes first and is insecure (plain HTTP). Other keys
    and mirrors of ``earlier`` are kept. Without an earlier table the
    location is the registry's name, insecure when its URL is http://.
    """
    mirror = {"location": mirror_location(agent_address, registry.name), "insecure": True}
    if earlier is None:
        entry = {"location": registry.name}
        if registry.url.startswith("http://"):
            entry["insecure"] = True
    else:
        entry = {key: value for key, value in earlier.items() if key != "mirror"}

    others = [item for item in (earlier or {}).get("mirror", [])
              if item.get("location", "").rstrip("/") != mirror["location"]]
    entry["mirror"] = [mirror, *others]

    return entry


def render_drop_in(entries, source):
    """Return the drop-in text for the [[registry]] tables ``entries``."""
    lines = [f"# Written by registry-p2p agent configure --runtime crio from {source}.",
             "# Pulls of these registries try the registry-p2p agent first. The command",
             "# rewrites this file; edit the agent's config or the [[registry]] tables",
             "# elsewhere, then run it again."]
    for entry in entries:
        mirrors = entry["mirror"]
        table = {key: value for key, value in entry.items() if key != "mirror"}
        lines += ["", *render_table(("registry",), table, array=True)]
        for mirror in mirrors:
            lines += ["", *render_table(("registry", "mirror"), mirror, array=True)]

    return "\n".join(lines) + "\n"


def _load(path):
    """Return the [[registry]] tables of a registries.conf file, or [] when it does not exist."""
    text = read_text(path)
    if text is None:
        return []

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigureError(f"{path} is not valid TOML ({exc}); containers/image cannot "
                             f"read it either; fix it, then run the command again") from None

    entries = document.get("registry", [])
    if not isinstance(entries, list):
        raise ConfigureError(f"{path}: 'registry' is not an array of tables")

    return entries


def earlier_tables(root, drop_in):
    """Return the tables that the drop-in replaces and the files read after it, both by prefix.

    The first is {prefix: (table, file)}, the second {prefix: file}. The
    main file is read first and the drop-ins whose names sort before ours
    after it, as containers/image does, so the last table per prefix wins.
    """
    directory = rooted(root, DROP_IN_DIRECTORY)
    drop_ins = sorted(directory.glob("*.conf")) if directory.is_dir() else []
    before = [rooted(root, MAIN_FILE)] + [path for path in drop_ins if path.name < drop_in.name]
    after = [path for path in drop_ins if path.name > drop_in.name]

    replaced = {}
    for path in before:
        for entry in _load(path):
            replaced[_prefix(entry)] = (entry, path)

    overriding = {}
    for path in after:
        for entry in _load(path):
            overriding.setdefault(_prefix(entry), path)

    return replaced, overriding


def plan(registries, agent_address, root, source):
    """Return the drop-in's FileChange and warnings about the tables it replaces or that override it."""
    path = rooted(root, DROP_IN_DIRECTORY) / DROP_IN_NAME
    replaced, overriding = earlier_tables(root, path)

    entries = []
    warnings = []
    for registry in registries:
        earlier, earlier_file = replaced.get(registry.name, (None, None))
        if earlier is not None:
            warnings.append(
                f"{earlier_file} has a [[registry]] table for {registry.name}, which "
                f"{path} replaces; its settings are copied into {path}, so change them "
                f"there from now on, or change them in {earlier_file} and run the command "
                f"again")
        if registry.name in overriding:
            warnings.append(
                f"{overriding[registry.name]} has a [[registry]] table for {registry.name} "
                f"and is read after {path}, so CRI-O, podman and skopeo ignore the agent "
                f"for {registry.name}; remove that table or rename the file to sort first")
        entries.append(registry_entry(registry, agent_address, earlier))

    new = render_drop_in(entries, source)
    return [FileChange(path, read_text(path), new)], warnings


def next_steps():
    return ["podman and skopeo read registries.conf at each run; CRI-O reads it again "
            "after 'systemctl reload crio'"]

