"""The reliability table: one row per case, with the attempts of its parametrized tests summed."""

from registry_p2p.sandbox.reliability import merge_records, render_table


def _record(case, kind, attempts, completed, recover=()):
    return {"case": case, "kind": kind, "command": f"pytest '{case}'", "attempts": attempts,
            "completed": completed, "corrupt_bytes": 0, "recover_seconds": list(recover)}


def test_same_case_is_merged():
    records = [_record("junk", "attack", 1, 1), _record("kill", "fault", 2, 2, [1.5]),
               _record("junk", "attack", 1, 0), _record("kill", "fault", 1, 1, [3.0])]

    merged = merge_records(records)

    assert [(record["case"], record["attempts"], record["completed"]) for record in merged] == [
        ("junk", 2, 1), ("kill", 3, 3)]
    assert merged[1]["recover_seconds"] == [1.5, 3.0]
    assert records[1]["recover_seconds"] == [1.5]


def test_table_has_one_row_per_case_faults_first():
    table = render_table([_record("junk", "attack", 1, 1), _record("junk", "attack", 1, 1),
                          _record("kill", "fault", 1, 1, [2.0])])

    rows = table.splitlines()[2:]
    assert len(rows) == 2
    assert rows[0].startswith("| kill | fault | 1 | 1 | 0 | 2.0 |")
    assert rows[1].startswith("| junk | attack | 2 | 2 | 0 | – |")
