"""Faults during pulls, with real components: several registry hosts, killed sidecars and
agents, unreachable trackers, a stopped registry and failing storage reads.

Each reliability case counts its pulls under the fault, checks every byte
the client got against its digest and records the seconds from the fault
(or from its end) to a completed pull.
"""

import hashlib
import json
import os
import secrets
import signal
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry_p2p import torrent
from registry_p2p.agent.blobs import PROGRESS_CHECK_SECONDS
from registry_p2p.bencode import bdecode
from registry_p2p.blobcache import BlobCache
from registry_p2p.sandbox.image import RandomLayer, build_image, push_image
from registry_p2p.sandbox.p2p import AgentService, SidecarService
from registry_p2p.sandbox.process import free_port
from registry_p2p.sandbox.pull import MANIFEST_TYPES, pull_image
from registry_p2p.sandbox.registry import Registry

pytestmark = pytest.mark.integration

REPOSITORY = "faults/app"
MIN_BLOB_SIZE = 1024 * 1024
# Upper bound on waiting for a condition that the services reach by
# themselves, such as a tracker hearing from every agent. It only keeps a
# broken product from hanging the test.
SETTLE_TIMEOUT = 30.0


def _image(tmp_path_factory, *seeds, size=3 * 1024 * 1024):
    """Build an image of random layers, one per seed, that no other test pushes."""
    layers = [RandomLayer(size - index * 512 * 1024, seed=seed) for index, seed in enumerate(seeds)]
    return build_image(tmp_path_factory.mktemp("image"), layers)


def _big_layers(image):
    return [layer for layer in image.layers if layer.size >= MIN_BLOB_SIZE]


def _corrupt_bytes(result):
    """Return the bytes of complete 200 bodies that do not hash to their digests."""
    return sum(blob.received for blob in result.blobs
               if blob.status == 200 and blob.received == blob.size and not blob.verified)


def _cache_problems(cache_dir):
    """Return files of a cache that are temporary, unverified, or blob data without info."""
    problems = [path for path in (cache_dir / "tmp").iterdir()]
    for data in (cache_dir / "blobs").glob("*/*"):
        if data.suffix:
            continue
        if not data.with_suffix(".info").exists():
            problems.append(data)
        elif hashlib.sha256(data.read_bytes()).hexdigest() != data.name:
            problems.append(data)
    return problems


def _wait_until(check, description):
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {description}"
        time.sleep(0.2)


class Pulls:
    """Pulls of one image through several agents at once, each timed to its end."""

    def __init__(self, agents, registry_name, reference):
        self.results = {}
        self.errors = {}
        self.finished_at = {}
        self._threads = [threading.Thread(target=self._pull,
                                          args=(agent, registry_name, reference))
                         for agent in agents]

    def _pull(self, agent, registry_name, reference):
        try:
            self.results[agent.url] = pull_image(agent.url, registry_name, REPOSITORY, reference)
        except Exception as exc:
            # A killed agent drops its connections, which the test expects.
            self.errors[agent.url] = exc
        self.finished_at[agent.url] = time.monotonic()

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def done(self):
        return not any(thread.is_alive() for thread in self._threads)

    def join(self):
        for thread in self._threads:
            thread.join(timeout=300)
        assert self.done(), "a pull did not end"
        return self


def _scrape(http, url):
    """GET url/metrics and return {(sample name, sorted label pairs): value}."""
    response = http.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _fallbacks(http, agent, reason):
    return _scrape(http, agent.url)[("registry_p2p_fallbacks_total", (("reason", reason),))]


def _swarm_ports(http, sidecar_url, info_hash):
    """Return the peer ports that a sidecar's tracker hands out for a swarm.

    The test announces as a leecher that is new to the swarm, which in the
    tracker's chain selection gets the nodes that announced before it, and
    then leaves the swarm again. A tracker that rejects the announce,
    because its sidecar does not seed the blob, hands out no ports.
    """
    peer_id = "-XX0000-" + secrets.token_hex(6)
    query = {"peer_id": peer_id, "port": str(free_port()), "left": "1", "compact": "1",
             "numwant": "50"}
    url = (f"{sidecar_url}/announce?info_hash={urllib.parse.quote_from_bytes(info_hash)}&"
           + urllib.parse.urlencode(query))
    response = http.get(url, timeout=10)
    http.get(url + "&event=stopped", timeout=10)

    reply = bdecode(response.content)
    if b"failure reason" in reply:
        return set()

    peers = reply[b"peers"]
    return {int.from_bytes(peers[offset + 4:offset + 6], "big")
            for offset in range(0, len(peers), 6)}


