"""The ``snnverify`` command: one subcommand per job (:mod:`snnverify.jobs`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from snnverify.jobs import JOBS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnverify", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in JOBS.items():
        job = importlib.import_module(module)
        job.add_arguments(commands.add_parser(name, help=help_text, description=job.__doc__,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # the command line as typed, recorded beside results (argv when called from Python)
    args.invocation = " ".join(["snnverify", *(sys.argv[1:] if argv is None else argv)])
    job = importlib.import_module(JOBS[args.command][0])
    try:
        return job.main(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        print(f"snnverify {args.command}: error: {error}", file=sys.stderr)
        return 2
