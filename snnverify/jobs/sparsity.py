"""``snnverify sparsity``: the rate penalty's trade-off between accuracy, spikes and CPU time.

For each penalty ρ, converts the same ReLU ANN with the same budget: QCFS training (the
recipe's optimizer and rates) with ``rate_penalty=ρ`` (it minimises cross-entropy + ρ · mean
firing rate), then, with ``--finetune-epochs F``, F of the budget's epochs of BPTT fine-tuning
of the SNN at ``--finetune-horizons`` (the penalty acts in both stages, or BPTT applies its own
``--finetune-penalty``). At every T it
measures on the ``cpu`` backend:

- the SNN's accuracy on the test images and its gap to the ReLU ANN, ANN − SNN in pp;
- the spike rate r = spikes / (IF neurons · T · images) over every IF neuron of the network,
  and the sparsity 1 − r (as ``snnverify.measure_sparsity``; a burst step counts all its
  spikes, up to B, so with burst layers r may exceed 1);
- the SNN's time per image over the ANN's forward time per image, both on the same batch of
  test images in one process, timed interleaved (``snnverify speed``) in CPU time and in wall
  time, on ``--threads`` threads; beside it the synaptic events per image, the weighted adds
  that event-driven simulation does (one per output a firing neuron reaches, a burst included).

    snnverify sparsity --dataset fashion-mnist --penalties 0 0.3 1 3 10 30
    snnverify sparsity --dataset fashion-mnist-rgb32 --model cifar_resnet18 --ann-epochs 3 \\
        --train-subset 2500 --test-subset 500 --penalties 0 3 30
    snnverify sparsity --levels 16 --penalties 0.5 --budget 2 --finetune-epochs 1 --finetune-horizons 32
    snnverify sparsity --levels 32 --penalties 0.3 --finetune-penalty 1 --budget 2 --finetune-epochs 1
    snnverify sparsity --render          # reports/sparsity/README.md and plots from the JSON

Rows go to ``reports/sparsity/<dataset>-<model>.json`` as each finishes (a row with the same
penalty, ANN, budget, stages and data sizes is replaced), each with its command, date and the commit
it started from. A row is Pareto-optimal at T when no row of its group (same ANN, budget and
data) has a gap and a rate both at most its own, one of them lower.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numba
import torch

from snnverify import api, data, models
from snnverify.convert import ConversionOptions
from snnverify.convert.qcfs import qcfs_rate
from snnverify.graph import check_timesteps, multiply_accumulates, synaptic_events
from snnverify.jobs.budget import ANNS, loaders, reseed
from snnverify.jobs.speed import interleaved_best_times, steady_heap
from snnverify.report import load_reference
from snnverify.train import OPTIMIZERS, fit
from snnverify.util import atomic_write, commit

OUT = Path("reports/sparsity")
#: the plot's gap axis stops here (rows beyond it are counted in its title)
PLOTTED_GAP_PP = 4.0
#: how the report names the optimizers
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
#: the T of the figure of merit, the tutorial's sparsity claim
FIGURE_T = 32
#: rows of one group: measured on the same ANN, budget and data, with the same QCFS stage (L,
#: optimizer, learning rates) and BPTT stage (its epochs, horizons and rate penalty)
GROUP = ("ann", "budget_epochs", "train_images", "test_images", "seed", "qcfs", "finetune")


def finetune_stage(row: dict) -> tuple[int, tuple[int, ...], float | str]:
    """(BPTT epochs, horizons, the rate penalty BPTT applied) of a row, the penalty "ρ" where
    BPTT applied the row's own ρ (rows of one sweep over ρ share their group); nothing but 0
    epochs without BPTT. (Rows from before the penalty acted in BPTT record none there: 0.)"""
    epochs = row["options"]["finetune_epochs"]
    if not epochs:
        return 0, (), 0.0
    applied = row["training"]["finetune"].get("rate_penalty", 0.0)
    return epochs, tuple(row["options"]["finetune_horizons"]), "ρ" if applied and applied == row["penalty"] else applied


def qcfs_stage(row: dict) -> tuple[int, str, float, float]:
    """(L, optimizer, learning rate of weights, of thresholds) of a row's QCFS training."""
    return tuple(row["options"][key] for key in ("levels", "qcfs_optimizer", "qcfs_lr", "threshold_lr"))


