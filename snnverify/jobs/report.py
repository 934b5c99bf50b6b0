"""``snnverify report``: ``reports/index.md`` and ``index.html`` from every result file under
reports/ and references/; ``snnverify report PATH`` re-renders one run's ``report.md`` and plot
from its ``report.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from snnverify.report import write_run_report
from snnverify.report.index import write_index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", help="a report.json written by `snnverify run` (default: build the index)")
    parser.add_argument("--reports-dir", default="reports", help="the folder the index is built from and written to")


def main(args: argparse.Namespace) -> int:
    if args.path is not None:
        print(f"report: {write_run_report(args.path)}")
        return 0
    if not Path(args.reports_dir).is_dir():
        raise FileNotFoundError(f"no reports folder {args.reports_dir}")
    print(f"index: {write_index(args.reports_dir)} (and index.html)")
    return 0
