"""`registry-p2p bench fanout` end to end on a small cluster, against a real docker-registry and sidecar.

No time is asserted, because the machine may be busy. The test checks what
the records must show at any speed. Every client got the blob, and direct
mode made the registry host send it once per agent. In P2P mode the agents
counted every byte from the sidecar or from peers. Nothing of the cluster
is left behind.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from registry_p2p.bench import fanout

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
SIZE = 6 * MIB
AGENTS = 3


def _cluster_namespaces():
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in result.stdout.splitlines() if line.startswith("rp2p-")}


@pytest.fixture
def short_tmpdir():
    """A directory with a short path: the seeder's Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fan-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_bench_fanout_records_direct_and_p2p_runs(tmp_path, short_tmpdir):
    output = tmp_path / "docs" / "benchmarks.json"
    namespaces_before = _cluster_namespaces()

    result = subprocess.run(
        [sys.executable, "-m", "registry_p2p", "bench", "fanout", "--size", "6MiB",
         "--rate", "200Mbit", "--agents", f"1,{AGENTS}", "--modes", "direct,cold",
         "--workdir", str(short_tmpdir / "work"), "--output", str(output), "--trace-links"],
        capture_output=True, text=True, env=dict(os.environ), timeout=600, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(output.read_text())["scenarios"]["fanout"]
    runs = {run["mode"]: run for run in record["runs"] if run["agents"] == AGENTS}
    assert set(runs) == {"direct", "cold"}

    direct, cold = runs["direct"], runs["cold"]
    for run in (direct, cold):
        assert run["agents"] == AGENTS
        assert len(run["agent_seconds"]) == AGENTS
        assert all(seconds > 0 for seconds in run["agent_seconds"])
        assert all(received >= SIZE for received in run["agent_received_bytes"])

    # Direct: every agent streamed the blob from the registry.
    assert direct["sources"] == ["registry"]
    assert direct["from_registry_bytes"] == [SIZE] * AGENTS
    assert AGENTS * SIZE <= direct["registry_egress_bytes"] < AGENTS * SIZE * 1.1

    # P2P: every byte came over BitTorrent, from the sidecar or from peers.
    assert cold["sources"] == ["p2p"]
    assert cold["fallbacks"] == 0
    assert sum(cold["from_sidecars_bytes"]) + sum(cold["from_peers_bytes"]) >= AGENTS * SIZE * 0.9
    assert cold["registry_egress_bytes"] >= SIZE
    assert cold["sidecar_peak_rss_bytes"] > 0
    assert cold["agent_peak_rss_bytes"] > 0

    # The link trace of the direct run saw the registry host send the
    # copies that the record counts, and each agent link receive one.
    traces = list((short_tmpdir / "work").glob(f"run*-direct-{AGENTS}/links.json"))
    assert len(traces) == 1
    trace = json.loads(traces[0].read_text())
    assert trace["hosts"] == ["registry"] + [f"agent{index}" for index in range(AGENTS)]
    first, last = trace["samples"][0], trace["samples"][-1]
    assert last[1][1] - first[1][1] <= direct["registry_egress_bytes"]
    assert last[1][1] - first[1][1] >= 0.9 * direct["registry_egress_bytes"]
    for agent in range(AGENTS):
        assert last[2 + agent][0] - first[2 + agent][0] >= 0.9 * SIZE
    assert fanout.link_use(trace)

    markdown = output.with_suffix(".md").read_text()
    assert "<!-- begin generated: fanout -->" in markdown
    for name in ("fanout-completion.png", "fanout-egress.png"):
        assert (output.parent / "benchmarks" / name).read_bytes()[:4] == b"\x89PNG"

    assert _cluster_namespaces() == namespaces_before
