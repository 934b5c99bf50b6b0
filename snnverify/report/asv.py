"""asv result files read as data: the runs stored per machine, and the regression gate between two.

An asv results file (``<results_dir>/<machine>/<commit>-<env>.json``) holds, per benchmark, the
values over the cartesian product of its parameters. :func:`compare` pairs the values of two runs
by benchmark and parameters and flags those that got worse by more than the threshold. Worse means
slower or larger for ``time_`` and ``peakmem_``; for ``track_`` it depends on what is tracked
(:data:`HIGHER_IS_BETTER`). Values in percent or percentage points are compared against at least
1 (so a gap of 0.05 pp becoming 0.08 pp is a change of 0.03, not of 60 %).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

#: words in a track_ benchmark's name that make a larger value the better one
HIGHER_IS_BETTER = ("accuracy", "speedup", "per_second", "agreement", "sparsity")


@dataclass(frozen=True)
class Run:
    """One asv results file: a commit measured on a machine."""

    path: Path
    machine: str
    commit: str
    started_at: int  # ms since the epoch, the latest benchmark start in the file
    values: dict[tuple[str, tuple[str, ...]], float]  # (benchmark, parameter values) -> value


def read_run(path: str | Path) -> Run:
    """Parse one asv results file; raises ValueError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        columns = data["result_columns"]
        values, started = {}, [0]
        for name, row in data["results"].items():
            fields = dict(zip(columns, row))
            params = fields.get("params") or []
            results = fields.get("result")
            if results is None:
                continue
            for combo, value in zip(itertools.product(*params) if params else [()], results):
                if isinstance(value, (int, float)) and not math.isnan(value):
                    values[(name, tuple(combo))] = float(value)
            started.append(fields.get("started_at") or 0)
        return Run(path, path.parent.name, data["commit_hash"], max(started), values)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an asv results file: {error!r}") from error


def read_runs(results_dir: str | Path) -> list[Run]:
    """Every results file under ``results_dir`` (all machines), oldest first."""
    paths = [p for p in Path(results_dir).glob("*/*.json") if p.name != "machine.json"]
    return sorted((read_run(p) for p in paths), key=lambda run: run.started_at)


def kind(benchmark: str) -> str:
    """``time``, ``peakmem``, ``mem`` or ``track``, from the benchmark's method name."""
    return benchmark.rsplit(".", 1)[-1].split("_", 1)[0]


def worse_fraction(benchmark: str, old: float, new: float, unit: str = "") -> float:
    """How much worse ``new`` is than ``old`` (0.3 = 30 % worse; negative: better)."""
    higher_is_better = kind(benchmark) == "track" and any(w in benchmark.rsplit(".", 1)[-1] for w in HIGHER_IS_BETTER)
    change = (old - new) if higher_is_better else (new - old)
    scale = max(abs(old), 1.0) if unit in ("%", "pp") else abs(old)
    if scale == 0:
        return 0.0 if change == 0 else math.inf
    return change / scale


def units(results_dir: str | Path) -> dict[str, str]:
    """benchmark -> unit, from asv's ``benchmarks.json`` (empty when absent)."""
    path = Path(results_dir) / "benchmarks.json"
    if not path.is_file():
        return {}
    return {name: entry.get("unit", "") for name, entry in json.loads(path.read_text()).items()
            if isinstance(entry, dict)}


def compare(old: Run, new: Run, threshold: float = 0.10, unit_of: dict[str, str] | None = None) -> list[dict]:
    """One row per benchmark and parameters measured in both runs, worst first; ``regression`` is
    True where the value got worse by more than ``threshold``."""
    unit_of = unit_of or {}
    rows = []
    for key in sorted(old.values.keys() & new.values.keys()):
        benchmark, params = key
        fraction = worse_fraction(benchmark, old.values[key], new.values[key], unit_of.get(benchmark, ""))
        rows.append({"benchmark": benchmark, "params": ", ".join(params), "old": old.values[key],
                     "new": new.values[key], "worse_by": fraction, "regression": fraction > threshold})
    return sorted(rows, key=lambda row: -row["worse_by"])
