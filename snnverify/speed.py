"""Side-by-side throughput of the backends on converted networks (``python -m snnverify.speed``).

All targets and the ANN forward pass are timed in one process, on the same batch, so the
ratios are meaningful on a noisy machine: images/s per target and T, and the ratio of the
SNN's time to the ANN's forward time. Conversion uses random weights and calibration data
(speed does not depend on training); a warm-up call compiles the kernels first.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify.api import SNN
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


def best_time(function, repeats: int) -> float:
    """Fastest of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model: str, targets: list[str], timesteps: list[int], batch: int, repeats: int = 3) -> dict:
    ann, graph = converted(model)
    x = torch.randn(batch, *SHAPES[model])
    with torch.no_grad():
        ann_seconds = best_time(lambda: ann(x), repeats)
    results = {"model": model, "batch": batch, "threads": torch.get_num_threads(), "ann_seconds": ann_seconds,
               "ann_images_per_s": batch / ann_seconds, "snn": []}
    neurons = sum(math.prod(graph.shapes[layer.name]) for layer in graph.neuron_layers)
    for target in targets:
        snn = SNN(graph, 1, target=target)
        for steps in timesteps:
            seconds = best_time(lambda: snnverify.simulate(snn, x, timesteps=steps), repeats)
            # event-driven cost grows with the spikes, so the rate belongs beside the speed
            spikes = sum(snn.run(x, steps).spike_counts.values())
            results["snn"].append({"target": target, "timesteps": steps, "seconds": seconds,
                                   "images_per_s": batch / seconds, "ratio_to_ann": seconds / ann_seconds,
                                   "spike_rate": spikes / (neurons * steps * batch)})
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
                  f"{row['ratio_to_ann']:6.1f}x the ANN forward time, spike rate {row['spike_rate']:.3f}")
        by_key = {(row["target"], row["timesteps"]): row["images_per_s"] for row in result["snn"]}
        for (target, steps), rate in by_key.items():
            if target != "torch" and ("torch", steps) in by_key:
                print(f"  {target} / torch at T={steps}: {rate / by_key['torch', steps]:.2f}x")
    if args.out:
        atomic_write(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