def bptt_penalty_name(penalty: float | str) -> str:
    """How the report names the rate penalty of a BPTT stage (:func:`finetune_stage`)."""
    return "ρ in BPTT too" if penalty == "ρ" else f"ρ = {penalty:g} in BPTT" if penalty else "no rate penalty in BPTT"


def group_of(row: dict) -> tuple:
    """The row's :data:`GROUP` values (the QCFS and BPTT stages from its conversion options)."""
    from_options = {"qcfs": qcfs_stage(row), "finetune": finetune_stage(row)}
    return tuple(from_options[key] if key in from_options else row[key] for key in GROUP)


def targets() -> tuple[float, float]:
    """(sparsity at least, gap in pp at most) at :data:`FIGURE_T`: the tutorial's sparsity claim,
    reached within this project's gap to the ReLU ANN."""
    sparsity = load_reference("neurocuda_tutorial_resnet18")["models"]["torchvision_resnet18"]["sparsity"]
    return sparsity[str(FIGURE_T)], load_reference("sparsity_targets")["max_gap_pp"][str(FIGURE_T)]


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """For (gap, rate) points: True where no other point has both at most as large, one smaller."""
    return [not any(g <= gap and r <= rate and (g < gap or r < rate) for g, r in points) for gap, rate in points]


def the_ann(args, splits, train) -> tuple[torch.nn.Module, str]:
    """The ReLU ANN and how it was made: the checkpoint, else ``--ann-epochs`` of SGD at 0.1
    (momentum 0.9, cosine schedule, as ``snnverify run``) on the training images used here."""
    model = models.build_model(args.model, splits.num_classes, splits.input_shape[0])
    if args.checkpoint is not None:
        return models.load_checkpoint(model, args.checkpoint).eval(), args.checkpoint
    reseed(args.seed, train)
    fit(model.train(), list(model.parameters()), train, args.ann_epochs, 0.1, "cpu", desc="ANN training")
    return model.eval(), f"trained here: {args.ann_epochs} epochs of SGD at 0.1, seed {args.seed}"


def timing(snn: api.SNN, ann: torch.nn.Module, x: torch.Tensor, timesteps: int, repeats: int) -> dict:
    """Seconds per image of the SNN and of the ANN's forward pass on batch ``x``, timed
    interleaved (fastest of ``repeats`` rounds each, on a steady heap), in wall time and in CPU
    time (all threads); and the SNN's synaptic events per image."""
    def ann_forward():
        with torch.no_grad():
            ann(x)

    functions = {"ann": ann_forward, "snn": lambda: api.simulate(snn, x, timesteps)}
    load = os.getloadavg()[0]  # other processes on the cores inflate the times, wall time most
    wall = interleaved_best_times(functions, repeats)
    cpu = interleaved_best_times(functions, repeats, clock=time.process_time)
    _, spikes = api.simulate(snn, x, timesteps, record=True)
    return {"snn_s_per_image": wall["snn"] / len(x), "ann_s_per_image": wall["ann"] / len(x),
            "time_ratio": wall["snn"] / wall["ann"], "snn_cpu_s_per_image": cpu["snn"] / len(x),
            "ann_cpu_s_per_image": cpu["ann"] / len(x), "cpu_time_ratio": cpu["snn"] / cpu["ann"],
            "load_average": round(max(load, os.getloadavg()[0]), 2), "steady_heap": steady_heap(),
            "synaptic_events_per_image": synaptic_events(snn.graph, spikes) / len(x)}


