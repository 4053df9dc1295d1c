"""The registry's notifications preheat pushed layers and purge deleted ones on the sidecar."""

import base64
import json
import shutil
import time

import pytest

from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.process import free_port
from registry_p2p.sandbox.pull import pull_image
from registry_p2p.sandbox.registry import Registry

pytestmark = pytest.mark.integration

SECRET = "notify-4b1e0c"
REPOSITORY = "notify/app"
EVENTS_TYPE = "application/vnd.docker.distribution.events.v1+json"


@pytest.fixture
def stack(tmp_path):
    registry = Registry(tmp_path / "registry", port=free_port("127.0.0.1"))
    sidecar = SidecarService(tmp_path / "sidecar", registry.url, registry.root_directory,
                             sections={"notifications": {"secret": SECRET}})
    registry.config_overrides = {
        "storage": {"delete": {"enabled": True}},
        "notifications": {"endpoints": [{
            "name": "registry-p2p",
            "url": f"{sidecar.url}/p2p/v1/notifications",
            "headers": {"Authorization": [f"Bearer {SECRET}"]},
            "timeout": "5s", "threshold": 3, "backoff": "1s"}]},
    }
    agents = [AgentService(tmp_path / f"agent{index}", [
        {"name": registry.hostport, "url": registry.url, "sidecars": [sidecar.url]}])
        for index in range(2)]

    with registry, sidecar:
        for agent in agents:
            agent.start()
        try:
            yield registry, sidecar, agents
        finally:
            for agent in agents:
                agent.stop()


