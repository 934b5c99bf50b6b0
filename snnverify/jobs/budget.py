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
budget, converter, recipe, data sizes, seed and torch thread count is replaced; sweeps may run
side by side), each
with its command, date and the commit it started from; the Markdown is generated from the JSON
files only.
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import io
import json
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from snnverify import api, data, models
from snnverify.certify.clauses import ConverterFailure, as_the_adapter_reads_it
from snnverify.certify.protocol import load_adapter
from snnverify.certify.runner import TIME_LIMIT_S, Harness
from snnverify.graph import check_timesteps
from snnverify.convert import ConversionOptions
from snnverify.convert.budget import DEFAULT_BUDGET, RECIPES
from snnverify.train import fit
from snnverify.util import atomic_write, commit, progress, provenance

def adamw(levels: int = 8, qcfs_lr: float = 1e-3, threshold_lr: float = 5e-2, bptt_lr: float | None = None,
          horizons: tuple[int, ...] = (), correction: tuple[int, ...] = (), burst: int = 1,
          percentile: float = 99.9, bptt_epochs: int = 1) -> dict:
    """convert options of a candidate: λ from the ``percentile`` of each channel's calibration
    activations, QCFS training with AdamW, IF layers of up to ``burst`` spikes per step, bias
    correction at the horizons ``correction`` (none when empty), then ``bptt_epochs`` of BPTT at
    ``bptt_lr`` over the readouts at ``horizons`` when a rate is given, else none."""
    options = {"qcfs_optimizer": "adamw", "qcfs_lr": qcfs_lr, "threshold_lr": threshold_lr, "levels": levels,
               "finetune_epochs": 0 if bptt_lr is None else bptt_epochs, "correction_horizons": correction,
               "max_spikes": burst, "percentile": percentile}
    if bptt_lr is not None:
        options.update(finetune_lr=bptt_lr, finetune_horizons=horizons)
    return options


