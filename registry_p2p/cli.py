"""The ``registry-p2p`` command."""

import argparse
import faulthandler
import logging
import sys
from pathlib import Path

from registry_p2p import __version__, config as configuration, logs, storage, tls
from registry_p2p.agent.upstreams import Upstreams
from registry_p2p.errors import ConfigError, RegistryP2PError
from registry_p2p.runtimes import command as configure

log = logging.getLogger(__name__)


def check_settings(settings):
    """Check [torrent.settings] against libtorrent, which only the session module imports."""
    from registry_p2p import session

    session.check_settings(settings)


def _sidecar(args):
    from registry_p2p.sidecar.main import run

    config = configuration.load(configuration.SIDECAR_OPTIONS, args.config)
    check_settings(config["torrent.settings"])
    logs.setup(config["log_level"], "registry-p2p-sidecar")
    run(config)


def _agent(args):
    from registry_p2p.agent.main import run

    if args.config is None:
        raise ConfigError("the agent needs its config file: registry-p2p agent "
                          "-c /etc/registry-p2p/agent.toml")

    config = configuration.load(configuration.AGENT_OPTIONS, args.config)
    check_settings(config["torrent.settings"])
    logs.setup(config["log_level"], "registry-p2p-agent")
    run(config)


def _agent_ca(args):
    from registry_p2p.agent import certificates
    from registry_p2p.agent.connect_policy import ConnectPolicy, registry_target

    config_path = args.ca_config or args.config
    config = None
    names = []
    directory = args.dir
    if config_path is not None:
        config = configuration.load(configuration.AGENT_OPTIONS, config_path)
        policy = ConnectPolicy(config["registries"], intercept=True)
        names = [registry.name for registry in policy.intercepted_registries()]
        directory = directory or config["proxy.ca_dir"]
        if not names:
            # A CA without name constraints could sign for any host, and
            # this config would never use it.
            raise ConfigError(f"{config_path} lists no registry with an https url, so the "
                              f"agent intercepts nothing and needs no CA; add the https "
                              f"registries first, or run without -c for a CA without name "
                              f"constraints")
    directory = Path(directory or certificates.DEFAULT_CA_DIR)

    hosts = [registry_target(name).host for name in names]
    ca = certificates.build_ca(certificates.default_common_name(), hosts)
    try:
        key_path, cert_path = certificates.write_ca(ca, directory, force=args.force)
    except OSError as exc:
        raise ConfigError(f"cannot write the CA in {directory}: {exc.strerror}"
                          + (f" ({exc.filename})" if exc.filename else "")) from None

    print(f"wrote the CA's private key to {key_path} (mode 0600) and its certificate to "
          f"{cert_path}")
    if hosts:
        print(f"name constraints: leaf certificates only for {', '.join(sorted(set(hosts)))}")
    print("install the certificate for Docker Engine as:")
    for path in certificates.installed_ca_paths(names or ["<registry host[:port]>"]):
        print(f"  {path}")
    if config is None or config["proxy.ca_dir"] != str(directory):
        print(f'and set ca_dir = "{directory}" in the [proxy] table of the agent config')


def _demo(args):
    from registry_p2p.demo import run_demo

    logs.setup("warning", "registry-p2p-demo")
    return run_demo(agents=args.agents, layer_mib=args.layer_mib, workdir=args.workdir,
                    keep=args.keep)


def _bench_swift(args):
    from registry_p2p.bench import swift
    from registry_p2p.bench.sizes import format_size
    from registry_p2p.sandbox import SandboxError

    logs.setup("warning", "registry-p2p-bench")
    markdown = args.markdown or str(Path(args.output).with_suffix(".md"))
    command = (f"registry-p2p bench swift --size {format_size(args.size).replace(' ', '')} "
               f"--segment-size {format_size(args.segment_size).replace(' ', '')} "
               f"--repeat {args.repeat}")
    try:
        swift.run(args.size, args.segment_size, args.repeat, args.output, markdown, command,
                  workdir=args.workdir, keep=args.keep)
    except SandboxError as exc:
        print(f"registry-p2p: error: the sandbox Swift failed: {exc}", file=sys.stderr)
        return 2


def _bench_report(args):
    from registry_p2p.bench import report

    logs.setup("warning", "registry-p2p-bench")
    report.render_file(args.input, args.output)
    print(f"{args.output}: regenerated from {args.input}")


def _add_bench_parser(commands):
    from registry_p2p.bench import fanout_cli, tracker as tracker_bench
    from registry_p2p.bench.sizes import size_argument

    bench = commands.add_parser(
        "bench", help="run a benchmark on this machine and record it in docs/benchmarks.json, "
                      "or regenerate docs/benchmarks.md from that file")
    scenarios = bench.add_subparsers(dest="scenario", required=True)

    swift = scenarios.add_parser(
        "swift", help="start a single-node Swift, write a blob as the registry's swift driver "
                      "does (a DLO) and read it with the storage driver and with one plain GET "
                      "(needs the Debian Swift packages and root)")
    swift.add_argument("--size", type=size_argument, default="1GiB",
                       help="blob size, such as 1GiB or 500MB (default 1GiB)")
    swift.add_argument("--segment-size", type=size_argument, default="20MiB",
                       help="DLO segment size, the registry's storage.swift.chunksize "
                            "(default 20MiB, the registry's default)")
    swift.add_argument("--repeat", type=int, default=3,
                       help="number of times to read the blob each way (default 3)")
    swift.add_argument("--output", default="docs/benchmarks.json",
                       help="JSON file of benchmark records to update (default docs/benchmarks.json)")
    swift.add_argument("--markdown",
                       help="Markdown file whose generated blocks are rewritten "
                            "(default: --output with the suffix .md)")
    swift.add_argument("--workdir", help="directory for Swift's data and logs (default: a new "
                                         "temporary directory, removed at the end)")
    swift.add_argument("--keep", action="store_true", help="keep the work directory")
    swift.set_defaults(func=_bench_swift)

    fanout_cli.add_parser(scenarios)

    report = scenarios.add_parser(
        "report", help="rewrite the generated blocks of the Markdown file from the JSON records")
    report.add_argument("--input", default="docs/benchmarks.json",
                        help="JSON file of benchmark records (default docs/benchmarks.json)")
    report.add_argument("--output", default="docs/benchmarks.md",
                        help="Markdown file to update (default docs/benchmarks.md)")
    report.set_defaults(func=_bench_report)

    tracker_bench.add_parser(scenarios)


