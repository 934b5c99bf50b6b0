"""``snnverify loihi2``: what a converted network does on Loihi 2.

Loads a trained ANN checkpoint, converts it once, and on the same test images measures, at one
T: the float SNN (the ``cpu`` backend), the ``loihi2_sim`` SNN with the subtractive-reset
programmable neuron and with the published CUBA-LIF (reset to zero); the spike mismatch rate of
each fixed-point run against the float SNN, per IF layer and overall (comparing layer k's spikes
in its own window, i.e. after the pipeline latency of k Dense stages); and the simulation speed
in images/s. Writes ``report.json`` and ``report.md`` (rendered from the JSON by
:func:`snnverify.report.loihi2.render`) atomically.

The conversion can be cached (``--cache FILE.nir``: the spiking graph as a lossless NIR file,
beside ``FILE.json`` with the conversion settings and the ANN accuracy), so that the figures can
be re-measured without converting again; the cache is plain data, never unpickled.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import snnverify
from snnverify import api, data, models
from snnverify.convert import ConversionOptions
from snnverify.graph import check_timesteps
from snnverify.report.loihi2 import render
from snnverify.util import atomic_write, progress, split_batch


def read_cache(cache: Path, settings: dict):
    """(graph, ANN accuracy) from a cache written with the same settings, else None."""
    sidecar = cache.with_suffix(".json")
    if not (cache.exists() and sidecar.exists()):
        return None
    stored = json.loads(sidecar.read_text())
    return (api.from_nir(cache).graph, stored["ann_accuracy"]) if stored["settings"] == settings else None


def write_cache(cache: Path, snn, settings: dict, ann_accuracy: float) -> None:
    """The graph as a lossless NIR file, the settings and ANN accuracy beside it as JSON."""
    api.to_nir(snn, cache)
    atomic_write(cache.with_suffix(".json"), json.dumps({"settings": settings, "ann_accuracy": ann_accuracy}) + "\n")


def converted_graph(args) -> tuple:
    """(spiking graph, ANN accuracy) of the checkpoint, converted with the arguments' settings;
    reuses ``args.cache`` when it holds a conversion with the same settings."""
    settings = {k: getattr(args, k) for k in ("dataset", "model", "checkpoint", "levels", "qcfs_epochs",
                                              "percentile", "seed")}
    cache = Path(args.cache) if args.cache else None
    cached = read_cache(cache, settings) if cache else None
    if cached:
        return cached
    torch.manual_seed(args.seed)
    splits = data.load_dataset(args.dataset, seed=args.seed)
    train, cal, test = data.make_loaders(splits, batch_size=128, eval_batch_size=500, seed=args.seed)
    ann = models.build_model(args.model, splits.num_classes, splits.input_shape[0])
    models.load_checkpoint(ann, args.checkpoint)
    ann.eval()
    ann_accuracy = api.evaluate(ann, test)
    snn = api.convert(ann, cal, timesteps=args.timesteps, train_loader=train, levels=args.levels,
                      qcfs_epochs=args.qcfs_epochs, percentile=args.percentile, finetune_epochs=0,
                      max_spikes=1)  # binary spikes: the published CUBA-LIF neuron's, zero reset included
    if cache:
        write_cache(cache, snn, settings, ann_accuracy)
    return snn.graph, ann_accuracy


def measure(graph, loader, timesteps: int, limit: int | None) -> dict:
    """Accuracy, spike mismatches against the float SNN and time of each run, batch by batch."""
    runs = {"float": api.SNN(graph, timesteps, target="cpu"),
            "loihi2_subtract": api.SNN(graph, timesteps, target="loihi2_sim", options={"reset": "subtract"}),
            "loihi2_zero": api.SNN(graph, timesteps, target="loihi2_sim", options={"reset": "zero"})}
    results = {name: {"correct": 0, "agree_with_float": 0, "seconds": 0.0, "mismatched": {}, "compared": {}}
               for name in runs}
    samples = 0
    total = min(len(loader), -(-limit // loader.batch_size)) if limit else len(loader)
    for batch in progress(loader, desc=f"loihi2 report (T={timesteps})", total=total):
        x, y = split_batch(batch)
        if limit:
            x, y = x[: limit - samples], y[: limit - samples]
        if len(x) == 0:
            break
        outputs, spikes = {}, {}
        for name, snn in runs.items():
            snnverify.simulate(snn, x[:1])  # compile outside the timing (cached after the first batch)
            start = time.perf_counter()
            outputs[name], spikes[name] = snnverify.simulate(snn, x, record=True)
            results[name]["seconds"] += time.perf_counter() - start
        for name in runs:
            r = results[name]
            prediction = outputs[name].argmax(1)
            r["correct"] += int((prediction == y.numpy()).sum())
            r["agree_with_float"] += int((prediction == outputs["float"].argmax(1)).sum())
            for layer, s in spikes[name].items():
                r["mismatched"][layer] = r["mismatched"].get(layer, 0) + int((s != spikes["float"][layer]).sum())
                r["compared"][layer] = r["compared"].get(layer, 0) + s.size
        samples += len(x)
        if limit and samples >= limit:
            break
    summary = {}
    for name, r in results.items():
        mismatched, compared = sum(r["mismatched"].values()), sum(r["compared"].values())
        summary[name] = {
            "accuracy": r["correct"] / samples,
            "prediction_agreement_with_float": r["agree_with_float"] / samples,
            "images_per_s": samples / r["seconds"],
            "spike_mismatch_rate": mismatched / compared,
            "spike_mismatch_rate_per_layer": {k: r["mismatched"][k] / r["compared"][k] for k in r["compared"]},
        }
    return {"samples": samples, "runs": summary, "quantisation": mapping_summary(runs["loihi2_subtract"])}


def mapping_summary(snn) -> dict:
    """Per neuron group: vth, latency, and per synapse group the Dense registers and the largest
    weight rounding error (in thresholds)."""
    backend = snn.backend
    network = backend.network
    layers = {}
    for name, layer in network.layers.items():
        layers[name] = {
            "vth": layer.vth, "latency": layer.latency, "input_driven": bool(layer.static),
            "max_bias_error_thresholds": layer.bias_error / layer.vth,
            "synapses": [{"from": grp.source, "kind": grp.kind, "nodes": grp.nodes, "weight_exp": grp.weight_exp,
                          "num_weight_bits": grp.num_weight_bits, "sign_mode": grp.sign_mode, "delay": grp.delay,
                          "max_weight_error_thresholds": grp.rounding_error / layer.vth} for grp in layer.groups],
        }
    return {"vth": network.vth, "exact": network.exact, "output_latency": network.output.latency, "layers": layers}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="small_resnet")
    parser.add_argument("--checkpoint", default="reports/runs/fashion-mnist-small_resnet/ann.pt")
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--qcfs-epochs", type=int, default=1)
    parser.add_argument("--percentile", type=float, default=99.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    parser.add_argument("--cache", default=None,
                        help="FILE.nir (+ FILE.json) holding the conversion, reused when the settings match")
    parser.add_argument("--out", default="reports/loihi2")


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before any work starts."""
    if args.dataset not in data.DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; known: {', '.join(sorted(data.DATASETS))}")
    if args.model not in models.MODELS:
        raise ValueError(f"unknown model {args.model!r}; known: {', '.join(models.MODELS)}")
    check_timesteps(args.timesteps)
    ConversionOptions(levels=args.levels, qcfs_epochs=args.qcfs_epochs, percentile=args.percentile)
    for name in ("batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    models.read_state_dict(args.checkpoint)


def main(args: argparse.Namespace) -> int:
    check_arguments(args)
    graph, ann_accuracy = converted_graph(args)
    splits = data.load_dataset(args.dataset, seed=args.seed)
    test = data.make_loaders(splits, batch_size=args.batch_size, eval_batch_size=args.batch_size, seed=args.seed)[2]
    report = {
        "command": args.invocation,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": args.dataset, "model": args.model, "timesteps": args.timesteps,
        "settings": {k: getattr(args, k) for k in ("checkpoint", "levels", "qcfs_epochs", "percentile", "seed",
                                                    "batch_size", "limit")},
        "ann_accuracy": ann_accuracy,
        **measure(graph, test, args.timesteps, args.limit),
        "versions": {"snnverify": snnverify.__version__, "python": platform.python_version(),
                     "torch": torch.__version__, "numpy": np.__version__, "cpu_threads": torch.get_num_threads()},
    }
    out = Path(args.out)
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out / "report.md", render(report))
    for name, r in report["runs"].items():
        print(f"{name}: accuracy {100 * r['accuracy']:.2f} %, spike mismatch {100 * r['spike_mismatch_rate']:.3f} %, "
              f"{r['images_per_s']:.1f} images/s")
    print(f"report: {out / 'report.md'}")
    return 0