#: candidate recipes: convert options besides the budget
CANDIDATES: dict[str, dict] = {
    "sgd-L8": {"qcfs_optimizer": "sgd", "qcfs_lr": 0.01, "threshold_lr": 0.01, "levels": 8, "finetune_epochs": 0},
    "adamw-L8": adamw(),
    "adamw-L4": adamw(levels=4),
    "adamw-L16": adamw(levels=16),
    "adamw-L8-lam1e-2": adamw(threshold_lr=1e-2),
    "adamw-L4-bptt1-h4": adamw(levels=4, bptt_lr=1e-3, horizons=(4,)),
    "adamw-L4-bptt1-h48": adamw(levels=4, bptt_lr=1e-3, horizons=(4, 8)),
    "adamw-L8-bptt1-h48": adamw(bptt_lr=1e-3, horizons=(4, 8)),
    "adamw-L8-bptt1-h4832": adamw(bptt_lr=1e-3, horizons=(4, 8, 32)),
    # BPTT at a tenth of the rate: low T gains while the QCFS network's high-T accuracy stays
    "adamw-L8-bptt1-h48-lr1e-4": adamw(bptt_lr=1e-4, horizons=(4, 8)),
    "adamw-L8-bptt1-h4832-lr1e-4": adamw(bptt_lr=1e-4, horizons=(4, 8, 32)),
    # BPTT at T = 32 alone: the QCFS network's strongest readout, fine-tuned where it is read
    "adamw-L8-bptt1-h32": adamw(bptt_lr=1e-3, horizons=(32,)),
    "adamw-L8-bptt1-h32-lr1e-4": adamw(bptt_lr=1e-4, horizons=(32,)),
    # QCFS training at a tenth of the rate: on a few thousand images, AdamW at 1e-3 costs the
    # trained ANN accuracy (its own control falls), and the SNN's high-T readout with it
    "adamw1e-4-L8": adamw(qcfs_lr=1e-4),
    "adamw1e-4-L8-bptt1-h48-lr1e-4": adamw(qcfs_lr=1e-4, bptt_lr=1e-4, horizons=(4, 8)),
    "adamw1e-4-L8-bptt1-h4832-lr1e-4": adamw(qcfs_lr=1e-4, bptt_lr=1e-4, horizons=(4, 8, 32)),
    # BPTT that costs the QCFS network's T = 32 readout less: a third of the rate, or no T = 4
    "adamw1e-4-L8-bptt1-h4832-lr3e-5": adamw(qcfs_lr=1e-4, bptt_lr=3e-5, horizons=(4, 8, 32)),
    "adamw1e-4-L8-bptt1-h832-lr1e-4": adamw(qcfs_lr=1e-4, bptt_lr=1e-4, horizons=(8, 32)),
    # bias correction (label-free, so at E = 0 too) of the mean error at these T's
    "adamw-L8-bc4.8.16.32": adamw(correction=(4, 8, 16, 32)),
    "adamw-L8-bc4.8": adamw(correction=(4, 8)),
    "adamw-L8-bc8": adamw(correction=(8,)),
    "adamw-L8-bc8.16": adamw(correction=(8, 16)),
    "adamw-L8-bc16.32": adamw(correction=(16, 32)),
    "adamw-L8-bptt1-h32-bc4.8.16.32": adamw(bptt_lr=1e-3, horizons=(32,), correction=(4, 8, 16, 32)),
    "adamw1e-4-L8-bptt1-h832-lr1e-4-bc4.8.16.32": adamw(qcfs_lr=1e-4, bptt_lr=1e-4, horizons=(8, 32),
                                                       correction=(4, 8, 16, 32)),
    # burst neurons (up to B spikes per step, θ = λ/B): B·T steps' worth of levels in T
    **{f"adamw-L8-B{b}{'-bc' + '.'.join(map(str, h)) if h else ''}": adamw(burst=b, correction=h)
       for b in (2, 4, 8) for h in ((), (4,), (4, 8), (4, 8, 16, 32))},
    "adamw1e-4-L8-B4-bc4": adamw(qcfs_lr=1e-4, burst=4, correction=(4,)),
    "adamw1e-4-L8-B4": adamw(qcfs_lr=1e-4, burst=4),
    "adamw1e-4-L8-B4-bptt1-h48-lr1e-4-bc4": adamw(qcfs_lr=1e-4, bptt_lr=1e-4, horizons=(4, 8), burst=4,
                                                 correction=(4,)),
    # BPTT of a burst network at the rate and T whose resolution binary T = 32 has (B·T = 32)
    "adamw-L8-B4-bptt1-h8": adamw(bptt_lr=1e-3, horizons=(8,), burst=4),
    "adamw-L8-B4-bptt1-h8-bc4": adamw(bptt_lr=1e-3, horizons=(8,), burst=4, correction=(4,)),
    "adamw-L8-B4-bptt1-h16": adamw(bptt_lr=1e-3, horizons=(16,), burst=4),
    # the readouts at T = 8 and 32 trained together: the T = 32 readout where it is read
    "adamw-L8-B4-bptt1-h8.32": adamw(bptt_lr=1e-3, horizons=(8, 32), burst=4),
    # bursts of 8 trained at T = 4 (B·T = 32), with the E = 0 default's wider λ
    "adamw-L8-B8-p99.99-bptt1-h4": adamw(bptt_lr=1e-3, horizons=(4,), burst=8, percentile=99.99),
    "adamw-L8-B8-bptt1-h4": adamw(bptt_lr=1e-3, horizons=(4,), burst=8),
    # the same at a lower BPTT rate: on a training set of a few thousand images one epoch is a
    # few Adam steps, each of about the rate per weight whatever the gradient's size
    **{f"adamw-L8-B8-p99.99-bptt1-h4-lr{lr}": adamw(bptt_lr=float(lr), horizons=(4,), burst=8, percentile=99.99)
       for lr in ("1e-4", "3e-4")},
    # that BPTT over the readout at T = 8 (bursts of 8 at T = 8 resolve what 64 binary steps do): the
    # readouts from T = 16 on nearer the one it trains
    "adamw-L8-B8-p99.99-bptt1-h8-lr3e-4": adamw(bptt_lr=3e-4, horizons=(8,), burst=8, percentile=99.99),
    # BPTT over the readouts at T = 4 and T = 32 together: the low-T gain without moving the readout
    # that T = 32 takes away from the QCFS network's
    "adamw-L8-B8-p99.99-bptt1-h4.32-lr3e-4": adamw(bptt_lr=3e-4, horizons=(4, 32), burst=8, percentile=99.99),
    # the default's BPTT with λ from the 99.9th percentile (then trained at 5e-2 as before): a
    # narrower start, finer levels at every T
    "adamw-L8-B8-bptt1-h4-lr3e-4": adamw(bptt_lr=3e-4, horizons=(4,), burst=8),
    # λ between the two: from the 99.95th percentile
    "adamw-L8-B8-p99.95-bptt1-h4-lr3e-4": adamw(bptt_lr=3e-4, horizons=(4,), burst=8, percentile=99.95),
    # QCFS training at 3e-4: between 1e-3, which moves a converged ANN far, and 1e-4, too little for five epochs
    "adamw3e-4-L8-B8-p99.99-bptt1-h4-lr3e-4": adamw(qcfs_lr=3e-4, bptt_lr=3e-4, horizons=(4,), burst=8,
                                                    percentile=99.99),
    # two epochs of that BPTT, three of QCFS: more of the budget spent on the spiking network itself
    "adamw-L8-B8-p99.99-bptt2-h4-lr3e-4": adamw(bptt_lr=3e-4, horizons=(4,), burst=8, percentile=99.99,
                                                bptt_epochs=2),
    # QCFS at L = 16, the levels of T = 4 bursts of 4: the staircase the SNN reads from T = 4 on
    "adamw-L16-B4-bptt1-h8": adamw(levels=16, bptt_lr=1e-3, horizons=(8,), burst=4),
    # a wider λ, which finer levels can afford: less clipped at high T, coarser steps at low T
    **{f"adamw-L8-B{b}-p99.99{'-bc4' if h else ''}": adamw(burst=b, correction=h, percentile=99.99)
       for b in (4, 8) for h in ((), (4,))},
    "p99.99": {"percentile": 99.99, "finetune_epochs": 0},
    "p100": {"percentile": 100.0, "finetune_epochs": 0},
    "default": {},
}
DATASETS = ("digits", "fashion-mnist")
#: committed ANN checkpoints by (dataset, model); any other pair's is trained by the first sweep
#: (:func:`trained_ann`)
ANNS = {("fashion-mnist", "small_resnet"): "reports/runs/fashion-mnist-small_resnet/ann.pt"}
OUT = Path("reports/budget")
DEFAULT_MODEL = "small_resnet"
#: peer converters with a certification adapter (snnverify.certify.adapters)
PEERS = ("spikingjelly", "sinabs", "neurocuda")
TARGETS_PP = {4: 2.0, 8: 0.5, 32: 0.1}  # gap to the equal-budget ANN control, at most
#: test images per run call of a peer
PEER_TEST_BATCH = 50
#: a recipe's score: its mean SNN accuracy over these T (one conversion serves every T)
SCORED_T = (4, 8, 16, 32)
#: the seed of the reference sweep, whose rows choose the winners and fill the side-by-side
#: tables; a row of another seed (its own ANN trained, its own split and shuffles, the same
#: command otherwise) is a replicate, set against the peers of its seed (:func:`paired_differences`)
REFERENCE_SEED = 0
#: the sweeps that choose ``convert``'s defaults together (reports/budget/<name>.json): the
#: 19.7k-parameter pooled network, where the peers' figures were first measured, and the 92.84 %
#: small ResNet, by their reference seed
DEFAULTS_FROM = ("fashion-mnist-small_resnet_pooled", "fashion-mnist")
#: the sweeps that take part in that choice by their means over seeds: digits' 360 test images
#: (one image 0.28 pp) are too few to tell recipes apart on one seed, and each seed trains its
#: own ANN, so a recipe competes there with at least :data:`MIN_RUNS` runs (:func:`replicate_score`)
DEFAULTS_FROM_REPLICATES = ("digits",)
MIN_RUNS = 8


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


