"""metrics.jsonl: appended one fsynced line at a time, cut back only on resume, no line lost in silence."""

from __future__ import annotations

import json

from charrnn.store.metrics_log import read_metrics_file
from charrnn.store.run_dir import RunDir

TORN = b'{"step": 20, "val_lo'


def test_append_adds_one_line_and_never_rewrites_the_earlier_ones(tmp_path):
    run_dir = RunDir(tmp_path)
    earlier = b'{"step": 10,   "val_loss": 2.5, "note": "written by an older charrnn"}\n'
    run_dir.metrics.write_bytes(earlier)
    inode = run_dir.metrics.stat().st_ino
    run_dir.append_metrics({"step": 20, "val_loss": 2.0})
    assert run_dir.metrics.read_bytes() == earlier + b'{"step": 20, "val_loss": 2.0}\n'
    assert run_dir.metrics.stat().st_ino == inode  # appended in place, not replaced


def test_a_record_after_a_torn_line_starts_on_its_own_line(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.metrics.write_bytes(b'{"step": 10}\n' + TORN)  # the crash cut the last write short
    run_dir.append_metrics({"step": 20})
    assert run_dir.metrics.read_bytes() == b'{"step": 10}\n' + TORN + b'\n{"step": 20}\n'
    reading = run_dir.read_metrics_reading()
    assert [record["step"] for record in reading.records] == [10, 20]
    assert reading.damaged_lines == [2]


def test_damaged_lines_are_reported_not_dropped_in_silence(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n[1, 2]\n\n\xff\xfe not utf-8\n{"step": 2}\n' + TORN)
    reading = read_metrics_file(path)
    assert [record["step"] for record in reading.records] == [1, 2]
    assert reading.damaged_lines == [2, 4, 6]  # a list is not a record; blank line 3 is nothing
    assert RunDir(tmp_path).read_metrics() == reading.records  # the old API: records only


def test_a_missing_metrics_file_has_no_records(tmp_path):
    reading = RunDir(tmp_path).read_metrics_reading()
    assert reading.records == [] and reading.damaged_lines == []


def test_forgetting_drops_only_later_records_and_keeps_damaged_lines_in_place(tmp_path):
    run_dir = RunDir(tmp_path)
    lines = [
        b'{"step": 5,  "val_loss": 3.0}',
        b"garbage",
        b'{"step": 10}',
        b'{"note": "no step"}',
        b'{"step": 15}',
        TORN,
    ]
    run_dir.metrics.write_bytes(b"\n".join(lines))
    run_dir.forget_metrics_after(10)
    assert run_dir.metrics.read_bytes() == b"\n".join(lines[:4] + [TORN]) + b"\n"
    assert run_dir.read_metrics_reading().damaged_lines == [2, 5]
    run_dir.append_metrics({"step": 15})  # the resumed run's next evaluation: a line of its own
    assert [r.get("step") for r in run_dir.read_metrics()] == [5, 10, None, 15]


def test_forgetting_nothing_leaves_the_file_alone(tmp_path):
    run_dir = RunDir(tmp_path)
    run_dir.append_metrics({"step": 5})
    inode = run_dir.metrics.stat().st_ino
    run_dir.forget_metrics_after(5)
    assert run_dir.metrics.stat().st_ino == inode
    run_dir.forget_metrics_after(4)  # cutting back replaces the file atomically
    assert run_dir.metrics.read_bytes() == b""


def test_training_appends_one_strict_json_line_per_evaluation(trained_run):
    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [50, 100, 150]


def test_reading_costs_one_line_not_the_file(tmp_path):
    """The whole file was read into memory (and split, twice its size); a 40 MB line of junk is now
    damaged without being held whole."""
    import tracemalloc

    path = tmp_path / "metrics.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"step": 1}\n')
        handle.write(b'{"step": 2, "junk": "' + b"x" * (40 << 20) + b'"}\n')
        handle.write(b'{"step": 3}\n' + b"y" * (3 << 20))  # and a long last line without a newline
    tracemalloc.start()
    try:
        reading = read_metrics_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert [record["step"] for record in reading.records] == [1, 3]  # a line over 1 MB is no record
    assert reading.damaged_lines == [2, 4]
