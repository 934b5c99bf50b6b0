"""The project checks itself: README commands, CI, and the layering rules of DESIGN.md."""

import ast
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
    assert "pytest suites/" in test and "tools/ensure-venv" in test


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
    ("graph", ["convert", "runtime", "nir_io", "certify", "report", "api", "util"], []),
    ("convert", ["runtime", "nir_io", "certify", "report", "api"], ["finetune.py"]),
    ("runtime", ["convert", "nir_io", "certify", "report", "api"], []),
    ("nir_io", ["convert", "runtime", "certify", "report", "api", "util"], []),
    ("report", ["convert", "runtime", "api", "graph"], []),
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


def test_finetune_reaches_runtime_only_through_the_reference_executor():
    """The one documented exception: BPTT trains the torch reference executor itself."""
    runtime_imports = {m for m in imports_of(PACKAGE / "convert" / "finetune.py") if m.startswith("snnverify.runtime")}
    assert runtime_imports <= {"snnverify.runtime.torch_ref", "snnverify.runtime.torch_ref.TorchExecutor"}


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