def trained_ann(dataset: str, model_name: str, splits, epochs: int, seed: int) -> tuple[torch.nn.Module, str]:
    """The ReLU ANN every conversion and peer of a sweep starts from, and its checkpoint: the
    committed one of the pair, else one trained as ``snnverify run`` trains (SGD at 0.1,
    ``epochs`` epochs, fixed seed) and kept under reports/budget/anns/, so that every later
    sweep of the same pair, epochs and seed starts from the same network."""
    model = models.build_model(model_name, splits.num_classes, splits.input_shape[0])
    path = ANNS.get((dataset, model_name)) or str(OUT / "anns" / f"{dataset}-{model_name}-{epochs}ep-seed{seed}.pt")
    if Path(path).exists():
        return models.load_checkpoint(model, path).eval(), path
    torch.manual_seed(seed)
    train, _, _ = data.make_loaders(splits, batch_size=64, seed=seed)
    fit(model.train(), list(model.parameters()), train, epochs, 0.1, "cpu", desc="ANN training")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write(path, buffer.getvalue())
    return model.eval(), path


#: the fields that identify a row: a new row replaces the one that agrees with it on all of them.
#: torch's thread count is one: the same command trains another network on another count, so a
#: rerun on another count is another measurement, kept beside the first
ROW_KEY = ("dataset", "budget_epochs", "converter", "recipe", "train_images", "test_images", "convert_timesteps", "seed",
           "torch_threads")


def reproduces(row: dict, old: dict) -> bool:
    """Whether ``row`` is a rerun of ``old``, a row that did not record its torch thread count,
    with the same key otherwise and exactly the same results: the same measurement, now with
    its thread count."""
    return ("torch_threads" not in old and all(old.get(k) == row.get(k) for k in ROW_KEY if k != "torch_threads")
            and all(old.get(k) == row.get(k) for k in ("snn_accuracy", "control_accuracy", "failure")))


