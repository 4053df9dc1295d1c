"""The generated Markdown block of a ``bench tracker`` record, and the summary kept of earlier runs."""

from registry_p2p.bench.report import markdown_table, render_environment
from registry_p2p.bench.sizes import format_size

EVENT_NAMES = {"started": "started", "regular": "regular (no event)", "completed": "completed"}


def run_summary(record):
    """Return the figures of a record that later records keep in ``earlier_runs``."""
    result, cpu, parameters = record["result"], record["cpu"], record["parameters"]

    return {
        "recorded_at": record["recorded_at"],
        "source_revision": record["source_revision"],
        "change": record.get("change"),
        "workers": parameters["sidecar"]["workers"],
        "threads": parameters["sidecar"]["threads"],
        "concurrency": parameters["concurrency"],
        "requests": result["requests"],
        "announces_per_s": result["announces_per_s"],
        "p50_ms": result["latency"].get("p50_ms"),
        "p99_ms": result["latency"].get("p99_ms"),
        "error_count": result["error_count"],
        "machine_cpu_busy": cpu["machine_cpu_busy"],
        "load_average_1min_before": cpu["load_average_1min_before"],
        "generator_cpu_seconds": cpu["generator_cpu_seconds"],
        "gunicorn_cpu_seconds": cpu["gunicorn_cpu_seconds"],
        "seeder_cpu_seconds": cpu["seeder_cpu_seconds"],
    }


def target_verdicts(record):
    """Return one sentence per target: met, or missed and by how much."""
    targets = record["parameters"]["targets"]
    result = record["result"]
    rate, p99 = result["announces_per_s"], result["latency"].get("p99_ms")
    verdicts = []

    target_rate = targets["announces_per_s"]
    if rate >= target_rate:
        verdicts.append(f"at least {target_rate:,} announces/s: met ({rate:,.0f}).")
    else:
        verdicts.append(f"at least {target_rate:,} announces/s: missed, {rate:,.0f} is "
                        f"{100 * (1 - rate / target_rate):.0f}% short.")

    target_p99 = targets["p99_ms"]
    if p99 is None:
        verdicts.append(f"p99 under {target_p99} ms: no announce succeeded.")
    elif p99 < target_p99:
        verdicts.append(f"p99 under {target_p99} ms: met ({p99:.1f} ms, {target_p99 - p99:.1f} ms "
                        f"under).")
    else:
        verdicts.append(f"p99 under {target_p99} ms: missed, {p99:.1f} ms is "
                        f"{p99 / target_p99:.1f} times the target.")

    return verdicts


def _milliseconds(summary, key):
    value = summary.get(key)
    return "–" if value is None else f"{value:.1f}"


def _short_revision(revision):
    if not revision:
        return "unknown"
    commit, plus, suffix = revision.partition("+")
    return commit[:10] + plus + suffix


