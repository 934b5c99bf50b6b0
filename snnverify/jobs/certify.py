"""``snnverify certify``: certify converters clause by clause and write their reports.

Writes ``<out>/<converter>/report.json`` and ``report.md`` for each converter, then
``<out>/index.md`` (the compliance matrix and the accuracy over T of every report in ``<out>``,
side by side) with ``accuracy_vs_T.png``. Exits 1 when any clause fails, 2 on a bad argument.
``--quick``: the reference converter on digits, into reports/certification/quick.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from snnverify.certify.runner import CHECKPOINTS
from snnverify.util import commit

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--converter", action="append", default=None, metavar="SPEC",
                        help="NAME, package.module:object or path/file.py:object; repeat for several "
                             "(default: $SNNVERIFY_CONVERTER, the installed entry point, else the reference)")
    parser.add_argument("--quick", action="store_true",
                        help="digits, 360 test images, into reports/certification/quick (minutes on 2 cores)")
    parser.add_argument("--dataset", choices=sorted(CHECKPOINTS), default=None,
                        help="dataset of the accuracy clauses (default fashion-mnist, digits with --quick)")
    parser.add_argument("--checkpoint", default=None, help="small_resnet state dict (default: the shipped one)")
    parser.add_argument("--test-images", type=int, default=None, help="test images (default 1000, all 360 with --quick)")
    parser.add_argument("--cal-images", type=int, default=1000, help="calibration images")
    parser.add_argument("--train-images", type=int, default=5000, help="labelled images a converter may train on")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds one convert or run call may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="default reports/certification (…/quick with --quick)")


def _validated(args: argparse.Namespace) -> argparse.Namespace:
    from snnverify.certify.protocol import load_adapter, resolve_spec

    args.dataset = args.dataset or ("digits" if args.quick else "fashion-mnist")
    if args.test_images is None:
        args.test_images = 360 if args.quick else 1000
    args.checkpoint = Path(args.checkpoint) if args.checkpoint else CHECKPOINTS[args.dataset]
    args.out_dir = Path(args.out_dir or ROOT / "reports" / "certification" / ("quick" if args.quick else ""))
    for name in ("test_images", "cal_images", "train_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no such file")
    specs = args.converter or [resolve_spec(None)]
    args.adapters = [load_adapter(spec) for spec in specs]
    return args


def main(args: argparse.Namespace) -> int:
    try:
        args = _validated(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
        print(f"snnverify certify: error: {error}", file=sys.stderr)
        return 2
    from snnverify.certify.runner import certification_data, certify, report_dict
    from snnverify.report.certification import write_converter_report, write_index
    from snnverify.util import atomic_write

    data = certification_data(args.dataset, args.checkpoint, args.test_images, args.cal_images, args.train_images,
                              args.seed)
    meta = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
            "command": "snnverify certify " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["certify"] else sys.argv[1:]),
            "data": data.info}
    failed = False
    for adapter in args.adapters:
        verdicts = certify(adapter, data, time_limit_s=args.time_limit)
        report = report_dict(adapter.name, adapter.version, verdicts, args.seed, semantics=adapter.semantics,
                             capabilities=sorted(adapter.capabilities), **meta)
        path = atomic_write(args.out_dir / adapter.name / "report.json", json.dumps(report, indent=2) + "\n")
        write_converter_report(path)
        counts = {k: sum(v.verdict == k for v in verdicts) for k in ("pass", "fail", "skip")}
        failed |= counts["fail"] > 0
        print(f"{adapter.name} {adapter.version}: {counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip "
              f"-> {path.parent / 'report.md'}")
        for v in verdicts:
            if v.verdict == "fail":
                print(f"  FAIL {v.id}: {v.reason}")
    print(f"index: {write_index(args.out_dir)}")
    return 1 if failed else 0