def add_row(path: Path, row: dict) -> None:
    """Add ``row`` to the results file ``path``, replacing the row with its :data:`ROW_KEY` and
    a row it reproduces (:func:`reproduces`); the other rows are kept. Sweeps run side by side
    write the same file, so the read and the write happen under an exclusive lock (flock) on
    its folder: none loses another's row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rows = json.loads(path.read_text())["rows"] if path.exists() else []
        rows = [r for r in rows if any(r.get(k) != row.get(k) for k in ROW_KEY) and not reproduces(row, r)] + [row]
        atomic_write(path, json.dumps({"rows": rows}, indent=1) + "\n")
    finally:
        os.close(fd)  # closing releases the lock


def results_path(dataset: str, model: str) -> Path:
    """reports/budget/<dataset>.json for the default model, else <dataset>-<model>.json."""
    return OUT / (f"{dataset}.json" if model == DEFAULT_MODEL else f"{dataset}-{model}.json")


def control(ann, train, test, epochs: int, optimizer: str, lr: float, seed: int) -> float:
    """The ANN trained ``epochs`` more epochs (same optimizer and weight learning rate), as an ANN."""
    model = copy.deepcopy(ann)
    if epochs:
        reseed(seed, train)
        fit(model.train(), list(model.parameters()), train, epochs, lr, "cpu", desc=f"ANN control ({epochs} ep)",
            optimizer=optimizer)
    return api.evaluate(model.eval(), test)


def peer_accuracy(name: str, budget: int, ann, cal, train, test, timesteps: list[int], time_limit_s: float):
    """A peer converter through its certification adapter at budget E: (accuracy by T, training
    it reports, version), or None for a label-free peer at E > 0 (its E = 0 row stands for every
    budget). A peer that trains (its adapter takes ``qcfs_epochs``) spends E epochs on ``train``.
    A crash or a hang raises ConverterFailure with the reason."""
    adapter = load_adapter(name)
    trains = "qcfs_epochs" in getattr(adapter, "options", {})
    if budget and not trains:
        return None
    if trains:
        adapter.options = {**adapter.options, "qcfs_epochs": budget}
    ann = as_the_adapter_reads_it(ann, adapter)  # as certification does
    harness = Harness(adapter, None, time_limit_s)
    try:
        converted = harness.convert("budget", ann, cal, max(timesteps), train_loader=train if budget else None)
        accuracy = {}
        # a peer's run answers every layer's spikes at every step, [T, batch, ...], and its
        # simulator records them too: small batches keep T = 64 on a large network in memory
        test = DataLoader(test.dataset, batch_size=PEER_TEST_BATCH)
        for t in progress(timesteps, desc=f"{name} E={budget}"):
            correct = total = 0
            for x, y in test:
                output, spikes = harness.run(converted, x, t)
                if not spikes:  # an ANN left as it was would score the ANN's accuracy at every T
                    raise ConverterFailure(f"{adapter.name}: the converted network has no spiking layer")
                correct += int((torch.from_numpy(output).argmax(1) == y).sum())
                total += len(y)
            accuracy[str(t)] = correct / total
        return accuracy, converted.training, adapter.version
    finally:
        if callable(getattr(adapter, "close", None)):
            adapter.close()


def sweep(args) -> Path:
    # torch's thread count changes the order of training's reductions, and so its trajectory: the
    # same command trains to another network (by up to 0.2 pp) on another count
    made_by = {"command": args.invocation, "commit": commit(), "machine": provenance()["machine"],
               "torch_threads": torch.get_num_threads()}
    torch.manual_seed(args.seed)
    splits, train, cal, test, n_train, n_test = loaders(args.dataset, args.train_subset, args.test_subset, args.seed)
    ann, ann_checkpoint = trained_ann(args.dataset, args.model, splits, args.ann_epochs, args.seed)
    ann_accuracy = api.evaluate(ann, test)
    path = results_path(args.dataset, args.model)
    controls: dict[tuple, float] = {}

    def control_for(budget: int, optimizer: str, lr: float) -> float:
        key = (budget, optimizer, lr) if budget else (0,)
        if key not in controls:
            controls[key] = control(ann, train, test, budget, optimizer, lr, args.seed)
        return controls[key]

    def record(row: dict) -> None:
        """The row with what every row of this sweep shares, added to the results file (:func:`add_row`)."""
        row = {"dataset": args.dataset, "model": args.model, "ann": ann_checkpoint, "train_images": n_train,
               "test_images": n_test, "convert_timesteps": args.convert_timesteps, "ann_accuracy": ann_accuracy, **row,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": args.seed, **made_by}
        if "snn_accuracy" in row:
            row["gap_pp"] = {t: round(100 * (row["control_accuracy"] - a), 4) for t, a in row["snn_accuracy"].items()}
        add_row(path, row)
        print(f"{args.dataset} E={row['budget_epochs']} {row['converter']} {row['recipe']}: "
              f"control {100 * row['control_accuracy']:.2f} "
              + (" ".join(f"T{t} {100 * a:.2f}" for t, a in row["snn_accuracy"].items()) if "snn_accuracy" in row
                 else f"FAIL {row['failure']}"), flush=True)

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
            api.compile(snn, "cpu")
            start = time.perf_counter()
            accuracy = {str(t): a for t, a in api.accuracy_over_time(snn, test, args.timesteps).items()}
            record({"budget_epochs": budget, "converter": "snnverify", "recipe": name, "options": asdict(resolved),
                    "training": snn.training,
                    "control_accuracy": control_for(budget, resolved.qcfs_optimizer, resolved.qcfs_lr),
                    "qcfs_ann_accuracy": api.evaluate(snn.conversion.qcfs_ann, test), "snn_accuracy": accuracy,
                    "wall_s": {"convert": round(convert_s, 1), "evaluate": round(time.perf_counter() - start, 1)}})
        for name in args.peers:
            # the peers that train use AdamW at 1e-3 (neurocuda's convert), the control's recipe too;
            # it comes first: a control not yet made trains, drawing from the loaders' generators,
            # and the peer must get the shuffles every conversion gets, whatever ran before it
            row = {"budget_epochs": budget, "converter": name, "recipe": "peer",
                   "control_accuracy": control_for(budget, "adamw", 1e-3)}
            reseed(args.seed, train, cal)
            start = time.perf_counter()
            try:
                measured = peer_accuracy(name, budget, ann, cal, train, test, args.timesteps, args.time_limit)
            except ConverterFailure as failure:
                record({**row, "failure": str(failure)})
                continue
            if measured is not None:
                accuracy, training, version = measured
                record({**row, "version": version, "training": training, "snn_accuracy": accuracy,
                        "wall_s": {"convert_and_evaluate": round(time.perf_counter() - start, 1)}})
    return path


def resolved_options(budget: int, options: dict) -> dict:
    """The options a conversion at ``budget`` given ``options`` runs with, as a row records them
    (its JSON form: tuples as lists)."""
    return json.loads(json.dumps(asdict(ConversionOptions(budget_epochs=budget, **options).resolved())))


def recipe_of(row: dict) -> str:
    """A row's recipe; a ``default`` row is named by the first candidate whose options resolve,
    at its budget, to exactly those it recorded (candidates that leave options to the budget's
    recipe, such as ``p99.99``, may resolve to the same options as a named one: the same recipe
    under two names); it keeps ``default`` where none does: the default of another time."""
    if row["recipe"] != "default":
        return row["recipe"]
    for name, options in CANDIDATES.items():
        if name == "default" or options.get("finetune_epochs", 0) > row["budget_epochs"]:
            continue
        if resolved_options(row["budget_epochs"], options) == row["options"]:
            return name
    return "default"


def failed_targets(row: dict, peers: list[dict]) -> int:
    """The target cells ``row`` misses: each (peer, T of :data:`SCORED_T`) where it is below the
    peer, and each gap target of :data:`TARGETS_PP` it misses."""
    behind = sum(row["snn_accuracy"][str(t)] < peer["snn_accuracy"][str(t)]
                 for peer in peers for t in SCORED_T if str(t) in peer["snn_accuracy"])
    return behind + sum(row.get("gap_pp", {}).get(str(t), -1.0) > limit for t, limit in TARGETS_PP.items())


def same_threads(row: dict, other: dict) -> bool:
    """Whether two rows may be compared: measured on the same torch thread count, or one of them
    from before rows recorded it (compared, the stricter choice for a target "≥ every peer")."""
    return not _threads(row) or not _threads(other) or _threads(row) == _threads(other)


def scored_rows(rows: list[dict], budget: int, every_seed: bool = False) -> dict[str, list[tuple[dict, list[dict]]]]:
    """At ``budget``: our rows of the reference seed (of every seed with ``every_seed``) on the
    largest data with every T of :data:`SCORED_T` scored, by :func:`recipe_of` (one per seed and
    torch thread count measured), each with the peers that stand against it: on that data, of
    its seed and at its thread count."""
    if not every_seed:
        rows = [r for r in rows if r["seed"] == REFERENCE_SEED]  # a label-free peer's E = 0 row stands at every E
    ours = [r for r in rows if _converter(r) == "snnverify" and r["budget_epochs"] == budget
            and all(str(t) in r.get("snn_accuracy", {}) for t in SCORED_T)]
    if not ours:
        return {}
    largest = max((r["train_images"], r["test_images"]) for r in ours)
    peers = [r for r in standing_peers(rows, budget, largest) if "snn_accuracy" in r]
    by_recipe: dict[str, list[tuple[dict, list[dict]]]] = {}
    for r in ours:
        if (r["train_images"], r["test_images"]) == largest:
            by_recipe.setdefault(recipe_of(r), []).append(
                (r, [p for p in peers if p["seed"] == r["seed"] and same_threads(r, p)]))
    return by_recipe


def score(entries: list[tuple[dict, list[dict]]]) -> tuple[float, float]:
    """A recipe's score on one network from its rows and their peers (:func:`scored_rows`): the
    target cells missed (:func:`failed_targets`) and the mean accuracy over :data:`SCORED_T`, each
    averaged over its rows (one per thread count), so that a recipe measured on more thread
    counts is neither favoured nor penalised."""
    misses = sum(failed_targets(row, peers) for row, peers in entries) / len(entries)
    return misses, mean_accuracy(entries)


def mean_accuracy(entries: list[tuple[dict, list[dict]]]) -> float:
    """Our accuracy averaged over the rows of ``entries`` and the T's of :data:`SCORED_T`."""
    return sum(row["snn_accuracy"][str(t)] for row, _ in entries for t in SCORED_T) / (len(entries) * len(SCORED_T))


