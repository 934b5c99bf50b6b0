"""``snnverify budget``: converters at equal training budget — which recipe to spend E labelled
epochs on.

For each budget E (labelled epochs over the training set, QCFS training and BPTT together)
and each candidate recipe, converts the same trained ANN with ``budget_epochs=E``, evaluates
the SNN on the ``cpu`` backend at every T, and sets it against the equal-budget ANN control:
the same ANN trained E more epochs with the recipe's optimizer and weight learning rate
(cosine schedule), evaluated as an ANN (for E = 0, the ANN itself). Gap = control − SNN, in pp.

    snnverify budget --dataset fashion-mnist --budgets 0 1 5 --recipes adamw-L8
    snnverify budget --render          # reports/budget/README.md from the JSON

Rows go to ``reports/budget/<dataset>.json`` as each finishes (a row with the same dataset,
budget, recipe and data sizes is replaced), each with its command, date and the commit
it started from; the Markdown is generated from the JSON files only.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from snnverify import api, data, models
from snnverify.graph import check_timesteps
from snnverify.convert.budget import DEFAULT_BUDGET, RECIPES
from snnverify.train import fit
from snnverify.util import atomic_write

#: candidate recipes: convert options besides the budget
CANDIDATES: dict[str, dict] = {
    "sgd-L8": {"qcfs_optimizer": "sgd", "qcfs_lr": 0.01, "threshold_lr": 0.01, "levels": 8, "finetune_epochs": 0},
    "adamw-L8": {"qcfs_optimizer": "adamw", "qcfs_lr": 1e-3, "threshold_lr": 5e-2, "levels": 8, "finetune_epochs": 0},
    "adamw-L4": {"qcfs_optimizer": "adamw", "qcfs_lr": 1e-3, "threshold_lr": 5e-2, "levels": 4, "finetune_epochs": 0},
    "adamw-L16": {"qcfs_optimizer": "adamw", "qcfs_lr": 1e-3, "threshold_lr": 5e-2, "levels": 16,
                  "finetune_epochs": 0},
    "adamw-L8-lam1e-2": {"qcfs_optimizer": "adamw", "qcfs_lr": 1e-3, "threshold_lr": 1e-2, "levels": 8,
                         "finetune_epochs": 0},
    "adamw-L4-bptt1": {"qcfs_optimizer": "adamw", "qcfs_lr": 1e-3, "threshold_lr": 5e-2, "levels": 4,
                       "finetune_epochs": 1},
    "adamw-L8-bptt1": {"qcfs_optimizer": "adamw", "qcfs_lr": 1e-3, "threshold_lr": 5e-2, "levels": 8,
                       "finetune_epochs": 1},
    "p99.99": {"percentile": 99.99, "finetune_epochs": 0},
    "p100": {"percentile": 100.0, "finetune_epochs": 0},
    "default": {},
}
#: per dataset: the ANN (a committed checkpoint, or trained here as ``snnverify run`` does)
ANNS = {"fashion-mnist": "reports/runs/fashion-mnist-small_resnet/ann.pt", "digits": None}
OUT = Path("reports/budget")
TARGETS_PP = {4: 2.0, 8: 0.5, 32: 0.1}  # gap to the equal-budget ANN control, at most


def commit() -> str:
    """HEAD's short hash, with ``+dirty`` when the worktree has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def loaders(dataset: str, train_subset: int | None, test_subset: int | None, seed: int):
    splits = data.load_dataset(dataset, seed=seed)
    train_set = splits.train
    if train_subset is not None:
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:train_subset]
        train_set = Subset(train_set, keep.sort().values.tolist())
    test_set = splits.test if test_subset is None else Subset(splits.test, range(test_subset))
    train = DataLoader(train_set, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed))
    cal = DataLoader(splits.cal, batch_size=250, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return splits, train, cal, DataLoader(test_set, batch_size=250), len(train_set), len(test_set)


def reseed(seed: int, *loaders) -> None:
    """The same initialisation and the same shuffles for every conversion and control."""
    torch.manual_seed(seed)
    for loader in loaders:
        loader.generator.manual_seed(seed)


def trained_ann(dataset: str, splits, seed: int):
    model = models.build_model("small_resnet", splits.num_classes, splits.input_shape[0])
    if ANNS[dataset] is not None:
        return models.load_checkpoint(model, ANNS[dataset]).eval()
    torch.manual_seed(seed)
    train, _, _ = data.make_loaders(splits, batch_size=64, seed=seed)  # as `snnverify run`: SGD 0.1, 30 epochs
    fit(model.train(), list(model.parameters()), train, 30, 0.1, "cpu", desc="ANN training")
    return model.eval()


def control(ann, train, test, epochs: int, optimizer: str, lr: float, seed: int) -> float:
    """The ANN trained ``epochs`` more epochs (same optimizer and weight learning rate), as an ANN."""
    model = copy.deepcopy(ann)
    if epochs:
        reseed(seed, train)
        fit(model.train(), list(model.parameters()), train, epochs, lr, "cpu", desc=f"ANN control ({epochs} ep)",
            optimizer=optimizer)
    return api.evaluate(model.eval(), test)


def sweep(args) -> Path:
    made_by = {"command": " ".join(["snnverify", *sys.argv[1:]]), "commit": commit()}
    torch.manual_seed(args.seed)
    splits, train, cal, test, n_train, n_test = loaders(args.dataset, args.train_subset, args.test_subset, args.seed)
    ann = trained_ann(args.dataset, splits, args.seed)
    ann_accuracy = api.evaluate(ann, test)
    path = OUT / f"{args.dataset}.json"
    controls: dict[tuple, float] = {}
    for budget in args.budgets:
        for name in args.recipes:
            options = dict(CANDIDATES[name])
            if options.get("finetune_epochs", 0) > budget:
                continue
            reseed(args.seed, train, cal)
            start = time.perf_counter()
            snn = api.convert(ann, cal, timesteps=args.convert_timesteps, train_loader=train, budget_epochs=budget,
                              **options)
            convert_s = time.perf_counter() - start
            resolved = snn.conversion.options
            key = (budget, resolved.qcfs_optimizer, resolved.qcfs_lr) if budget else (0,)
            if key not in controls:
                controls[key] = control(ann, train, test, budget, resolved.qcfs_optimizer, resolved.qcfs_lr, args.seed)
            api.compile(snn, "cpu")
            accuracy, start = {}, time.perf_counter()
            for t in args.timesteps:
                accuracy[str(t)] = api.evaluate(snn, test, timesteps=t)
            row = {
                "dataset": args.dataset, "budget_epochs": budget, "recipe": name, "options": asdict(resolved),
                "training": snn.training, "train_images": n_train, "test_images": n_test,
                "convert_timesteps": args.convert_timesteps, "ann_accuracy": ann_accuracy,
                "control_accuracy": controls[key], "qcfs_ann_accuracy": api.evaluate(snn.conversion.qcfs_ann, test),
                "snn_accuracy": accuracy,
                "gap_pp": {t: round(100 * (controls[key] - a), 4) for t, a in accuracy.items()},
                "wall_s": {"convert": round(convert_s, 1), "evaluate": round(time.perf_counter() - start, 1)},
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": args.seed, **made_by,
            }
            same = ("dataset", "budget_epochs", "recipe", "train_images", "test_images", "convert_timesteps")
            rows = json.loads(path.read_text())["rows"] if path.exists() else []  # other runs' rows kept
            rows = [r for r in rows if any(r[k] != row[k] for k in same)] + [row]
            atomic_write(path, json.dumps({"rows": rows}, indent=1) + "\n")
            print(f"{args.dataset} E={budget} {name}: control {100 * controls[key]:.2f} "
                  + " ".join(f"T{t} {100 * a:.2f}" for t, a in accuracy.items()), flush=True)
    return path


def render() -> Path:
    """reports/budget/README.md from every reports/budget/*.json."""
    lines = ["# Reference converter at equal training budget", "",
             "Generated by `snnverify budget --render` from the JSON files beside it; do not edit.",
             "Budget E: labelled epochs over the training images listed (QCFS training and BPTT together; "
             "calibration is unlabelled and free). Control: the ANN trained E more epochs with the recipe's "
             "optimizer and weight learning rate, evaluated as an ANN (E = 0: the ANN itself). Gap = control − "
             "SNN in pp; targets: ≤ 2 at T = 4, ≤ 0.5 at T = 8, ≤ 0.1 at T = 32, all from one conversion. "
             "SNNs on the `cpu` backend.", "",
             "Defaults of `convert` (snnverify/convert/budget.py), by budget: "
             + "; ".join(f"E ≥ {b}: {r.qcfs_optimizer} lr {r.qcfs_lr:g}, λ lr {r.threshold_lr:g}, L = {r.levels}, "
                         f"{r.finetune_epochs} BPTT epoch(s)" for b, r in RECIPES.items())
             + f"; no budget given: E = {DEFAULT_BUDGET}.", ""]
    for path in sorted(OUT.glob("*.json")):
        rows = sorted(json.loads(path.read_text())["rows"],
                      key=lambda r: (r["train_images"], r["test_images"], r["budget_epochs"], r["recipe"]))
        ts = sorted({int(t) for r in rows for t in r["snn_accuracy"]})
        lines += [f"## {path.stem}", "",
                  "| E | recipe | train / test images | ANN | control | QCFS ANN | "
                  + " | ".join(f"T={t}" for t in ts) + " | " + " | ".join(f"gap@{t}" for t in ts)
                  + " | targets met | date | commit | command |",
                  "|" + "---|" * (10 + 2 * len(ts))]
        for r in rows:
            met = [t for t, limit in TARGETS_PP.items() if str(t) in r["gap_pp"] and r["gap_pp"][str(t)] <= limit]
            checked = [t for t in TARGETS_PP if str(t) in r["gap_pp"]]
            lines.append(
                f"| {r['budget_epochs']} | {r['recipe']} | {r['train_images']} / {r['test_images']} | "
                f"{100 * r['ann_accuracy']:.2f} | {100 * r['control_accuracy']:.2f} | "
                f"{100 * r['qcfs_ann_accuracy']:.2f} | "
                + " | ".join(f"{100 * r['snn_accuracy'][str(t)]:.2f}" if str(t) in r["snn_accuracy"] else "" for t in ts)
                + " | " + " | ".join(f"{r['gap_pp'][str(t)]:.2f}" if str(t) in r["gap_pp"] else "" for t in ts)
                + f" | {'all' if met == checked and checked else ', '.join(f'T={t}' for t in met) or 'none'}"
                + f" | {r['date']} | {r['commit']} | `{r['command']}` |")
        lines.append("")
    return atomic_write(OUT / "README.md", "\n".join(lines))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", choices=sorted(ANNS))
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 1, 5])
    parser.add_argument("--recipes", nargs="+", default=["default"], choices=sorted(CANDIDATES))
    parser.add_argument("--timesteps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--convert-timesteps", type=int, default=4, help="T of BPTT fine-tuning")
    parser.add_argument("--train-subset", type=int, help="train on this many training images (fixed seed)")
    parser.add_argument("--test-subset", type=int, help="evaluate on the first N test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", action="store_true", help="only regenerate README.md from the JSON")


def main(args: argparse.Namespace) -> int:
    for t in [*args.timesteps, args.convert_timesteps]:
        check_timesteps(t)
    for budget in args.budgets:
        if budget < 0:
            raise ValueError(f"--budgets: a budget is a number of epochs >= 0, got {budget}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.render:
        print(sweep(args))
    print(render())
    return 0