def _info_hash(cache_dir, digest):
    info = BlobCache(cache_dir).load_info(digest.split(":", 1)[1])
    assert info is not None, f"{digest} is not in {cache_dir}"
    return bytes.fromhex(torrent.info_hash(torrent.build_info(
        info[b"name"].decode(), info[b"length"], info[b"pieces"])))


class TwoHosts:
    """Two registry hosts behind one registry name, as behind a load balancer.

    Each host runs its own docker-registry and its own sidecar (tracker
    and seeder), and both registries serve one storage directory. Each
    sidecar's ``trackers`` names the other's tracker, and every agent lists
    both sidecars. Agents alternate between the two registries' URLs, as a
    load balancer would spread them.
    """

    NAME = "registry.test"

    def __init__(self, root, agent_count, sidecar_options=None, agent_options=None):
        self.root = root
        self.agent_count = agent_count
        self.sidecar_options = sidecar_options or {}
        self.agent_options = agent_options or {}
        self.registries = []
        self.sidecars = []
        self.agents = []

    def start(self):
        # Hosts behind one name share the secret that signs upload state.
        shared = {"http": {"secret": secrets.token_hex(16)}}
        first = Registry(self.root / "registry-a", config_overrides=shared)
        storage = {"storage": {"filesystem": {"rootdirectory": str(first.root_directory)}}}
        second = Registry(self.root / "registry-b", config_overrides={**shared, **storage})
        for registry in (first, second):
            self.registries.append(registry)
            registry.start()

        ports = [free_port(), free_port()]
        for index, registry in enumerate(self.registries):
            other = ports[1 - index]
            sidecar = SidecarService(self.root / f"sidecar-{'ab'[index]}", registry.url,
                                     first.root_directory, port=ports[index],
                                     trackers=[f"http://127.0.0.1:{other}/announce"],
                                     **self.sidecar_options)
            self.sidecars.append(sidecar)
            sidecar.start()

        for index in range(self.agent_count):
            entry = {"name": self.NAME, "url": self.registries[index % 2].url,
                     "sidecars": [sidecar.url for sidecar in self.sidecars]}
            agent = AgentService(self.root / f"agent{index}", [entry], **self.agent_options)
            self.agents.append(agent)
            agent.start()

        return self

    def push(self, image, tag):
        push_image(image, f"{self.registries[0].hostport}/{REPOSITORY}:{tag}")

    def stop(self):
        for service in [*self.agents, *self.sidecars, *self.registries]:
            service.stop()


@pytest.fixture
def make_two_hosts(tmp_path):
    started = []

    def make(agent_count=2, **options):
        hosts = TwoHosts(tmp_path / f"hosts{len(started)}", agent_count, **options)
        started.append(hosts)
        return hosts.start()

    yield make
    for hosts in started:
        hosts.stop()


def test_agents_join_every_tracker(make_two_hosts, tmp_path_factory, http):
    hosts = make_two_hosts(agent_count=2)
    image = _image(tmp_path_factory, 201, 202)
    hosts.push(image, "v1")

    pulls = Pulls(hosts.agents, TwoHosts.NAME, "v1").start().join()

    assert pulls.errors == {}
    for agent in hosts.agents:
        assert pulls.results[agent.url].complete, pulls.results[agent.url]
        assert _cache_problems(agent.cache_dir) == []

    agent_ports = {agent.torrent_port for agent in hosts.agents}
    for layer in _big_layers(image):
        info_hash = _info_hash(hosts.agents[0].cache_dir, layer.digest)
        for sidecar in hosts.sidecars:
            # The agents announce to the second tracker again once its
            # sidecar seeds the blob, which may be after their pulls ended.
            _wait_until(lambda: agent_ports <= _swarm_ports(http, sidecar.url, info_hash),
                        f"every agent in the swarm of {layer.digest} on {sidecar.url}")
            assert layer.digest in sidecar.stats()["swarm_digests"].values()