def sweep(args) -> Path:
    made_by = {"command": args.invocation, "commit": commit()}
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits, train, cal, test, n_train, n_test = loaders(args.dataset, args.train_subset, args.test_subset, args.seed)
    ann, ann_source = the_ann(args, splits, train)
    ann_accuracy = api.evaluate(ann, test)
    timing_batch = next(iter(torch.utils.data.DataLoader(test.dataset, batch_size=args.timing_batch)))[0]
    path = args.out_dir / f"{args.dataset}-{args.model}.json"
    for penalty in args.penalties:
        reseed(args.seed, train, cal)
        start = time.perf_counter()
        snn = api.convert(ann, cal, timesteps=max(args.timesteps), train_loader=train, **conversion_options(args),
                          rate_penalty=penalty)
        convert_s = time.perf_counter() - start
        api.compile(snn, "cpu")
        by_t = {}
        for t in args.timesteps:
            statistics = api.snn_statistics(snn, test, timesteps=t)
            by_t[str(t)] = {"snn_accuracy": statistics["accuracy"],
                            "gap_pp": round(100 * (ann_accuracy - statistics["accuracy"]), 4),
                            "spike_rate": 1 - statistics["sparsity"], "sparsity": statistics["sparsity"],
                            **timing(snn, ann, timing_batch, t, args.repeats)}
        qcfs_ann = snn.conversion.qcfs_ann
        row = {
            "dataset": args.dataset, "model": args.model, "penalty": penalty, "ann": ann_source,
            "budget_epochs": args.budget, "options": asdict(snn.conversion.options), "training": snn.training,
            "train_images": n_train, "test_images": n_test, "ann_accuracy": ann_accuracy,
            "qcfs_ann_accuracy": api.evaluate(qcfs_ann, test), "qcfs_ann_rate": qcfs_rate(qcfs_ann, test, "cpu"),
            "ann_macs_per_image": multiply_accumulates(snn.graph), "timing_batch": len(timing_batch),
            "threads": args.threads, "by_timesteps": by_t, "convert_s": round(convert_s, 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": args.seed, **made_by,
        }
        rows = json.loads(path.read_text())["rows"] if path.exists() else []  # other runs' rows kept
        rows = [r for r in rows if (r["penalty"], *group_of(r)) != (penalty, *group_of(row))] + [row]
        atomic_write(path, json.dumps({"rows": rows}, indent=1) + "\n")
        print(f"{args.dataset} {args.model} ρ={penalty:g}: ANN {100 * ann_accuracy:.2f} "
              + " ".join(f"T{t} {100 * m['snn_accuracy']:.2f} rate {m['spike_rate']:.4f} "
                         f"CPU time x{m['cpu_time_ratio']:.1f}" for t, m in by_t.items()), flush=True)
    return path


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by :data:`GROUP`, each group sorted by penalty."""
    found: dict[tuple, list[dict]] = {}
    for row in rows:
        found.setdefault(group_of(row), []).append(row)
    return {key: sorted(members, key=lambda r: r["penalty"]) for key, members in sorted(found.items(), key=str)}


def trend(members: list[dict], t: str) -> list[str]:
    """How spikes, events and time change at T = ``t`` from the smallest penalty to the sparsest row."""
    measured = [r for r in members if t in r["by_timesteps"]]
    if len(measured) < 2:
        return []
    low = measured[0]["by_timesteps"][t]
    sparsest = min(measured, key=lambda r: r["by_timesteps"][t]["spike_rate"])
    high = sparsest["by_timesteps"][t]
    return [f"From ρ = {measured[0]['penalty']:g} to the sparsest row (ρ = {sparsest['penalty']:g}) at T = {t}: "
            f"spike rate × {high['spike_rate'] / low['spike_rate']:.2f}, synaptic events × "
            f"{high['synaptic_events_per_image'] / low['synaptic_events_per_image']:.2f}, SNN CPU time per image × "
            f"{high['snn_cpu_s_per_image'] / low['snn_cpu_s_per_image']:.2f} (SNN / ANN CPU time "
            f"{low['cpu_time_ratio']:.1f}× → {high['cpu_time_ratio']:.1f}×), gap {low['gap_pp']:+.2f} → "
            f"{high['gap_pp']:+.2f} pp.", ""]


def plot(path: Path, grouped: dict[tuple, list[dict]], t: str, min_sparsity: float, max_gap: float) -> None:
    """Gap against spike rate at T = ``t``, one point per penalty (labelled ρ), coloured by the
    SNN/ANN time ratio; the Pareto front joined, the target region shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for members in grouped.values() for r in members if t in r["by_timesteps"]]
    ratios = [r["by_timesteps"][t]["cpu_time_ratio"] for r in measured]
    norm = matplotlib.colors.Normalize(min(ratios), max(ratios))
    fig, ax = plt.subplots(figsize=(7.2, 4.4 + 0.16 * len(grouped)))
    ax.fill_between([0, 1 - min_sparsity], -100, max_gap, color="tab:green", alpha=0.12,
                    label=f"target: sparsity ≥ {100 * min_sparsity:.1f} %, gap ≤ {max_gap:g} pp")
    for marker, (key, members) in zip(itertools.cycle("os^Dv<>ph"), grouped.items()):
        members = [r for r in members if t in r["by_timesteps"]]
        points = [(r["by_timesteps"][t]["gap_pp"], r["by_timesteps"][t]["spike_rate"]) for r in members]
        front = sorted((rate, gap) for (gap, rate), best in zip(points, pareto_optimal(points)) if best)
        ax.plot([p[0] for p in front], [p[1] for p in front], color="grey", lw=1, zorder=1)
        first, (bptt, _, bptt_penalty) = members[0], finetune_stage(members[0])
        label = (f"L = {first['options']['levels']}, budget {first['budget_epochs']}"
                 f"{f' ({bptt} BPTT, {bptt_penalty_name(bptt_penalty)})' if bptt else ''}, "
                 f"{first['train_images']} / {first['test_images']} images")
        scatter = ax.scatter([p[1] for p in points], [p[0] for p in points], c=[r["by_timesteps"][t]["cpu_time_ratio"]
                             for r in members], cmap="viridis", norm=norm, marker=marker, s=50, zorder=2, label=label)
        for (gap, rate), r in zip(points, members):
            ax.annotate(f"ρ={r['penalty']:g}", (rate, gap), textcoords="offset points", xytext=(5, 4), fontsize=8)
    fig.colorbar(scatter, ax=ax, label="SNN CPU time / ANN CPU time (per image)")
    gaps = [r["by_timesteps"][t]["gap_pp"] for r in measured]
    rates = [r["by_timesteps"][t]["spike_rate"] for r in measured]
    ax.set_xlim(0, max(max(rates), 1 - min_sparsity) * 1.1)
    top = max(min(max(gaps), PLOTTED_GAP_PP), max_gap) + 0.3  # the trade-off near the target stays legible
    ax.set_ylim(min(min(gaps), 0) - 0.2, top)
    off_plot = sum(gap > top for gap in gaps)
    ax.set_xlabel(f"spike rate at T = {t} (spikes per IF neuron per step)")
    ax.set_ylabel("accuracy gap to the ReLU ANN (pp)")
    ax.set_title(path.stem.replace("_", " ")
                 + (f" ({off_plot} row(s) with a gap above {top:.1f} pp off the plot)" if off_plot else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(out_dir: Path = OUT) -> Path:
    """``out_dir``/README.md and one plot per JSON file, from every ``out_dir``/*.json."""
    min_sparsity, max_gap = targets()
    lines = ["# Rate penalty: accuracy, spikes and CPU time", "",
             "Generated by `snnverify sparsity --render` from the JSON files beside it; do not edit.",
             "Each row converts the same ReLU ANN with the same budget: QCFS training (the recipe's optimizer and "
             "rates), where a group says so followed by BPTT fine-tuning of the SNN, with `rate_penalty` ρ: "
             "QCFS training minimises cross-entropy + ρ · r̄, r̄ the mean of a/λ over "
             "every QCFS neuron (the firing rate of the IF neuron it becomes), and BPTT, where its group says "
             "so, cross-entropy + ρ · the SNN's spike rate. Spike rate: spikes / (IF neurons "
             "· T · test images) over every IF neuron, a burst step counting all its spikes; "
             "sparsity = 1 − rate. Gap = ReLU ANN − SNN in pp on the "
             "same test images. Time: SNN simulation on the `cpu` backend against the ANN's forward pass, per "
             "image, on one batch of test images, timed interleaved in one process (fastest round of each), as "
             "CPU time of all threads and as wall time. Load: the 1-minute load average while timing; above the "
             "number of cores, other processes share them and inflate the times, wall time and the ANN's short "
             "forward pass most, so the CPU-time ratio is the figure to read. "
             "Events: synaptic events per image (the adds of event-driven simulation). Pareto: no row of the "
             "table has a gap and a rate both at most this row's, one lower. `fashion-mnist-rgb32`: Fashion-MNIST "
             "in CIFAR-10's input shape (padded to 32 × 32, 3 channels; `snnverify.data`), where CIFAR-10 itself "
             "is not on the machine.", "",
             f"Target at T = {FIGURE_T}: sparsity ≥ {100 * min_sparsity:.1f} % (the NeuroCUDA tutorial's claim, "
             f"references/neurocuda_tutorial_resnet18.json) with a gap ≤ {max_gap:g} pp "
             "(references/sparsity_targets.json).", ""]
    for path in sorted(out_dir.glob("*.json")):
        grouped = groups(json.loads(path.read_text())["rows"])
        ts = sorted({t for members in grouped.values() for r in members for t in r["by_timesteps"]}, key=int)
        figure_t = str(FIGURE_T) if str(FIGURE_T) in ts else ts[-1]
        lines += [f"## {path.stem}", "", f"![gap against spike rate at T = {figure_t}]({path.stem}.png)", ""]
        plot(out_dir / f"{path.stem}.png", grouped, figure_t, min_sparsity, max_gap)
        for (ann, budget_epochs, train_images, test_images, seed, qcfs, stage), members in grouped.items():
            first, (levels, optimizer, qcfs_lr, threshold_lr), (bptt, horizons, bptt_penalty) = members[0], qcfs, stage
            qcfs_training = (f"QCFS training at L = {levels} ({OPTIMIZER_NAMES[optimizer]} at {qcfs_lr:g}, "
                             f"λ at {threshold_lr:g})")
            stages = (qcfs_training if not bptt else
                      f"{qcfs_training}, then {bptt} epoch(s) of BPTT at T = "
                      f"{', '.join(map(str, horizons))} (Adam at {first['options']['finetune_lr']:g}, "
                      + bptt_penalty_name(bptt_penalty) + ")")
            lines += [f"ANN: {first['model']}, {ann}, {100 * first['ann_accuracy']:.2f} % on {test_images} "
                      f"test images; {stages}: budget {budget_epochs} epoch(s) over "
                      f"{train_images} training images, seed {seed}; timing on a batch of {first['timing_batch']}, "
                      f"{first['threads']} threads.", ""]
            for t in ts:
                measured = [r for r in members if t in r["by_timesteps"]]
                best = pareto_optimal([(r["by_timesteps"][t]["gap_pp"], r["by_timesteps"][t]["spike_rate"])
                                       for r in measured])
                lines += [f"T = {t}:", "",
                          "| ρ | Pareto | SNN % | gap pp | spike rate | sparsity % | events / image | "
                          "SNN CPU ms / image | ANN CPU ms / image | SNN / ANN CPU time | SNN / ANN wall time | "
                          "load | QCFS ANN % | QCFS rate"
                          + (" | target met" if t == str(FIGURE_T) else "") + " | date | commit |",
                          "|" + "---|" * (16 + (t == str(FIGURE_T)))]
                for r, optimal in zip(measured, best):
                    m = r["by_timesteps"][t]
                    met = m["sparsity"] >= min_sparsity and m["gap_pp"] <= max_gap
                    lines.append(
                        f"| {r['penalty']:g} | {'**yes**' if optimal else ''} | {100 * m['snn_accuracy']:.2f} | "
                        f"{m['gap_pp']:.2f} | {m['spike_rate']:.4f} | {100 * m['sparsity']:.2f} | "
                        f"{m['synaptic_events_per_image'] / 1e6:.2f} M | {1e3 * m['snn_cpu_s_per_image']:.2f} | "
                        f"{1e3 * m['ann_cpu_s_per_image']:.3f} | {m['cpu_time_ratio']:.1f}× | "
                        f"{m['time_ratio']:.1f}× | {m['load_average']:.1f} | "
                        f"{100 * r['qcfs_ann_accuracy']:.2f} | {r['qcfs_ann_rate']:.4f}"
                        + (f" | {'yes' if met else 'no'}" if t == str(FIGURE_T) else "")
                        + f" | {r['date']} | {r['commit']} |")
                lines.append("")
            lines += trend(members, figure_t)
            lines += ["Commands:", ""] + [f"- `{c}`" for c in dict.fromkeys(r["command"] for r in members)] + [""]
    return atomic_write(out_dir / "README.md", "\n".join(lines))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(sorted(data.DATASETS))}")
    parser.add_argument("--model", default="small_resnet", help=f"one of {', '.join(models.MODELS)}")
    parser.add_argument("--checkpoint", help="the ReLU ANN's state dict (default: the committed Fashion-MNIST "
                                             "small ResNet for that pair, else trained here for --ann-epochs)")
    parser.add_argument("--ann-epochs", type=int, default=30, help="epochs of ANN training when there is no checkpoint")
    parser.add_argument("--penalties", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0], help="rate penalties ρ")
    parser.add_argument("--budget", type=int, default=1, help="labelled epochs of the conversion, all stages")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="of the budget's epochs, those of BPTT fine-tuning after QCFS training")
    parser.add_argument("--finetune-penalty", type=float,
                        help="BPTT's own rate penalty (default: each --penalties ρ in BPTT too)")
    parser.add_argument("--finetune-horizons", type=int, nargs="+",
                        help="the T's whose readouts BPTT trains (default: the largest --timesteps)")
    parser.add_argument("--levels", type=int, help="QCFS L of the conversion (default: the budget's recipe)")
    parser.add_argument("--qcfs-optimizer", choices=OPTIMIZERS, help="QCFS training's (default: the budget's recipe)")
    parser.add_argument("--qcfs-lr", type=float, help="QCFS training's learning rate of weights and biases "
                                                      "(default: the budget's recipe)")
    parser.add_argument("--threshold-lr", type=float, help="QCFS training's learning rate of the thresholds λ "
                                                           "(default: --qcfs-lr if given, else the budget's recipe)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[FIGURE_T])
    parser.add_argument("--train-subset", type=int, help="train on this many training images (fixed seed)")
    parser.add_argument("--test-subset", type=int, help="evaluate on the first N test images")
    parser.add_argument("--timing-batch", type=int, default=32, help="test images in the timed batch")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timing rounds (the fastest counts)")
    parser.add_argument("--threads", type=int, default=2, help="torch and Numba threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    parser.add_argument("--render", action="store_true", help="only regenerate README.md and plots from the JSON")


def conversion_options(args: argparse.Namespace) -> dict:
    """``convert``'s options from the job's: the budget split into QCFS training and BPTT."""
    return {"budget_epochs": args.budget, "finetune_epochs": args.finetune_epochs, "levels": args.levels,
            "qcfs_optimizer": args.qcfs_optimizer, "qcfs_lr": args.qcfs_lr, "threshold_lr": args.threshold_lr,
            "finetune_horizons": args.finetune_horizons or (max(args.timesteps),),
            "finetune_rate_penalty": args.finetune_penalty,
            "max_spikes": 1}  # the rate trade-off of binary spikes: a burst layer spends B per step


def main(args: argparse.Namespace) -> int:
    if args.dataset not in data.DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(data.DATASETS))}")
    if args.model not in models.MODELS:
        raise ValueError(f"unknown model {args.model!r}; known models: {', '.join(models.MODELS)}")
    for t in args.timesteps:
        check_timesteps(t)
    for penalty in args.penalties:  # the conversion's own checks, with its messages
        ConversionOptions(**conversion_options(args), rate_penalty=penalty).resolved()
    for name in ("train_subset", "test_subset", "timing_batch", "repeats", "ann_epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (the cores Numba may use), "
                         f"got {args.threads}")
    if args.checkpoint is None:
        args.checkpoint = ANNS.get((args.dataset, args.model))
    if args.checkpoint is not None:
        models.read_state_dict(args.checkpoint)
    if not args.render:
        print(sweep(args))
    print(render(args.out_dir))
    return 0
