"""``snnverify nightly`` end to end on a tiny asv project, and its gate on hand-made result files."""

import json
import subprocess
import textwrap

import pytest

from snnverify.cli import main
from snnverify.report.asv import compare, read_run, worse_fraction

BENCHMARK = """
import os, time

class Work:
    number = 1
    repeat = 5
    warmup_time = 0

    def time_sleep(self):
        time.sleep(0.02 * float(os.environ.get("PLANTED_SLOWDOWN", "1")))

    def track_accuracy(self):
        if os.environ.get("PLANTED_FAILURE"):
            raise RuntimeError("planted")
        return 90.0
"""


def git(repo, *arguments):
    subprocess.run(["git", *arguments], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git repository holding an asv project of one timed and one tracked benchmark."""
    monkeypatch.setenv("HOME", str(tmp_path))  # asv's machine file goes here
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "__init__.py").write_text("")
    (repo / "benchmarks" / "bench_work.py").write_text(textwrap.dedent(BENCHMARK))
    (repo / "asv.conf.json").write_text(json.dumps({
        "version": 1, "project": "tiny", "project_url": "https://example.invalid", "repo": ".",
        "branches": ["main"], "environment_type": "existing", "benchmark_dir": "benchmarks",
        "results_dir": "results", "html_dir": "html", "build_command": [], "install_command": [],
        "uninstall_command": []}))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return repo


def nightly(repo, monkeypatch, slowdown):
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "next")
    monkeypatch.setenv("PLANTED_SLOWDOWN", str(slowdown))
    return main(["nightly", "--config", str(repo / "asv.conf.json"), "--machine", "ci"])


def test_gate_fails_on_a_planted_slowdown_and_passes_without(project, monkeypatch):
    assert nightly(project, monkeypatch, 1.0) == 0  # nothing to compare with yet
    assert (project / "html" / "index.html").is_file()
    assert nightly(project, monkeypatch, 1.3) == 1
    result = json.loads((project / "reports" / "asv" / "nightly.json").read_text())
    slow = [row for row in result["rows"] if row["regression"]]
    assert [row["benchmark"] for row in slow] == ["bench_work.Work.time_sleep"]
    assert 0.2 < slow[0]["worse_by"] < 0.5
    assert nightly(project, monkeypatch, 1.3) == 0  # the same speed as the run before
    monkeypatch.setenv("PLANTED_FAILURE", "1")
    assert nightly(project, monkeypatch, 1.3) == 1  # a benchmark that fails fails the gate
    assert json.loads((project / "reports" / "asv" / "nightly.json").read_text())["asv_run_status"] != 0


def results_file(path, commit, values):
    columns = ["result", "params", "version", "started_at"]
    results = {name: [value, params, "v", started] for name, (value, params, started) in values.items()}
    path.write_text(json.dumps({"commit_hash": commit, "env_name": "e", "date": 0, "params": {}, "python": "3",
                                "requirements": {}, "env_vars": {}, "result_columns": columns,
                                "results": results, "durations": {}, "version": 2}))
    return read_run(path)


def test_compare_pairs_parameters_and_knows_which_way_is_worse(tmp_path):
    grid = [["'cpu'", "'torch'"], ["8", "32"]]
    old = results_file(tmp_path / "a.json", "aaa", {
        "b.S.time_run": ([1.0, 2.0, 3.0, 4.0], grid, 1), "b.S.track_accuracy": ([90.0], [], 1),
        "b.S.peakmem_run": ([100.0], [], 1)})
    new = results_file(tmp_path / "b.json", "bbb", {
        "b.S.time_run": ([1.05, 2.0, 3.0, 2.0], grid, 2), "b.S.track_accuracy": ([70.0], [], 2),
        "b.S.peakmem_run": ([115.0], [], 2)})
    rows = {(r["benchmark"], r["params"]): r for r in compare(old, new, threshold=0.10)}
    assert rows[("b.S.time_run", "'cpu', 8")]["regression"] is False  # 5 % slower
    assert rows[("b.S.time_run", "'torch', 32")]["worse_by"] == pytest.approx(-0.5)  # faster
    assert rows[("b.S.track_accuracy", "")]["regression"] is True  # accuracy fell
    assert rows[("b.S.peakmem_run", "")]["regression"] is True  # 15 % more memory


def test_percent_values_near_zero_compare_in_points():
    assert worse_fraction("b.S.track_gap_pp", 0.05, 0.08, unit="pp") == pytest.approx(0.03)
    assert worse_fraction("b.S.track_gap_pp", 0.05, 0.08) == pytest.approx(0.6)


def test_a_file_that_is_not_asv_results_is_named(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="x.json"):
        read_run(path)


def test_nightly_checks_its_arguments_first(tmp_path, capsys):
    assert main(["nightly", "--config", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
    (tmp_path / "asv.conf.json").write_text("{}")
    assert main(["nightly", "--config", str(tmp_path / "asv.conf.json"), "--threshold", "0"]) == 2
    assert main(["nightly", "--config", str(tmp_path / "asv.conf.json"), "--bench", "("]) == 2
    assert not (tmp_path / "results").exists()
