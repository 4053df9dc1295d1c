"""`registry-p2p bench swift` end to end with a tiny blob, against the sandbox's real Swift.

The blob has 12 segments, so the plain GET passes the dlo middleware's rate
limit after the tenth segment. No timing is asserted: the machine may be busy.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry_p2p.bench import report

pytestmark = pytest.mark.integration

SEGMENT_COUNT = 12


def _processes_mentioning(text):
    """Return the command lines of running processes that contain ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command_line:
            found.append(command_line)

    return found


def test_bench_swift_records_verified_reads(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    output = tmp_path / "docs" / "benchmarks.json"
    env = {**os.environ, "TMPDIR": str(temporary)}

    result = subprocess.run(
        [sys.executable, "-m", "registry_p2p", "bench", "swift", "--size", f"{SEGMENT_COUNT * 64}KiB",
         "--segment-size", "64KiB", "--repeat", "2", "--output", str(output)],
        capture_output=True, text=True, env=env, timeout=300, check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(output.read_text())["scenarios"]["swift"]
    assert record["command"] == "registry-p2p bench swift --size 768KiB --segment-size 64KiB --repeat 2"
    assert record["parameters"]["segment_count"] == SEGMENT_COUNT
    assert record["dlo_settings"] == {"rate_limit_after_segment": 10, "rate_limit_segments_per_sec": 1}
    assert [run["order"] for run in record["runs"]] == [["parallel", "plain"], ["plain", "parallel"]]
    for run in record["runs"]:
        for method in ("parallel", "plain"):
            assert run["reads"][method]["sha256_verified"] is True
            assert run["reads"][method]["seconds"] > 0
    assert len(record["blob_sha256"]) == 64

    markdown = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert report.BEGIN.format(name="swift") in markdown
    assert "| 2 | plain GET |" in markdown

    assert list(temporary.iterdir()) == []
    assert _processes_mentioning(str(temporary)) == []
