"""The comparison report is on disk after every record, so a run killed at a time limit (as
tools/gpu-check's can be, inside a long GPU test) still says what it compared."""

import json
import subprocess
import sys
import textwrap

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


def test_merged_logs_sum_every_count(tmp_path):
    first, second, total = ComparisonLog(), ComparisonLog(), ComparisonLog()
    first.record("torch vs cpu", 100, 1, {"if1": 1})
    second.record("torch vs cpu", 40, 2, {"if1": 1, "if2": 1})
    second.record("cpu vs gpu", 7, 0)
    total.report_path = tmp_path / "all.json"
    total.merge(first.as_dict())
    total.merge(second.as_dict())
    report = json.loads(total.report_path.read_text())
    assert report["torch vs cpu"] == {"compared": 140, "mismatched": 3, "cases": 2, "where": {"if1": 2, "if2": 1},
                                      "rate": 3 / 140}
    assert report["cpu vs gpu"]["compared"] == 7 and report["cpu vs gpu"]["cases"] == 1


def test_parallel_workers_counts_are_summed_by_the_controller(tmp_path):
    """Four tests spread over two pytest-xdist workers; the report counts all four."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["snnverify.pytest_plugin"]\n')
    (tmp_path / "test_counts.py").write_text(textwrap.dedent("""
        import os

        import pytest

        @pytest.mark.parametrize("n", [1, 2, 3, 4])
        def test_compare(comparison_log, n):
            comparison_log.record("check", 10 * n, n % 2, {"layer": n % 2})
            comparison_log.record("worker " + os.environ["PYTEST_XDIST_WORKER"], 1, 0)
    """))
    report = tmp_path / "comparisons.json"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                             "--comparison-report", str(report), str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    counts = json.loads(report.read_text())
    assert {"worker gw0", "worker gw1"} <= set(counts)  # both workers compared something
    counts = counts["check"]
    assert (counts["compared"], counts["mismatched"], counts["cases"]) == (100, 2, 4)
    assert "check: 100 neuron-timesteps compared in 4 cases, 2 mismatched" in result.stdout