@pytest.mark.reliability("Sidecar killed mid-transfer", "fault")
def test_sidecar_killed_mid_transfer(make_two_hosts, tmp_path_factory, http, reliability):
    # Each seeder sends 512 KiB/s, so the layers take seconds to arrive.
    hosts = make_two_hosts(agent_count=2, sidecar_options={"upload_rate_limit": 512 * 1024},
                           agent_options={"stall_timeout": 6})
    image = _image(tmp_path_factory, 211, 212)
    hosts.push(image, "v1")
    first = hosts.sidecars[0]

    pulls = Pulls(hosts.agents, TwoHosts.NAME, "v1").start()
    _wait_until(lambda: pulls.done() or first.stats()["uploaded_bytes"] > 0,
                "the first sidecar's seeder to send blob bytes")
    assert not pulls.done(), "the pulls ended before the fault"
    first.kill()
    killed_at = time.monotonic()
    pulls.join()

    assert pulls.errors == {}
    for agent in hosts.agents:
        result = pulls.results[agent.url]
        reliability.add(completed=result.complete, corrupt_bytes=_corrupt_bytes(result),
                        recover_seconds=pulls.finished_at[agent.url] - killed_at)
        assert result.complete, result
        assert _corrupt_bytes(result) == 0
        assert _cache_problems(agent.cache_dir) == []


@pytest.mark.reliability("Agent killed mid-download and restarted", "fault")
def test_agent_killed_and_restarted(make_stack, tmp_path_factory, http, reliability):
    # 512 KiB/s from the only seeder: a 3 MiB layer takes about 6 s.
    stack = make_stack(agent_count=1, sidecar_options={"upload_rate_limit": 512 * 1024})
    agent = stack.agents[0]
    registry_name = stack.registry.hostport

    for round_index, seed in enumerate((221, 222)):
        image = _image(tmp_path_factory, seed)
        tag = f"v{round_index}"
        push_image(image, f"{registry_name}/{REPOSITORY}:{tag}")
        sent_before = stack.sidecar.stats()["uploaded_bytes"]

        pulls = Pulls([agent], registry_name, tag).start()
        _wait_until(lambda: pulls.done()
                    or stack.sidecar.stats()["uploaded_bytes"] > sent_before,
                    "the agent to receive blob bytes")
        assert not pulls.done(), "the pull ended before the fault"
        agent.kill()
        killed_at = time.monotonic()
        pulls.join()

        assert agent.url in pulls.errors, pulls.results
        agent.start()
        # A restarted agent has removed what the killed one left half-written.
        assert _cache_problems(agent.cache_dir) == []

        result = pull_image(agent.url, registry_name, REPOSITORY, tag)
        recovered_at = time.monotonic()
        reliability.add(completed=result.complete, corrupt_bytes=_corrupt_bytes(result),
                        recover_seconds=recovered_at - killed_at)
        assert result.complete, result
        assert _corrupt_bytes(result) == 0
        assert _cache_problems(agent.cache_dir) == []
        for layer in _big_layers(image):
            assert BlobCache(agent.cache_dir).load_info(layer.digest.split(":")[1]) is not None


