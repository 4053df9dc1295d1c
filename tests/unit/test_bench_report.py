"""Markdown generated from benchmark records."""

import json

import pytest

from registry_p2p.bench import BenchError, report


def test_markdown_table_aligns_columns():
    table = report.markdown_table(["name", "seconds"], [["a", "1.50"], ["b|c", 2]], align="lr")

    assert table.splitlines() == [
        "| name | seconds |",
        "|---|---:|",
        "| a | 1.50 |",
        "| b\\|c | 2 |",
    ]


def test_markdown_table_rejects_short_row():
    with pytest.raises(ValueError, match="row lengths"):
        report.markdown_table(["a", "b"], [["only one"]])


def test_update_markdown_replaces_only_its_block():
    text = (
        "# Benchmarks\n\nWritten by hand.\n\n"
        f"{report.BEGIN.format(name='swift')}\nold swift\n{report.END.format(name='swift')}\n\n"
        f"{report.BEGIN.format(name='fanout')}\nold fanout\n{report.END.format(name='fanout')}\n\n"
        "Also by hand.\n"
    )

    updated = report.update_markdown(text, "swift", "new swift")

    assert "old swift" not in updated
    assert "new swift" in updated
    assert "old fanout" in updated
    assert updated.startswith("# Benchmarks\n\nWritten by hand.\n\n")
    assert updated.endswith("Also by hand.\n")
    assert report.update_markdown(updated, "swift", "new swift") == updated


def test_update_markdown_appends_missing_block():
    updated = report.update_markdown("# Benchmarks\n", "swift", "swift table")

    assert updated.startswith("# Benchmarks\n\n## Swift: ")
    assert updated.index(report.BEGIN.format(name="swift")) < updated.index("swift table")
    assert updated.rstrip().endswith(report.END.format(name="swift"))


def test_update_markdown_handles_backslashes_in_block():
    updated = report.update_markdown("", "swift", "a \\1 b")

    assert "a \\1 b" in updated


def test_render_file_writes_every_scenario(tmp_path, swift_record):
    records = tmp_path / "benchmarks.json"
    records.write_text(json.dumps({"format": 1, "scenarios": {"swift": swift_record}}))
    markdown = tmp_path / "benchmarks.md"
    markdown.write_text("# Benchmarks\n\nIntro.\n")

    report.render_file(records, markdown)

    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\nIntro.\n")
    assert "| 1 | SwiftDriver.open() | 5.00 s (215 MB/s) | 45.00 s (24 MB/s) | 9.00x | no |" in text


def test_render_file_without_records(tmp_path):
    records = tmp_path / "benchmarks.json"
    records.write_text('{"format": 1, "scenarios": {}}')

    with pytest.raises(BenchError, match="no benchmark records"):
        report.render_file(records, tmp_path / "benchmarks.md")


def test_render_environment_lists_machine(swift_record):
    text = report.render_environment(swift_record)

    assert "```sh\nregistry-p2p bench swift --size 1GiB --segment-size 20MiB --repeat 2\n```" in text
    assert "- Machine: 2 CPUs available (Example CPU, virtual machine), 23.5 GiB memory" in text
    assert "- Kernel 6.1.0-18-amd64, Debian 12.5" in text
    assert "swift 2.30.1-0+deb12u3" in text
    assert "python_executable" not in text