def replicate_score(entries: list[tuple[dict, list[dict]]]) -> tuple[float, float]:
    """A recipe's score on one network from its rows over several runs (:func:`scored_rows` with
    ``every_seed``): the target cells its means miss — each (peer, T of :data:`SCORED_T`) where
    ours − peer, averaged over the runs both made, is below 0, and each gap target of
    :data:`TARGETS_PP` the mean gap misses — and the mean accuracy over :data:`SCORED_T` and runs."""
    differences: dict[tuple[str, int], list[float]] = {}
    for row, peers in entries:
        for peer in peers:
            for t in (t for t in SCORED_T if str(t) in peer["snn_accuracy"]):
                differences.setdefault((_converter(peer), t), []).append(
                    row["snn_accuracy"][str(t)] - peer["snn_accuracy"][str(t)])
    # accuracies are multiples of one test image: a mean below −1e-9 is behind, not a rounding error
    behind = sum(sum(d) / len(d) < -1e-9 for d in differences.values())
    gaps = sum(sum(row.get("gap_pp", {}).get(str(t), -1.0) for row, _ in entries) / len(entries) > limit + 1e-9
               for t, limit in TARGETS_PP.items())
    return behind + gaps, mean_accuracy(entries)


def competing_rows(rows: list[dict], budget: int, replicated: bool) -> dict[str, list[tuple[dict, list[dict]]]]:
    """A network's rows as its recipes compete for the defaults at ``budget``: the reference
    seed's (:func:`scored_rows`), or, for a network scored by its replicates, every seed's of the
    recipes with at least :data:`MIN_RUNS` runs."""
    if not replicated:
        return scored_rows(rows, budget)
    return {recipe: entries for recipe, entries in scored_rows(rows, budget, every_seed=True).items()
            if len(entries) >= MIN_RUNS}


def network_score(entries: list[tuple[dict, list[dict]]], replicated: bool) -> tuple[float, float]:
    """:func:`replicate_score` of a network scored by its replicates, else :func:`score`."""
    return (replicate_score if replicated else score)(entries)


def joint_winners(networks: dict[str, list[dict]], replicated: tuple[str, ...] = ()) -> dict[int, dict[str, dict]]:
    """Per budget, the recipe ``convert`` should default to, chosen on several networks together
    (their rows by name), with its row on each (its first, where it has several): among the
    recipes measured on every network that has our rows at that budget — on the reference seed
    (:func:`scored_rows`), or on at least :data:`MIN_RUNS` runs for the networks named in
    ``replicated`` — the one that misses the fewest target cells summed over the networks
    (:func:`score`, :func:`replicate_score`), then the one with the highest mean accuracy."""
    best: dict[int, dict[str, dict]] = {}
    budgets = {r["budget_epochs"] for rows in networks.values() for r in rows}
    for budget in sorted(budgets):
        scored = {name: competing_rows(rows, budget, name in replicated) for name, rows in networks.items()}
        scored = {name: by_recipe for name, by_recipe in scored.items() if by_recipe}
        if not scored:
            continue
        common = set.intersection(*(set(by_recipe) for by_recipe in scored.values()))

        def rank(recipe_name: str) -> tuple[float, float]:
            scores = [network_score(by_recipe[recipe_name], name in replicated) for name, by_recipe in scored.items()]
            return sum(misses for misses, _ in scores), -sum(mean for _, mean in scores)

        if common:
            chosen = min(sorted(common), key=rank)
            best[budget] = {name: by_recipe[chosen][0][0] for name, by_recipe in scored.items()}
    return best


