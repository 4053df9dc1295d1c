"""The text of `registry-p2p status` and how it reaches the process."""

import socket

import pytest

from registry_p2p import cli, status

AGENT_STATS = {
    "totals": {"from_sidecars": 3 * 1024 * 1024, "from_peers": 5 * 1024 * 1024,
               "from_registry": 2048 + 700, "from_fallback": 700, "from_cache": 0,
               "fallbacks": 2},
    "blobs": {},
    "uploaded_bytes": 4096,
    "downloaded_bytes": 8 * 1024 * 1024,
    "peers_connected": 3,
    "seeding_torrents": 4,
    "downloading_torrents": 1,
    "stream_readers": 0,
    "served": {"cache": 1, "p2p": 4, "registry": 2, "fallback": 2},
    "fallback_reasons": {"no_metainfo": 0, "stalled": 2, "other": 0},
    "recent_fallbacks": [
        {"time": 0, "digest": "sha256:" + "1" * 64, "repository": "team/app",
         "reason": "stalled", "message": "no download progress for 20 s"},
        {"time": 60, "digest": "sha256:" + "2" * 64, "repository": "",
         "reason": "stalled", "message": "no download progress for 21 s"},
    ],
    "cache_blobs": 4,
    "cache_bytes": 1536,
}

SIDECAR_STATS = {
    "proxied_blob_bytes": 0, "storage_read_bytes": 1024 * 1024, "metainfo_served": 6,
    "cache_fills": 2, "rejected_announces": 0, "notification_events": 0,
    "preheated_blobs": 0, "purged_blobs": 0,
    "uploaded_bytes": 2 * 1024 * 1024, "downloaded_bytes": 0,
    "peers_connected": 2, "seeding_torrents": 2, "downloading_torrents": 0,
    "seeded_blobs": 2, "cache_blobs": 2, "cache_bytes": 1024 * 1024,
    "swarms": {"a" * 40: 3, "b" * 40: 5, "c" * 40: 1},
    "swarm_digests": {"a" * 40: "sha256:" + "d" * 64, "b" * 40: "sha256:" + "e" * 64},
}


def closed_port():
    """Return a loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("host, port, url", [
    ("0.0.0.0", 5080, "http://127.0.0.1:5080"),
    ("::", 5050, "http://[::1]:5050"),
    ("10.1.2.3", 5050, "http://10.1.2.3:5050"),
    ("fd00::5", 5080, "http://[fd00::5]:5080"),
])
def test_url_from_listen(host, port, url):
    assert status.url_from_listen(host, port) == url


def test_url_from_config(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('listen = "0.0.0.0:6000"\ncache_dir = "/tmp/x"\n')

    assert status.url_from_config("agent", config) == "http://127.0.0.1:6000"


@pytest.mark.parametrize("size, text", [
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (5 * 1024 ** 3, "5.0 GiB"),
    (3 * 1024 ** 5, "3072.0 TiB"),
])
def test_human_bytes(size, text):
    assert status.human_bytes(size) == text


def test_agent_summary_figures():
    text = status.format_agent("http://127.0.0.1:5080", AGENT_STATS)

    assert text.startswith("agent at http://127.0.0.1:5080\n")
    assert "4 seeding, 1 downloading" in text
    assert "3 connected" in text
    assert "4 blobs, 1.5 KiB (1536 bytes)" in text
    assert "peers 5.0 MiB (5242880 bytes)" in text
    assert "origin 3.0 MiB (3145728 bytes)" in text
    assert "registry 2.0 KiB (2048 bytes)" in text
    assert "fallback 700 B" in text
    assert "fallbacks:  2 (stalled 2)" in text


def test_agent_summary_recent_fallbacks_newest_first():
    lines = status.format_agent("http://a", AGENT_STATS).splitlines()
    start = lines.index("  recent fallbacks, newest first:")

    assert lines[start + 1] == (f"    1970-01-01 00:01:00 UTC  sha256:{'2' * 64}: stalled: "
                                f"no download progress for 21 s")
    assert lines[start + 2] == (f"    1970-01-01 00:00:00 UTC  sha256:{'1' * 64} in team/app: "
                                f"stalled: no download progress for 20 s")


def test_agent_summary_without_fallbacks():
    stats = {**AGENT_STATS, "recent_fallbacks": [],
             "totals": {**AGENT_STATS["totals"], "fallbacks": 0},
             "fallback_reasons": {"stalled": 0}}

    text = status.format_agent("http://a", stats)

    assert "fallbacks:  0\n" in text + "\n"
    assert "recent fallbacks" not in text


def test_sidecar_summary_figures():
    text = status.format_sidecar("http://127.0.0.1:5050", SIDECAR_STATS)

    assert text.startswith("sidecar at http://127.0.0.1:5050\n")
    assert "3 swarms, 9 peers" in text
    assert "2 blobs, 2 peers connected" in text
    assert "2 blobs, 1.0 MiB (1048576 bytes)" in text
    assert "uploaded:   2.0 MiB (2097152 bytes) to peers" in text


def test_sidecar_summary_swarms_largest_first():
    lines = status.format_sidecar("http://s", SIDECAR_STATS).splitlines()
    start = lines.index("  swarms:")

    assert lines[start + 1] == f"    {'b' * 40}  5 peers  sha256:{'e' * 64}"
    assert lines[start + 2] == f"    {'a' * 40}  3 peers  sha256:{'d' * 64}"
    assert lines[start + 3] == f"    {'c' * 40}  1 peers  blob not seeded here"


def test_sidecar_summary_caps_swarm_list():
    swarms = {f"{index:040x}": index for index in range(status.SHOWN_SWARMS + 3)}
    stats = {**SIDECAR_STATS, "swarms": swarms, "swarm_digests": {}}

    lines = status.format_sidecar("http://s", stats).splitlines()
    start = lines.index("  largest swarms:")

    assert len(lines) - start - 1 == status.SHOWN_SWARMS
    assert lines[start + 1].startswith(f"    {status.SHOWN_SWARMS + 2:040x}  ")


def test_dead_port_message(capfd):
    port = closed_port()

    code = cli.main(["status", "agent", "--url", f"http://127.0.0.1:{port}"])

    assert code == 2
    error = capfd.readouterr().err
    assert error.startswith(f"registry-p2p: error: cannot reach the agent at "
                            f"http://127.0.0.1:{port}: ")
    assert "Connection refused" in error
    assert "Traceback" not in error


def test_missing_config_message(capfd, tmp_path):
    code = cli.main(["status", "sidecar", "-c", str(tmp_path / "missing.toml")])

    assert code == 2
    assert "cannot read config file" in capfd.readouterr().err


def test_missing_default_config_message(capfd, monkeypatch, tmp_path):
    monkeypatch.setitem(status.DEFAULT_CONFIGS, "agent", str(tmp_path / "agent.toml"))

    code = cli.main(["status", "agent"])

    assert code == 2
    error = capfd.readouterr().err
    assert f"agent config file {tmp_path / 'agent.toml'} not found" in error
    assert "-c CONFIG or --url URL" in error
