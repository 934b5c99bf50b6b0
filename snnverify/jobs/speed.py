"""``snnverify speed``: side-by-side throughput of the backends on converted networks.

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
from typing import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify.api import SNN
from snnverify.graph import check_timesteps, multiply_accumulates, synaptic_events
from snnverify.models import build_model
from snnverify.runtime import known_targets
from snnverify.util import atomic_write

#: model name -> input shape it is benchmarked on; in the pooled networks a stem's pool feeds
#: the first convs with pooled spikes (torchvision_resnet18's max-pool swapped for an average pool)
SHAPES = {"small_resnet": (1, 28, 28), "small_resnet_pooled": (1, 28, 28), "cifar_resnet18": (3, 32, 32),
          "torchvision_resnet18": (3, 32, 32)}


def converted(model: str, seed: int = 0):
    """(ANN, spiking graph) of ``model`` with random weights, calibrated on random inputs."""
    torch.manual_seed(seed)
    shape = SHAPES[model]
    ann = build_model(model, 10, shape[0]).eval()
    x = torch.randn(64, *shape)
    loader = DataLoader(TensorDataset(x, torch.zeros(64).long()), batch_size=32)
    return ann, snnverify.convert(ann, loader, timesteps=8, qcfs_epochs=0, finetune_epochs=0).graph


def interleaved_best_times(functions: dict, repeats: int, calls: int = 2,
                           clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Fastest call of each function over ``repeats`` rounds, every round calling each function
    ``calls`` times back to back, one function after the other (after a warm-up round). The
    rounds spread a slow phase of a shared machine over all of them; the back-to-back calls let
    a short function (an ANN forward pass of a few ms) be timed warm, not right after another
    function has evicted its caches (a cold first call is several times slower). ``clock``:
    wall time by default; ``time.process_time`` gives the CPU time of all the process's threads,
    which other processes on the cores inflate far less."""
    for function in functions.values():
        function()
    best = dict.fromkeys(functions, math.inf)
    for _ in range(repeats):
        for name, function in functions.items():
            for _ in range(calls):
                start = clock()
                function()
                best[name] = min(best[name], clock() - start)
    return best


def measure(model: str, targets: list[str], timesteps: list[int], batch: int, repeats: int = 3,
            integer: bool = False) -> dict:
    """Images/s per target and T beside the ANN forward; with ``integer``, every target also
    runs the network's integer mode (``snnverify.quantize``), as target ``<target> integer``."""
    ann, graph = converted(model)
    x = torch.randn(batch, *SHAPES[model])
    macs = multiply_accumulates(graph)
    results = {"model": model, "batch": batch, "threads": torch.get_num_threads(), "ann_macs_per_image": macs,
               "snn": []}
    neurons = sum(math.prod(graph.shapes[layer.name]) for layer in graph.neuron_layers)
    snns = {target: SNN(graph, 1, target=target) for target in targets}
    if integer:
        snns.update({f"{target} integer": snnverify.quantize(SNN(graph, 1, target=target)) for target in targets})

    def ann_forward():
        with torch.no_grad():
            ann(x)

    ann_seconds = math.inf
    for t in timesteps:
        simulations = {target: (lambda snn=snn, t=t: snnverify.simulate(snn, x, timesteps=t))
                       for target, snn in snns.items()}
        seconds = interleaved_best_times({"ann": ann_forward, **simulations}, repeats)
        ann_seconds = min(ann_seconds, seconds["ann"])
        for target, snn in snns.items():
            _, spikes = snnverify.simulate(snn, x, timesteps=t, record=True)
            fired = sum(int(s.sum()) for s in spikes.values())
            events = synaptic_events(snn.graph, spikes) / batch
            results["snn"].append({
                "target": target, "timesteps": t, "seconds": seconds[target],
                "images_per_s": batch / seconds[target], "ann_seconds_same_rounds": seconds["ann"],
                "ratio_to_ann": seconds[target] / seconds["ann"],
                # event-driven cost grows with the spikes, so the rate belongs beside the speed
                "spike_rate": fired / (neurons * t * batch),
                "synaptic_events_per_image": events, "events_per_ann_mac": events / macs,
                "synaptic_events_per_s": events * batch / seconds[target]})
    results["ann_seconds"] = ann_seconds
    results["ann_images_per_s"] = batch / ann_seconds
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--targets", nargs="+", default=["torch", "cpu"])
    parser.add_argument("--timesteps", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--integer", action="store_true", help="also time each target on the integer-mode network")
    parser.add_argument("--out", help="write the results as JSON here")


def main(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.targets) - set(known_targets()))
    if unknown:
        raise ValueError(f"unknown target(s) {', '.join(unknown)}; known targets: {', '.join(known_targets())}")
    for t in args.timesteps:
        check_timesteps(t)
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    results = [measure(m, args.targets, args.timesteps, args.batch, args.repeats, args.integer) for m in args.models]
    for result in results:
        print(f"{result['model']}: ANN forward {result['ann_images_per_s']:.0f} images/s (batch {result['batch']})")
        for row in result["snn"]:
            print(f"  {row['target']:>5} T={row['timesteps']:<3} {row['images_per_s']:8.1f} images/s, "
                  f"{row['ratio_to_ann']:6.1f}x the ANN forward time, spike rate {row['spike_rate']:.3f}, "
                  f"{row['events_per_ann_mac']:.2f} synaptic events per ANN MAC, "
                  f"{row['synaptic_events_per_s'] / 1e9:.1f} G events/s")
        by_key = {(row["target"], row["timesteps"]): row["images_per_s"] for row in result["snn"]}
        for (target, timesteps), rate in by_key.items():
            if target != "torch" and ("torch", timesteps) in by_key:
                print(f"  {target} / torch at T={timesteps}: {rate / by_key['torch', timesteps]:.2f}x")
    if args.out:
        atomic_write(args.out, json.dumps(results, indent=2) + "\n")
    return 0