def default_winners(files: dict[str, list[dict]]) -> dict[int, dict[str, dict]]:
    """:func:`joint_winners` of the sweeps that choose ``convert``'s defaults, from the rows of
    each results file by its name: :data:`DEFAULTS_FROM` by their reference seed,
    :data:`DEFAULTS_FROM_REPLICATES` by their means over seeds."""
    names = [name for name in DEFAULTS_FROM + DEFAULTS_FROM_REPLICATES if name in files]
    return joint_winners({name: files[name] for name in names}, replicated=DEFAULTS_FROM_REPLICATES)


def winners(rows: list[dict]) -> dict[int, dict]:
    """:func:`joint_winners` on one network: per budget, the winner's row."""
    return {budget: chosen[""] for budget, chosen in joint_winners({"": rows}).items()}


def standing_peers(rows: list[dict], budget: int, data: tuple[int, int]) -> list[dict]:
    """The peer rows (failures included) that stand at ``budget`` on ``data`` (training, test
    images): the peers measured at that budget, and a label-free peer's E = 0 result, which
    stands at every budget."""
    free = label_free(rows)
    peers = [r for r in rows if _converter(r) != "snnverify" and (r["train_images"], r["test_images"]) == data]
    return [r for r in peers if r["budget_epochs"] == budget or (r["budget_epochs"] == 0 and _converter(r) in free)]


def label_free(rows: list[dict]) -> set[str]:
    """The peers among these rows measured at E = 0 only, on any data (they take no labels; a
    peer that trains may have been measured at E = 0 alone on some data)."""
    peers = [r for r in rows if _converter(r) != "snnverify"]
    return {_converter(r) for r in peers if r["budget_epochs"] == 0} - {
        _converter(r) for r in peers if r["budget_epochs"] > 0}


def _describe(recipe) -> str:
    bptt = (f"{recipe.finetune_epochs} BPTT epoch(s) at Adam lr {recipe.finetune_lr:g}, horizons "
            f"{','.join(map(str, recipe.finetune_horizons)) if recipe.finetune_horizons else 'T'}"
            if recipe.finetune_epochs else "no BPTT")
    correction = (f"bias correction at T = {','.join(map(str, recipe.correction_horizons))}"
                  if recipe.correction_horizons else "no bias correction")
    neurons = f"bursts of up to {recipe.max_spikes} spikes per step" if recipe.max_spikes > 1 else "binary spikes"
    return (f"{recipe.qcfs_optimizer} lr {recipe.qcfs_lr:g}, λ lr {recipe.threshold_lr:g}, L = {recipe.levels}, "
            f"λ from the {recipe.percentile:g}th percentile, {neurons}, {correction}, {bptt}")


def _recipe_cell(row: dict) -> str:
    """The recipe, and for a ``default`` row the candidate it resolved to where one matches."""
    if _converter(row) != "snnverify" or row["recipe"] != "default":
        return row["recipe"]
    named = recipe_of(row)
    return f"default (= {named})" if named != "default" else "default (of its commit)"


def _converter(row: dict) -> str:
    return row.get("converter", "snnverify")


def _threads(row: dict) -> int:
    """The torch thread count a row records; 0 where it did not record one."""
    return row.get("torch_threads") or 0


def _threads_cell(row: dict) -> str:
    return str(_threads(row)) if _threads(row) else "not recorded"


def _peers_side_by_side(rows: list[dict], ts: list[int]) -> list[str]:
    """Per data sizes with peer rows of the reference seed: at each budget, our best recipe at
    each T (per torch thread count) against every peer (a label-free peer's E = 0 result stands
    at every budget), each with the thread count it trained on."""
    lines = []
    rows = [r for r in rows if r["seed"] == REFERENCE_SEED]
    groups = sorted({(r["train_images"], r["test_images"]) for r in rows if _converter(r) != "snnverify"})
    free = label_free(rows)
    for n_train, n_test in groups:
        same = [r for r in rows if (r["train_images"], r["test_images"]) == (n_train, n_test)]
        ours = [r for r in same if _converter(r) == "snnverify" and "snn_accuracy" in r]
        measured = [t for t in ts if any(str(t) in r.get("snn_accuracy", {}) for r in same)]
        lines += [f"### Beside the peers: {n_train} training / {n_test} test images", "",
                  "| E | converter | " + " | ".join(f"T={t}" for t in measured) + " |", "|" + "---|" * (2 + len(measured))]
        for budget in sorted({r["budget_epochs"] for r in ours}):
            entries = []
            for threads in sorted({_threads(r) for r in ours if r["budget_epochs"] == budget}):
                at = [r for r in ours if r["budget_epochs"] == budget and _threads(r) == threads]
                best = {t: max((r["snn_accuracy"].get(str(t), float("nan")) for r in at), default=float("nan"))
                        for t in measured}
                entries.append((f"snnverify (best recipe at each T), torch threads: {_threads_cell(at[0])}", best))
            for r in sorted(standing_peers(rows, budget, (n_train, n_test)),
                            key=lambda r: (_converter(r), _threads(r))):
                name = f"{_converter(r)} {r.get('version', '')}".strip() + (
                    " (no labels)" if _converter(r) in free else f", torch threads: {_threads_cell(r)}")
                if "failure" in r:
                    entries.append((f"{name}: FAIL, {r['failure']}", {}))
                else:
                    entries.append((name, {t: r["snn_accuracy"].get(str(t), float("nan")) for t in measured}))
            lead = {t: max(a.get(t, float("nan")) for _, a in entries) for t in measured}
            for name, accuracy in entries:
                lines.append(f"| {budget} | {name} | " + " | ".join(
                    "" if t not in accuracy else (f"**{100 * accuracy[t]:.2f}**" if accuracy[t] == lead[t]
                                                  else f"{100 * accuracy[t]:.2f}") for t in measured) + " |")
        lines.append("")
    return lines