@pytest.mark.reliability("Every tracker unreachable", "fault")
def test_unreachable_trackers_fall_back(make_stack, tmp_path_factory, http, reliability):
    # Nothing listens on these ports: every announce of every torrent fails.
    closed = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    stall_timeout = 3.0
    upstream_timeout = 5.0
    stack = make_stack(
        agent_count=2,
        sidecar_options={"public_url": closed[0], "trackers": [f"{closed[1]}/announce"]},
        agent_options={"stall_timeout": stall_timeout, "upstream_timeout": upstream_timeout})
    image = _image(tmp_path_factory, 231, 232)
    push_image(image, f"{stack.registry.hostport}/{REPOSITORY}:v1")
    big_layers = _big_layers(image)

    pulls = Pulls(stack.agents, stack.registry.hostport, "v1")
    started = time.monotonic()
    pulls.start().join()

    # The agent gives up on BitTorrent at most PROGRESS_CHECK_SECONDS
    # after stall_timeout. Asking the sidecar for the torrent and fetching
    # the blob from the registry each wait at most upstream_timeout for
    # data, and on loopback both take much less.
    bound = stall_timeout + PROGRESS_CHECK_SECONDS + upstream_timeout
    assert pulls.errors == {}
    for agent in stack.agents:
        result = pulls.results[agent.url]
        seconds = pulls.finished_at[agent.url] - started
        reliability.add(completed=result.complete, corrupt_bytes=_corrupt_bytes(result),
                        recover_seconds=seconds)
        assert result.complete, result
        assert _corrupt_bytes(result) == 0
        assert seconds <= bound, f"pull took {seconds:.1f} s, config allows {bound:.1f} s"
        assert _fallbacks(http, agent, "stalled") == len(big_layers)
        assert _fallbacks(http, agent, "no_metainfo") == 0
        assert _cache_problems(agent.cache_dir) == []

    # The torrents really named only the unreachable trackers.
    response = http.get(f"{stack.sidecar.url}/p2p/v1/{REPOSITORY}/blobs/"
                        f"{big_layers[0].digest}/torrent", timeout=30)
    metainfo = bdecode(response.content)
    assert [tier[0].decode() for tier in metainfo[b"announce-list"]] == \
        [f"{closed[0]}/announce", f"{closed[1]}/announce"]


def _manifest(http, url, params=None):
    return http.get(f"{url}/v2/{REPOSITORY}/manifests/v1", params=params,
                    headers={"Accept": MANIFEST_TYPES}, timeout=60)


def _assert_registry_error(response):
    assert response.status_code in (502, 503), response.status_code
    codes = [error["code"] for error in json.loads(response.content)["errors"]]
    assert codes == ["UNAVAILABLE"]


@pytest.mark.reliability("Registry down", "fault")
def test_registry_down_gives_errors(make_stack, tmp_path_factory, http, reliability):
    stack = make_stack(agent_count=1)
    agent = stack.agents[0]
    name = stack.registry.hostport

    for seed in (241, 242):
        image = _image(tmp_path_factory, seed)
        push_image(image, f"{name}/{REPOSITORY}:v1")
        assert pull_image(agent.url, name, REPOSITORY, "v1").complete

        stack.registry.stop()
        # No stale tag and no cached blob without the registry's consent.
        _assert_registry_error(_manifest(http, agent.url, {"ns": name}))
        _assert_registry_error(_manifest(http, stack.sidecar.url))
        cached = http.get(f"{agent.url}/v2/{REPOSITORY}/blobs/{image.layers[0].digest}",
                          params={"ns": name}, timeout=60)
        _assert_registry_error(cached)

        stack.registry.start()
        back_at = time.monotonic()
        result = pull_image(agent.url, name, REPOSITORY, "v1")
        reliability.add(completed=result.complete, corrupt_bytes=_corrupt_bytes(result),
                        recover_seconds=time.monotonic() - back_at)
        assert result.complete, result
        assert _corrupt_bytes(result) == 0
        manifest = _manifest(http, agent.url, {"ns": name})
        assert manifest.headers["Docker-Content-Digest"] == image.manifest_digest


def _seeder_pid(sidecar):
    """Return the pid of the sidecar's seeder process, a child of its main process."""
    main_pid = sidecar.process.pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent) == main_pid and b"registry_p2p.sidecar.seeder" in command:
            return int(entry.name)

    raise AssertionError(f"no seeder process under sidecar pid {main_pid}")


def test_hung_seeder_gives_503(make_stack, http):
    stack = make_stack(agent_count=0)
    seeder = _seeder_pid(stack.sidecar)

    os.kill(seeder, signal.SIGSTOP)
    try:
        responses = {path: http.get(f"{stack.sidecar.url}{path}", timeout=60)
                     for path in ("/metrics", "/p2p/v1/stats", "/healthz")}
    finally:
        os.kill(seeder, signal.SIGCONT)

    for path, response in responses.items():
        assert response.status_code == 503, (path, response.text)
    assert "within 5 s" in responses["/metrics"].json()["errors"][0]["detail"]
    assert http.get(f"{stack.sidecar.url}/metrics", timeout=60).status_code == 200
