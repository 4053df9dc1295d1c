"""docs/benchmarks.md: Markdown blocks generated from the JSON records, between markers.

Each scenario has one block in the Markdown file, between
``<!-- begin generated: <scenario> -->`` and ``<!-- end generated: <scenario> -->``.
Rendering replaces only those blocks, so the text around them is written
by hand and kept. A scenario without a block gets a new section at the end.
"""

import logging
import re
from pathlib import Path

from registry_p2p.bench import BenchError, results, scenario_module

log = logging.getLogger(__name__)

BEGIN = "<!-- begin generated: {name} -->"
END = "<!-- end generated: {name} -->"
NOTICE = ("<!-- Written by `registry-p2p bench report` from benchmarks.json. "
          "Edits inside this block are lost. -->")


def markdown_table(headers, rows, align=None):
    """Return a Markdown table. ``align`` has "l" or "r" per column, left by default."""
    align = align or "l" * len(headers)
    if len(align) != len(headers) or any(len(row) != len(headers) for row in rows):
        raise ValueError(f"table of {len(headers)} columns got alignment {align!r} "
                         f"and row lengths {[len(row) for row in rows]}")

    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    rule = "|" + "|".join("---:" if side == "r" else "---" for side in align) + "|"

    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def render_environment(record):
    """Return the command, date, source revision, machine and software of a record as Markdown."""
    machine = record.get("machine", {})
    memory = machine.get("memory_bytes")
    cpu = machine.get("cpu_model") or "unknown CPU"
    if machine.get("virtual_machine"):
        cpu += ", virtual machine"

    lines = [
        "```sh",
        record.get("command", "(command not recorded)"),
        "```",
        "",
        f"- Recorded: {record.get('recorded_at', 'unknown')}, source revision "
        f"{record.get('source_revision') or 'unknown'}",
        f"- Machine: {machine.get('nproc', '?')} CPUs available ({cpu}), "
        f"{f'{memory / 1024 ** 3:.1f} GiB' if memory else 'unknown'} memory",
        f"- Kernel {machine.get('kernel', 'unknown')}, Debian {machine.get('debian_version') or 'unknown'}",
    ]

    software = record.get("software", {})
    if software:
        versions = ", ".join(f"{name.removeprefix('deb:')} {version or 'not installed'}"
                             for name, version in software.items() if name != "python_executable")
        lines.append(f"- Software: {versions}")

    return "\n".join(lines)


def update_markdown(text, name, block):
    """Return ``text`` with the generated block of scenario ``name`` replaced by ``block``."""
    begin, end = BEGIN.format(name=name), END.format(name=name)
    generated = f"{begin}\n{NOTICE}\n\n{block.strip()}\n\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)

    if pattern.search(text):
        return pattern.sub(lambda _: generated, text, count=1)

    log.info("no generated block for scenario %s yet, appending one", name)
    title = getattr(scenario_module(name), "TITLE", name)
    return f"{text.rstrip()}\n\n## {title}\n\n{generated}\n".lstrip()


def render_file(records_path, markdown_path):
    """Regenerate every scenario's block in ``markdown_path`` from the records in ``records_path``."""
    document = results.load(records_path)
    if not document["scenarios"]:
        raise BenchError(f"no benchmark records in {records_path}: run `registry-p2p bench <scenario>` first")

    markdown_path = Path(markdown_path)
    try:
        text = markdown_path.read_text()
    except FileNotFoundError:
        text = "# Benchmarks\n"

    for name, record in document["scenarios"].items():
        module = scenario_module(name)
        text = update_markdown(text, name, module.render(record))
        # A scenario with plots writes them next to the Markdown file.
        if hasattr(module, "plot"):
            module.plot(record, markdown_path.parent)

    markdown_path.write_text(text)
    log.info("wrote %d benchmark blocks to %s", len(document["scenarios"]), markdown_path)