def render(record):
    """Return the generated Markdown block of a tracker record: setup, figures, CPU, targets, earlier runs."""
    parameters, setup, result = record["parameters"], record["setup"], record["result"]
    cpu, state, sidecar = record["cpu"], record["tracker_state"], parameters["sidecar"]
    saturated_at = f"{100 * parameters['cpu_saturated_at']:.0f}%"

    description = (
        f"Swarms: {parameters['swarms']} layers of {format_size(parameters['blob_size_bytes'])} of "
        f"random bytes, built and pushed as one image with skopeo in {setup['push_seconds']:.1f} s. The "
        f"sidecar made and seeded their torrents in {setup['torrent_seconds']:.1f} s. "
        f"Sidecar: {sidecar['workers']} gunicorn workers of {sidecar['threads']} threads "
        f"({sidecar['worker_class']}), log level {sidecar['log_level']}, "
        f"tracker.interval {sidecar['tracker_interval']} s, tracker.peer_ttl {sidecar['peer_ttl']} s. "
        f"Load: {parameters['requests']:,} announces for {parameters['peers']:,} peers "
        f"({parameters['peers'] // parameters['swarms']} per swarm) over {parameters['concurrency']} "
        f"keep-alive connections from {parameters['processes']} generator processes, numwant "
        f"{parameters['numwant']}, {parameters['timeout']:g} s timeout per announce."
    )

    latency = result["latency"]
    figures = markdown_table(
        ["announces", "errors", "time (s)", "announces/s", "p50 (ms)", "p95 (ms)", "p99 (ms)",
         "max (ms)", "peers per reply"],
        [[f"{result['requests']:,}", f"{result['error_count']:,}", f"{result['seconds']:.2f}",
          f"{result['announces_per_s']:,.0f}", _milliseconds(latency, "p50_ms"),
          _milliseconds(latency, "p95_ms"), _milliseconds(latency, "p99_ms"),
          _milliseconds(latency, "max_ms"), f"{result['peers_per_reply_mean']:.1f}"]],
        align="rrrrrrrrr")

    by_event = markdown_table(
        ["event", "succeeded", "p50 (ms)", "p99 (ms)", "max (ms)"],
        [[EVENT_NAMES[event], f"{summary['count']:,}", _milliseconds(summary, "p50_ms"),
          _milliseconds(summary, "p99_ms"), _milliseconds(summary, "max_ms")]
         for event, summary in result["by_event"].items()],
        align="lrrrr")

    cpu_table = markdown_table(
        ["1-min load average before", "machine CPU busy", f"CPU busy >= {saturated_at}",
         "CPU s: generators / gunicorn / seeder / other"],
        [[f"{cpu['load_average_1min_before']:.2f}", f"{100 * cpu['machine_cpu_busy']:.0f}%",
          "yes" if cpu["cpu_saturated"] else "no",
          f"{cpu['generator_cpu_seconds']:.1f} / {cpu['gunicorn_cpu_seconds']:.1f} / "
          f"{cpu['seeder_cpu_seconds']:.1f} / {cpu['other_cpu_seconds']:.1f}"]],
        align="rrlr")

    errors = "No announce failed."
    if result["error_count"]:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(result["errors"].items()))
        errors = (f"Failed announces by kind: {kinds}. First failures: "
                  + "; ".join(f"`{sample}`" for sample in result["error_samples"][:3]) + ".")

    after = (
        f"After the run the sidecar's tracker held {state['peers_total']:,} peers in "
        f"{state['swarms_with_peers']} swarms ({state['peers_min']} to {state['peers_max']} per "
        f"swarm, its own seeder included) and had rejected {state['rejected_announces']} announces."
    )
    verdicts = "Targets: " + " ".join(target_verdicts(record))
    if cpu["cpu_saturated"]:
        verdicts += (f" The machine's CPUs were at least {saturated_at} busy during the run, so "
                     f"the figures are limited by this machine's CPUs, which the generators and "
                     f"any other jobs share with the sidecar.")

    blocks = [render_environment(record), description, figures, by_event, cpu_table, errors, after,
              verdicts]

    earlier = record.get("earlier_runs", [])
    if earlier:
        runs = [*earlier, run_summary(record)]
        blocks.append("Runs of this scenario, oldest first, the last being the one above. "
                      "\"Change\" is the subject of the commit that each run measured.")
        blocks.append(markdown_table(
            ["recorded", "revision", "change", "workers × threads", "connections", "announces/s",
             "p50 (ms)", "p99 (ms)", "errors", "1-min load average before", "machine CPU busy",
             "CPU s: generators / gunicorn / seeder"],
            [[run["recorded_at"][:16].replace("T", " "), _short_revision(run["source_revision"]),
              run["change"] or "–", f"{run['workers']} × {run['threads']}", run["concurrency"],
              f"{run['announces_per_s']:,.0f}", _milliseconds(run, "p50_ms"),
              _milliseconds(run, "p99_ms"), f"{run['error_count']:,}",
              f"{run['load_average_1min_before']:.2f}", f"{100 * run['machine_cpu_busy']:.0f}%",
              f"{run['generator_cpu_seconds']:.1f} / {run['gunicorn_cpu_seconds']:.1f} / "
              f"{run['seeder_cpu_seconds']:.1f}"]
             for run in runs],
            align="lllrrrrrrrrr"))

    return "\n\n".join(blocks)
