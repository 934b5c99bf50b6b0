"""The project checks itself: README commands, CI, and the layering rules of DESIGN.md."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "snnverify"


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```") + 1
    return lines[start : lines.index("```", start)]


def test_readme_starts_with_the_main_job_and_the_test_command():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[2] == "```"
    run, test = readme_commands()
    assert run.endswith("snnverify run") and "tools/ensure-venv" in run
    # in parallel (pytest-xdist), an idle worker taking tests queued for a busy one (worksteal: a
    # few property tests run for minutes, and static chunks could leave two on one worker)
    assert "pytest -n auto --dist worksteal suites/" in test and "tools/ensure-venv" in test


def test_readme_is_a_short_entry_point():
    """Each fact written once, where it lives: the README links to module docs and reports."""
    assert len((ROOT / "README.md").read_text()) <= 5000


def test_ci_runs_the_readme_test_command_after_installing_fashion_mnist():
    script = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in script.splitlines()
    assert "dataset-fashion-mnist" in script


def imports_of(path: Path) -> set[str]:
    """snnverify modules imported by a file, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("snnverify")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("snnverify"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def files_of(part: str) -> list[Path]:
    target = PACKAGE / part
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


# (part, parts it must not import, exception files)
RULES = [
    ("graph", ["convert", "runtime", "nir_io", "certify", "report", "api", "util", "train"], []),
    # the two passes that run the SNN do so on the reference executor: BPTT and bias correction
    ("convert", ["runtime", "nir_io", "certify", "report", "api"], ["finetune.py", "bias_correction.py"]),
    ("runtime", ["convert", "nir_io", "certify", "report", "api", "train"], []),
    ("runtime/cpu", ["runtime.cuda", "runtime.torch_ref", "runtime.loihi2"], []),
    ("nir_io", ["convert", "runtime", "certify", "report", "api", "util", "train"], []),
    ("train", ["graph", "convert", "runtime", "nir_io", "certify", "report", "api"], []),
    # report reads result files and references/ only, never live objects
    ("report", ["convert", "runtime", "api", "graph", "nir_io", "models", "data", "train"], []),
    ("certify", ["convert", "runtime", "nir_io", "api", "jobs"], []),
]


@pytest.mark.parametrize("part, forbidden, exceptions", RULES, ids=[r[0] for r in RULES])
def test_layering(part, forbidden, exceptions):
    for path in files_of(part):
        if path.name in exceptions:
            continue
        for module in imports_of(path):
            for other in forbidden:
                assert not module.startswith(f"snnverify.{other}"), f"{path.relative_to(ROOT)} imports {module}"


def test_nothing_but_the_command_imports_a_job():
    """Jobs may import anything; nothing in the package imports a job (the ``snnverify``
    command finds them through the :data:`snnverify.jobs.JOBS` table)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE / "jobs" or path.name == "cli.py":
            continue
        jobs = [m for m in imports_of(path) if m.startswith("snnverify.jobs")]
        assert not jobs, f"{path.relative_to(ROOT)} imports {jobs}"


def test_every_job_is_a_subcommand():
    from snnverify.jobs import JOBS

    modules = {path.stem for path in (PACKAGE / "jobs").glob("*.py") if path.stem != "__init__"}
    assert modules == {module.rsplit(".", 1)[1] for module, _ in JOBS.values()}


@pytest.mark.parametrize("name, allowed", [
    ("finetune.py", {"TorchExecutor"}),  # BPTT trains the torch reference executor itself
    ("bias_correction.py", {"TorchExecutor", "float32_convolutions"}),  # measures the SNN's rates on it
])
def test_conversion_passes_reach_runtime_only_through_the_reference_executor(name, allowed):
    """The documented exceptions: the passes that run the SNN run the reference executor."""
    runtime_imports = {m for m in imports_of(PACKAGE / "convert" / name) if m.startswith("snnverify.runtime")}
    assert runtime_imports <= {"snnverify.runtime.torch_ref"} | {f"snnverify.runtime.torch_ref.{a}" for a in allowed}


#: how a development history reads: numbered work periods and issue numbers
HISTORY = re.compile(r"\b(?:[Ss]ession \d|[Ss]ession's|[Ii]ssue #?\d|[Ii]ssues? \d|work period)")


def test_nothing_narrates_development_history():
    """Code, suites, reports, references and the README say what is and why, with figures
    carrying their date, commit and command; not which session or issue brought them."""
    roots = [ROOT / "snnverify", ROOT / "suites", ROOT / "reports", ROOT / "references", ROOT / "README.md"]
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*"))
             if p.is_file() and p.suffix in {".py", ".md", ".json", ".txt", ""} and "__pycache__" not in p.parts
             and p != Path(__file__).resolve()]  # (this file spells the pattern out)
    found = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in files
             for m in [HISTORY.search(p.read_text(errors="replace"))] if m]
    assert not found, found


def test_certify_worker_imports_only_torch_numpy_and_the_converters():
    """The worker runs on the peers' interpreter: no snnverify, nothing outside the standard library,
    torch, numpy and the converters' own packages."""
    worker = PACKAGE / "certify" / "worker.py"
    top = set()
    for node in ast.walk(ast.parse(worker.read_text())):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert top - set(sys.stdlib_module_names) <= {"torch", "numpy", "spikingjelly", "sinabs", "neurocuda"}


@pytest.mark.parametrize("script, venv", [("ensure-venv", ".venv"), ("peers-venv", ".venv-peers")])
def test_a_venv_is_not_started_on_a_disk_without_room_for_it(tmp_path, script, venv):
    """With 3 GiB free (a stub ``df``), neither venv script starts a venv of ~6 GB that pip would
    abandon half-way: each stops first, naming the folder and the space free."""
    (tmp_path / "tools").mkdir()
    for name in (script, "need-disk"):
        (tmp_path / "tools" / name).write_bytes((ROOT / "tools" / name).read_bytes())
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                             f"echo 'disk 9999999 0 {3 * 1024 * 1024} 1% /'\n")
    (stub / "df").chmod(0o755)
    environment = {**os.environ, "PATH": f"{stub}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", f"tools/{script}"], cwd=tmp_path, env=environment, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert f"needs about 7 GiB free at {tmp_path / venv}" in run.stderr
    assert "3072 MiB free" in run.stderr
    assert not (tmp_path / venv).exists()
