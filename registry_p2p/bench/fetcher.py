"""The client of one simulated node in ``bench fanout``: GET one blob through the node's agent.

Run as ``python -m registry_p2p.bench.fetcher`` inside the node's network
namespace. It waits until its start file exists, so that the benchmark can
start many clients at one moment. Then it GETs the blob as a container
runtime does and hashes what arrives. While the body arrives, it writes the
bytes received so far, as decimal text, to the progress file. At the end it
writes one JSON object to the result file: wall-clock start, first byte
and end times (``time.time()``, comparable between processes), bytes, the
sha256 of the body, and the agent's statistics for the blob.
"""

import argparse
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path

CHUNK = 1024 * 1024
START_POLL_SECONDS = 0.005
PROGRESS_INTERVAL = 0.2
TIMEOUT = 900


def _write_atomically(path, text):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _connection(url):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return connection, target


def fetch(url, progress_path):
    """GET ``url``; return the timings, status, byte count and sha256 of the body."""
    connection, target = _connection(url)
    started = time.time()
    connection.request("GET", target)
    response = connection.getresponse()
    sha256 = hashlib.sha256()
    received = 0
    first_byte = None
    last_progress = 0.0
    while chunk := response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK):
        if first_byte is None:
            first_byte = time.time()
        sha256.update(chunk)
        received += len(chunk)
        now = time.monotonic()
        if now - last_progress >= PROGRESS_INTERVAL:
            _write_atomically(progress_path, str(received))
            last_progress = now

    ended = time.time()
    _write_atomically(progress_path, str(received))
    connection.close()

    return {
        "status": response.status,
        "started": started,
        "first_byte": first_byte,
        "ended": ended,
        "received": received,
        "sha256": "sha256:" + sha256.hexdigest(),
    }


def agent_blob_stats(stats_url, hex_digest):
    """Return the agent's statistics entry of the blob, or an error description."""
    connection, target = _connection(stats_url)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        document = json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    finally:
        connection.close()

    return {**document.get("blobs", {}).get(hex_digest, {}),
            "session_uploaded_bytes": document.get("uploaded_bytes"),
            "session_downloaded_bytes": document.get("downloaded_bytes")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="blob URL on the agent")
    parser.add_argument("--stats-url", required=True, help="the agent's /p2p/v1/stats URL")
    parser.add_argument("--digest", required=True, help="sha256:<hex> of the blob")
    parser.add_argument("--start-file", required=True, type=Path,
                        help="start the GET once this file exists")
    parser.add_argument("--progress", required=True, type=Path, help="progress file to write")
    parser.add_argument("--result", required=True, type=Path, help="JSON result file to write")
    args = parser.parse_args(argv)

    _write_atomically(args.progress, "0")
    deadline = time.monotonic() + TIMEOUT
    while not args.start_file.exists():
        if time.monotonic() > deadline:
            print(f"fetcher: {args.start_file} did not appear in {TIMEOUT} s", file=sys.stderr)
            return 1
        time.sleep(START_POLL_SECONDS)

    try:
        result = fetch(args.url, args.progress)
    except (OSError, http.client.HTTPException) as error:
        result = {"error": f"{type(error).__name__}: {error}", "ended": time.time()}

    result["agent"] = agent_blob_stats(args.stats_url, args.digest.partition(":")[2])
    _write_atomically(args.result, json.dumps(result))

    return 0 if result.get("sha256") == args.digest else 1


if __name__ == "__main__":
    sys.exit(main())
