"""`registry-p2p bench tracker` end to end with a small load, against a real docker-registry and sidecar.

No throughput or latency is asserted: the machine may be busy.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PEERS = 60
SWARMS = 3
REQUESTS = 300


@pytest.fixture
def short_tmpdir():
    """A directory with a short path: the seeder's Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="trk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_bench_tracker_records_announces(tmp_path, short_tmpdir):
    output = tmp_path / "docs" / "benchmarks.json"
    env = {**os.environ, "TMPDIR": str(short_tmpdir)}

    result = subprocess.run(
        [sys.executable, "-m", "registry_p2p", "bench", "tracker", "--peers", str(PEERS),
         "--swarms", str(SWARMS), "--requests", str(REQUESTS), "--concurrency", "4",
         "--processes", "2", "--workers", "1", "--threads", "4", "--blob-size", "4KiB",
         "--output", str(output)],
        capture_output=True, text=True, env=env, timeout=300, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(output.read_text())["scenarios"]["tracker"]
    assert record["command"].startswith(f"registry-p2p bench tracker --peers {PEERS} --swarms {SWARMS}")
    assert record["result"]["requests"] == REQUESTS
    assert record["result"]["error_count"] == 0
    assert record["result"]["succeeded"] == REQUESTS
    assert record["result"]["by_event"]["started"]["count"] == PEERS
    assert record["tracker_state"]["swarms_with_peers"] == SWARMS
    # Every peer of the run plus the sidecar's own seeder in each swarm.
    assert record["tracker_state"]["peers_total"] == PEERS + SWARMS
    assert record["tracker_state"]["rejected_announces"] == 0
    assert record["cpu"]["generator_cpu_seconds"] > 0
    assert record["cpu"]["seeder_cpu_seconds"] > 0
    assert "<!-- begin generated: tracker -->" in (tmp_path / "docs" / "benchmarks.md").read_text()
    assert not list(short_tmpdir.iterdir()), "the temporary work directory was not removed"
