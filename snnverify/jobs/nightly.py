"""``snnverify nightly``: the asv benchmarks on this commit, the dashboard, and a regression gate.

1. ``asv run --python=same --set-commit-hash HEAD`` in the existing environment (no network,
   nothing installed); the default grid fits 15 minutes on 2 cores, ``SNNVERIFY_BENCH_FULL=1``
   runs the full one.
2. ``asv publish``: the static dashboard in asv's ``html_dir``. asv's page loads jQuery, flot,
   bootstrap and a few small scripts from public CDNs; offline it shows asv's load-failure notice,
   and the same results are drawn without network by ``snnverify report`` (reports/index.html).
3. The gate: this run against the previous stored run of the same machine, benchmark by
   benchmark (:mod:`snnverify.report.asv`); a value worse by more than ``--threshold`` percent,
   or a benchmark that fails, makes the job exit 1. The comparison is written to
   ``reports/asv/nightly.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from snnverify.report.asv import compare, read_runs, units
from snnverify.util import atomic_write, provenance

#: what the published html loads from outside the dashboard folder
EXTERNAL = re.compile(r"""(?:src|href)=["'](https?://[^"']+)""")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="asv.conf.json", help="asv configuration file")
    parser.add_argument("--threshold", type=float, default=10.0, help="percent worse that fails the gate")
    parser.add_argument("--bench", help="regular expression: only the benchmarks it matches")
    parser.add_argument("--machine", default=socket.gethostname(), help="asv machine name")
    parser.add_argument("--out", default="reports/asv/nightly.json", help="where the comparison is written")


def asv(*arguments: str, config: Path, check: bool = True) -> int:
    """Run an asv command with this interpreter (the environment asv measures). asv drops
    PYTHONPATH but passes ASV_PYTHONPATH on: the benchmarks import the checkout being gated,
    whichever copy of the package is installed."""
    command = [sys.executable, "-m", "asv", *arguments, "--config", str(config)]
    print("$", " ".join(command[2:]), flush=True)
    path = os.pathsep.join(p for p in (str(config.parent), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(command, check=check, cwd=config.parent, env={**os.environ, "ASV_PYTHONPATH": path}).returncode


def gate(results_dir: Path, machine: str, commit: str, threshold: float) -> dict:
    """This commit's run against the machine's previous one: the rows and the verdict."""
    runs = [run for run in read_runs(results_dir) if run.machine == machine]
    current = [run for run in runs if run.commit.startswith(commit)]
    if not current:
        raise RuntimeError(f"no asv results for commit {commit} on machine {machine!r} in {results_dir}")
    previous = [run for run in runs if not run.commit.startswith(commit)]
    result = {"machine": machine, "commit": current[-1].commit, "threshold_percent": 100 * threshold,
              "previous_commit": previous[-1].commit if previous else None, "rows": []}
    if previous:
        result["rows"] = compare(previous[-1], current[-1], threshold, units(results_dir))
    result["regressions"] = sum(row["regression"] for row in result["rows"])
    return result


def main(args: argparse.Namespace) -> int:
    config_path = Path(args.config).resolve()
    if not config_path.is_file():
        raise FileNotFoundError(f"asv configuration {config_path} not found")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not JSON: {error}") from None
    if not args.threshold > 0:
        raise ValueError(f"--threshold must be > 0 percent, got {args.threshold}")
    if args.bench is not None:
        try:
            re.compile(args.bench)
        except re.error as error:
            raise ValueError(f"--bench {args.bench!r} is not a regular expression: {error}") from None
    root = config_path.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f"{root} is not a git checkout (asv stores results per commit): {error}") from None

    asv("machine", "--yes", "--machine", args.machine, config=config_path)
    selection = ["--bench", args.bench] if args.bench else []
    run_status = asv("run", "--python=same", "--set-commit-hash", commit, "--machine", args.machine, *selection,
                     config=config_path, check=False)  # non-zero when a benchmark failed: reported below
    asv("publish", config=config_path)
    html = root / config.get("html_dir", "html")
    external = sorted({url for page in html.glob("*.html") for url in EXTERNAL.findall(page.read_text())})

    result = gate(root / config.get("results_dir", "results"), args.machine, commit, args.threshold / 100)
    origin = provenance()
    result.update(created=origin["created"], hardware=origin["machine"], asv_run_status=run_status,
                  dashboard=os.path.relpath(html / "index.html", root),
                  dashboard_loads=external, full_grid=os.environ.get("SNNVERIFY_BENCH_FULL") == "1")
    atomic_write(root / args.out, json.dumps(result, indent=2) + "\n")
    for row in result["rows"]:
        if row["regression"]:
            print(f"REGRESSION {row['benchmark']} ({row['params']}): {row['old']:.4g} -> {row['new']:.4g}, "
                  f"{100 * row['worse_by']:.1f} % worse")
    if result["previous_commit"] is None:
        print("gate: no previous run on this machine to compare with")
    print(f"dashboard: {html / 'index.html'} (loads {len(external)} scripts from the network)")
    print(f"gate: {result['regressions']} regressions over {args.threshold:g} % against "
          f"{result['previous_commit'] or 'nothing'}; {root / args.out}")
    if run_status:
        print(f"gate: asv run exited {run_status}: a benchmark failed (see its output above)")
    return 1 if result["regressions"] or run_status else 0
