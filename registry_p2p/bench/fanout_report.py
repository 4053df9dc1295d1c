"""The Markdown block and the PNG plots of a ``bench fanout`` record."""

import logging
import statistics
from pathlib import Path

from registry_p2p.bench import BenchError
from registry_p2p.bench.measure import SATURATED_BUSY_FRACTION
from registry_p2p.bench.report import markdown_table, render_environment
from registry_p2p.bench.sizes import format_size

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MODE_ORDER = ("direct", "cold", "preheated", "late")
P2P_MODES = ("cold", "preheated", "late")
# Goals that the block compares each record with.
COMPLETION_GOAL = 1.3
EGRESS_GOAL = 1.5
SINGLE_NODE_GOAL = 1.1
FIRST_BYTE_GOAL_SECONDS = 1.0
AGENT_MEMORY_GOAL_BYTES = 150 * 10 ** 6


def _median(values):
    return statistics.median(values) if values else None


def series(run, runs):
    """Return the name of the line that ``run`` belongs to: its mode, prefixed by its variant if several."""
    variants = {other.get("variant", "default") for other in runs}
    return run["mode"] if len(variants) < 2 else f"{run.get('variant', 'default')} {run['mode']}"


def by_mode_and_count(runs, field):
    """Return {series: {agents: median of ``field``}} over the repeats of each series and agent count."""
    grouped = {}
    for run in runs:
        grouped.setdefault(series(run, runs), {}).setdefault(run["agents"], []).append(run[field])

    return {mode: {count: _median(values) for count, values in sorted(counts.items())}
            for mode, counts in grouped.items()}


def _rate(bits):
    return f"{bits / 1e6:g} Mbit/s"


def _mib(value):
    return "-" if value is None else f"{value / MIB:.0f}"


def _memory(run, role):
    """Return "peak RSS (peak anonymous)" in MiB of ``role``'s largest process, or "-"."""
    peak = run.get(f"{role}_peak_rss_bytes")
    if peak is None:
        return "-"
    anonymous = run.get(f"{role}_peak_anon_bytes")
    return f"{_mib(peak)} ({_mib(anonymous)})" if anonymous else _mib(peak)


def _upload_spread(run):
    """Return the least and the most that one agent's link sent, in multiples of S."""
    sent = run.get("agent_sent_bytes") or []
    if not sent:
        return "-"
    return f"{min(sent) / run['size_bytes']:.2f} / {max(sent) / run['size_bytes']:.2f}"


def _peer_share(run):
    """Share of the blob bytes that agents got from other agents, from the agents' own counts."""
    total = run["agents"] * run["size_bytes"]
    return sum(run["from_peers_bytes"]) / total if total else 0.0


def _run_row(run, runs):
    flag = " (CPU-bound)" if run["cpu_saturated"] else ""
    return [
        series(run, runs),
        run["agents"],
        f"{run['completion_seconds']:.1f} s",
        f"{run['completion_multiple']:.2f}",
        f"{run['p50_multiple']:.2f} / {run['p99_multiple']:.2f}",
        f"{run['first_byte_p50_seconds']:.2f} / {run['first_byte_max_seconds']:.2f}",
        f"{run['registry_egress_multiple']:.2f}",
        f"{100 * _peer_share(run):.0f}%",
        _upload_spread(run),
        run["fallbacks"],
        f"{_memory(run, 'agent')} / {_memory(run, 'sidecar')}",
        f"{100 * run['machine_cpu_busy']:.0f}%{flag}",
    ]


def _met(holds):
    return "met" if holds else "missed"


def first_byte_lines(runs):
    """Return a sentence per P2P run on the first-byte goal, and on bytes arriving before the end."""
    lines = []
    for run in runs:
        if run["mode"] == "direct":
            continue
        first = run["first_byte_max_seconds"]
        share = first / run["completion_seconds"] if run["completion_seconds"] else 0.0
        lines.append(f"- {series(run, runs)}, N = {run['agents']}: first byte after {first:.2f} s at "
                     f"the latest (goal {FIRST_BYTE_GOAL_SECONDS:g} s: "
                     f"{_met(first <= FIRST_BYTE_GOAL_SECONDS)}), at {100 * share:.0f}% of the "
                     f"time the whole blob took.")
    return lines


