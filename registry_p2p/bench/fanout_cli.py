"""``registry-p2p bench fanout``: its command-line options and the call into registry_p2p.bench.fanout."""

import argparse
import logging
import sys
from pathlib import Path

from registry_p2p import logs
from registry_p2p.bench.sizes import format_size, rate_argument, size_argument

log = logging.getLogger(__name__)

# Records that `bench fanout` may store, each with its own block in the Markdown file.
FANOUT_RECORDS = ("fanout", "fanout-tuning", "fanout-peers", "fanout-first-byte", "fanout-large")


def _bench_fanout(args):
    from registry_p2p.bench import fanout
    from registry_p2p.sandbox import SandboxError

    logs.setup("warning", "registry-p2p-bench")
    markdown = args.markdown or str(Path(args.output).with_suffix(".md"))
    command = (f"registry-p2p bench fanout --size {format_size(args.size).replace(' ', '')} "
               f"--rate {args.rate / 1e6:g}Mbit --agents {','.join(map(str, args.agents))} "
               f"--modes {','.join(args.modes)} --repeat {args.repeat}")
    variants = args.variant or [fanout.DEFAULT_VARIANT]
    for variant in args.variant or []:
        changes = ",".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}"
                           for key, value in variant.changes)
        command += f" --variant {variant.label}" + (f":{changes}" if changes else "")
    if args.name != "fanout":
        command += f" --name {args.name}"
    try:
        fanout.run(args.size, args.rate, args.agents, args.modes, args.repeat, args.output,
                   markdown, command, workdir=args.workdir, keep=args.keep,
                   variants=variants, scenario=args.name, trace_links=args.trace_links)
    except SandboxError as exc:
        print(f"registry-p2p: error: the simulated cluster failed: {exc}", file=sys.stderr)
        return 2


def _count_list(text):
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected agent counts such as 1,4,32, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"agent counts must be at least 1, got {text!r}")
    return counts


def _repeat_count(text):
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of runs, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"the number of runs must be at least 1, got {count}")
    return count


def _mode_list(text):
    from registry_p2p.bench.fanout import MODES

    modes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode {unknown[0] if unknown else text!r}; "
                                         f"known modes: {','.join(MODES)}")
    return modes


def _variant_argument(text):
    from registry_p2p.bench.fanout import parse_variant

    try:
        return parse_variant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(scenarios):
    """Add ``fanout`` to the ``registry-p2p bench`` subcommands."""
    fanout = scenarios.add_parser(
        "fanout", help="build a simulated cluster of network namespaces with shaped links "
                       "(a registry host and N agent hosts) and time N agents pulling one blob, "
                       "with and without P2P (needs root, iproute2 and docker-registry)")
    fanout.add_argument("--size", type=size_argument, default="128MiB",
                        help="blob size S (default 128MiB)")
    fanout.add_argument("--rate", type=rate_argument, default="50Mbit",
                        help="rate B of every link, each way, such as 50Mbit or 1Gbit "
                             "(default 50Mbit)")
    fanout.add_argument("--agents", type=_count_list, default="1,2,4,8,16,32",
                        help="agent counts N to run, comma-separated (default 1,2,4,8,16,32)")
    fanout.add_argument("--modes", type=_mode_list, default="direct,cold,preheated,late",
                        help="modes to run for each N (default direct,cold,preheated,late)")
    fanout.add_argument("--repeat", type=_repeat_count, default=1,
                        help="runs of each mode and N (default 1)")
    fanout.add_argument("--variant", type=_variant_argument, action="append",
                        metavar="LABEL[:KEY=VALUE,...]",
                        help="run every mode and N under this configuration too; KEY is "
                             "sidecar.<table>.<key> or agent.<table>.<key> for a config key, or "
                             "a libtorrent setting name for both; repeatable (default: one "
                             "variant, \"default\", with the shipped configuration)")
    fanout.add_argument("--name", choices=FANOUT_RECORDS, default="fanout",
                        help="name of the record to store, so that separate experiments keep "
                             "separate records and blocks (default fanout)")
    fanout.add_argument("--output", default="docs/benchmarks.json",
                        help="JSON file of benchmark records to update (default docs/benchmarks.json)")
    fanout.add_argument("--markdown",
                        help="Markdown file whose generated blocks are rewritten "
                             "(default: --output with the suffix .md)")
    fanout.add_argument("--workdir", help="directory for the registry, caches and logs "
                                          "(default: a new temporary directory, removed at the end)")
    fanout.add_argument("--keep", action="store_true", help="keep the work directory")
    fanout.add_argument("--trace-links", action="store_true",
                        help="sample the byte counters of every host's link every 0.5 s "
                             "and write them to links.json in each run's directory (keeps "
                             "the work directory)")
    fanout.set_defaults(func=_bench_fanout)
