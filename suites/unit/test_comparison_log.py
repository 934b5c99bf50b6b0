"""The comparison report is on disk after every record, so a run killed at a time limit (as
tools/gpu-check's can be, inside a long GPU test) still says what it compared."""

import json

from snnverify.pytest_plugin import ComparisonLog


def test_every_record_rewrites_the_report(tmp_path):
    log = ComparisonLog()
    log.report_path = tmp_path / "comparisons.json"
    log.record("cpu vs gpu", 100, 0)
    assert json.loads(log.report_path.read_text())["cpu vs gpu"]["compared"] == 100
    log.record("cpu vs gpu", 50, 2, {"if1": 2})
    report = json.loads(log.report_path.read_text())["cpu vs gpu"]
    assert (report["compared"], report["mismatched"], report["cases"], report["where"]) == (150, 2, 2, {"if1": 2})
    assert report["rate"] == 2 / 150
