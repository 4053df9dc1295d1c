"""``registry-p2p demo``: the whole system on one machine, on loopback.

Starts docker-registry (filesystem storage), one sidecar and N agents,
pushes a generated image with skopeo, pulls it through every agent at once
and reports where each agent's bytes came from.
"""

import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry

REPOSITORY = "demo/app"
LAYER_COUNT = 3
MIB = 1024 * 1024


def _say(message):
    print(message, flush=True)


def _mib(value):
    return f"{value / MIB:8.1f} MiB"


class _Progress:
    """Bytes received per agent, printed once a second while the pulls run."""

    def __init__(self, names, total):
        self.received = dict.fromkeys(names, 0)
        self.total = total
        self._lock = threading.Lock()

    def counter(self, name):
        def add(count):
            with self._lock:
                self.received[name] += count
        return add

    def line(self):
        with self._lock:
            parts = [f"{name} {100 * received // self.total:3d}%"
                     for name, received in self.received.items()]
        return "  pulling: " + "  ".join(parts)


def _pull_all(agents, registry, progress):
    results = {}

    def pull(name, agent):
        results[name] = pull_image(agent.url, registry.hostport, REPOSITORY, "v1",
                                   progress=progress.counter(name))

    threads = [threading.Thread(target=pull, args=(name, agent), daemon=True)
               for name, agent in agents.items()]
    for thread in threads:
        thread.start()

    interactive = sys.stdout.isatty()
    while any(thread.is_alive() for thread in threads):
        time.sleep(1)
        if interactive:
            print("\r" + progress.line(), end="", flush=True)
        else:
            _say(progress.line())
    if interactive:
        print("\r" + progress.line(), flush=True)

    return results


def _report(agents, results, image, registry, sidecar):
    layer_digests = {layer.digest.split(":", 1)[1] for layer in image.layers}
    layer_bytes = sum(layer.size for layer in image.layers)

    _say("")
    _say(f"{'agent':8} {'time':>8} {'from registry':>16} {'from sidecar':>14} {'from peers':>14}")
    totals = {"registry": 0, "sidecar": 0, "peers": 0}
    for name, agent in agents.items():
        blobs = agent.stats()["blobs"]
        from_registry = sum(blobs.get(key, {}).get("from_registry", 0) for key in layer_digests)
        from_sidecar = sum(blobs.get(key, {}).get("from_sidecars", 0) for key in layer_digests)
        from_peers = sum(blobs.get(key, {}).get("from_peers", 0) for key in layer_digests)
        totals["registry"] += from_registry
        totals["sidecar"] += from_sidecar
        totals["peers"] += from_peers
        _say(f"{name:8} {results[name].seconds:7.1f}s {_mib(from_registry):>16} "
             f"{_mib(from_sidecar):>14} {_mib(from_peers):>14}")

    pulled = len(agents) * layer_bytes
    from_registry_host = totals["registry"] + totals["sidecar"]
    _say("")
    _say(f"Layers: {len(image.layers)}, {_mib(layer_bytes).strip()} in all; "
         f"{len(agents)} agents pulled {_mib(pulled).strip()}.")
    _say(f"The registry host sent {_mib(from_registry_host).strip()} "
         f"(registry: {_mib(registry.blob_bytes_sent()).strip()} of blob GETs, "
         f"sidecar seeder: {_mib(sidecar.stats()['uploaded_bytes']).strip()}); "
         f"{100 * totals['peers'] // max(pulled, 1)}% of the layer bytes came from peers.")

    return all(result.complete for result in results.values())


def run_demo(agents=3, layer_mib=64, workdir=None, keep=False):
    """Run the demo; return 0 if every agent got every blob with the right sha256."""
    if agents < 1 or layer_mib < 1:
        raise SandboxError("--agents and --layer-mib must be at least 1")

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="registry-p2p-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    started = []
    try:
        fate = "kept" if keep or workdir else "removed at the end; --keep keeps it"
        _say(f"Work directory (logs, storage, caches; {fate}): {root}")
        registry = Registry(root / "registry").start()
        started.append(registry)
        _say(f"docker-registry 2.8 on {registry.url}, storage {registry.root_directory}")

        _say(f"Building an image of {LAYER_COUNT} layers of {layer_mib} MiB ...")
        image = build_image(root / "image", [RandomLayer(layer_mib * MIB, seed=index)
                                             for index in range(LAYER_COUNT)])
        push_image(image, f"{registry.hostport}/{REPOSITORY}:v1")
        _say(f"Pushed {registry.hostport}/{REPOSITORY}:v1 with skopeo")

        sidecar = SidecarService(root / "sidecar", registry.url, registry.root_directory)
        started.append(sidecar.start())
        _say(f"Sidecar (proxy, seeder, tracker) on {sidecar.url}")

        services = {}
        entry = {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url]}
        for index in range(agents):
            agent = AgentService(root / f"agent{index + 1}", [entry])
            started.append(agent.start())
            services[f"agent{index + 1}"] = agent
        _say(f"{agents} agents on " + ", ".join(agent.url for agent in services.values()))

        _say("Pulling the image through every agent at once ...")
        layer_bytes = sum(layer.size for layer in image.layers)
        progress = _Progress(services, layer_bytes + 1)
        results = _pull_all(services, registry, progress)

        ok = _report(services, results, image, registry, sidecar)
        _say("Every agent got every blob with the right sha256." if ok
             else "Some blobs were missing or wrong; see the logs in the work directory.")
        return 0 if ok else 1
    finally:
        # A second Ctrl-C while stopping would leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if started:
            _say("Stopping the agents, the sidecar and docker-registry ...")
        for component in reversed(started):
            component.stop()
        if keep or workdir:
            _say(f"Logs and data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