def _wait_for(sidecar, condition, what, timeout=60):
    """Poll the sidecar's stats until ``condition(stats)`` holds; return those stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = sidecar.stats()
        if condition(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; sidecar stats: {stats}")
        time.sleep(0.2)


def _big_layers(image):
    return [layer for layer in image.layers if layer.size >= 1024 * 1024]


def _post(http, sidecar, body, **headers):
    return http.post(f"{sidecar.url}/p2p/v1/notifications", data=body, timeout=10,
                     headers={"Content-Type": EVENTS_TYPE, **headers})


def test_push_event_seeds_layers_before_any_pull(stack, small_image, http):
    registry, sidecar, agents = stack
    big_layers = _big_layers(small_image)

    push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1")
    stats = _wait_for(sidecar, lambda stats: stats["preheated_blobs"] == len(big_layers)
                      and stats["seeded_blobs"] == len(big_layers), "preheating")

    assert stats["metainfo_served"] == 0
    assert stats["cache_fills"] == len(big_layers)

    result = pull_image(agents[0].url, registry.hostport, REPOSITORY, "v1")

    assert result.complete
    after_pull = sidecar.stats()
    assert after_pull["cache_fills"] == len(big_layers)
    assert after_pull["storage_read_bytes"] == stats["storage_read_bytes"]
    blobs = agents[0].stats()["blobs"]
    for layer in big_layers:
        assert blobs[layer.digest.split(":", 1)[1]]["source"] == "p2p"


def test_replayed_push_event_changes_nothing(stack, small_image, http):
    registry, sidecar, _ = stack
    big_layers = _big_layers(small_image)
    push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1")
    before = _wait_for(sidecar, lambda stats: stats["preheated_blobs"] == len(big_layers),
                       "preheating")
    manifest = http.get(f"{registry.url}/v2/{REPOSITORY}/manifests/v1", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json"})
    manifest_event = {"id": "replayed", "action": "push", "target": {
        "mediaType": manifest.headers["Content-Type"],
        "digest": manifest.headers["Docker-Content-Digest"],
        "repository": REPOSITORY, "tag": "v1"}}
    layer_events = [{"id": f"replayed-{index}", "action": "push", "target": {
        "mediaType": "application/octet-stream", "digest": layer.digest,
        "repository": REPOSITORY}} for index, layer in enumerate(big_layers)]
    body = json.dumps({"events": [manifest_event, *layer_events]})
    handled = before["notification_events"]

    for _ in range(2):
        response = _post(http, sidecar, body, Authorization=f"Bearer {SECRET}")
        assert response.status_code == 200
        assert response.json() == {"accepted": 1 + len(big_layers)}
    after = _wait_for(sidecar, lambda stats: stats["notification_events"]
                      >= handled + 2 * (1 + len(big_layers)), "the replayed events")

    for counter in ("preheated_blobs", "cache_fills", "storage_read_bytes", "seeded_blobs",
                    "purged_blobs"):
        assert after[counter] == before[counter], counter


def test_deleted_blob_is_purged_and_not_served(stack, small_image, http):
    registry, sidecar, agents = stack
    big_layers = _big_layers(small_image)
    push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1")
    _wait_for(sidecar, lambda stats: stats["seeded_blobs"] == len(big_layers), "preheating")
    assert pull_image(agents[0].url, registry.hostport, REPOSITORY, "v1").complete
    deleted = big_layers[0]
    hex_digest = deleted.digest.split(":", 1)[1]

    response = http.delete(f"{registry.url}/v2/{REPOSITORY}/blobs/{deleted.digest}", timeout=10)
    assert response.status_code == 202
    stats = _wait_for(sidecar, lambda stats: stats["purged_blobs"] == 1, "the purge")

    assert stats["seeded_blobs"] == len(big_layers) - 1
    assert not (sidecar.cache_dir / "blobs" / hex_digest[:2] / hex_digest).exists()
    for agent in agents:
        blob = http.get(f"{agent.url}/v2/{REPOSITORY}/blobs/{deleted.digest}",
                        params={"ns": registry.hostport}, timeout=30)
        assert blob.status_code == 404
        assert blob.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


TOO_LARGE = '{"events": [%s]}' % ",".join(["{}"] * 400_000)


@pytest.mark.parametrize("headers, body, status, code", [
    ({}, '{"events": []}', 401, "UNAUTHORIZED"),
    ({"Authorization": "Bearer wrong"}, '{"events": []}', 401, "UNAUTHORIZED"),
    ({"Authorization": f"Bearer {SECRET}"}, "{not json", 400, "UNSUPPORTED"),
    ({"Authorization": f"Bearer {SECRET}", "Content-Type": "text/plain"}, '{"events": []}',
     415, "UNSUPPORTED"),
    ({"Authorization": f"Bearer {SECRET}"}, TOO_LARGE, 413, "SIZE_INVALID"),
], ids=["no secret", "wrong secret", "not json", "wrong media type", "too large"])
def test_bad_notifications_are_rejected(stack, http, headers, body, status, code):
    _, sidecar, _ = stack

    response = _post(http, sidecar, body, **headers)

    assert response.status_code == status
    assert response.json()["errors"][0]["code"] == code
    log = (sidecar.workdir / "sidecar.log").read_text()
    assert SECRET not in log


def test_notifications_off_without_secret(tmp_path, http):
    with Registry(tmp_path / "registry") as registry:
        with SidecarService(tmp_path / "sidecar", registry.url, registry.root_directory) as sidecar:
            response = _post(http, sidecar, '{"events": []}', Authorization="Bearer x")

    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_blob_removed_by_garbage_collection_is_purged(tmp_path, small_image, http):
    registry = Registry(tmp_path / "registry", port=free_port("127.0.0.1"))
    sidecar = SidecarService(tmp_path / "sidecar", registry.url, registry.root_directory,
                             sections={"notifications": {"secret": SECRET}},
                             cache_sweep_interval=1)
    registry.config_overrides = {"notifications": {"endpoints": [{
        "name": "registry-p2p", "url": f"{sidecar.url}/p2p/v1/notifications",
        "headers": {"Authorization": [f"Bearer {SECRET}"]}, "timeout": "5s",
        "threshold": 3, "backoff": "1s"}]}}
    big_layers = _big_layers(small_image)
    removed = big_layers[0].digest.split(":", 1)[1]

    with registry, sidecar:
        push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1")
        _wait_for(sidecar, lambda stats: stats["seeded_blobs"] == len(big_layers), "preheating")

        # What `registry garbage-collect` does to an unreferenced blob.
        shutil.rmtree(registry.root_directory / "docker" / "registry" / "v2" / "blobs" /
                      "sha256" / removed[:2] / removed)
        stats = _wait_for(sidecar, lambda stats: stats["purged_blobs"] == 1, "the sweep")

    assert stats["seeded_blobs"] == len(big_layers) - 1
    assert not (sidecar.cache_dir / "blobs" / removed[:2] / removed).exists()
    for layer in big_layers[1:]:
        kept = layer.digest.split(":", 1)[1]
        assert (sidecar.cache_dir / "blobs" / kept[:2] / kept).exists()


# Authorization headers of a client that does not have the secret.
FORGED_AUTHORIZATIONS = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {SECRET[:-1]}"},
    {"Authorization": SECRET},
    {"Authorization": "Basic " + base64.b64encode(f"registry:{SECRET}x".encode()).decode()},
]


@pytest.mark.reliability("Forged delete notifications without the secret", "attack")
def test_forged_deletes_change_nothing(stack, small_image, http, reliability):
    registry, sidecar, agents = stack
    big_layers = _big_layers(small_image)
    push_image(small_image, f"{registry.hostport}/{REPOSITORY}:v1")
    before = _wait_for(sidecar, lambda stats: stats["seeded_blobs"] == len(big_layers),
                       "preheating")
    # Each event purges a seeded layer when it comes with the secret, as
    # the last request shows.
    body = json.dumps({"events": [{"id": f"forged-{index}", "action": "delete", "target": {
        "mediaType": "application/octet-stream", "digest": layer.digest,
        "repository": REPOSITORY}} for index, layer in enumerate(big_layers)]})

    statuses = []
    for index, headers in enumerate(FORGED_AUTHORIZATIONS):
        statuses.append(_post(http, sidecar, body, **headers).status_code)
        result = pull_image(agents[index % len(agents)].url, registry.hostport, REPOSITORY, "v1")
        reliability.add(completed=result.complete)
        assert result.complete
    after = sidecar.stats()
    hex_digests = [layer.digest.split(":", 1)[1] for layer in big_layers]
    cached = [(sidecar.cache_dir / "blobs" / hex_digest[:2] / hex_digest).exists()
              for hex_digest in hex_digests]
    with_secret = _post(http, sidecar, body, Authorization=f"Bearer {SECRET}")
    purged = _wait_for(sidecar, lambda stats: stats["purged_blobs"] == len(big_layers),
                       "the purge by the request with the secret")

    assert statuses == [401] * len(FORGED_AUTHORIZATIONS)
    assert after["purged_blobs"] == before["purged_blobs"] == 0
    assert after["seeded_blobs"] == before["seeded_blobs"]
    assert cached == [True] * len(big_layers)
    assert with_secret.status_code == 200
    assert purged["seeded_blobs"] == 0
