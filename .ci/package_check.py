"""Steps of .ci/packages that are easier in Python than in bash.

Run with /usr/bin/python3 -I, so that only Debian's libraries and the
installed python3-registry-p2p are importable. Subcommands:

    unit NAME                      print a systemd unit's settings as bash assignments
    free-ports COUNT               print COUNT free TCP ports on 127.0.0.1
    wait-http URL SECONDS          wait until URL returns 200
    import-origins                 print where registry_p2p and its libraries come from
    push-image REFERENCE DIR OUT   build a random two-layer image in DIR, push it, write its layers to OUT
    check-notifications URL FILE   check that the sidecar read its notification secret from FILE
    check-pull LAYOUT LAYERS URL   check a pulled layout and the agent's stats at URL
"""

import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# Each layer is larger than the agent's default p2p.min_blob_size (1 MiB),
# so that the agent fetches it over BitTorrent.
LAYER_SIZE = 3 * 1024 * 1024
LAYER_COUNT = 2
DIST_PACKAGES = "/usr/lib/python3/dist-packages/"
# The libraries that python3-registry-p2p depends on, which must come from
# Debian's packages.
LIBRARIES = ("registry_p2p", "flask", "gunicorn", "requests", "libtorrent", "cryptography",
             "boto3", "swiftclient")
# Settings whose empty assignment resets the list, as in systemd.exec(5).
LIST_SETTINGS = ("ExecStart", "SupplementaryGroups")

# Loopback requests must not go through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CheckError(Exception):
    """A failed check; its message names the check and the value that failed it."""


def read_unit(name):
    """Return the [Service] settings of unit ``name`` with its drop-ins applied.

    ``systemd-analyze cat-config`` prints the unit file and its drop-ins in
    the order systemd reads them, and needs no running systemd. Single
    settings keep their last value, list settings accumulate their values.
    """
    text = subprocess.run(["systemd-analyze", "cat-config", f"systemd/system/{name}"],
                          capture_output=True, text=True, check=True).stdout
    settings = {key: [] for key in LIST_SETTINGS}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]":
            continue

        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key in LIST_SETTINGS:
            settings[key] = settings[key] + [value] if value else []
        else:
            settings[key] = value

    return settings


def command_unit(name):
    settings = read_unit(name)
    if len(settings["ExecStart"]) != 1:
        raise CheckError(f"{name}: expected one ExecStart, found {settings['ExecStart']}")

    exec_start = settings["ExecStart"][0]
    if exec_start[0] in "-@+!:":
        raise CheckError(f"{name}: ExecStart={exec_start} has a prefix this check does not handle")

    groups = [group for value in settings["SupplementaryGroups"] for group in value.split()]
    values = {
        "unit_user": settings.get("User", ""),
        "unit_group": settings.get("Group", ""),
        "unit_cache_directory": settings.get("CacheDirectory", ""),
        "unit_cache_mode": settings.get("CacheDirectoryMode", "0755"),
        "unit_no_new_privileges": settings.get("NoNewPrivileges", "no"),
    }
    for key, value in values.items():
        print(f"{key}={shlex.quote(value)}")
    print("unit_supplementary_groups=(" + " ".join(map(shlex.quote, groups)) + ")")
    print("unit_exec_start=(" + " ".join(map(shlex.quote, shlex.split(exec_start))) + ")")


def command_free_ports(count):
    sockets = []
    try:
        for _ in range(int(count)):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        print(" ".join(str(sock.getsockname()[1]) for sock in sockets))
    finally:
        for sock in sockets:
            sock.close()


def command_wait_http(url, seconds):
    deadline = time.monotonic() + float(seconds)
    error = None
    while True:
        try:
            with _OPENER.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            error = exc
        if time.monotonic() > deadline:
            raise CheckError(f"{url} did not return 200 within {seconds} s: {error}")
        time.sleep(0.2)


def command_import_origins():
    for name in LIBRARIES:
        module = __import__(name)
        print(f"  {name}: {module.__file__}")
        if not module.__file__.startswith(DIST_PACKAGES):
            raise CheckError(f"{name} was imported from {module.__file__}, not from "
                             f"{DIST_PACKAGES}: check PYTHONPATH and /usr/local")


