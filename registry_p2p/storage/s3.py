"""S3 storage driver: the registry's ``storage.s3`` bucket, read with boto3.

Works with AWS S3 and S3-compatible stores (Ceph RGW, Swift's s3api,
MinIO). Keys are ``<rootdirectory>/docker/registry/v2/...`` as
distribution's s3 driver writes them. A blob larger than one part is read
as byte ranges fetched several at a time (see ``parallel``).
"""

import contextlib
import logging

from registry_p2p import layout
from registry_p2p.errors import BlobNotFound, ConfigError, StorageError
from registry_p2p.storage.base import StorageDriver
from registry_p2p.storage.parallel import ChunkReader, Part, PartReader, part_pool

try:
    import urllib3
    from botocore.exceptions import BotoCoreError, ClientError
    _BOTO_ERRORS = (BotoCoreError, ClientError)
    # A body read that fails part-way may raise urllib3's errors directly.
    _TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)
except ImportError:
    # boto3 is needed only with storage.driver = "s3"; from_config then
    # raises ConfigError naming the package.
    _BOTO_ERRORS = _TRANSPORT_ERRORS = ()

log = logging.getLogger(__name__)

# HTTP statuses and botocore error codes that mean "no such key".
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}

# Bytes per ranged GET of a large blob; blobs up to this size take one GET.
PART_SIZE = 16 * 1024 * 1024
# Bytes per read of a response body.
CHUNK_SIZE = 1024 * 1024


class S3Driver(StorageDriver):
    name = "s3"

    def __init__(self, client, bucket, rootdirectory="", read_concurrency=4,
                 part_size=PART_SIZE, stall_timeout=60.0):
        self.client = client
        self.bucket = bucket
        self.prefix = rootdirectory.strip("/")
        self.read_concurrency = read_concurrency
        self.part_size = part_size
        self.stall_timeout = stall_timeout
        self._pool = part_pool(read_concurrency)

    @classmethod
    def from_config(cls, config):
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError:
            raise ConfigError("storage.driver = \"s3\" needs boto3: apt-get install "
                              "python3-boto3, or pip install boto3") from None

        if not config["storage.s3.bucket"]:
            raise ConfigError("storage.driver is \"s3\" but storage.s3.bucket is empty; set it "
                              "to the registry's storage.s3.bucket")

        endpoint = config["storage.s3.regionendpoint"] or None
        client = boto3.client(
            "s3",
            region_name=config["storage.s3.region"],
            endpoint_url=endpoint,
            aws_access_key_id=config["storage.s3.accesskey"] or None,
            aws_secret_access_key=config["storage.s3.secretkey"] or None,
            config=BotoConfig(
                # S3-compatible stores behind a plain endpoint rarely serve
                # virtual-host-style bucket names, and distribution uses
                # path style for them too.
                s3={"addressing_style": "path" if endpoint else "auto"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=config["upstream_timeout"],
                read_timeout=config["upstream_timeout"],
            ),
        )

        return cls(client, config["storage.s3.bucket"], config["storage.s3.rootdirectory"],
                   config["storage.read_concurrency"],
                   stall_timeout=2 * config["upstream_timeout"])

    def key(self, relative_path):
        return f"{self.prefix}/{relative_path}" if self.prefix else relative_path

    def stat(self, hex_digest, repository=None):
        return self._size(self.key(layout.blob_data_path(hex_digest)))

    def is_linked(self, repository, hex_digest):
        key = self.key(layout.layer_link_path(repository, hex_digest))
        try:
            content = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except _BOTO_ERRORS + _TRANSPORT_ERRORS as exc:
            error = self._error(exc, key)
            if isinstance(error, BlobNotFound):
                return False
            raise error from None

        return content.strip() == f"sha256:{hex_digest}".encode()

    def open(self, hex_digest, repository=None):
        key = self.key(layout.blob_data_path(hex_digest))
        size = self._size(key)
        label = f"blob sha256:{hex_digest}"
        if size <= self.part_size:
            return ChunkReader(self._stream(key))

        parts = []
        for start in range(0, size, self.part_size):
            end = min(start + self.part_size, size)
            parts.append(Part(f"bytes {start}-{end - 1}", end - start, start))

        def fetch(part, offset):
            return self._stream(key, part.offset + offset, part.offset + part.size)

        return PartReader(parts, fetch, label, self._pool, workers=self.read_concurrency,
                          stall_timeout=self.stall_timeout)

    def _stream(self, key, start=None, end=None):
        """Yield an object's bytes, or bytes ``start`` to ``end - 1``; failures raise StorageError."""
        arguments = {"Bucket": self.bucket, "Key": key}
        if start is not None:
            arguments["Range"] = f"bytes={start}-{end - 1}"
        try:
            body = self.client.get_object(**arguments)["Body"]
            with contextlib.closing(body):
                yield from body.iter_chunks(CHUNK_SIZE)
        except _BOTO_ERRORS + _TRANSPORT_ERRORS as exc:
            raise self._error(exc, key) from None

    def _size(self, key):
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except _BOTO_ERRORS as exc:
            raise self._error(exc, key) from None

    def close(self):
        self._pool.shutdown(wait=True)
        self.client.close()

    def _error(self, exc, key):
        """Turn a boto3 exception into BlobNotFound or StorageError."""
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND_CODES:
            return BlobNotFound(f"s3://{self.bucket}/{key} not found")

        log.warning("S3 request for s3://%s/%s failed: %s", self.bucket, key, exc)
        return StorageError(f"s3 storage: cannot read s3://{self.bucket}/{key}: {exc}")
