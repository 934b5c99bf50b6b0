"""The provenance every result carries (which commit made it, and whether the code differed), and
how results are written."""

import subprocess

from snnverify import util


def test_commit_is_dirty_for_changed_code_not_for_results_being_written(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "result.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(util, "REPOSITORY", tmp_path)
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    assert util.commit() == head
    (tmp_path / "reports" / "result.json").write_text('{"new": 1}')
    (tmp_path / "untracked.py").write_text("")
    assert util.commit() == head  # a job's own results, and files git does not track
    (tmp_path / "code.py").write_text("x = 2\n")
    assert util.commit() == head + "+dirty"
    monkeypatch.setattr(util, "REPOSITORY", tmp_path / "reports")  # a folder inside still sees the root's state
    assert util.commit() == head + "+dirty"


def test_commit_outside_a_checkout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(util, "REPOSITORY", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert util.commit() == "unknown"


def test_a_report_written_atomically_is_as_readable_as_an_ordinary_file(tmp_path):
    """A new file gets what ``open`` would give it (the temporary file it starts as is private);
    a file replaced keeps its own permissions."""
    ordinary = tmp_path / "ordinary.json"
    ordinary.write_text("{}")
    written = util.atomic_write(tmp_path / "report.json", "{}")
    assert written.stat().st_mode & 0o777 == ordinary.stat().st_mode & 0o777
    written.chmod(0o640)
    util.atomic_write(written, '{"new": 1}')
    assert written.stat().st_mode & 0o777 == 0o640 and written.read_text() == '{"new": 1}'
