"""Build OCI image layouts from local files or random bytes, and push and pull them with skopeo."""

import base64
import hashlib
import json
import logging
import os
import random
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from registry_p2p.sandbox import SandboxError
from registry_p2p.sandbox.process import clean_environment, require_binary

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"

# Sandbox layers only need to be valid gzip. zlib.compress at level 1 ran about
# three times as fast as the default level 6 on 100 MB of /usr/lib files
# (88 against 31 MB/s on one core of a 2-core VM), for 10% larger output.
GZIP_LEVEL = 1
# zlib's wbits 16 + 15 selects a gzip container with a zero header mtime.
GZIP_WBITS = 31
COPY_BUFFER_SIZE = 1 << 20
# Every tar entry gets this mtime, so equal input gives an equal layer digest.
ENTRY_MTIME = 0


@dataclass(frozen=True)
class LayerInfo:
    """A compressed layer blob as listed in the manifest."""

    digest: str
    size: int


@dataclass(frozen=True)
class ImageInfo:
    """An image written as an OCI image layout directory."""

    layout_dir: Path
    manifest_digest: str
    config_digest: str
    layers: list[LayerInfo]


@dataclass(frozen=True)
class IndexInfo:
    """A multi-platform image: an OCI image index written into an OCI image layout directory.

    `manifest_digest` is the digest of the index, which is what a registry
    stores under the tag.
    """

    layout_dir: Path
    manifest_digest: str
    images: list[ImageInfo]


class LayerSource(Protocol):
    """Anything that can add its files to an open tar archive."""

    def add_to(self, archive: tarfile.TarFile) -> None: ...


class DirectoryLayer:
    """Files, directories and symbolic links under `paths`, up to `max_bytes` of file content.

    Entries are added depth-first in sorted name order with uid and gid 0 and a
    fixed mtime, so the same files give the same layer. Sockets, devices and
    FIFOs are skipped. Adding stops at the first regular file that would take
    the content past `max_bytes`. Names in the tar are the absolute paths
    without the leading "/", and the parent directories of each path come first.
    """

    def __init__(self, paths: list[Path], max_bytes: int):
        self.paths = [Path(path) for path in paths]
        self.max_bytes = max_bytes

    def add_to(self, archive: tarfile.TarFile) -> None:
        content_bytes = 0
        added_directories: set[str] = set()
        for root in self.paths:
            parents = reversed(PurePosixPath(root.absolute()).parents)
            for parent in parents:
                name = str(parent).lstrip("/")
                if name and name not in added_directories:
                    archive.addfile(_tar_entry(name, tarfile.DIRTYPE, 0o755))
                    added_directories.add(name)

            for path in self._walk(root):
                info = os.lstat(path)
                name = str(path.absolute()).lstrip("/")
                mode = stat.S_IMODE(info.st_mode)
                if stat.S_ISDIR(info.st_mode):
                    if name not in added_directories:
                        archive.addfile(_tar_entry(name, tarfile.DIRTYPE, mode))
                        added_directories.add(name)
                elif stat.S_ISLNK(info.st_mode):
                    entry = _tar_entry(name, tarfile.SYMTYPE, mode)
                    entry.linkname = os.readlink(path)
                    archive.addfile(entry)
                elif stat.S_ISREG(info.st_mode):
                    if content_bytes + info.st_size > self.max_bytes:
                        log.debug("layer content limit %d bytes reached at %s", self.max_bytes, path)
                        return
                    entry = _tar_entry(name, tarfile.REGTYPE, mode)
                    entry.size = info.st_size
                    with open(path, "rb") as file:
                        archive.addfile(entry, file)
                    content_bytes += info.st_size

    @staticmethod
    def _walk(root: Path):
        """Yield `root` and everything below it, depth-first in sorted name order, without following links."""
        yield root
        if root.is_symlink() or not root.is_dir():
            return

        for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
            yield from DirectoryLayer._walk(Path(entry.path))