def memory_lines(runs):
    """Return a sentence per P2P run on the agents' memory goal (150 MB), for RSS and anonymous memory."""
    lines = []
    for run in runs:
        if run["mode"] == "direct":
            continue
        peak, anonymous = run["agent_peak_rss_bytes"], run.get("agent_peak_anon_bytes") or 0
        lines.append(f"- {series(run, runs)}: largest agent process peaked at {peak / 1e6:.0f} MB "
                     f"RSS and {anonymous / 1e6:.0f} MB anonymous memory (goal 150 MB: RSS "
                     f"{_met(peak <= AGENT_MEMORY_GOAL_BYTES)}, anonymous "
                     f"{_met(anonymous <= AGENT_MEMORY_GOAL_BYTES)}).")
    return lines


def goal_lines(runs):
    """Return one sentence per goal, with the measured figure and whether it holds.

    With several variants, only the runs of the first one count.
    """
    first = runs[0].get("variant", "default") if runs else "default"
    runs = [run for run in runs if run.get("variant", "default") == first]
    lines = []
    completion = by_mode_and_count(runs, "completion_multiple")
    egress = by_mode_and_count(runs, "registry_egress_multiple")
    seconds = by_mode_and_count(runs, "completion_seconds")
    largest = max((run["agents"] for run in runs), default=0)

    for mode in P2P_MODES:
        if largest not in completion.get(mode, {}):
            continue
        measured = completion[mode][largest]
        sent = egress[mode][largest]
        lines.append(
            f"- {mode}, N = {largest}: all agents done in {measured:.2f} x S/B "
            f"(goal {COMPLETION_GOAL}: {'met' if measured <= COMPLETION_GOAL else 'missed'}); "
            f"registry host sent {sent:.2f} x S "
            f"(goal {EGRESS_GOAL}: {'met' if sent <= EGRESS_GOAL else 'missed'}).")

    direct_one = seconds.get("direct", {}).get(1)
    for mode in ("cold", "preheated"):
        p2p_one = seconds.get(mode, {}).get(1)
        if direct_one and p2p_one:
            ratio = p2p_one / direct_one
            lines.append(
                f"- {mode}, N = 1: {p2p_one:.1f} s against {direct_one:.1f} s direct, "
                f"{ratio:.2f} x (goal {SINGLE_NODE_GOAL}: "
                f"{'met' if ratio <= SINGLE_NODE_GOAL else 'missed'}).")

    if largest in egress.get("direct", {}):
        lines.append(f"- direct, N = {largest}: registry host sent "
                     f"{egress['direct'][largest]:.2f} x S and the last agent finished at "
                     f"{completion['direct'][largest]:.2f} x S/B.")

    return lines


def _variant_text(variant):
    changes = variant.get("changes") or {}
    if not changes:
        return f"{variant['label']} (the shipped configuration)"
    return f"{variant['label']} (" + ", ".join(f"{key} = {value}" for key, value in changes.items()) + ")"


def render(record):
    """Return the generated Markdown block of a fanout record."""
    parameters, runs = record["parameters"], record["runs"]
    size, rate = parameters["size_bytes"], parameters["rate_bits"]
    bound = size * 8 / rate
    variants = parameters.get("variants") or [{"label": "default", "changes": {}}]
    saturated = f"{100 * SATURATED_BUSY_FRACTION:.0f}%"

    setup = (
        f"Blob: {format_size(size)} of random bytes. Every link: {_rate(rate)} each way. "
        f"Lower bound S/B = {bound:.1f} s. Agents per run: "
        f"{', '.join(str(count) for count in parameters['agents'])}; "
        f"modes: {', '.join(parameters['modes'])}; {parameters['repeat']} run(s) each. "
        f"Variants: " + "; ".join(_variant_text(variant) for variant in variants) + "."
    )

    table = markdown_table(
        ["series", "N", "all done", "x S/B", "p50 / p99 (x S/B)", "first byte p50 / max (s)",
         "registry sent (x S)", "from peers", "agents sent min / max (x S)", "fallbacks", "RSS (anon) agent / sidecar, MiB",
         "CPU busy"],
        [_run_row(run, runs) for run in sorted(runs, key=lambda run: (
            run["agents"], run.get("variant", ""), MODE_ORDER.index(run["mode"])))],
        align="lrrrrrrrrrrr")

    cpu_bound = sum(1 for run in runs if run["cpu_saturated"])
    notes = (
        f"Runs during which the machine's CPUs were at least {saturated} busy on average are "
        f"marked CPU-bound: {cpu_bound} of {len(runs)}. Their times say more about this "
        f"machine than about the network. \"from peers\" is the share of all agents' blob bytes "
        f"that came from other agents, as the agents counted them; the rest came from the "
        f"sidecar's seeder or, in direct mode, the registry. \"agents sent\" is what the "
        f"least and the most busy agent link carried out, headers included. Memory is that of the largest "
        f"process of any agent and of the sidecar: peak RSS (VmHWM), and in brackets the "
        f"peak of its anonymous memory (RssAnon, sampled every 0.5 s). RSS also counts pages "
        f"of the blob files that libtorrent maps, which the kernel reclaims when it needs to."
    )

    parts = [render_environment(record), setup, table, notes]
    if len(variants) > 1:
        parts.append(variant_table(runs))
    goals = {"fanout-first-byte": first_byte_lines,
             "fanout-large": memory_lines}.get(record["scenario"], goal_lines)
    parts.append("\n".join(goals(runs)))
    if _has_plots(runs):
        parts.append(f"![completion time against N](benchmarks/{record['scenario']}-completion.png)\n"
                     f"![registry host egress against N](benchmarks/{record['scenario']}-egress.png)")

    return "\n\n".join(part for part in parts if part)


