"""``registry-p2p agent configure``: write the runtime settings that send pulls through the agent."""

import argparse
import os
import logging
import sys
from pathlib import Path

from registry_p2p import config as configuration
from registry_p2p.agent.upstreams import Upstreams
from registry_p2p.runtimes import changes as files, containerd, containers, docker

log = logging.getLogger(__name__)

DEFAULT_AGENT_CONFIG = "/etc/registry-p2p/agent.toml"
RUNTIMES = ("containerd", "crio", "docker")
# The certificate that `registry-p2p agent ca` writes in proxy.ca_dir; docker's
# certs.d gets a copy of it for each registry whose CONNECTs the agent intercepts.
INTERCEPTION_CA_CERTIFICATE = "ca.crt"


def agent_address(listen):
    """Return the host:port at which runtimes on this node reach the agent's ``listen`` address."""
    host, port = listen
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"

    if ":" in host:
        return f"[{host}]:{port}"

    return f"{host}:{port}"


def plan(runtime, config_path, root, all_registries=False):
    """Return the FileChanges, warnings and next steps for ``runtime`` from the agent's config."""
    config = configuration.load(configuration.AGENT_OPTIONS, config_path)
    upstreams = Upstreams(config["registries"], config["default_registry"])
    address = agent_address(config["listen"])

    if runtime == "containerd":
        planned, warnings = containerd.plan(upstreams.registries, address, root,
                                            all_registries)
        steps = containerd.next_steps()
    elif runtime == "crio":
        planned, warnings = containers.plan(upstreams.registries, address, root, config_path)
        steps = containers.next_steps()
    else:
        ca_dir = config["proxy.ca_dir"]
        ca_certificate = Path(ca_dir) / INTERCEPTION_CA_CERTIFICATE if ca_dir else None
        planned, warnings = docker.plan(upstreams, address, root, config_path, ca_certificate,
                                        config["proxy.other_hosts"])
        steps = docker.next_steps()

    return planned, warnings, steps


def run(args):
    """Show (``--dry-run``) or write the planned files; return the exit status."""
    if args.all_registries and args.runtime != "containerd":
        raise files.ConfigureError("--all-registries applies to --runtime containerd only")

    config_path = os.path.abspath(args.config or DEFAULT_AGENT_CONFIG)
    planned, warnings, steps = plan(args.runtime, config_path, args.root,
                                    args.all_registries)
    for warning in warnings:
        print(f"registry-p2p: warning: {warning}", file=sys.stderr)

    changed = [change for change in planned if change.changed]
    for change in planned:
        if not change.changed:
            print(f"{change.path}: unchanged")
        elif args.dry_run:
            sys.stdout.write(change.diff())
        else:
            files.write(change)
            print(f"{change.path}: written")

    if args.dry_run:
        print(f"dry run: {len(changed)} of {len(planned)} files would change; nothing written")
    elif changed:
        for step in steps:
            print(f"next: {step}")

    return 0


def add_parser(agent_commands):
    """Add ``configure`` to the subcommands of ``registry-p2p agent``."""
    parser = agent_commands.add_parser(
        "configure",
        help="point a container runtime on this node at the agent, for the registries in "
             "the agent's config",
        description="Write the settings that make a container runtime pull the agent's "
                    "registries through the agent, keeping existing settings. Running it "
                    "again changes nothing unless the agent's config or those files changed.")
    parser.add_argument(
        "--runtime", required=True, choices=RUNTIMES,
        help="containerd: a certs.d/<registry>/hosts.toml per registry; crio: a "
             "registries.conf drop-in, which podman and skopeo read too; docker: "
             "daemon.json registry-mirrors for Docker Hub and a systemd drop-in that makes "
             "the agent dockerd's proxy")
    parser.add_argument("--all-registries", action="store_true",
                        help="containerd only: also list the agent in _default/hosts.toml, "
                             "for registries without a hosts.toml of their own (those "
                             "outside the agent's config then cost a 403 before containerd "
                             "goes to the registry)")
    parser.add_argument("--dry-run", action="store_true",
                        help="show the changes as a unified diff and write nothing")
    # SUPPRESS keeps `agent -c FILE configure` working: without -c here, the
    # value given before `configure` stays.
    parser.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help=f"agent config file (TOML; default {DEFAULT_AGENT_CONFIG})")
    parser.add_argument("--root", default="/",
                        help="directory under which every runtime file is read and written, "
                             "as in DIR/etc/containerd/certs.d (default /)")
    parser.set_defaults(func=run)

    return parser
