"""Pure parts of the fan-out benchmark: link shaping commands, counters, blob layout, records and plots."""

import hashlib
import json
import struct
import zlib

import pytest

from registry_p2p import layout
from registry_p2p.bench import fanout, fanout_report
from registry_p2p.bench.sizes import parse_rate
from registry_p2p.sandbox import cluster

MIB = 1024 * 1024


def test_lower_bound_is_size_over_rate():
    assert fanout.lower_bound_seconds(128 * MIB, 50_000_000) == pytest.approx(21.474836, rel=1e-6)


def test_shaping_on_host_link():
    commands = [" ".join(command) for command in
                cluster.shaping_commands("eth0", 50_000_000, "10.216.1.254", upload=True)]

    assert commands[0] == "qdisc add dev eth0 root handle 1: htb default 10"
    assert "classid 1:1 htb rate 50000000bit ceil 50000000bit" in commands[1]
    assert "classid 1:10 htb rate 49000000bit ceil 50000000bit prio 1" in commands[2]
    assert "classid 1:20 htb rate 1000000bit ceil 50000000bit prio 0" in commands[3]
    assert commands[4].endswith(f"bfifo limit {cluster.queue_bytes(50_000_000)}")
    assert "protocol arp" in commands[5]
    assert commands[5].endswith("flowid 1:20")
    assert "match ip dst 10.216.1.254/32 flowid 1:20" in commands[6]
    assert "match ip protocol 6 0xff" in commands[7]
    assert "match u8 0x10 0xff at 33" in commands[7]
    assert commands[7].endswith("flowid 1:20")


def test_shaping_on_switch_port():
    commands = cluster.shaping_commands("p3", 10_000_000, "10.216.1.254", upload=False)

    assert "src" in commands[6]
    assert "1000000bit" in " ".join(commands[3])


def test_queue_bytes_with_minimum():
    assert cluster.queue_bytes(1_000_000_000) == 1_000_000_000 // 8 * cluster.QUEUE_SECONDS
    assert cluster.queue_bytes(1_000_000) == cluster.MIN_QUEUE_BYTES


@pytest.mark.parametrize("rate", [0, -1])
def test_shaping_rejects_a_rate_that_is_not_positive(rate):
    with pytest.raises(ValueError, match="positive"):
        cluster.shaping_commands("eth0", rate, "10.0.0.254", upload=True)


def test_interface_counters_read_stats64():
    text = json.dumps([{"ifname": "eth0", "stats64": {"rx": {"bytes": 12}, "tx": {"bytes": 34}}}])

    assert cluster.interface_counters(text) == (12, 34)


def test_interface_counters_reject_empty_output():
    with pytest.raises(ValueError):
        cluster.interface_counters("[]")


@pytest.mark.parametrize("text, expected", [
    ("50Mbit", 50_000_000), ("1Gbit", 1_000_000_000), ("50Mbit/s", 50_000_000),
    ("2.5mbit", 2_500_000), ("800kbit", 800_000),
])
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["50MB", "fast", "0bit", "50 Mbps"])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


def test_write_blob_uses_the_registry_layout(tmp_path):
    digest = fanout.write_blob(tmp_path, "bench/fanout", 3 * MIB + 5, seed=7)
    hex_digest = digest.removeprefix("sha256:")
    data = (tmp_path / layout.blob_data_path(hex_digest)).read_bytes()

    assert len(data) == 3 * MIB + 5
    assert hashlib.sha256(data).hexdigest() == hex_digest
    assert (tmp_path / layout.layer_link_path("bench/fanout", hex_digest)).read_text() == digest
    assert not (tmp_path / "blob.tmp").exists()


def test_write_blob_differs_by_seed(tmp_path):
    assert (fanout.write_blob(tmp_path / "a", "r", MIB, seed=1)
            != fanout.write_blob(tmp_path / "b", "r", MIB, seed=2))


