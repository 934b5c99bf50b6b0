"""``snnverify report PATH``: re-render a run's ``report.md`` and plot from its ``report.json``."""

from __future__ import annotations

import argparse

from snnverify.report import write_run_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a report.json written by `snnverify run`")


def main(args: argparse.Namespace) -> int:
    print(f"report: {write_run_report(args.path)}")
    return 0
