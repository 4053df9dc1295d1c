"""Pull an image's manifest and blobs through an agent, as a container runtime would."""

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
CHUNK = 1024 * 1024


@dataclass
class BlobResult:
    digest: str
    size: int
    status: int
    received: int
    sha256: str

    @property
    def verified(self):
        return self.status == 200 and self.sha256 == self.digest and self.received == self.size


@dataclass
class PullResult:
    seconds: float = 0.0
    manifest_status: int = 0
    blobs: list = field(default_factory=list)

    @property
    def complete(self):
        return self.manifest_status == 200 and all(blob.verified for blob in self.blobs)


def _fetch_blob(http, url, digest, size, params, auth, progress):
    sha256 = hashlib.sha256()
    received = 0
    with http.get(url, params=params, auth=auth, stream=True, timeout=300) as response:
        if response.status_code == 200:
            for chunk in response.iter_content(CHUNK):
                sha256.update(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(len(chunk))

        return BlobResult(digest, size, response.status_code, received,
                          "sha256:" + sha256.hexdigest())


def pull_image(agent_url, registry_name, repository, reference, auth=None, parallel=3,
               progress=None):
    """GET the manifest, then the config and every layer (``parallel`` at a time) via the agent.

    Requests carry ``?ns=<registry_name>`` the way containerd addresses a
    mirror. Each blob is hashed as it streams in; ``progress(byte_count)``
    is called for every chunk received.
    """
    started = time.monotonic()
    params = {"ns": registry_name}
    result = PullResult()
    with requests.Session() as http:
        http.trust_env = False
        response = http.get(f"{agent_url}/v2/{repository}/manifests/{reference}", params=params,
                            headers={"Accept": MANIFEST_TYPES}, auth=auth, timeout=60)
        result.manifest_status = response.status_code
        if response.status_code != 200:
            result.seconds = time.monotonic() - started
            return result

        manifest = json.loads(response.content)
        descriptors = [manifest["config"], *manifest["layers"]]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [
                pool.submit(_fetch_blob, http, f"{agent_url}/v2/{repository}/blobs/{item['digest']}",
                            item["digest"], item["size"], params, auth, progress)
                for item in descriptors
            ]
            result.blobs = [future.result() for future in futures]

    result.seconds = time.monotonic() - started

    return result


def pull_on_every_agent(agents, registry_name, repository, reference):
    """Pull an image through every agent at once; return their PullResults by agent URL."""
    with ThreadPoolExecutor(max_workers=len(agents)) as pool:
        futures = {agent.url: pool.submit(pull_image, agent.url, registry_name, repository,
                                          reference)
                   for agent in agents}

    return {url: future.result() for url, future in futures.items()}
