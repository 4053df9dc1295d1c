"""/metrics and `registry-p2p status` of a sidecar and three agents after a real P2P pull."""

import socket
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry_p2p.sandbox.image import push_image
from registry_p2p.sandbox.p2p import python_environment
from registry_p2p.sandbox.pull import pull_image, pull_on_every_agent

pytestmark = pytest.mark.integration

REPOSITORY = "metrics/app"
# The sandbox agents' p2p.min_blob_size: smaller blobs come from the registry.
MIN_BLOB_SIZE = 1024 * 1024
# libtorrent refreshes its session counters every POLL_INTERVAL (0.5 s).
SETTLE_TIMEOUT = 30.0


def scrape(http, url):
    """GET url/metrics and return {(sample name, sorted label pairs): value}."""
    response = http.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain"), response.headers

    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def received(samples, source):
    return value(samples, "registry_p2p_downloaded_bytes_total", source=source)


def settled_scrapes(http, stack):
    """Scrape every process until each agent's libtorrent received and sent bytes are refreshed.

    The libtorrent counters lag the pull by up to one refresh. So the
    scrapes repeat until the agents' received payload bytes reach the P2P
    bytes they report and the bytes sent and received across the stack
    stop changing.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT
    previous = None
    while True:
        agents = [scrape(http, agent.url) for agent in stack.agents]
        sidecar = scrape(http, stack.sidecar.url)
        p2p = sum(received(agent, "peer") + received(agent, "origin") for agent in agents)
        recv = sum(value(agent, "registry_p2p_libtorrent_net_recv_payload_bytes_total")
                   for agent in agents)
        sent = sum(value(samples, "registry_p2p_uploaded_bytes_total")
                   for samples in [*agents, sidecar])
        if recv >= p2p and (recv, sent) == previous:
            return agents, sidecar
        assert time.monotonic() < deadline, f"counters did not settle: {previous} {recv, sent}"
        previous = (recv, sent)
        time.sleep(1)


def run_status(*arguments):
    return subprocess.run([sys.executable, "-m", "registry_p2p", "status", *arguments],
                          capture_output=True, text=True, env=python_environment(), timeout=60)


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_match_layer_sizes(make_stack, small_image, http):
    stack = make_stack(agent_count=3)
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")

    results = pull_on_every_agent(stack.agents, stack.registry.hostport, REPOSITORY, "v1")

    for agent in stack.agents:
        assert results[agent.url].complete, results[agent.url]
    blob_sizes = {blob.digest: blob.size for blob in results[stack.agents[0].url].blobs}
    p2p_sizes = {digest: size for digest, size in blob_sizes.items() if size >= MIN_BLOB_SIZE}
    direct_bytes = sum(size for size in blob_sizes.values() if size < MIN_BLOB_SIZE)
    p2p_bytes = sum(p2p_sizes.values())
    assert len(p2p_sizes) >= 2, blob_sizes

    agents, sidecar = settled_scrapes(http, stack)

    for agent, samples in zip(stack.agents, agents):
        sources = {digest: agent.stats()["blobs"][digest.split(":", 1)[1]]["source"]
                   for digest in p2p_sizes}
        assert set(sources.values()) == {"p2p"}, sources
        assert received(samples, "peer") + received(samples, "origin") == p2p_bytes, agent.url
        assert received(samples, "fallback") == 0, agent.url
        assert received(samples, "registry") == direct_bytes, agent.url
        assert value(samples, "registry_p2p_cache_bytes") == p2p_bytes, agent.url
        assert value(samples, "registry_p2p_cache_blobs") == len(p2p_sizes), agent.url
        assert value(samples, "registry_p2p_cache_evictions_total") == 0, agent.url
        assert value(samples, "registry_p2p_download_duration_seconds_count") == len(p2p_sizes)
        assert value(samples, "registry_p2p_blobs_served_total", source="p2p") == len(p2p_sizes)
        assert value(samples, "registry_p2p_blobs_served_total",
                     source="registry") == len(blob_sizes) - len(p2p_sizes)
        assert value(samples, "registry_p2p_blobs_served_total", source="fallback") == 0
        for reason in ("no_metainfo", "stalled", "digest_mismatch", "other"):
            assert value(samples, "registry_p2p_fallbacks_total", reason=reason) == 0, reason
        assert value(samples, "registry_p2p_libtorrent_ses_num_seeding_torrents") == len(p2p_sizes)

    # Every verified byte an agent received over BitTorrent was sent by the
    # sidecar or another agent of this stack, and each sent byte arrived.
    agents_p2p = sum(received(samples, "peer") + received(samples, "origin")
                     for samples in agents)
    agents_recv = sum(value(samples, "registry_p2p_libtorrent_net_recv_payload_bytes_total")
                      for samples in agents)
    uploaded = sum(value(samples, "registry_p2p_uploaded_bytes_total")
                   for samples in [*agents, sidecar])
    assert agents_p2p == 3 * p2p_bytes
    assert agents_recv >= agents_p2p
    assert uploaded == agents_recv
    assert value(sidecar, "registry_p2p_uploaded_bytes_total") >= sum(
        received(samples, "origin") for samples in agents)

    assert value(sidecar, "registry_p2p_storage_read_bytes_total") == p2p_bytes
    assert value(sidecar, "registry_p2p_cache_fills_total") == len(p2p_sizes)
    assert value(sidecar, "registry_p2p_cache_bytes") == p2p_bytes
    assert value(sidecar, "registry_p2p_seeded_blobs") == len(p2p_sizes)
    assert value(sidecar, "registry_p2p_metainfo_served_total") == 3 * len(p2p_sizes)
    assert value(sidecar, "registry_p2p_tracker_swarms") == len(p2p_sizes)
    # Each swarm contains the sidecar's seeder and the three agents.
    assert value(sidecar, "registry_p2p_tracker_peers") == 4 * len(p2p_sizes)
    assert value(sidecar, "registry_p2p_cache_evictions_total") == 0

    # The agent's status names its cache figures and the sidecar's its swarms.
    agent = stack.agents[0]
    agent_status = run_status("agent", "-c", str(agent.config_path))
    assert agent_status.returncode == 0, agent_status.stderr
    assert f"agent at {agent.url}" in agent_status.stdout
    assert f"{len(p2p_sizes)} blobs, " in agent_status.stdout
    assert f"({p2p_bytes} bytes)" in agent_status.stdout
    assert f"{len(p2p_sizes)} seeding" in agent_status.stdout
    assert "fallbacks:  0" in agent_status.stdout

    sidecar_status = run_status("sidecar", "--url", stack.sidecar.url)
    assert sidecar_status.returncode == 0, sidecar_status.stderr
    assert f"{len(p2p_sizes)} swarms, {4 * len(p2p_sizes)} peers" in sidecar_status.stdout
    for digest in p2p_sizes:
        assert f"4 peers  {digest}" in sidecar_status.stdout, digest

    wrong_process = run_status("sidecar", "--url", agent.url)
    assert wrong_process.returncode == 2
    assert f"{agent.url} is a registry-p2p agent, not a sidecar" in wrong_process.stderr


def test_status_of_dead_port():
    port = closed_port()

    result = run_status("agent", "--url", f"http://127.0.0.1:{port}")

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"cannot reach the agent at http://127.0.0.1:{port}: Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_fallback_in_metrics_and_status(make_stack, small_image, http):
    """An agent whose sidecar is down falls back, and status lists the blob and reason."""
    port = closed_port()
    stack = make_stack(agent_count=1, sidecar_urls=[f"http://127.0.0.1:{port}"])
    push_image(small_image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    agent = stack.agents[0]

    result = pull_image(agent.url, stack.registry.hostport, REPOSITORY, "v1")

    assert result.complete, result
    p2p_sizes = {blob.digest: blob.size for blob in result.blobs if blob.size >= MIN_BLOB_SIZE}
    samples = scrape(http, agent.url)
    assert value(samples, "registry_p2p_fallbacks_total", reason="no_metainfo") == len(p2p_sizes)
    assert received(samples, "fallback") == sum(p2p_sizes.values())
    assert received(samples, "peer") + received(samples, "origin") == 0
    assert value(samples, "registry_p2p_blobs_served_total", source="fallback") == len(p2p_sizes)

    status = run_status("agent", "--url", agent.url)
    assert status.returncode == 0, status.stderr
    assert f"fallbacks:  {len(p2p_sizes)} (no_metainfo {len(p2p_sizes)})" in status.stdout
    for digest in p2p_sizes:
        assert f"{digest} in {REPOSITORY}: no_metainfo: no sidecar returned a torrent" in (
            status.stdout), digest
