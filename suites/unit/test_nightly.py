"""``snnverify nightly`` end to end on a tiny asv project, its gate on hand-made result files, and
the offline dashboard: asv's real pages pointed at library files (stand-ins here: no npm, no network)."""

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import asv
import pytest

from snnverify.cli import main
from snnverify.jobs import nightly as job
from snnverify.report.asv import compare, read_run, worse_fraction

ASV_PAGES = Path(asv.__file__).parent / "www"

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


def fake_libraries(folder, leave_out=()):
    """A node_modules folder holding a stand-in for every file of the library table."""
    for package, file in job.LIBRARIES.values():
        if (package, file) not in leave_out:
            (folder / package / file).parent.mkdir(parents=True, exist_ok=True)
            (folder / package / file).write_text(f"/* {package} {file} */\n")
    return folder


def nightly(repo, monkeypatch, slowdown):
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "next")
    monkeypatch.setenv("PLANTED_SLOWDOWN", str(slowdown))
    libs = fake_libraries(repo.parent / "node_modules")
    return main(["nightly", "--config", str(repo / "asv.conf.json"), "--machine", "ci", "--dashboard-libs", str(libs)])


def test_gate_fails_on_a_planted_slowdown_and_passes_without(project, monkeypatch):
    assert nightly(project, monkeypatch, 1.0) == 0  # nothing to compare with yet
    assert (project / "html" / "index.html").is_file()
    assert job.external_resources(project / "html") == []
    assert (project / "html" / "vendor" / "jquery" / "dist" / "jquery.min.js").is_file()
    assert json.loads((project / "reports" / "asv" / "nightly.json").read_text())["dashboard_loads"] == []
    assert nightly(project, monkeypatch, 1.3) == 1
    result = json.loads((project / "reports" / "asv" / "nightly.json").read_text())
    slow = [row for row in result["rows"] if row["regression"]]
    assert [row["benchmark"] for row in slow] == ["bench_work.Work.time_sleep"]
    # flagged, so above the gate's threshold; the planted 30 % reads less when load lengthens
    # both sleeps alike (0.147 once, on two cores shared by three jobs)
    assert slow[0]["worse_by"] < 0.5
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


def test_the_library_table_is_what_the_installed_asv_loads_from_cdns():
    """Fails when an asv upgrade changes a CDN resource: the table and package.json follow it."""
    assert job.external_resources(ASV_PAGES) == sorted(job.LIBRARIES)


def test_package_json_pins_exactly_the_table_s_packages():
    manifest = json.loads((job.DASHBOARD / "package.json").read_text())["dependencies"]
    lock = json.loads((job.DASHBOARD / "package-lock.json").read_text())["packages"]
    assert set(manifest) == {package for package, _ in job.LIBRARIES.values()}
    for package, version in manifest.items():
        assert version[0].isdigit(), f"{package}: {version} is a range, not one version"
        assert lock[f"node_modules/{package}"]["version"] == version
        assert lock[f"node_modules/{package}"]["integrity"].startswith("sha512-")


def test_only_fetched_resources_count_not_links_to_pages():
    page = """<link rel="shortcut icon" href="https://x.test/a.ico"><link rel="alternate" href="https://x.test/feed">
    <a href="https://x.test/home">home</a><img src="//x.test/b.png"><script src="local.js"></script>
    <link rel=stylesheet href=http://x.test/c.css>"""
    found = [url for *_, url in job.resources(page)]
    assert found == ["https://x.test/a.ico", "//x.test/b.png", "local.js", "http://x.test/c.css"]
    assert [url for url in found if job.is_external(url)] == [found[0], found[1], found[3]]


def test_asv_s_pages_rewritten_load_nothing_from_the_network(tmp_path):
    html = tmp_path / "html"
    shutil.copytree(ASV_PAGES, html)
    (html / "graphs").mkdir()  # a page one folder down links up to vendor/
    (html / "graphs" / "page.html").write_text((html / "index.html").read_text())
    assert job.vendor(html, fake_libraries(tmp_path / "node_modules")) == sorted(job.LIBRARIES)
    assert job.external_resources(html) == []
    for page in job.pages(html):
        text = page.read_text()
        assert "integrity=" not in text and "crossorigin" not in text
        for *_, url in job.resources(text):
            if page.parent == html or "vendor/" in url:  # (the copy one down keeps asv's own paths)
                assert (page.parent / url).is_file(), f"{page}: {url}"
    index = (html / "index.html").read_text()
    assert 'src="vendor/jquery/dist/jquery.min.js"' in index
    assert 'href="https://github.com/airspeed-velocity/asv/"' in index  # a link to follow, left alone
    assert 'src="../vendor/jquery/dist/jquery.min.js"' in (html / "graphs" / "page.html").read_text()
    assert job.vendor(html, tmp_path / "node_modules") == []  # a second pass finds nothing to do


def test_an_unknown_cdn_resource_is_named_and_nothing_changes(tmp_path):
    html = tmp_path / "html"
    shutil.copytree(ASV_PAGES, html)
    script = '<script src="https://cdn.test/d3@7.js"></script>'
    newer = (html / "index.html").read_text().replace("</head>", script + "</head>")
    (html / "index.html").write_text(newer)
    with pytest.raises(RuntimeError, match="https://cdn.test/d3@7.js"):
        job.vendor(html, fake_libraries(tmp_path / "node_modules"))
    assert (html / "index.html").read_text() == newer and not (html / "vendor").exists()


def test_a_missing_library_is_named_with_the_command_that_installs_it(tmp_path, project, capsys):
    libs = fake_libraries(tmp_path / "node_modules", leave_out={("flot", "jquery.flot.time.js")})
    missing = str(libs / "flot" / "jquery.flot.time.js")
    with pytest.raises(FileNotFoundError, match="bash tools/dashboard-libs") as error:
        job.check_libraries(libs)
    assert missing in str(error.value)
    html = tmp_path / "html"
    shutil.copytree(ASV_PAGES, html)
    with pytest.raises(FileNotFoundError, match="jquery.flot.time.js"):
        job.vendor(html, libs)
    # the job stops on it before the benchmarks run
    assert main(["nightly", "--config", str(project / "asv.conf.json"), "--dashboard-libs", str(libs)]) == 2
    message = capsys.readouterr().err
    assert missing in message and "bash tools/dashboard-libs" in message
    assert not (project / "results").exists()


def test_the_setup_script_runs_npm_only_when_the_lock_file_changed(tmp_path):
    tools = tmp_path / "tools"
    (tools / "dashboard").mkdir(parents=True)
    shutil.copy(job.DASHBOARD.parent / "dashboard-libs", tools)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(job.DASHBOARD / name, tools / "dashboard")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text('#!/bin/sh\necho "npm $*" >> "$NPM_CALLS"; mkdir -p node_modules\n')
    (bin_dir / "npm").chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "NPM_CALLS": str(calls)}

    def setup():
        subprocess.run(["bash", str(tools / "dashboard-libs")], env=env, check=True)
        return calls.read_text().splitlines() if calls.exists() else []

    assert setup() == ["npm ci --no-audit --no-fund --loglevel=error"]  # nothing installed yet
    assert len(setup()) == 1  # installed: quick, no npm
    (tools / "dashboard" / "package-lock.json").write_text("{}")
    assert len(setup()) == 2  # the lock file changed