def _run(mode, agents, completion, egress, cpu=0.5, size=128 * MIB, rate=50_000_000):
    bound = size * 8 / rate
    return {
        "mode": mode, "agents": agents, "size_bytes": size, "rate_bits": rate,
        "completion_seconds": completion * bound, "completion_multiple": completion,
        "p50_multiple": completion, "p99_multiple": completion,
        "first_byte_p50_seconds": 0.2, "first_byte_max_seconds": 0.3,
        "registry_egress_multiple": egress, "from_peers_bytes": [size // 2] * agents,
        "agent_sent_bytes": [0, size // 2, 2 * size][:agents] or [0],
        "fallbacks": 0, "agent_peak_rss_bytes": 90 * MIB, "sidecar_peak_rss_bytes": None,
        "agent_peak_anon_bytes": 40 * MIB, "sidecar_peak_anon_bytes": None,
        "machine_cpu_busy": cpu, "cpu_saturated": cpu >= 0.9,
    }


def _record(runs):
    return {"scenario": "fanout", "command": "registry-p2p bench fanout", "machine": {},
            "parameters": {"size_bytes": 128 * MIB, "rate_bits": 50_000_000, "agents": [1, 32],
                           "modes": ["direct", "cold"], "repeat": 1, "variants": []},
            "runs": runs}


def test_medians_group_repeats_by_mode_and_count():
    runs = [_run("cold", 4, 1.0, 1.0), _run("cold", 4, 3.0, 1.0), _run("cold", 4, 2.0, 1.0),
            _run("direct", 4, 4.0, 4.0)]

    assert fanout_report.by_mode_and_count(runs, "completion_multiple") == {
        "cold": {4: 2.0}, "direct": {4: 4.0}}


def test_goals_state_met_and_missed_with_figures():
    runs = [_run("direct", 1, 1.0, 1.0), _run("cold", 1, 1.05, 1.0),
            _run("direct", 32, 32.0, 32.0), _run("cold", 32, 1.6, 1.2)]
    lines = "\n".join(fanout_report.goal_lines(runs))

    assert "cold, N = 32: all agents done in 1.60 x S/B (goal 1.3: missed)" in lines
    assert "registry host sent 1.20 x S (goal 1.5: met)" in lines
    assert "cold, N = 1:" in lines
    assert "1.05 x (goal 1.1: met)" in lines
    assert "direct, N = 32: registry host sent 32.00 x S" in lines


def test_render_flags_cpu_bound_runs_and_links_plots():
    block = fanout_report.render(_record([_run("cold", 32, 1.2, 1.1, cpu=0.95),
                                          _run("direct", 32, 32.0, 32.0, cpu=0.3),
                                          _run("direct", 1, 1.0, 1.0, cpu=0.3)]))

    assert "(CPU-bound)" in block
    assert block.count("(CPU-bound)") == 1
    assert "benchmarks/fanout-completion.png" in block
    assert "Lower bound S/B = 21.5 s" in block
    assert "| 90 (40) / - |" in block
    assert "| 0.00 / 2.00 |" in block


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    return width, height


def test_plot_writes_two_pngs(tmp_path):
    written = fanout_report.plot(_record([_run("direct", 1, 1.0, 1.0), _run("cold", 1, 1.1, 1.0),
                                          _run("direct", 32, 32.0, 32.0), _run("cold", 32, 1.5, 1.2)]),
                                 tmp_path)

    assert [path.name for path in written] == ["fanout-completion.png", "fanout-egress.png"]
    for path in written:
        assert _png_size(path) == (640, 400)


def test_parse_variant_routes_keys_by_role():
    variant = fanout.parse_variant("wide:sidecar.tracker.origin_fanout=4,agent.p2p.stream=false,"
                                   "unchoke_slots_limit=-1,choking_algorithm=rate_based")

    assert variant.label == "wide"
    assert variant.sections("sidecar") == {"tracker": {"origin_fanout": 4},
                                           "torrent.settings": {"unchoke_slots_limit": -1,
                                                                "choking_algorithm": "rate_based"}}
    assert variant.sections("agent") == {"p2p": {"stream": False},
                                         "torrent.settings": {"unchoke_slots_limit": -1,
                                                              "choking_algorithm": "rate_based"}}


def test_parse_variant_without_changes_is_the_shipped_configuration():
    assert fanout.parse_variant("default").sections("agent") == {}


@pytest.mark.parametrize("text", [":a=1", "x:novalue", "x:sidecar.origin_fanout=2"])
def test_parse_variant_rejects(text):
    with pytest.raises(ValueError):
        fanout.parse_variant(text)


def test_series_name_with_variants():
    one = [_run("cold", 4, 1.0, 1.0)]
    two = [dict(one[0], variant="default"), dict(one[0], variant="utp")]

    assert fanout_report.series(one[0], one) == "cold"
    assert [fanout_report.series(run, two) for run in two] == ["default cold", "utp cold"]


def test_variant_table_compares_each_variant_with_the_first():
    runs = [dict(_run("cold", 8, 2.0, 1.0), variant="default"),
            dict(_run("cold", 8, 1.5, 1.4), variant="super-seeding"),
            dict(_run("cold", 8, 3.0, 1.0), variant="utp")]
    table = fanout_report.variant_table(runs)

    assert "| super-seeding | cold | 8 | 1.50 | -25% | 1.40 |" in table
    assert "| utp | cold | 8 | 3.00 | +50% | 1.00 |" in table
    assert "| default | cold | 8 | 2.00 |  | 1.00 |" in table


def test_plot_skips_single_agent_count(tmp_path):
    record = _record([_run("cold", 8, 2.0, 1.0)])

    assert fanout_report.plot(record, tmp_path) == []
    assert ".png" not in fanout_report.render(record)


def test_first_byte_record_states_the_first_byte_goal():
    record = dict(_record([_run("direct", 1, 1.0, 1.0), _run("preheated", 1, 1.2, 1.0)]),
                  scenario="fanout-first-byte")
    block = fanout_report.render(record)

    assert "preheated, N = 1: first byte after 0.30 s at the latest (goal 1 s: met)" in block
    assert "goal 1.3" not in block


def test_large_record_states_the_memory_goal():
    record = dict(_record([_run("preheated", 2, 1.0, 1.0)]), scenario="fanout-large")
    block = fanout_report.render(record)

    assert "peaked at 94 MB RSS and 42 MB anonymous memory" in block
    assert "RSS met, anonymous met" in block


def test_link_use_fractions_of_rate():
    # 8 Mbit/s is 1 MB/s each way.
    trace = {"rate_bits": 8_000_000, "samples": [
        [0.0, [0, 0], [0, 0], [0, 0]],
        [0.5, [0, 500_000], [250_000, 0], [500_000, 250_000]],
        [1.5, [0, 500_000], [1_250_000, 0], [500_000, 1_250_000]],
    ]}

    intervals = fanout.link_use(trace)

    assert intervals == [(0.5, 1.0, [0.5, 1.0], [0.0, 0.5]),
                         (1.5, 0.0, [1.0, 0.0], [0.0, 1.0])]


def test_link_use_skips_intervals_without_elapsed_time():
    trace = {"rate_bits": 8_000_000, "samples": [[1.0, [0, 0]], [1.0, [0, 10]]]}

    assert fanout.link_use(trace) == []


def test_link_trace_sample_order():
    class Counters:
        def __init__(self):
            self.reads = 0

        def counters(self, host):
            self.reads += 1
            return (self.reads, host)

    cluster = Counters()
    with fanout.LinkTrace(cluster, "registry-host", ["agent-host"]) as trace:
        pass

    record = trace.as_record(50_000_000)
    assert record["hosts"] == ["registry", "agent0"]
    assert record["samples"][0][1:] == [[1, "registry-host"], [2, "agent-host"]]
    assert record["samples"][-1][1:] == [[3, "registry-host"], [4, "agent-host"]]
    assert record["rate_bits"] == 50_000_000