def _has_plots(runs):
    """Plots against N need at least two agent counts."""
    return len({run["agents"] for run in runs}) > 1


def variant_table(runs):
    """Return a table of each variant's medians next to the first variant's, per mode and N."""
    baseline = runs[0].get("variant", "default")
    rows = []
    keys = sorted({(run["mode"], run["agents"]) for run in runs},
                  key=lambda key: (key[1], MODE_ORDER.index(key[0])))
    labels = list(dict.fromkeys(run.get("variant", "default") for run in runs))
    for mode, count in keys:
        def median_of(label, field):
            return _median([run[field] for run in runs if run["mode"] == mode
                            and run["agents"] == count and run.get("variant", "default") == label])

        reference = median_of(baseline, "completion_multiple")
        for label in labels:
            completion = median_of(label, "completion_multiple")
            if completion is None:
                continue
            change = "" if label == baseline or not reference else f"{100 * (completion / reference - 1):+.0f}%"
            rows.append([label, mode, count, f"{completion:.2f}", change,
                         f"{median_of(label, 'registry_egress_multiple'):.2f}",
                         f"{median_of(label, 'first_byte_p50_seconds'):.2f}"])

    return markdown_table(["variant", "mode", "N", "all done (x S/B)", f"vs {baseline}",
                           "registry sent (x S)", "first byte p50 (s)"], rows, align="llrrrrr")


def plot(record, directory):
    """Write the two PNG plots of a fanout record into ``directory``/benchmarks/."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise BenchError("the plots need matplotlib: apt-get install python3-matplotlib") from None

    runs = record["runs"]
    if not _has_plots(runs):
        return []
    out = Path(directory) / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        ("completion", "completion_multiple", "time until every agent is done (x S/B)",
         [(COMPLETION_GOAL, "goal for P2P")]),
        ("egress", "registry_egress_multiple", "bytes sent by the registry host (x S)",
         [(EGRESS_GOAL, "goal for P2P")]),
    ]
    written = []
    for name, field, label, goals in figures:
        medians = by_mode_and_count(runs, field)
        figure, axes = pyplot.subplots(figsize=(6.4, 4.0), dpi=100)
        for line_name, values in medians.items():
            counts = list(values)
            axes.plot(counts, [values[count] for count in counts], marker="o", label=line_name)
        for value, goal_label in goals:
            axes.axhline(value, color="grey", linestyle="--", linewidth=1, label=goal_label)
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted({run["agents"] for run in runs}))
        axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.set_xlabel("agents (N)")
        axes.set_ylabel(label)
        axes.set_title(f"{format_size(record['parameters']['size_bytes'])} blob, "
                       f"{_rate(record['parameters']['rate_bits'])} links")
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = out / f"{record['scenario']}-{name}.png"
        figure.savefig(path, metadata={"Software": None})
        pyplot.close(figure)
        written.append(path)
        log.info("wrote plot %s", path)

    return written