class RandomLayer:
    """One file of `size` pseudo-random bytes generated from `seed`.

    Random bytes do not compress, so the layer blob is slightly larger than `size`.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed

    def add_to(self, archive: tarfile.TarFile) -> None:
        archive.addfile(_tar_entry("random", tarfile.DIRTYPE, 0o755))
        entry = _tar_entry(f"random/{self.seed}-{self.size}.bin", tarfile.REGTYPE, 0o644)
        entry.size = self.size
        archive.addfile(entry, _RandomReader(self.size, self.seed))


class _RandomReader:
    """Read-only file object that returns `size` bytes from random.Random(seed)."""

    def __init__(self, size: int, seed: int):
        self._remaining = size
        self._random = random.Random(seed)

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._remaining:
            size = self._remaining
        self._remaining -= size
        return self._random.randbytes(size)


class _GzipBlobWriter:
    """Write-only file object that gzips a tar stream into `out` and hashes both sides.

    tarfile writes into it. diff_id is the sha256 of the tar, and digest the
    sha256 of the gzip blob.
    """

    def __init__(self, out: BinaryIO):
        self._out = out
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
        self._tar_hash = hashlib.sha256()
        self._blob_hash = hashlib.sha256()
        self._tar_size = 0
        self.size = 0

    def write(self, data: bytes) -> int:
        self._tar_hash.update(data)
        self._tar_size += len(data)
        self._write_blob(self._compressor.compress(data))
        return len(data)

    def tell(self) -> int:
        return self._tar_size

    def finish(self) -> None:
        self._write_blob(self._compressor.flush())

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._tar_hash.hexdigest()

    @property
    def digest(self) -> str:
        return "sha256:" + self._blob_hash.hexdigest()

    def _write_blob(self, data: bytes) -> None:
        if data:
            self._blob_hash.update(data)
            self.size += len(data)
            self._out.write(data)


def _tar_entry(name: str, entry_type: bytes, mode: int) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = entry_type
    entry.mode = mode
    entry.mtime = ENTRY_MTIME
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = ""
    return entry


def _blob_path(layout_dir: Path, digest: str) -> Path:
    algorithm, _, hex_digest = digest.partition(":")
    return layout_dir / "blobs" / algorithm / hex_digest


def _write_json_blob(layout_dir: Path, document: dict) -> tuple[str, int]:
    """Write `document` as canonical JSON into the blob store and return its digest and size."""
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob_path(layout_dir, digest).write_bytes(data)
    return digest, len(data)


def _write_layer(layout_dir: Path, source: LayerSource) -> tuple[LayerInfo, str]:
    """Write one gzip layer blob into the layout and return its LayerInfo and diff_id."""
    blobs = layout_dir / "blobs" / "sha256"
    with tempfile.NamedTemporaryFile(dir=blobs, prefix=".layer-", delete=False) as out:
        try:
            writer = _GzipBlobWriter(out)
            with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT,
                              copybufsize=COPY_BUFFER_SIZE) as archive:
                source.add_to(archive)
            writer.finish()
        except BaseException:
            os.unlink(out.name)
            raise

    os.replace(out.name, _blob_path(layout_dir, writer.digest))
    return LayerInfo(writer.digest, writer.size), writer.diff_id


def build_image(out_dir: Path, layers: list[LayerSource], architecture: str = "amd64") -> ImageInfo:
    """Write a linux image with one gzip layer per source as an OCI image layout in `out_dir`.

    `architecture` is the image config's, in Go's names (amd64, arm64).
    The config has one history entry per layer, which skopeo needs to
    convert the image to Docker schema 1. Layers are built in parallel
    threads, because zlib and hashlib release the GIL on large buffers.
    Existing blobs in `out_dir` are kept and index.json is replaced, so the
    layout then contains this image only.
    """
    out_dir = Path(out_dir)
    (out_dir / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    workers = max(1, min(len(layers), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layer") as pool:
        results = list(pool.map(lambda source: _write_layer(out_dir, source), layers))
    layer_infos = [layer for layer, _ in results]

    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in results]},
        "history": [{"created_by": f"registry-p2p sandbox layer {number}"}
                    for number in range(len(results))],
    }
    config_digest, config_size = _write_json_blob(out_dir, config)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
            for layer in layer_infos
        ],
    }
    manifest_digest, manifest_size = _write_json_blob(out_dir, manifest)

    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest, "size": manifest_size}],
    }
    (out_dir / "index.json").write_text(json.dumps(index, sort_keys=True) + "\n")
    (out_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}) + "\n")

    log.info("built image %s in %s: %d layers, %d bytes compressed, %.1f s",
             manifest_digest, out_dir, len(layer_infos), sum(layer.size for layer in layer_infos),
             time.monotonic() - started)
    return ImageInfo(out_dir, manifest_digest, config_digest, layer_infos)


def build_index(out_dir: Path, images: list[ImageInfo]) -> IndexInfo:
    """Write an OCI image index of `images`, already built into `out_dir`, and point index.json at it.

    Each image's platform is linux and the architecture of its config. The
    layout then contains the index only, which push_image pushes with all
    its images.
    """
    out_dir = Path(out_dir)
    manifests = []
    for image in images:
        if image.layout_dir != out_dir:
            raise SandboxError(f"image {image.manifest_digest} was built in {image.layout_dir}, "
                               f"not in the index's layout {out_dir}")
        config = json.loads(_blob_path(out_dir, image.config_digest).read_bytes())
        manifests.append({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.manifest_digest,
            "size": _blob_path(out_dir, image.manifest_digest).stat().st_size,
            "platform": {"architecture": config["architecture"], "os": config["os"]},
        })

    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests}
    index_digest, index_size = _write_json_blob(out_dir, index)
    layout_index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": INDEX_MEDIA_TYPE, "digest": index_digest, "size": index_size}],
    }
    (out_dir / "index.json").write_text(json.dumps(layout_index, sort_keys=True) + "\n")

    log.info("built image index %s in %s for %s", index_digest, out_dir,
             ", ".join(item["platform"]["architecture"] for item in manifests))
    return IndexInfo(out_dir, index_digest, list(images))


def push_image(image: ImageInfo | IndexInfo, reference: str, tls_verify: bool = False,
               creds: str | None = None) -> None:
    """Push the image, or an index with all its images, to `reference` ("host:port/name:tag") with skopeo copy.

    --preserve-digests makes skopeo fail rather than recompress a layer or
    convert the manifest. `creds` is "user:password". Raises SandboxError if
    skopeo fails or the registry stores a manifest with another digest.
    """
    skopeo = require_binary("skopeo", "skopeo")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rp2p-push-") as scratch:
        digest_file = Path(scratch) / "digest"
        argv = [
            skopeo, "copy", "--quiet", "--preserve-digests",
            f"--dest-tls-verify={'true' if tls_verify else 'false'}",
            "--digestfile", str(digest_file),
        ]
        if isinstance(image, IndexInfo):
            argv.append("--all")
        if creds is not None:
            argv += ["--dest-creds", creds]
        argv += [f"oci:{image.layout_dir}", f"docker://{reference}"]

        result = subprocess.run(argv, capture_output=True, text=True, env=clean_environment(), check=False)
        if result.returncode != 0:
            raise SandboxError(
                f"skopeo copy of {image.layout_dir} to {reference} failed with status "
                f"{result.returncode}: {result.stderr.strip()}"
            )
        pushed_digest = digest_file.read_text().strip()

    if pushed_digest != image.manifest_digest:
        raise SandboxError(
            f"registry stored {reference} with manifest digest {pushed_digest}, "
            f"expected {image.manifest_digest}: skopeo changed the manifest"
        )

    log.info("pushed %s to %s in %.1f s", image.manifest_digest, reference, time.monotonic() - started)


def write_registries_conf(path: Path, registry: str, mirror: str) -> Path:
    """Write a containers-registries.conf(5) file that pulls `registry` through `mirror` first.

    Both are "host:port" and are reached over plain HTTP. Returns `path`.
    """
    Path(path).write_text(
        f'[[registry]]\n'
        f'location = "{registry}"\n'
        f'insecure = true\n'
        f'\n'
        f'[[registry.mirror]]\n'
        f'location = "{mirror}"\n'
        f'insecure = true\n'
    )
    return Path(path)


def write_auth_file(path: Path, credentials: dict[str, tuple[str, str]]) -> Path:
    """Write a containers-auth.json(5) file with (user, password) per "host:port" and return `path`."""
    auths = {
        host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode("ascii")}
        for host, (user, password) in credentials.items()
    }
    Path(path).write_text(json.dumps({"auths": auths}, indent=2) + "\n")
    return Path(path)


def pull_to_layout(
    reference: str,
    out_dir: Path,
    creds: str | None = None,
    authfile: Path | None = None,
    registries_conf: Path | None = None,
) -> subprocess.CompletedProcess:
    """Copy `reference` ("host:port/name:tag") into an OCI image layout at `out_dir` with skopeo.

    Returns skopeo's result unchecked. `creds` is "user:password" for
    `--src-creds`, which containers/image sends to the registry named in
    `reference` but not to its mirrors. `authfile` is a file written by
    write_auth_file. `registries_conf` replaces /etc/containers/registries.conf,
    to configure mirrors. skopeo 1.9 takes it only from its hidden
    --registries-conf option and ignores CONTAINERS_REGISTRIES_CONF.
    """
    skopeo = require_binary("skopeo", "skopeo")
    argv = [skopeo]
    if registries_conf is not None:
        argv += ["--registries-conf", str(registries_conf)]
    argv += ["copy", "--quiet", "--src-tls-verify=false"]
    if creds is not None:
        argv += ["--src-creds", creds]
    if authfile is not None:
        argv += ["--src-authfile", str(authfile)]
    argv += [f"docker://{reference}", f"oci:{out_dir}"]

    env = clean_environment(remove=("REGISTRY_AUTH_FILE",))
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    log.info("skopeo copy of %s finished with status %d in %.1f s",
             reference, result.returncode, time.monotonic() - started)

    return result