def paired_differences(rows: list[dict]) -> list[dict]:
    """Our conversions against a peer over the runs both made, where there are at least two: per
    data sizes, budget, our resolved options (a ``default`` row pairs with the named recipe of
    the same options) and peer, at each T the differences ours − peer, one per run. A run is a
    seed on a torch thread count (rows that did not record it pair among themselves): each seed
    trains its own ANN, shared by the pair, and the pair trains on the same thread count, so
    each difference is a fair comparison, and their spread is what one training run varies by."""
    ours: dict[tuple, dict[tuple, dict]] = {}  # (data, options) -> {(seed, threads): row}
    theirs: dict[tuple, dict[str, dict[tuple, dict]]] = {}  # data -> {peer: {(seed, threads): row}}
    for r in (r for r in rows if "snn_accuracy" in r):
        data, run = (r["train_images"], r["test_images"], r["budget_epochs"]), (r["seed"], _threads(r))
        if _converter(r) == "snnverify":
            ours.setdefault((data, json.dumps(r["options"], sort_keys=True)), {})[run] = r
        else:
            theirs.setdefault(data, {}).setdefault(_converter(r), {})[run] = r
    pairs = []
    for ((n_train, n_test, budget), _), our_runs in sorted(ours.items()):
        for peer, peer_runs in sorted(theirs.get((n_train, n_test, budget), {}).items()):
            runs = sorted(set(our_runs) & set(peer_runs))
            if len(runs) < 2:
                continue
            ts = [t for t in peer_runs[runs[0]]["snn_accuracy"]
                  if all(t in side[run]["snn_accuracy"] for side in (our_runs, peer_runs) for run in runs)]
            pairs.append({"train_images": n_train, "test_images": n_test, "budget_epochs": budget, "peer": peer,
                          "recipes": sorted({recipe_of(our_runs[run]) for run in runs}),
                          "runs": [(seed, threads or None) for seed, threads in runs],
                          "ours": {t: [our_runs[run]["snn_accuracy"][t] for run in runs] for t in ts},
                          "peer_accuracy": {t: [peer_runs[run]["snn_accuracy"][t] for run in runs] for t in ts}})
    return pairs


def _replicates(rows: list[dict]) -> list[str]:
    """The table of :func:`paired_differences`: per T, the mean accuracies over the runs, the
    differences ours − peer (mean, and the smallest and largest), in pp, and how many runs
    have ours ahead, level and behind."""
    pairs = paired_differences(rows)
    if not pairs:
        return []
    lines = ["### Replicates: the same comparison on other seeds and torch thread counts", "",
             "A run is a seed on a torch thread count: each seed trains its own ANN and draws its own split and "
             "shuffles, and the thread count changes training's reduction order; ours and the peer share both. "
             "Runs: seed (threads; – where the row did not record them). Cells: mean accuracy over the runs, "
             "ours / peer, then the difference ours − peer in pp: mean (smallest … largest), and the runs with "
             "ours ahead / level / behind.", "",
             "| E | recipe | peer | train / test images | runs | T | ours | peer | ours − peer, pp | ahead / level / behind |",
             "|" + "---|" * 10]
    for pair in pairs:
        runs = ", ".join(f"{seed} ({threads or '–'})" for seed, threads in pair["runs"])
        for t, accuracies in pair["ours"].items():
            differences = [100 * (a - b) for a, b in zip(accuracies, pair["peer_accuracy"][t])]
            tally = [sum(a > b for a, b in zip(accuracies, pair["peer_accuracy"][t])),
                     sum(a == b for a, b in zip(accuracies, pair["peer_accuracy"][t])),
                     sum(a < b for a, b in zip(accuracies, pair["peer_accuracy"][t]))]
            lines.append(
                f"| {pair['budget_epochs']} | {', '.join(pair['recipes'])} | {pair['peer']} | "
                f"{pair['train_images']} / {pair['test_images']} | {runs} | {t} | "
                f"{100 * sum(accuracies) / len(accuracies):.2f} | "
                f"{100 * sum(pair['peer_accuracy'][t]) / len(accuracies):.2f} | "
                f"{sum(differences) / len(differences):+.2f} ({min(differences):+.2f} … {max(differences):+.2f}) | "
                f"{' / '.join(map(str, tally))} |")
    return lines + [""]


def _joint_winners_line(files: dict[str, list[dict]]) -> list[str]:
    """How the defaults are chosen, and the recipe chosen at each budget (:func:`default_winners`),
    from the rows of each results file by its name."""
    chosen = default_winners(files)
    if not chosen:
        return []
    reference = [name for name in DEFAULTS_FROM if name in files]
    replicated = [name for name in DEFAULTS_FROM_REPLICATES if name in files]

    def misses(name: str, budget: int, row: dict) -> float:
        is_replicated = name in replicated
        return network_score(competing_rows(files[name], budget, is_replicated)[recipe_of(row)], is_replicated)[0]

    return [f"The defaults are chosen on {' and '.join(reference)} (seed {REFERENCE_SEED}, the largest data of each)"
            + (f" and on {' and '.join(replicated)} (the means over at least {MIN_RUNS} runs, each against the "
               "peers of its run)" if replicated else "")
            + " together: of the recipes measured on all of them, the one that misses the fewest target cells "
            f"(below a peer at a T of {', '.join(map(str, SCORED_T))}, or a gap target missed), then the highest "
            "mean accuracy. Chosen: " + "; ".join(
                f"E = {b}: {recipe_of(next(iter(rows.values())))} (target cells missed: "
                + ", ".join(f"{name} {misses(name, b, row):g}" for name, row in rows.items()) + ")"
                for b, rows in chosen.items()) + "."]


