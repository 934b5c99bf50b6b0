"""`snnverify certify`: arguments validated before any work; reports rendered from result files."""

import argparse
import json

import pytest

from snnverify.jobs import certify as job
from snnverify.report.certification import render_index, write_converter_report, write_index


def parse(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, message", [
    (["--test-images", "0"], "--test-images must be >= 1, got 0"),
    (["--time-limit", "-1"], "--time-limit must be > 0 seconds"),
    (["--checkpoint", "/nonexistent.pt"], "--checkpoint /nonexistent.pt: no such file"),
    (["--converter", "nope"], "unknown converter 'nope'"),
])
def test_bad_arguments_exit_2_naming_the_argument_before_any_work(argv, message, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the arguments were validated")

    monkeypatch.setattr("snnverify.certify.runner.certification_data", no_work)
    assert job.main(parse("--quick", *argv)) == 2
    assert message in capsys.readouterr().err


def report(name, verdicts, accuracy=None):
    clauses = [{"id": cid, "verdict": v, "reason": f"{cid} {v}", "measured": {}} for cid, v in verdicts.items()]
    for t, a in (accuracy or {}).items():
        clauses.append({"id": f"accuracy.gap.T{t}", "verdict": "pass", "reason": "", "measured": {
            "snn_accuracy": a, "ann_accuracy": 0.9, "training": {"epochs": 1, "samples": 10}, "sparsity": 0.8,
            "ms_per_image": 1.5, "dataset": "digits", "test_images": 10}})
    return {"converter": name, "version": "1", "environment": {}, "seed": 0, "clauses": clauses,
            "created": "2026-01-01 00:00 UTC", "commit": "abc1234", "command": "snnverify certify"}


def test_the_index_is_a_matrix_with_accuracy_side_by_side(tmp_path):
    for name, verdict in (("a", "pass"), ("b", "fail")):
        path = tmp_path / name / "report.json"
        path.parent.mkdir()
        path.write_text(json.dumps(report(name, {"semantics.declared": verdict}, {8: 0.5, 16: 0.7, 32: 0.85})))
        assert "abc1234" in write_converter_report(path).read_text()
    index = write_index(tmp_path).read_text()
    assert "| `semantics.declared` | PASS | **FAIL** |" in index
    assert "| a 1 (1 epochs, 10 samples) | 90.00 | 50.00 | 70.00 | 85.00 | 5.00 | 80.0 % | 1.50 |" in index
    assert (tmp_path / "accuracy_vs_T.png").stat().st_size > 1000
    assert "| c 1 | – |" in render_index([report("c", {"semantics.declared": "skip"})])