def _example_config(args):
    options = {"sidecar": configuration.SIDECAR_OPTIONS, "agent": configuration.AGENT_OPTIONS}
    title = f"registry-p2p {args.process} configuration"
    sys.stdout.write(configuration.example_config(options[args.process], title))


def _check_config(args):
    options = {"sidecar": configuration.SIDECAR_OPTIONS, "agent": configuration.AGENT_OPTIONS}
    process = args.process or configuration.guess_process(args.config)
    config = configuration.load(options[process], args.config)
    check_settings(config["torrent.settings"])
    if process == "agent":
        from registry_p2p.agent.main import build_connect_handler

        Upstreams(config["registries"], config["default_registry"])
        build_connect_handler(config)
    else:
        storage.check_driver_config(config)
        tls.check_server_tls(config)
    print(f"{args.config}: valid {process} configuration")


def _status(args):
    from registry_p2p import status

    url = args.url
    if url is None:
        config_path = args.config or status.DEFAULT_CONFIGS[args.process]
        if args.config is None and not Path(config_path).exists():
            raise ConfigError(f"{args.process} config file {config_path} not found; name the "
                              f"process with -c CONFIG or --url URL")
        url = status.url_from_config(args.process, config_path)

    print(status.status(args.process, url.rstrip("/"), args.timeout))


def _positive_seconds(text):
    """Parse a command-line duration in seconds that must be more than 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")

    return seconds


def build_parser():
    parser = argparse.ArgumentParser(
        prog="registry-p2p",
        description="Peer-to-peer (BitTorrent) distribution of Docker registry blobs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    sidecar = commands.add_parser("sidecar", help="run the sidecar on a registry host")
    sidecar.add_argument("-c", "--config", required=True, help="sidecar config file (TOML)")
    sidecar.set_defaults(func=_sidecar)

    agent = commands.add_parser("agent", help="run the agent on a node, configure container "
                                              "runtimes to use it, or create its TLS CA")
    agent.add_argument("-c", "--config", help="agent config file (TOML); required to run "
                                              "the agent")
    agent.set_defaults(func=_agent)
    agent_commands = agent.add_subparsers(dest="agent_command", title="subcommands")
    configure.add_parser(agent_commands)
    ca = agent_commands.add_parser(
        "ca", help="create the local CA with which the agent intercepts TLS for the "
                   "configured registries")
    ca.add_argument("--dir", help="directory for ca.key and ca.crt (default: proxy.ca_dir "
                                  "of --config, else /etc/registry-p2p/ca)")
    ca.add_argument("--force", action="store_true", help="replace an existing CA")
    ca.add_argument("-c", "--config", dest="ca_config",
                    help="agent config file: the CA then permits only its https registries "
                         "(X.509 name constraints)")
    ca.set_defaults(func=_agent_ca)

    demo = commands.add_parser(
        "demo", help="run docker-registry, a sidecar and agents on this machine and pull "
                     "an image through every agent at once (needs root)")
    demo.add_argument("--agents", type=int, default=3, help="number of agents (default 3)")
    demo.add_argument("--layer-mib", type=int, default=64,
                      help="size of each of the image's 3 big layers in MiB (default 64)")
    demo.add_argument("--workdir", help="directory for logs and data (default: a new "
                                        "temporary directory, removed at the end)")
    demo.add_argument("--keep", action="store_true", help="keep the work directory")
    demo.set_defaults(func=_demo)

    example = commands.add_parser("example-config",
                                  help="print a commented config with every default")
    example.add_argument("process", choices=("sidecar", "agent"))
    example.set_defaults(func=_example_config)

    check = commands.add_parser(
        "check-config", help="validate a config file and exit",
        description="Validate a config file as the sidecar or agent would at start, "
                    "without starting anything. Without sidecar or agent, the file's "
                    "keys tell which it is.")
    check.add_argument("process", nargs="?", choices=("sidecar", "agent"))
    check.add_argument("config", help="config file (TOML)")
    check.set_defaults(func=_check_config)

    status = commands.add_parser(
        "status", help="summarize a running agent or sidecar: swarms, peers, cache use and "
                       "recent fallbacks")
    status.add_argument("process", choices=("sidecar", "agent"))
    where = status.add_mutually_exclusive_group()
    where.add_argument("-c", "--config",
                       help="config file whose listen address the process serves on "
                            "(default /etc/registry-p2p/<process>.toml)")
    where.add_argument("--url", help="base URL of the process, such as http://127.0.0.1:5080")
    status.add_argument("--timeout", type=_positive_seconds, default=10.0,
                        help="seconds to wait for the process to respond (default 10)")
    status.set_defaults(func=_status)

    _add_bench_parser(commands)

    return parser


def main(argv=None):
    # A crash inside libtorrent then leaves every thread's Python stack in
    # the log.
    faulthandler.enable()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except RegistryP2PError as exc:
        print(f"registry-p2p: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
