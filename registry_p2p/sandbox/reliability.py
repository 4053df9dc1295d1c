"""Records of fault and attack cases for the table in docs/reliability.md.

A test creates a ReliabilityRecord through the ``reliability`` fixture and
adds one attempt per pull it makes under the fault. When the environment
variable REGISTRY_P2P_RELIABILITY names a file, the fixture appends the
record to it as a JSON line at the end of the test, and
``python -m registry_p2p.sandbox.reliability FILE docs/reliability.md``
renders the table from those lines.
"""

import dataclasses
import json
import sys
from pathlib import Path

RESULTS_ENV = "REGISTRY_P2P_RELIABILITY"

TABLE_START = "<!-- reliability table start -->"
TABLE_END = "<!-- reliability table end -->"


@dataclasses.dataclass
class ReliabilityRecord:
    """One fault or attack case: its pulls under the fault, corrupt bytes and recovery times."""

    case: str
    kind: str
    command: str
    attempts: int = 0
    completed: int = 0
    corrupt_bytes: int = 0
    recover_seconds: list = dataclasses.field(default_factory=list)

    def add(self, completed, corrupt_bytes=0, recover_seconds=None):
        """Count one attempt: whether its pull completed with every digest correct,
        the bytes served that did not match their digest, and the seconds from the
        fault to the pull's completion (None where no pull waits on the fault)."""
        self.attempts += 1
        self.completed += int(bool(completed))
        self.corrupt_bytes += corrupt_bytes
        if recover_seconds is not None:
            self.recover_seconds.append(round(recover_seconds, 2))


def merge_records(records):
    """Return ``records`` with those of the same case and kind summed into one, in first-run order.

    The tests of a parametrized case each write a record, and the table
    shows the case once with all their attempts.
    """
    merged = {}
    for record in records:
        key = (record["case"], record["kind"])
        if key not in merged:
            merged[key] = {**record, "recover_seconds": list(record["recover_seconds"])}
            continue

        total = merged[key]
        for counter in ("attempts", "completed", "corrupt_bytes"):
            total[counter] += record[counter]
        total["recover_seconds"] += record["recover_seconds"]

    return list(merged.values())


def render_table(records):
    """Return the Markdown table of ``records``, one row per case, faults first, in the order they were run."""
    records = merge_records(records)
    rows = [
        "| Case | Kind | Attempts | Pulls completed | Corrupt bytes served | "
        "Time to recover (s, max) | Reproduce |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for record in sorted(records, key=lambda record: record["kind"] != "fault"):
        recover = max(record["recover_seconds"]) if record["recover_seconds"] else "–"
        rows.append(f"| {record['case']} | {record['kind']} | {record['attempts']} | "
                    f"{record['completed']} | {record['corrupt_bytes']} | {recover} | "
                    f"`{record['command']}` |")

    return "\n".join(rows)


def update_document(results_path, document_path):
    """Replace the table between the markers of ``document_path`` with the results' table."""
    records = [json.loads(line) for line in Path(results_path).read_text().splitlines() if line]
    document = Path(document_path).read_text()
    head, start, rest = document.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise SystemExit(f"{document_path} has no {TABLE_START} ... {TABLE_END} markers")

    Path(document_path).write_text(f"{head}{start}\n{render_table(records)}\n{end}{tail}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m registry_p2p.sandbox.reliability RESULTS.jsonl "
                         "docs/reliability.md")
    update_document(sys.argv[1], sys.argv[2])
