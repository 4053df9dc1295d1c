"""The JSON file of benchmark records, one record per scenario.

The file is ``{"format": 1, "scenarios": {"<scenario>": {...}}}``. Running a
scenario replaces its own record and keeps the records of the others, so
each scenario can be run again on its own.
"""

import json
import logging
import os
from pathlib import Path

from registry_p2p.bench import BenchError

log = logging.getLogger(__name__)

FORMAT = 1


def empty_document():
    return {"format": FORMAT, "scenarios": {}}


def merge(document, record):
    """Return a copy of ``document`` with ``record`` stored under ``record["scenario"]``.

    A record of the same scenario is replaced where it was, so the order of
    scenarios in the file stays stable. A new scenario goes at the end.
    """
    scenario = record.get("scenario")
    if not scenario:
        raise BenchError(f"benchmark record has no \"scenario\" name: keys {sorted(record)}")

    scenarios = dict(document.get("scenarios", {}))
    scenarios[scenario] = record

    return {**document, "format": FORMAT, "scenarios": scenarios}


def load(path):
    """Read the benchmark records in ``path``. A missing file gives an empty document."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        log.info("no benchmark records in %s yet, starting a new file", path)
        return empty_document()
    except OSError as error:
        raise BenchError(f"cannot read benchmark records {path}: {error}") from None

    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise BenchError(f"benchmark records {path} are not valid JSON: {error}. "
                         f"Fix or remove the file") from None

    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BenchError(f"benchmark records {path} are not in format {FORMAT}: expected "
                         f"{{\"format\": {FORMAT}, \"scenarios\": {{...}}}}")

    return document


def save(path, document):
    """Write ``document`` to ``path`` through a temporary file, so a crash leaves the old file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def record_result(path, record):
    """Store ``record`` in the file at ``path`` and return the whole document."""
    document = merge(load(path), record)
    save(path, document)

    return document
