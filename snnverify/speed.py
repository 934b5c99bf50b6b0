"""Side-by-side throughput of the backends on converted networks (``python -m snnverify.speed``).

All targets and the ANN forward pass are timed in one process, on the same batch and
interleaved (every round times each of them, warm; the fastest time of each counts), so the
ratios hold on a noisy machine: images/s per target and T, and the ratio of the SNN's time to
the ANN's forward time. Beside the speed, the work: the ANN's multiply-accumulates per image
and the SNN's synaptic events per image (the adds an event-driven simulator must do, given
the spikes), so that the time ratio can be read against the work ratio. Conversion uses random
weights and calibration data (speed does not depend on training); a warm-up round compiles
the kernels first.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify import graph as g
from snnverify.api import SNN
from snnverify.graph import multiply_accumulates
from snnverify.models import build_model
from snnverify.util import atomic_write

#: model name -> input shape it is benchmarked on
SHAPES = {"small_resnet": (1, 28, 28), "cifar_resnet18": (3, 32, 32)}


def converted(model: str, seed: int = 0):
    """(ANN, spiking graph) of ``model`` with random weights, calibrated on random inputs."""
    torch.manual_seed(seed)
    shape = SHAPES[model]
    ann = build_model(model, 10, shape[0]).eval()
    x = torch.randn(64, *shape)
    loader = DataLoader(TensorDataset(x, torch.zeros(64).long()), batch_size=32)
    return ann, snnverify.convert(ann, loader, timesteps=8, qcfs_epochs=0, finetune_epochs=0).graph


def interleaved_best_times(functions: dict, repeats: int, calls: int = 2) -> dict[str, float]:
    """Fastest call of each function over ``repeats`` rounds, every round calling each function
    ``calls`` times back to back, one function after the other (after a warm-up round). The
    rounds spread a slow phase of a shared machine over all of them; the back-to-back calls let
    a short function (an ANN forward pass of a few ms) be timed warm, not right after another
    function has evicted its caches — measured here, a cold first call takes 2–4× longer."""
    for function in functions.values():
        function()
    best = dict.fromkeys(functions, math.inf)
    for _ in range(repeats):
        for name, function in functions.items():
            for _ in range(calls):
                start = time.perf_counter()
                function()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def _reach(size: int, out_size: int, kernel: int, stride: int, padding: int, dilation: int) -> np.ndarray:
    """For each input coordinate along one axis, how many kernel taps land on an output."""
    shifted = np.arange(size)[:, None] + padding - np.arange(kernel)[None, :] * dilation
    return ((shifted >= 0) & (shifted % stride == 0) & (shifted // stride < out_size)).sum(axis=1)


def synaptic_events(graph: g.SpikingGraph, spikes: dict[str, np.ndarray]) -> int:
    """Adds that event-driven layers (conv and linear layers fed by an IF layer) must do for the
    recorded ``spikes`` ([T, B, ...] per IF layer): each spike adds one weight to every output it
    reaches — for a conv, its taps that land inside the output, times C_out / groups."""
    shapes, total = graph.shapes, 0
    for name, node in graph.nodes.items():
        sources = graph.inputs[name]
        if not sources or not isinstance(graph.nodes[sources[0]], g.IF):
            continue
        source = sources[0]
        counts = spikes[source].sum(axis=(0, 1), dtype=np.int64)
        if isinstance(node, g.Linear):
            total += int(counts.sum()) * node.weight.shape[0]
        elif isinstance(node, g.Conv2d):
            (_, in_h, in_w), (out_channels, out_h, out_w) = shapes[source], shapes[name]
            rows = _reach(in_h, out_h, node.weight.shape[2], node.stride[0], node.padding[0], node.dilation[0])
            cols = _reach(in_w, out_w, node.weight.shape[3], node.stride[1], node.padding[1], node.dilation[1])
            total += int((counts * np.outer(rows, cols)).sum()) * (out_channels // node.groups)
    return total


def measure(model: str, targets: list[str], timesteps: list[int], batch: int, repeats: int = 3) -> dict:
    ann, graph = converted(model)
    x = torch.randn(batch, *SHAPES[model])
    macs = multiply_accumulates(graph)
    results = {"model": model, "batch": batch, "threads": torch.get_num_threads(), "ann_macs_per_image": macs,
               "snn": []}
    neurons = sum(math.prod(graph.shapes[layer.name]) for layer in graph.neuron_layers)
    snns = {target: SNN(graph, 1, target=target) for target in targets}

    def ann_forward():
        with torch.no_grad():
            ann(x)

    ann_seconds = math.inf
    for steps in timesteps:
        simulations = {target: (lambda snn=snn: snnverify.simulate(snn, x, timesteps=steps))
                       for target, snn in snns.items()}
        seconds = interleaved_best_times({"ann": ann_forward, **simulations}, repeats)
        ann_seconds = min(ann_seconds, seconds["ann"])
        for target, snn in snns.items():
            _, spikes = snnverify.simulate(snn, x, timesteps=steps, record=True)
            fired = sum(int(s.sum()) for s in spikes.values())
            events = synaptic_events(graph, spikes) / batch
            results["snn"].append({
                "target": target, "timesteps": steps, "seconds": seconds[target],
                "images_per_s": batch / seconds[target], "ann_seconds_same_rounds": seconds["ann"],
                "ratio_to_ann": seconds[target] / seconds["ann"],
                # event-driven cost grows with the spikes, so the rate belongs beside the speed
                "spike_rate": fired / (neurons * steps * batch),
                "synaptic_events_per_image": events, "events_per_ann_mac": events / macs,
                "synaptic_events_per_s": events * batch / seconds[target]})
    results["ann_seconds"] = ann_seconds
    results["ann_images_per_s"] = batch / ann_seconds
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snnverify.speed", description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--targets", nargs="+", default=["torch", "cpu"])
    parser.add_argument("--timesteps", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = [measure(m, args.targets, args.timesteps, args.batch, args.repeats) for m in args.models]
    for result in results:
        print(f"{result['model']}: ANN forward {result['ann_images_per_s']:.0f} images/s (batch {result['batch']})")
        for row in result["snn"]:
            print(f"  {row['target']:>5} T={row['timesteps']:<3} {row['images_per_s']:8.1f} images/s, "
                  f"{row['ratio_to_ann']:6.1f}x the ANN forward time, spike rate {row['spike_rate']:.3f}, "
                  f"{row['events_per_ann_mac']:.2f} synaptic events per ANN MAC, "
                  f"{row['synaptic_events_per_s'] / 1e9:.1f} G events/s")
        by_key = {(row["target"], row["timesteps"]): row["images_per_s"] for row in result["snn"]}
        for (target, steps), rate in by_key.items():
            if target != "torch" and ("torch", steps) in by_key:
                print(f"  {target} / torch at T={steps}: {rate / by_key['torch', steps]:.2f}x")
    if args.out:
        atomic_write(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
