"""containerd pulls with `ctr` through a registry mirror configured in a hosts directory."""

import logging
import subprocess
import time
from pathlib import Path

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.process import clean_environment, require_binary

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"


def write_hosts_toml(hosts_dir: Path, registry_host: str, mirror_url: str) -> Path:
    """Write `<hosts_dir>/<registry_host>/hosts.toml` that sends pulls of `registry_host` to `mirror_url` first.

    `registry_host` is "host:port" as it appears in image references, and the
    registry itself is then reached over plain HTTP. ctr 1.6 adds
    ?ns=<registry_host> to every request to the mirror, percent-encoded
    (?ns=localhost%3A5000), unless the mirror's host:port equals
    `registry_host`. Returns the path of the file.
    """
    directory = Path(hosts_dir) / registry_host
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts.toml"
    path.write_text(
        f'server = "http://{registry_host}"\n'
        f"\n"
        f'[host."{mirror_url}"]\n'
        f'  capabilities = ["pull", "resolve"]\n'
    )
    return path


def ctr(address: str, *args: str, namespace: str = DEFAULT_NAMESPACE,
        timeout: float | None = 300.0) -> subprocess.CompletedProcess:
    """Run `ctr -a <address> -n <namespace> <args>` and return its result, with output as text."""
    binary = require_binary("ctr", "containerd")
    argv = [binary, "-a", address, "-n", namespace, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=clean_environment(), check=False)


def ctr_pull(
    address: str,
    reference: str,
    hosts_dir: Path,
    plain_http: bool = True,
    snapshotter: str = "native",
    namespace: str = DEFAULT_NAMESPACE,
    user: str | None = None,
    platform: str | None = None,
) -> subprocess.CompletedProcess:
    """Pull and unpack `reference` into the containerd at `address`, and return the result unchecked.

    Registry hosts are configured only by `hosts_dir` (see write_hosts_toml).
    The native snapshotter works on any filesystem, unlike overlayfs.
    `user` is "name:password", which ctr sends to every host it contacts,
    mirrors included. ctr reads a password from a terminal only, so it
    goes on the command line.
    `platform` ("linux/arm64") selects the image of a multi-platform index
    to fetch and unpack, instead of the machine's own.
    """
    args = ["images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", snapshotter]
    if plain_http:
        args.append("--plain-http")
    if user is not None:
        args += ["--user", user]
    if platform is not None:
        args += ["--platform", platform]
    args.append(reference)

    started = time.monotonic()
    result = ctr(address, *args, namespace=namespace)
    log.info("ctr pull %s finished with status %d in %.1f s",
             reference, result.returncode, time.monotonic() - started)
    return result


def ctr_image_names(address: str, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Return the references of the images in `namespace` of the containerd at `address`."""
    result = ctr(address, "images", "list", "--quiet", namespace=namespace)
    if result.returncode != 0:
        raise SandboxError(f"ctr images list on {address} failed with status {result.returncode}: "
                           f"{result.stderr.strip()}")

    return sorted(result.stdout.split())


def ctr_image_target(address: str, reference: str, namespace: str = DEFAULT_NAMESPACE) -> str | None:
    """Return the digest that image `reference` points to in the containerd at `address`, or None.

    For a multi-platform image that is the digest of the index.
    """
    result = ctr(address, "images", "list", namespace=namespace)
    if result.returncode != 0:
        raise SandboxError(f"ctr images list on {address} failed with status {result.returncode}: "
                           f"{result.stderr.strip()}")

    # Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS.
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == reference:
            return fields[2]

    return None
