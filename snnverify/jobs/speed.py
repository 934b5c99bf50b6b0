"""``snnverify speed``: side-by-side throughput of the backends on converted networks.

All targets and the ANN forward pass are timed in one process, on the same batch and
interleaved (every round times each of them, warm; the fastest time of each counts), so the
ratios hold on a noisy machine: images/s per target and T, and the ratio of the SNN's time to
the ANN's forward time. Beside the speed, the work: the ANN's multiply-accumulates per image
and the SNN's synaptic events per image (the adds an event-driven simulator must do, given
the spikes), so that the time ratio can be read against the work ratio. Conversion uses random
weights and calibration data (speed does not depend on training); a warm-up round compiles
the kernels first.

A target may name a torch device, ``torch:cuda``: the reference executor dense on the GPU
(cuDNN, its fastest algorithm per shape; float32, no TF32), beside the ``gpu`` backend's
bit-exact kernels. Where a target runs on a GPU, the ANN's forward pass is timed there too.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import functools
import json
import math
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify.api import SNN
from snnverify.graph import check_max_spikes, check_timesteps, multiply_accumulates, synaptic_events
from snnverify.models import build_model
from snnverify.report import runs_on_gpu
from snnverify.runtime import known_targets
from snnverify.runtime.quantize import check_amplitude_bits
from snnverify.util import atomic_write, provenance

#: model name -> input shape it is benchmarked on; in the pooled networks a stem's pool feeds
#: the first convs with pooled spikes (torchvision_resnet18's max-pool swapped for an average
#: pool); vgg11's classifier reads a pooled spike map, mobilenet_small has depthwise convs
SHAPES = {"small_resnet": (1, 28, 28), "small_resnet_pooled": (1, 28, 28), "cifar_resnet18": (3, 32, 32),
          "torchvision_resnet18": (3, 32, 32), "vgg11": (3, 32, 32), "mobilenet_small": (3, 32, 32)}


def converted(model: str, max_spikes: int = 1, seed: int = 0):
    """(ANN, spiking graph) of ``model`` with random weights, calibrated on random inputs, IF
    layers of up to ``max_spikes`` spikes per step; no bias correction: a random network has no
    accuracy to correct, and on ResNet-18 the correction's layer-by-layer runs would take minutes."""
    torch.manual_seed(seed)
    shape = SHAPES[model]
    ann = build_model(model, 10, shape[0]).eval()
    x = torch.randn(64, *shape)
    loader = DataLoader(TensorDataset(x, torch.zeros(64).long()), batch_size=32)
    return ann, snnverify.convert(ann, loader, timesteps=8, qcfs_epochs=0, finetune_epochs=0,
                                  correction_horizons=(), max_spikes=max_spikes).graph


#: glibc ``mallopt`` parameters (malloc.h) and the values :func:`steady_heap` sets
_TRIM_THRESHOLD, _TOP_PAD, _MMAP_THRESHOLD = -1, -2, -3
_STEADY = {_TRIM_THRESHOLD: 1 << 30, _TOP_PAD: 256 << 20, _MMAP_THRESHOLD: 32 << 20}  # 32 MiB: glibc's maximum


