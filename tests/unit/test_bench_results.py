"""The JSON file of benchmark records."""

import json

import pytest

from registry_p2p.bench import BenchError, results


def _record(scenario, value):
    return {"scenario": scenario, "value": value}


def test_merge_adds_scenario_to_empty_document():
    document = results.merge(results.empty_document(), _record("swift", 1))

    assert document == {"format": 1, "scenarios": {"swift": _record("swift", 1)}}


def test_merge_replaces_same_scenario_in_place():
    document = results.empty_document()
    for record in (_record("swift", 1), _record("fanout", 2), _record("swift", 3)):
        document = results.merge(document, record)

    assert list(document["scenarios"]) == ["swift", "fanout"]
    assert document["scenarios"]["swift"] == _record("swift", 3)
    assert document["scenarios"]["fanout"] == _record("fanout", 2)


def test_merge_leaves_input_unchanged():
    original = results.merge(results.empty_document(), _record("swift", 1))

    results.merge(original, _record("swift", 2))

    assert original["scenarios"]["swift"] == _record("swift", 1)


def test_merge_rejects_record_without_scenario():
    with pytest.raises(BenchError, match="no \"scenario\" name"):
        results.merge(results.empty_document(), {"value": 1})


def test_record_result_keeps_other_scenarios(tmp_path):
    path = tmp_path / "docs" / "benchmarks.json"

    results.record_result(path, _record("fanout", 1))
    results.record_result(path, _record("swift", 2))
    results.record_result(path, _record("swift", 3))

    stored = json.loads(path.read_text())
    assert stored["scenarios"] == {"fanout": _record("fanout", 1), "swift": _record("swift", 3)}
    assert not list(path.parent.glob(".*.tmp"))


def test_load_missing_file_is_empty(tmp_path):
    assert results.load(tmp_path / "missing.json") == results.empty_document()


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[]", "not in format 1"),
    ('{"format": 2, "scenarios": {}}', "not in format 1"),
])
def test_load_rejects_other_content(tmp_path, text, message):
    path = tmp_path / "benchmarks.json"
    path.write_text(text)

    with pytest.raises(BenchError, match=message):
        results.load(path)
