"""The ``snnverify`` command: ``run`` (the main job) and ``report`` (re-render a report)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from snnverify.experiment import RunConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snnverify", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train or load an ANN, convert it, measure the SNN over T")
    help_text = {
        "dataset": "digits (embedded default), fashion-mnist or cifar10",
        "model": "small_resnet, resnet20, cifar_resnet18 or torchvision_resnet18",
        "checkpoint": "load the ANN state dict from this file instead of training",
        "timesteps": "T values at which the SNN is evaluated",
        "convert_timesteps": "T used by BPTT fine-tuning during conversion",
        "levels": "QCFS quantisation levels L",
        "download": "allow downloading a missing dataset",
    }
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        # the field's own default (an instance would have filled in derived values, like name)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if field.name == "timesteps":
            run.add_argument(flag, type=int, nargs="+", default=default, help=help_text[field.name])
        elif isinstance(default, bool):
            run.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text.get(field.name))
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str)
            if field.name == "cal_size":  # default None, but an int when given
                kind = int
            run.add_argument(flag, type=kind, default=default, help=help_text.get(field.name, f"default {default}"))
    report = commands.add_parser("report", help="re-render report.md and the plot from a report.json")
    report.add_argument("path", help="a report.json written by `snnverify run`")
    from snnverify.jobs import certify

    certify.add_arguments(commands.add_parser("certify", help="certify converters clause by clause"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "certify":
        from snnverify.jobs import certify

        return certify.main(args)
    try:
        if args.command == "run":
            from snnverify.experiment import run

            options = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)}
            report = run(RunConfig(**options))
            print(f"ANN accuracy {100 * report['ann_accuracy']:.2f} %, QCFS ANN {100 * report['qcfs_ann_accuracy']:.2f} %")
            for t in report["timesteps"]:
                print(
                    f"T = {t:3d}: SNN accuracy {100 * report['snn_accuracy'][str(t)]:.2f} % "
                    f"(gap {report['gap_pp'][str(t)]:+.2f} pp), sparsity {100 * report['sparsity'][str(t)]:.1f} %"
                )
            print(f"report: {args.out_dir}/{report['name']}/report.md")
        else:
            from snnverify.report import write_run_report

            print(f"report: {write_run_report(args.path)}")
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"snnverify: error: {error}", file=sys.stderr)
        return 2
    return 0
