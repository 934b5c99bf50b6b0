"""``reports/index.md`` and ``reports/index.html``: every result file under reports/ and the
published numbers of references/ on one page, as tables and PNG figures.

Sections read what is there and skip what is not: runs/, bench/ (accuracy over T beside the
published curves, sparsity per layer), speed/ and gpu-check/ (images/s per backend; speed-ups
only between backends of one file, hence of one machine), loihi2/ (mismatch per layer),
certification/, budget/ and asv/. Every table names its source file, machine and commit; a file
that records no commit is attributed to the commit that last changed it (git log).
"""

from __future__ import annotations

import html
import io
import json
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from snnverify.report import REFERENCES_DIR, markdown_table, runs_on_gpu
from snnverify.util import atomic_write, provenance

FIGURES = "index_files"  # folder of the PNGs, beside index.md
TIMESTEPS = [2, 4, 8, 16, 32, 64]


@dataclass
class Page:
    """Blocks rendered both as Markdown and as HTML: headings, paragraphs, tables, figures."""

    stamp: str  # date, commit and command, printed on every figure
    blocks: list[tuple[str, object]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, table: pd.DataFrame, digits: int = 2) -> None:
        self.blocks.append(("table", (table, digits)))

    def figure(self, name: str, figure) -> None:
        figure.text(0.01, 0.005, self.stamp, fontsize=6, color="gray", va="bottom")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        self.figures[name] = buffer.getvalue()
        self.blocks.append(("img", f"{FIGURES}/{name}"))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            out.append({"h2": lambda v: f"## {v}", "p": str, "img": lambda v: f"![{Path(v).stem}]({v})",
                        "table": lambda v: markdown_table(*v), "h1": lambda v: f"# {v}"}[kind](value))
        return "\n\n".join(out) + "\n"

    def html(self) -> str:
        def table(value):
            frame, digits = value
            cells = frame.map(lambda v: "" if isinstance(v, float) and v != v else
                              (f"{v:.{digits}f}" if isinstance(v, float) else str(v)))
            return cells.to_html(index=False, border=0)

        render = {"h1": lambda v: f"<h1>{html.escape(v)}</h1>", "h2": lambda v: f"<h2>{html.escape(v)}</h2>",
                  "p": lambda v: "<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(v)) + "</p>", "table": table,
                  "img": lambda v: f'<p><img src="{v}" alt="{Path(v).stem}"></p>'}
        body = "\n".join(render[kind](value) for kind, value in self.blocks)
        style = "body{font-family:sans-serif;max-width:75em;margin:auto}td,th{padding:2px 8px;text-align:right}"
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>snnverify reports</title>"
                f"<style>{style}</style></head><body>\n{body}\n</body></html>\n")


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read result file {path}: {error}") from error