def render() -> Path:
    """reports/budget/README.md from every reports/budget/*.json."""
    files = {path.stem: json.loads(path.read_text())["rows"] for path in sorted(OUT.glob("*.json"))}
    lines = ["# Reference converter at equal training budget", "",
             "Generated by `snnverify budget --render` from the JSON files beside it; do not edit.",
             "Budget E: labelled epochs over the training images listed (QCFS training and BPTT together; "
             "calibration is unlabelled and free). Control: the ANN trained E more epochs with the recipe's "
             "optimizer and weight learning rate (AdamW 1e-3 for the peers, neurocuda's own), evaluated as an ANN "
             "(E = 0: the ANN itself). Gap = control − SNN in pp; targets: ≤ 2 at T = 4, ≤ 0.5 at T = 8, ≤ 0.1 at "
             "T = 32, all from one conversion. Our SNNs on the `cpu` backend; peers on their own simulators "
             "through their certification adapters (their interpreter inherits the sweep's environment, so its "
             "thread count too). Torch's thread count changes training's reduction order and so the network "
             "trained: rows record it (older rows do not: \"not recorded\"), our rows are compared with the "
             "peers' of the same count (a row without it with every peer), and a rerun on another count is a "
             "row of its own. A peer that trains gets the training images in the order every conversion of the "
             "sweep gets them: the loaders are reseeded right before it, after its control is made (making a "
             "control draws from their shuffles). Peer rows of commits before 74231dd whose sweep made that control "
             "just before the peer (no recipe of ours at AdamW 1e-3 before it at that budget) trained on other "
             "shuffles of the same images.", "",
             "Defaults of `convert` (snnverify/convert/budget.py), by budget: "
             + "; ".join(f"E ≥ {b}: {_describe(r)}" for b, r in RECIPES.items())
             + f"; no budget given: E = {DEFAULT_BUDGET}.", "", *_joint_winners_line(files), ""]
    for name, rows in files.items():
        rows = sorted(rows,
                      key=lambda r: (r["train_images"], r["test_images"], r["budget_epochs"], _converter(r) != "snnverify",
                                     _converter(r), r["recipe"], r["seed"], _threads(r)))
        ts = sorted({int(t) for r in rows for t in r.get("snn_accuracy", {})})
        lines += [f"## {name}", "",
                  "| E | converter | recipe | seed | torch threads | train / test images | ANN | control | QCFS ANN | "
                  + " | ".join(f"T={t}" for t in ts) + " | " + " | ".join(f"gap@{t}" for t in ts)
                  + " | targets met | date | commit | command |",
                  "|" + "---|" * (13 + 2 * len(ts))]
        for r in rows:
            if "failure" in r:
                results = f"FAIL: {r['failure']}" + " |" * (2 * len(ts)) + " none"
            else:
                met = [t for t, limit in TARGETS_PP.items() if str(t) in r["gap_pp"] and r["gap_pp"][str(t)] <= limit]
                checked = [t for t in TARGETS_PP if str(t) in r["gap_pp"]]
                results = (" | ".join(f"{100 * r['snn_accuracy'][str(t)]:.2f}" if str(t) in r["snn_accuracy"] else ""
                                      for t in ts)
                           + " | " + " | ".join(f"{r['gap_pp'][str(t)]:.2f}" if str(t) in r["gap_pp"] else ""
                                                for t in ts)
                           + f" | {'all' if met == checked and checked else ', '.join(f'T={t}' for t in met) or 'none'}")
            qcfs = f"{100 * r['qcfs_ann_accuracy']:.2f}" if "qcfs_ann_accuracy" in r else ""
            lines.append(
                f"| {r['budget_epochs']} | {_converter(r)} {r.get('version', '')}".rstrip() + f" | {_recipe_cell(r)} | {r['seed']} | {_threads_cell(r)} | "
                f"{r['train_images']} / {r['test_images']} | "
                f"{100 * r['ann_accuracy']:.2f} | {100 * r['control_accuracy']:.2f} | {qcfs} | {results}"
                f" | {r['date']} | {r['commit']} | `{r['command']}` |")
        lines += ["", f"Winner at each budget on this network alone (seed {REFERENCE_SEED}, on the largest data: the "
                  "fewest target cells missed, then the highest mean accuracy over T = "
                  f"{', '.join(map(str, SCORED_T))}): " + "; ".join(
                      f"E = {b}: {recipe_of(r)} ({r['train_images']} / {r['test_images']} images, mean "
                      f"{100 * score(scored_rows(rows, b)[recipe_of(r)])[1]:.2f})"
                      for b, r in winners(rows).items()),
                  "", *_peers_side_by_side(rows, ts), *_replicates(rows)]
    return atomic_write(OUT / "README.md", "\n".join(lines))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="digits", choices=DATASETS)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(models.MODELS),
                        help="the ANN's architecture (results go to reports/budget/<dataset>-<model>.json)")
    parser.add_argument("--ann-epochs", type=int, default=30,
                        help="ANN training epochs where no checkpoint of the dataset and model is committed "
                             "(the ANN trained is kept in reports/budget/anns/ for later sweeps)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 1, 5])
    parser.add_argument("--recipes", nargs="*", default=["default"], choices=sorted(CANDIDATES),
                        help="our candidate recipes (none: the peers alone)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--convert-timesteps", type=int, default=4,
                        help="convert's T (BPTT trains it when the recipe names no horizons)")
    parser.add_argument("--peers", nargs="*", default=[], choices=PEERS,
                        help="peer converters run beside, through their certification adapters (.venv-peers)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                        help="seconds one peer convert or run call may take before it is a FAIL")
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
    if not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 seconds, got {args.time_limit}")
    if args.ann_epochs < 1:
        raise ValueError(f"--ann-epochs must be >= 1, got {args.ann_epochs}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.render:
        print(sweep(args))
    print(render())
    return 0
