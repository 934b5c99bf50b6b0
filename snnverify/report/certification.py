"""Certification reports from the ``report.json`` files ``snnverify certify`` wrote (result files only).

``write_converter_report(report.json)`` renders ``report.md`` beside it; ``write_index(folder)``
renders ``index.md`` (compliance matrix, accuracy over T side by side) and ``accuracy_vs_T.png``
from every ``<folder>/*/report.json``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from snnverify.util import atomic_write

TIMESTEPS = (8, 16, 32)
MARK = {"pass": "PASS", "fail": "**FAIL**", "skip": "skip"}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _provenance(report: dict) -> list[str]:
    return [f"Created {report.get('created', '?')} at commit `{report.get('commit', '?')}`. "
            f"Regenerate: `{report.get('command', '?')}`", ""]


def render_converter(report: dict) -> str:
    data = report.get("data", {})
    lines = [f"# Certification of `{report['converter']}` {report['version']}", "",
             f"Declared neuron: {report.get('semantics')}; capabilities: {', '.join(report.get('capabilities', []))}.",
             f"Accuracy clauses: {data.get('dataset', '?')} small ResNet (`{data.get('checkpoint', '?')}`), "
             f"{data.get('test_images', '?')} test images, {data.get('cal_images', '?')} calibration images, "
             f"{data.get('train_images', '?')} labelled training images offered. Seed {report['seed']}.", "",
             *_provenance(report), "| clause | verdict | reason |", "|---|---|---|"]
    lines += [f"| `{c['id']}` | {MARK[c['verdict']]} | {_cell(c['reason'])} |" for c in report["clauses"]]
    env = report.get("environment", {})
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def write_converter_report(json_path) -> Path:
    json_path = Path(json_path)
    return atomic_write(json_path.with_name("report.md"), render_converter(json.loads(json_path.read_text())))


def load_reports(folder) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*/report.json"))]


def accuracy_rows(reports: list[dict]) -> list[dict]:
    """Per converter: SNN accuracy at each T, gap, sparsity and time per image at the largest T, training."""
    rows = []
    for report in reports:
        clauses = {c["id"]: c for c in report["clauses"]}
        row = {"converter": f"{report['converter']} {report['version']}", "accuracy": {}, "ann": None}
        for t in TIMESTEPS:
            measured = clauses.get(f"accuracy.gap.T{t}", {}).get("measured") or {}
            if "snn_accuracy" in measured:
                row["accuracy"][t] = measured["snn_accuracy"]
                row.update(ann=measured["ann_accuracy"], training=measured["training"], sparsity=measured["sparsity"],
                           ms=measured["ms_per_image"], dataset=measured["dataset"], images=measured["test_images"])
        rows.append(row)
    return rows


def render_index(reports: list[dict]) -> str:
    ids = list(dict.fromkeys(c["id"] for r in reports for c in r["clauses"]))
    names = [r["converter"] for r in reports]
    lines = ["# Converter certification: compliance matrix", "",
             "Each converter certified by `snnverify certify` through its adapter; one report per folder. "
             "FAIL reasons are in each `report.md`.", ""]
    for report in reports:
        lines.append(f"- `{report['converter']}` {report['version']}: created {report.get('created', '?')}, commit "
                     f"`{report.get('commit', '?')}`, `{report.get('command', '?')}`")
    lines += ["", "| clause | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for clause in ids:
        cells = [next((MARK[c["verdict"]] for c in r["clauses"] if c["id"] == clause), "–") for r in reports]
        lines.append(f"| `{clause}` | " + " | ".join(cells) + " |")
    lines += ["", "## Accuracy over T on the same trained network", "",
              "| converter (labelled training) | ANN | T=8 | T=16 | T=32 | gap@32 pp | sparsity@32 | ms/image@32 |",
              "|---|---|---|---|---|---|---|---|"]
    for row in accuracy_rows(reports):
        if not row["accuracy"]:
            lines.append(f"| {row['converter']} | – | – | – | – | – | – | – |")
            continue
        training = row["training"]
        accuracy = [f"{100 * row['accuracy'][t]:.2f}" if t in row["accuracy"] else "–" for t in TIMESTEPS]
        last = max(row["accuracy"])
        sparsity = f"{100 * row['sparsity']:.1f} %" if row["sparsity"] is not None else "–"
        lines.append(f"| {row['converter']} ({training['epochs']} epochs, {training['samples']} samples) | "
                     f"{100 * row['ann']:.2f} | " + " | ".join(accuracy) +
                     f" | {100 * (row['ann'] - row['accuracy'][last]):.2f} | {sparsity} | {row['ms']:.2f} |")
    datasets = {(row.get("dataset"), row.get("images")) for row in accuracy_rows(reports) if row["accuracy"]}
    lines += ["", "Test images: " + "; ".join(f"{d}, {n} images" for d, n in sorted(datasets, key=str)) +
              ". Sparsity and time per image are reported, not judged.", "", "![accuracy vs T](accuracy_vs_T.png)", ""]
    return "\n".join(lines)


def plot_accuracy(reports: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for row in accuracy_rows(reports):
        if row["accuracy"]:
            ts = sorted(row["accuracy"])
            axis.plot(ts, [100 * row["accuracy"][t] for t in ts], marker="o", label=row["converter"])
            axis.axhline(100 * row["ann"], color="grey", linestyle=":", linewidth=1)
    axis.set_xscale("log", base=2)
    axis.set_xticks(TIMESTEPS, [str(t) for t in TIMESTEPS])
    axis.set_xlabel("timesteps T")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title("SNN accuracy over T (dotted: the ANN)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_index(folder) -> Path:
    reports = load_reports(folder)
    atomic_write(Path(folder) / "accuracy_vs_T.png", plot_accuracy(reports))
    return atomic_write(Path(folder) / "index.md", render_index(reports))