@functools.cache
def steady_heap() -> bool:
    """Have glibc's malloc keep the memory a process frees (for the rest of the process), so that
    no timed function pays page faults for memory it had a moment ago. By default glibc returns
    a freed block of a few MB to the system and the next call faults it in again: a torch forward
    pass of small_resnet at batch 32 runs at half its speed that way on a VM, and how often it
    does depends on what else the process freed (a numpy array of the SNN's, say). The SNN's own
    arrays come from its backend's buffer pool either way. Returns False, changing nothing,
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(parameter, value) == 1 for parameter, value in _STEADY.items())


def interleaved_best_times(functions: dict, repeats: int, calls: int = 2,
                           clock: Callable[[], float] = time.perf_counter, fill: float = 0.05,
                           most_calls: int = 100) -> dict[str, float]:
    """Fastest call of each function over ``repeats`` rounds, every round calling each function
    back to back, one function after the other (after a warm-up round): ``calls`` times, or as
    many as its warm call takes to fill ``fill`` seconds (at most ``most_calls``). The rounds
    spread a slow phase of a shared machine over all of them; the back-to-back calls let a short
    function (an ANN forward pass of a few ms) be timed warm, not right after another function
    has evicted its caches (a cold first call is several times slower), and over enough calls
    for its fastest to show (six calls missed small_resnet_pooled's fastest forward pass by up
    to a fifth: reports/speed, "Short calls timed over enough of them"). The warm-up round
    calls each function twice and counts from the second, warm call. ``clock``: wall time by
    default; ``time.process_time`` gives the CPU time of all the process's threads, which other
    processes on the cores inflate far less. Timed on a :func:`steady_heap`."""
    steady_heap()
    counts = {}
    for name, function in functions.items():
        function()
        start = clock()
        function()
        warm = clock() - start
        counts[name] = max(calls, min(most_calls, math.ceil(fill / warm) if warm > 0 else most_calls))
    best = dict.fromkeys(functions, math.inf)
    for _ in range(repeats):
        for name, function in functions.items():
            for _ in range(counts[name]):
                start = clock()
                function()
                best[name] = min(best[name], clock() - start)
    return best


#: the spike statistics (rate, synaptic events) are read from at most this many images of the
#: batch: recording every spike of a large batch costs more than timing it
STATISTICS_IMAGES = 32


def parse_target(spelling: str) -> tuple[str, str | None]:
    """``"cpu"`` -> ("cpu", None); ``"torch:cuda"`` -> ("torch", "cuda"): a target and the torch
    device it runs on. Unknown targets, devices that are no torch device, and a CUDA device
    without a GPU are errors naming the spelling."""
    target, _, device = spelling.partition(":")
    if target not in known_targets():
        raise ValueError(f"unknown target {target!r} in {spelling!r}; known targets: {', '.join(known_targets())}")
    if not device:
        return target, None
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"target {spelling!r}: {device!r} is not a torch device ({error})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"target {spelling!r} needs a CUDA GPU and torch sees none (torch.cuda.is_available() "
                         "is False)")
    return target, device


def measure(model: str, targets: list[str], timesteps: list[int], batch: int, repeats: int = 3,
            integer: bool = False, bursts: tuple[int, ...] = (1,), amplitude_bits: tuple[int, ...] = (16,)) -> dict:
    """Images/s per target and T beside the ANN forward; with ``integer``, every target also
    runs the network's integer mode (``snnverify.quantize``), as target ``<target> integer``,
    once per entry of ``amplitude_bits`` (quantize's; other than its default 16 named in the
    target, ``<target> integer a8``: W' = W·a then narrower, see reports/speed).
    Each B of ``bursts`` converts the network with IF layers of up to B spikes per step (the
    same weights and λ; B > 1 is named in the target, ``<target> B4``: its readers take graded
    maps, not binary events). ``targets`` are spelled as :func:`parse_target` reads them."""
    graphs = {}
    for max_spikes in bursts:
        ann, graphs[max_spikes] = converted(model, max_spikes)
    x = torch.randn(batch, *SHAPES[model])
    macs = multiply_accumulates(graphs[bursts[0]])
    # the same layers whatever B: one count of neurons serves every conversion
    neurons = sum(math.prod(graphs[bursts[0]].shapes[layer.name]) for layer in graphs[bursts[0]].neuron_layers)
    results = {"model": model, "batch": batch, "threads": torch.get_num_threads(), "ann_macs_per_image": macs,
               "steady_heap": steady_heap(), **provenance(), "snn": []}
    parsed = {spelling: parse_target(spelling) for spelling in targets}
    devices, snns = {}, {}
    for max_spikes, graph in graphs.items():
        for spelling, (target, device) in parsed.items():
            name = spelling if max_spikes == 1 else f"{spelling} B{max_spikes}"
            devices[name] = device
            snns[name] = SNN(graph, 1, target=target)
            for bits in amplitude_bits if integer else ():
                integer_name = f"{name} integer" + ("" if bits == 16 else f" a{bits}")
                devices[integer_name] = device
                snns[integer_name] = snnverify.quantize(SNN(graph, 1, target=target), amplitude_bits=bits)
    gpu = any(runs_on_gpu(spelling) for spelling in targets)
    if gpu:  # dense torch at its best: cuDNN times its algorithms once per shape and keeps the fastest
        torch.backends.cudnn.benchmark = True
    anns = {"ann": (ann, x)}
    if gpu:
        anns["ann:cuda"] = (copy.deepcopy(ann).cuda(), x.cuda())

    def forward(network, inputs):
        with torch.no_grad():
            network(inputs)
        if inputs.is_cuda:
            torch.cuda.synchronize()

    ann_seconds = dict.fromkeys(anns, math.inf)
    sample = x[:STATISTICS_IMAGES]
    for t in timesteps:
        simulations = {name: (lambda snn=snn, t=t, device=devices[name]: snnverify.simulate(snn, x, t, device=device))
                       for name, snn in snns.items()}
        passes = {name: (lambda pair=pair: forward(*pair)) for name, pair in anns.items()}
        seconds = interleaved_best_times({**passes, **simulations}, repeats)
        for name in anns:
            ann_seconds[name] = min(ann_seconds[name], seconds[name])
        for name, snn in snns.items():
            _, spikes = snnverify.simulate(snn, sample, timesteps=t, record=True, device=devices[name])
            fired = sum(int(s.sum(dtype=np.int64)) for s in spikes.values())  # burst counts are uint8
            events = synaptic_events(snn.graph, spikes) / len(sample)
            row = {
                "target": name, "timesteps": t, "seconds": seconds[name],
                "images_per_s": batch / seconds[name], "ann_seconds_same_rounds": seconds["ann"],
                "ratio_to_ann": seconds[name] / seconds["ann"],
                # event-driven cost grows with the spikes, so the rate belongs beside the speed
                "spike_rate": fired / (neurons * t * len(sample)),
                "synaptic_events_per_image": events, "events_per_ann_mac": events / macs,
                "synaptic_events_per_s": events * batch / seconds[name]}
            if gpu:
                row["ratio_to_ann_cuda"] = seconds[name] / seconds["ann:cuda"]
            results["snn"].append(row)
    results["ann_seconds"] = ann_seconds["ann"]
    results["ann_images_per_s"] = batch / ann_seconds["ann"]
    if gpu:
        results["ann_cuda_images_per_s"] = batch / ann_seconds["ann:cuda"]
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--targets", nargs="+", default=["torch", "cpu"],
                        help="backends to time; torch:cuda runs the reference executor on the GPU")
    parser.add_argument("--timesteps", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--batch", nargs="+", type=int, default=[32], help="batch sizes, each measured on its own")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--integer", action="store_true", help="also time each target on the integer-mode network")
    parser.add_argument("--amplitude-bits", nargs="+", type=int, default=[16],
                        help="with --integer: the integer networks' amplitude bits (quantize's amplitude_bits), "
                             "each timed beside the others")
    parser.add_argument("--max-spikes", nargs="+", type=int, default=[1],
                        help="B: IF layers of up to B spikes per step, each B's conversion timed beside the others")
    parser.add_argument("--out", help="write the results as JSON here")


def main(args: argparse.Namespace) -> int:
    for spelling in args.targets:
        parse_target(spelling)
    for t in args.timesteps:
        check_timesteps(t)
    for name, value in [*(("batch", b) for b in args.batch), ("repeats", args.repeats)]:
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    for max_spikes in args.max_spikes:
        check_max_spikes(max_spikes)
    for bits in args.amplitude_bits:
        check_amplitude_bits(bits, "--amplitude-bits")
    results = [measure(m, args.targets, args.timesteps, batch, args.repeats, args.integer, tuple(args.max_spikes),
                       tuple(args.amplitude_bits))
               for m in args.models for batch in args.batch]
    for result in results:
        on_gpu = f", on the GPU {result['ann_cuda_images_per_s']:.0f}" if "ann_cuda_images_per_s" in result else ""
        print(f"{result['model']}: ANN forward {result['ann_images_per_s']:.0f} images/s{on_gpu} "
              f"(batch {result['batch']})")
        for row in result["snn"]:
            gpu_ratio = f" ({row['ratio_to_ann_cuda']:.1f}x on the GPU)" if "ratio_to_ann_cuda" in row else ""
            print(f"  {row['target']:>10} T={row['timesteps']:<3} {row['images_per_s']:8.1f} images/s, "
                  f"{row['ratio_to_ann']:6.1f}x the ANN forward time{gpu_ratio}, spike rate {row['spike_rate']:.3f}, "
                  f"{row['events_per_ann_mac']:.2f} synaptic events per ANN MAC, "
                  f"{row['synaptic_events_per_s'] / 1e9:.1f} G events/s")
        by_key = {(row["target"], row["timesteps"]): row["images_per_s"] for row in result["snn"]}
        for (target, timesteps), rate in by_key.items():
            # each backend beside the reference executor on the same kind of device
            reference = "torch:cuda" if runs_on_gpu(target) else "torch"
            if target != reference and (reference, timesteps) in by_key:
                print(f"  {target} / {reference} at T={timesteps}: {rate / by_key[reference, timesteps]:.2f}x")
    if args.out:
        atomic_write(args.out, json.dumps(results, indent=2) + "\n")
    return 0