def _last_commit(path: Path) -> str:
    """For a file that records no commit: the commit that last changed it, said as such."""
    try:
        found = subprocess.run(["git", "log", "-1", "--format=%h", "--", path.name], cwd=path.parent,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        found = ""
    return f"not recorded; file last changed in {found}" if found else "not recorded; file uncommitted"


def _run_machine(versions: dict) -> str:
    return f"{versions.get('platform', 'CPU')}, {versions.get('cpu_threads', '?')} threads"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


class Index:
    """The page built from one reports/ folder and one references/ folder."""

    def __init__(self, reports: Path, references: Path, stamp: str):
        self.reports, self.references, self.page = reports, references, Page(stamp)

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.reports.parent)) if path.is_relative_to(self.reports.parent) else str(path)

    # -- accuracy over T -------------------------------------------------------------------
    def curves(self) -> list[dict]:
        """One curve per run, bench protocol and published model: accuracy (and std) per T."""
        curves = []
        for path in sorted(self.reports.glob("runs/*/report.json")):
            run = _read(path)
            curves.append({"label": f"run {path.parent.name}", "dataset": run["dataset"],
                           "ann": 100 * run["ann_accuracy"],
                           "acc": {int(t): 100 * a for t, a in run["snn_accuracy"].items()}, "std": {},
                           "source": self.rel(path), "machine": _run_machine(run.get("versions", {})),
                           "commit": run.get("commit") or _last_commit(path)})
        for path in sorted(self.reports.glob("bench/*/bench.json")):
            bench = _read(path)
            curves.append({"label": f"bench {bench['protocol']} ({len(bench['seeds'])} seeds)",
                           "dataset": bench["config"]["dataset"], "ann": bench["ann_accuracy"]["mean"],
                           "acc": {int(t): v["mean"] for t, v in bench["snn_accuracy"].items()},
                           "std": {int(t): v["std"] for t, v in bench["snn_accuracy"].items()},
                           "source": self.rel(path), "machine": bench["machine"], "commit": bench["commit"]})
        for path in sorted(self.references.glob("*.json")):
            reference = _read(path)
            for name, model in reference.get("models", {}).items():
                if "snn" in model:
                    curves.append({"label": f"published: {path.stem} {name}", "dataset": reference["dataset"],
                                   "ann": model["ann"], "acc": {int(t): a for t, a in model["snn"].items()},
                                   "std": {}, "source": f"references/{path.name}", "machine": "as published",
                                   "commit": "-"})
        return curves

    def accuracy(self) -> None:
        curves = self.curves()
        if not curves:
            return
        page = self.page
        page.heading("Accuracy against T")
        page.text("SNN test accuracy (%) per T, ours beside the published curves; bench rows are the mean "
                  "over seeds (± std in the bench section). Sources: references/README.md for the published files.")
        rows = [{"curve": c["label"], "dataset": c["dataset"], "ANN": c["ann"],
                 **{f"T={t}": c["acc"].get(t, float("nan")) for t in TIMESTEPS},
                 "source": c["source"], "machine": c["machine"], "commit": c["commit"]} for c in curves]
        page.table(pd.DataFrame(rows))
        plt = _plt()
        datasets = sorted({c["dataset"] for c in curves})
        figure, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
        for axis, dataset in zip(axes[0], datasets):
            for c in (c for c in curves if c["dataset"] == dataset):
                ts = sorted(c["acc"])
                style = "--" if c["label"].startswith("published") else "-"
                axis.errorbar(ts, [c["acc"][t] for t in ts], yerr=[c["std"].get(t, 0) for t in ts], fmt="o" + style,
                              capsize=3, markersize=3, label=c["label"])
            axis.set_xscale("log", base=2)
            axis.set_title(dataset)
            axis.set_xlabel("timesteps T")
            axis.set_ylabel("test accuracy (%)")
            axis.legend(fontsize=6)
        figure.tight_layout(rect=(0, 0.03, 1, 1))
        page.figure("accuracy_vs_T.png", figure)
        plt.close(figure)

    # -- bench protocols and sparsity per layer ----------------------------------------------
    def bench(self) -> None:
        paths = sorted(self.reports.glob("bench/*/bench.json"))
        for path in paths:
            bench = _read(path)
            page = self.page
            page.heading(f"Protocol {bench['protocol']}")
            page.text(f"{bench['config']['description']}. Command: `{bench['command']}`; source {self.rel(path)}; "
                      f"machine {bench['machine']}; commit {bench['commit']}; created {bench['created']}; "
                      f"seeds {[s['seed'] for s in bench['seeds']]}, {bench['seeds'][0]['samples']['train']} training "
                      f"and {bench['seeds'][0]['samples']['test']} test images each.")
            rows = [{"network": "ANN", "accuracy (%)": _pm(bench["ann_accuracy"]), "sparsity (%)": ""},
                    {"network": "QCFS ANN", "accuracy (%)": _pm(bench["qcfs_ann_accuracy"]), "sparsity (%)": ""}]
            rows += [{"network": f"SNN T={t}", "accuracy (%)": _pm(v), "sparsity (%)": _pm(bench["sparsity"][t])}
                     for t, v in bench["snn_accuracy"].items()]
            page.table(pd.DataFrame(rows))
            self.layer_sparsity(bench, path)

    def layer_sparsity(self, bench: dict, path: Path) -> None:
        """Sparsity per IF layer and T, from the spike counts of every seed together."""
        if not all("layers" in c for s in bench["seeds"] for c in s["counts"].values()):
            return
        table = {}
        for t in bench["snn_accuracy"]:
            layers = {}
            for seed in bench["seeds"]:
                for name, c in seed["counts"][t]["layers"].items():
                    spikes, steps = layers.get(name, (0, 0))
                    layers[name] = (spikes + c["spikes"], steps + c["neuron_steps"])
            table[f"T={t}"] = {name: 100 * (1 - s / n) for name, (s, n) in layers.items()}
        frame = pd.DataFrame(table)
        self.page.text(f"Sparsity per IF layer (100·(1 − spikes / neuron-steps), all seeds: the % of neuron-steps "
                       f"without a spike, less where a burst step carries several), {self.rel(path)}:")
        self.page.table(frame.reset_index(names="layer"), digits=1)
        plt = _plt()
        figure, axis = plt.subplots(figsize=(7, 3.5))
        frame.plot.bar(ax=axis, rot=30, fontsize=7)
        axis.set_ylabel("sparsity (%)")
        axis.set_ylim(min(50, frame.min().min() - 5), 100)
        axis.set_title(f"{bench['protocol']}: sparsity per layer")
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        self.page.figure(f"sparsity_{bench['protocol']}.png", figure)
        plt.close(figure)

    # -- speed per backend -----------------------------------------------------------------
    def speed(self) -> None:
        # reports/speed/*.json, then the side-by-side runs of one change in folders below it
        files = (sorted(self.reports.glob("speed/*.json")) + sorted(self.reports.glob("speed/*/*.json"))
                 + sorted(self.reports.glob("gpu-check/*/gpu-speed.json")))
        if not files:
            return
        page = self.page
        page.heading("Speed per backend")
        page.text("Images/s per backend, and ratios only between backends of the same file (one machine, "
                  "timed interleaved): speed-up over the torch reference on the same kind of device (torch:cuda "
                  "for the GPU's rows where it ran), SNN time over the ANN forward time on the CPU.")
        plt = _plt()
        for path in files:
            entries = _read(path)
            info = path.with_name("gpu-info.txt")
            on_cpu = path.relative_to(self.reports).parts[0] == "speed"
            device = "CPU" if on_cpu else "device not recorded"
            device = next((line.split(":", 1)[1].strip().split(" compute")[0] for line in
                           (info.read_text().splitlines() if info.is_file() else []) if line.startswith("device:")), device)
            commit_file = path.with_name("commit.txt")
            commit = (entries[0].get("commit") or (commit_file.read_text().split()[0] if commit_file.is_file()
                                                   else _last_commit(path)))
            rows = []
            for entry in entries:
                speeds = {(s["target"], s["timesteps"]): s["images_per_s"] for s in entry["snn"]}
                for s in entry["snn"]:
                    reference = speeds.get(("torch:cuda" if runs_on_gpu(s["target"]) else "torch", s["timesteps"]),
                                           speeds.get(("torch", s["timesteps"]), float("nan")))
                    rows.append({"model": entry["model"], "batch": entry["batch"], "T": s["timesteps"],
                                 "target": s["target"], "images/s": s["images_per_s"],
                                 "× torch": s["images_per_s"] / reference, "SNN/ANN time": s["ratio_to_ann"]})
            batches = ", ".join(str(b) for b in sorted({entry["batch"] for entry in entries}))
            machine = f"{device}, {entries[0]['threads']} threads, batch {batches}"
            page.text(f"{self.rel(path)} — machine: {machine}; commit {commit}.")
            frame = pd.DataFrame(rows)
            page.table(frame)
            figure, axis = plt.subplots(figsize=(7, 3.2))
            frame.pivot_table(index=["model", "batch", "T"], columns="target", values="images/s").plot.bar(
                ax=axis, rot=0, logy=True)
            axis.set_ylabel("images/s (log)")
            axis.set_title(f"{self.rel(path)} ({machine})", fontsize=8)
            figure.tight_layout(rect=(0, 0.04, 1, 1))
            # reports/speed/<name>.json: speed_<name>.png; reports/speed/<folder>/<name>.json:
            # speed_<folder>-<name>.png; a GPU check's run: speed_<run>.png
            name = ("-".join(path.relative_to(self.reports / "speed").with_suffix("").parts) if on_cpu
                    else path.parent.name)
            page.figure(f"speed_{name}.png", figure)
            plt.close(figure)

    # -- Loihi 2, GPU check, certification, budget, asv -------------------------------------
    def loihi2(self) -> None:
        path = self.reports / "loihi2" / "report.json"
        if not path.is_file():
            return
        report = _read(path)
        page = self.page
        page.heading("Loihi 2 simulator: mismatch per layer")
        page.text(f"{report['model']} on {report['dataset']} at T = {report['timesteps']}, {report['samples']} test "
                  f"images; source {self.rel(path)}; machine {_run_machine(report.get('versions', {}))}; "
                  f"commit {report.get('commit') or _last_commit(path)}; created {report['created']}. Spike mismatch: "
                  "% of neuron-steps whose spike differs from the float SNN.")
        runs = report["runs"]
        frame = pd.DataFrame({name: {layer: 100 * rate for layer, rate in run["spike_mismatch_rate_per_layer"].items()}
                              for name, run in runs.items()})
        page.table(frame.reset_index(names="layer"), digits=3)
        page.table(pd.DataFrame([{"run": name, "accuracy (%)": 100 * run["accuracy"],
                                  "agreement with float (%)": 100 * run["prediction_agreement_with_float"]}
                                 for name, run in runs.items()]))
        plt = _plt()
        figure, axis = plt.subplots(figsize=(7, 3.2))
        frame.drop(columns=[c for c in frame if not frame[c].any()]).plot.bar(ax=axis, rot=30, fontsize=7)
        axis.set_ylabel("spike mismatch (%)")
        axis.set_title("Loihi 2 simulator against the float SNN, per layer")
        figure.tight_layout(rect=(0, 0.04, 1, 1))
        page.figure("loihi2_mismatch.png", figure)
        plt.close(figure)

    def gpu_check(self) -> None:
        paths = sorted(self.reports.glob("gpu-check/*/gpu-comparisons.json"))
        if not paths:
            return
        self.page.heading("GPU check: cpu against gpu spikes")
        for path in paths:
            commit_file = path.with_name("commit.txt")
            commit = commit_file.read_text().split()[0] if commit_file.is_file() else _last_commit(path)
            self.page.text(f"{self.rel(path)}; commit {commit}.")
            self.page.table(pd.DataFrame([{"comparison": k, "neuron-steps compared": v["compared"],
                                           "mismatched": v["mismatched"], "cases": v["cases"]}
                                          for k, v in _read(path).items()]))

    def certification(self) -> None:
        paths = sorted(self.reports.glob("certification/*/report.json"))
        if not paths:
            return
        self.page.heading("Certification of converters")
        for path in paths:
            report = _read(path)
            environment = report.get("environment", "")
            self.page.text(f"{report.get('converter', path.parent.name)} {report.get('version', '')}: source "
                           f"{self.rel(path)}; environment {json.dumps(environment) if not isinstance(environment, str) else environment}; "
                           f"seed {report.get('seed')}; commit {report.get('commit') or _last_commit(path)}.")
            self.page.table(pd.DataFrame([{"clause": c.get("id"), "verdict": c.get("verdict"),
                                           "reason": c.get("reason", ""),
                                           "measured": json.dumps(c.get("measured"))[:80]}
                                          for c in report.get("clauses", [])]))

    def budget(self) -> None:
        paths = sorted(self.reports.glob("budget/*.json"))
        if not paths:
            return
        self.page.heading("Accuracy per training budget")
        for path in paths:
            rows = _read(path)["rows"]
            ts = sorted({int(t) for row in rows for t in row.get("snn_accuracy", {})})
            table = [{"E": row["budget_epochs"], "converter": " ".join([row.get("converter", "snnverify"), row.get("version", "")]).strip(),
                      "recipe": row["recipe"], "seed": row["seed"], "train / test images": f"{row['train_images']} / {row['test_images']}",
                      "control (%)": 100 * row["control_accuracy"],
                      **{f"T={t}": (100 * row["snn_accuracy"][str(t)] if str(t) in row.get("snn_accuracy", {})
                                    else ("FAIL" if "failure" in row else "")) for t in ts},
                      "date": row["date"][:10], "commit": row.get("commit", ""),
                      "machine": row.get("machine", "not recorded")} for row in rows]
            commands = "; ".join(f"`{command}`" for command in dict.fromkeys(row["command"] for row in rows))
            self.page.text(f"{self.rel(path)}: accuracy in % on the test images listed (the gaps to the control and "
                           f"the recipes: reports/budget/README.md). Commands: {commands}.")
            self.page.table(pd.DataFrame(table), digits=2)

    def asv(self) -> None:
        path = self.reports / "asv" / "nightly.json"
        if not path.is_file():
            return
        gate = _read(path)
        page = self.page
        page.heading("Nightly benchmarks (asv)")
        page.text(f"Source {self.rel(path)}: commit {gate['commit'][:10]} against {str(gate['previous_commit'])[:10]} "
                  f"on machine {gate['machine']} ({gate.get('hardware', '')}), {gate.get('created', '')}; "
                  f"{gate['regressions']} benchmarks worse by more than {gate['threshold_percent']:g} %."
                  + (f" The {'full' if gate.get('full_grid') else 'default'} grid ran in {gate['asv_run_seconds']:.0f} s."
                     if "asv_run_seconds" in gate else "")
                  + (f" The dashboard loads {len(gate['dashboard_loads'])} resources from the network."
                     if "dashboard_loads" in gate else ""))
        if gate["rows"]:
            page.table(pd.DataFrame([{"benchmark": r["benchmark"], "parameters": r["params"], "previous": f"{r['old']:.4g}",
                                      "this commit": f"{r['new']:.4g}", "worse by (%)": 100 * r["worse_by"],
                                      "regression": "yes" if r["regression"] else ""} for r in gate["rows"]]), digits=1)

    def build(self, created: str, commit: str) -> Page:
        self.page.blocks.append(("h1", "snnverify: results and published numbers"))
        self.page.text(f"Generated by `snnverify report` on {created} at commit {commit} from the result files "
                       "under reports/ and references/; each table names the file it comes from.")
        for section in (self.accuracy, self.bench, self.speed, self.loihi2, self.gpu_check, self.certification,
                        self.budget, self.asv):
            section()
        return self.page


def _pm(value: dict) -> str:
    return f"{value['mean']:.2f} ± {value['std']:.2f}"


def write_index(reports: str | Path = "reports", references: str | Path | None = None) -> Path:
    """Build ``<reports>/index.md``, ``index.html`` and their figures; returns the Markdown path."""
    reports = Path(reports)
    if not reports.is_dir():
        raise FileNotFoundError(f"no reports folder {reports}")
    origin = provenance()
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    stamp = f"{created} · commit {origin['commit']} · snnverify report"
    page = Index(reports, Path(references or REFERENCES_DIR), stamp).build(origin["created"], origin["commit"])
    for name, png in page.figures.items():
        atomic_write(reports / FIGURES / name, png)
    atomic_write(reports / "index.html", page.html())
    return atomic_write(reports / "index.md", page.markdown())