def command_push_image(reference, layout_dir, out):
    from registry_p2p.sandbox.image import RandomLayer, build_image, push_image

    # Random seeds give layers that no earlier run or other layer shares.
    layers = [RandomLayer(LAYER_SIZE, int.from_bytes(os.urandom(8), "big"))
              for _ in range(LAYER_COUNT)]
    image = build_image(Path(layout_dir), layers)
    push_image(image, reference)

    layers = [{"digest": layer.digest, "size": layer.size} for layer in image.layers]
    Path(out).write_text(json.dumps({"manifest": image.manifest_digest, "layers": layers}))
    print(f"  pushed {reference} ({image.manifest_digest}): "
          + ", ".join(f"{layer['digest'][:19]} {layer['size']} bytes" for layer in layers))


def _post(url, headers):
    request = urllib.request.Request(url, data=b'{"events": []}', headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def command_check_notifications(url, secret_file):
    secret = Path(secret_file).read_text().rstrip("\n")
    content_type = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
    wrong = _post(url, {**content_type, "Authorization": "Bearer wrong"})
    if wrong != 401:
        raise CheckError(f"POST {url} with a wrong secret returned {wrong}, expected 401 "
                         f"(404 means notifications.secret_file was not read)")

    right = _post(url, {**content_type, "Authorization": f"Bearer {secret}"})
    if right != 200:
        raise CheckError(f"POST {url} with the secret from secret_file returned {right}, expected 200")

    print("  notifications.secret_file was read: wrong secret 401, right secret 200")


def command_check_pull(layout_dir, layers_file, stats_url):
    pushed = json.loads(Path(layers_file).read_text())
    with _OPENER.open(stats_url, timeout=10) as response:
        stats = json.load(response)

    for layer in pushed["layers"]:
        algorithm, hex_digest = layer["digest"].split(":")
        blob = Path(layout_dir, "blobs", algorithm, hex_digest)
        actual = hashlib.sha256(blob.read_bytes()).hexdigest()
        if actual != hex_digest:
            raise CheckError(f"pulled layer {blob} has sha256 {actual}, expected {hex_digest}")

        entry = stats["blobs"].get(hex_digest)
        if entry is None:
            raise CheckError(f"the agent's stats have no entry for layer {layer['digest']}: {stats}")
        over_bittorrent = entry.get("from_sidecars", 0) + entry.get("from_peers", 0)
        if entry.get("source") != "p2p":
            raise CheckError(f"layer {layer['digest']} has source {entry.get('source')!r}, "
                             f"expected 'p2p': {entry}")
        if entry.get("from_registry", 0) != 0 or entry.get("fallbacks", 0) != 0:
            raise CheckError(f"layer {layer['digest']} came from the registry: {entry}")
        if over_bittorrent < layer["size"]:
            raise CheckError(f"layer {layer['digest']} has {over_bittorrent} bytes over "
                             f"BitTorrent, expected at least its size {layer['size']}: {entry}")

        print(f"  {layer['digest'][:19]}: sha256 matches; {entry['from_sidecars']} bytes from the "
              f"sidecar, {entry['from_peers']} from peers, 0 from the registry, "
              f"{entry.get('seconds')} s")

    _check_metrics(stats_url.replace("/p2p/v1/stats", "/metrics"),
                   sum(layer["size"] for layer in pushed["layers"]))


def _check_metrics(url, layer_bytes):
    """Check the agent's /metrics, rendered by Debian's prometheus-client, against the layers."""
    from prometheus_client.parser import text_string_to_metric_families

    with _OPENER.open(url, timeout=10) as response:
        text = response.read().decode()
    downloaded = {sample.labels["source"]: sample.value
                  for family in text_string_to_metric_families(text)
                  for sample in family.samples
                  if sample.name == "registry_p2p_downloaded_bytes_total"}

    over_bittorrent = downloaded.get("peer", 0) + downloaded.get("origin", 0)
    if over_bittorrent != layer_bytes or downloaded.get("fallback", 0) != 0:
        raise CheckError(f"{url}: registry_p2p_downloaded_bytes_total is {downloaded}, expected "
                         f"{layer_bytes} layer bytes from peer and origin and 0 from fallback")
    print(f"  {url}: registry_p2p_downloaded_bytes_total peer + origin = {layer_bytes:.0f}, "
          f"the layers' sizes; fallback 0")


COMMANDS = {
    "unit": command_unit,
    "free-ports": command_free_ports,
    "wait-http": command_wait_http,
    "import-origins": command_import_origins,
    "push-image": command_push_image,
    "check-notifications": command_check_notifications,
    "check-pull": command_check_pull,
}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        sys.exit(__doc__)

    try:
        COMMANDS[argv[1]](*argv[2:])
    except CheckError as exc:
        sys.exit(f"{argv[0]} {argv[1]}: {exc}")


if __name__ == "__main__":
    main(sys.argv)
