"""Reports generated from result files and references/ — never from live objects, never by hand.

``write_run_report(report.json)`` renders ``report.md`` and ``accuracy_vs_T.png`` beside the
JSON that the main job wrote; ``snnverify report PATH`` does the same from the command line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from snnverify.util import atomic_write

#: Published numbers and targets, each file with its source (see references/README.md).
REFERENCES_DIR = Path(__file__).resolve().parents[2] / "references"


def load_reference(name: str) -> dict:
    """A JSON file from references/; every one carries a ``source`` field."""
    path = REFERENCES_DIR / f"{name}.json"
    reference = json.loads(path.read_text())
    if "source" not in reference:
        raise ValueError(f"reference {path} has no 'source' field")
    return reference


def runs_on_gpu(spelling: str) -> bool:
    """Whether a speed row's target (``gpu``, or a target on a torch device such as ``torch:cuda``,
    either with `` integer`` after it, as ``snnverify speed`` names its rows) ran on a GPU, read
    from its spelling alone: reports are rendered on machines without one."""
    target, _, device = spelling.removesuffix(" integer").partition(":")
    return target == "gpu" or device.startswith("cuda")


def markdown_table(table: pd.DataFrame, digits: int = 2) -> str:
    """``table`` as Markdown, floats with ``digits`` decimals; a missing value prints nothing."""

    def cell(value):
        if isinstance(value, float):
            return "" if value != value else f"{value:.{digits}f}"
        return "" if value is None else str(value)

    return table.map(cell).to_markdown(index=False, disable_numparse=True)


def regenerate_line(report: dict) -> str:
    """The command that regenerates a run, with a warning when it needs a file no clone has."""
    checkpoint = (report.get("config") or {}).get("checkpoint")
    line = f"Regenerate: `{report['command']}`"
    if checkpoint and (Path(checkpoint).is_absolute() or not (REFERENCES_DIR.parent / checkpoint).is_file()):
        line += f" (needs the checkpoint {checkpoint}, which is not in the repository)"
    if report.get("command_note"):
        line += f" ({report['command_note']})"
    return line


def run_table(report: dict) -> pd.DataFrame:
    """One row per T: SNN accuracy, gap to the ReLU ANN and to the QCFS ANN, spikes per IF
    neuron-step (1 − sparsity: with burst layers, of up to B spikes each, it may exceed 1)."""
    rows = []
    for t in report["timesteps"]:
        accuracy = report["snn_accuracy"][str(t)]
        rows.append(
            {
                "T": str(t),
                "SNN accuracy (%)": 100 * accuracy,
                "gap to ReLU ANN (pp)": 100 * (report["ann_accuracy"] - accuracy),
                "gap to QCFS ANN (pp)": 100 * (report["qcfs_ann_accuracy"] - accuracy),
                "spikes per neuron-step": 1 - report["sparsity"][str(t)],
                "integer-mode SNN accuracy (%)": 100 * report["quantized_snn_accuracy"][str(t)]
                if str(t) in report.get("quantized_snn_accuracy", {}) else float("nan"),
                "evaluation time (s)": report["wall_time_s"]["snn_evaluation"][str(t)],
            }
        )
    return pd.DataFrame(rows)


def render_run_markdown(report: dict) -> str:
    table = run_table(report)
    targets = load_reference("targets")
    checks = []
    for t, limit in targets["max_gap_pp"].items():
        if t in report["snn_accuracy"]:
            gap = 100 * (report["ann_accuracy"] - report["snn_accuracy"][t])
            checks.append(f"| T = {t} | {gap:.2f} | ≤ {limit} | {'met' if gap <= limit else 'NOT met'} |")
    qcfs = load_reference("qcfs_bu2022")["models"]["resnet18"]
    tutorial = load_reference("neurocuda_tutorial_resnet18")["models"]["torchvision_resnet18"]
    published = [
        f"| QCFS ResNet-18, CIFAR-10 | {t} | {qcfs['ann'] - a:.2f} |" for t, a in qcfs["snn"].items() if t in ("8", "32")
    ] + [f"| NeuroCUDA tutorial ResNet-18, CIFAR-10 | {t} | {g:.2f} |" for t, g in tutorial["gap_pp"].items()]
    wall = report["wall_time_s"]
    lines = [
        f"# snnverify run `{report['name']}`",
        "",
        f"Dataset **{report['dataset']}** ({report['samples']['train']} train / {report['samples']['cal']} calibration / "
        f"{report['samples']['test']} test samples), model **{report['model']}**, "
        f"{report['neuron_layers']} IF layers. Created {report['created']}.",
        "",
        regenerate_line(report),
        "",
        "| network | test accuracy (%) |",
        "|---|---|",
        f"| ReLU ANN (as trained) | {100 * report['ann_accuracy']:.2f} |",
        f"| traced ANN (max-pools → average pools with BatchNorm re-estimated; before QCFS) | "
        f"{100 * report['traced_ann_accuracy']:.2f} |",
        f"| QCFS ANN (L = {report['config']['levels']}, trained) | {100 * report['qcfs_ann_accuracy']:.2f} |",
        "",
        "## SNN over T",
        "",
        markdown_table(table),
        "",
        "Sparsity: fraction of IF neuron-timesteps without a spike, over the whole test set. "
        f"SNN evaluated on the `{report.get('target', 'torch')}` backend; integer mode: "
        "`snnverify.quantize` (8-bit weights, per-layer power-of-two scales).",
        "",
        "![accuracy vs T](accuracy_vs_T.png)",
        "",
        "## Against the targets (references/targets.json)",
        "",
        "| T | gap to ReLU ANN (pp) | target (pp) | |",
        "|---|---|---|---|",
        *checks,
        "",
        "## Published gaps for scale (references/)",
        "",
        "| source | T | gap (pp) |",
        "|---|---|---|",
        *published,
        "",
        "## Wall time",
        "",
        f"ANN training {wall['ann_training']:.1f} s, conversion {wall['conversion']:.1f} s, "
        f"SNN evaluation {sum(wall['snn_evaluation'].values()):.1f} s in all"
        + (f", after {wall['compile_s']:.1f} s of one-off kernel compilation (not in the evaluation times)."
           if "compile_s" in wall else " (the first T's time includes the kernels' one-off compilation)."),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def plot_accuracy(report: dict) -> bytes:
    """PNG of SNN accuracy against T, with the ReLU and QCFS ANN accuracies as lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    table = run_table(report)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(table["T"].astype(int), table["SNN accuracy (%)"], "o-", label="SNN")
    axis.axhline(100 * report["ann_accuracy"], color="k", linestyle="--", label="ReLU ANN")
    axis.axhline(100 * report["qcfs_ann_accuracy"], color="tab:orange", linestyle=":", label="QCFS ANN")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("timesteps T")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{report['model']} on {report['dataset']}")
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_run_report(json_path: str | Path) -> Path:
    """Render report.md and accuracy_vs_T.png next to ``json_path``; returns the Markdown path."""
    json_path = Path(json_path)
    try:
        report = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read run report {json_path}: {error}") from error
    atomic_write(json_path.with_name("accuracy_vs_T.png"), plot_accuracy(report))
    return atomic_write(json_path.with_name("report.md"), render_run_markdown(report))
