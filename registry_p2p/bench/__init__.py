"""Benchmarks that run the product against real components on this machine.

Each scenario (``registry-p2p bench <scenario>``) starts what it needs,
measures, stops everything it started and stores one record under its name
in a JSON file (``docs/benchmarks.json`` by default). ``registry-p2p bench
report`` renders those records into the generated blocks of
``docs/benchmarks.md``. SCENARIOS names the module of each scenario by import
path. A scenario module has ``render(record)``, which returns the Markdown
of the scenario's generated block, and may have ``plot(record, directory)``,
which writes its PNG plots under ``directory``/benchmarks/.
"""

import contextlib
import importlib
import logging
import signal

from registry_p2p.errors import RegistryP2PError

log = logging.getLogger(__name__)

SCENARIOS = {
    "swift": "registry_p2p.bench.swift",
    "tracker": "registry_p2p.bench.tracker",
    "fanout": "registry_p2p.bench.fanout",
    "fanout-tuning": "registry_p2p.bench.fanout",
    "fanout-first-byte": "registry_p2p.bench.fanout",
    "fanout-large": "registry_p2p.bench.fanout",
    "fanout-peers": "registry_p2p.bench.fanout",
}


class BenchError(RegistryP2PError):
    """A benchmark could not run or read back wrong bytes."""


def scenario_module(name):
    """Import and return the module of scenario ``name``."""
    try:
        module_name = SCENARIOS[name]
    except KeyError:
        raise BenchError(f"unknown benchmark scenario {name!r}; "
                         f"known scenarios: {', '.join(sorted(SCENARIOS))}") from None

    return importlib.import_module(module_name)


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def running(component):
    """Start ``component`` (a sandbox object with start() and stop()) and stop it on leaving.

    The component is also stopped after Ctrl-C and after SIGTERM, which
    becomes SystemExit inside the block. Sandbox processes run in their own
    process groups, so a signal sent to this process alone would leave them
    running. Ctrl-C is ignored while they stop, because a second Ctrl-C
    would interrupt stop() and leave them behind too.
    """
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        component.start()
        yield component
    finally:
        previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            component.stop()
        finally:
            signal.signal(signal.SIGINT, previous_sigint)
            signal.signal(signal.SIGTERM, previous_sigterm)
