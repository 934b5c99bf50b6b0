"""Pass 5 — bias correction: each IF layer's mean conversion error per channel moved into the
bias that feeds it (the bias calibration of Li et al., ICML 2021, "A Free Lunch From ANN";
references/README.md), averaged here over several read-out T's. Label-free: it reads
calibration images only.

For every IF layer l in topological order, the layers before it already corrected, on the
calibration images x:

    e_c = mean_{h ∈ H} ( E[q_c(x)] − E[(a_c/h) Σ_{t ≤ h} s_c[t](x)] )

q the QCFS activation the layer was converted from (the ANN's output), a_c its spike
amplitude, s its spikes, E the mean over images and positions, H the horizons (the T's the
network will be read at). The bias of the conv or linear layer whose current reaches l grows
by e_c: in the neuron's linear range a constant shift of its current shifts its rate over h
steps by the same amount, so the mean error at the horizons goes to about zero. The current
may reach l through average pools without padding (a bias passes through them unchanged) and
residual merges; the biased node must be read by nothing else. A layer without such a node
keeps its error and is listed as uncorrected.

The spikes over the first h steps of a run of max(H) steps are a run of h steps, so one run
per layer serves every horizon; it runs the layer's prefix of the graph only.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch
from torch import fx

from snnverify import graph as g
from snnverify.convert.qcfs import QCFS
from snnverify.runtime.torch_ref import TorchExecutor, float32_convolutions
from snnverify.util import progress, split_batch


def correct_biases(graph: g.SpikingGraph, qcfs_ann: fx.GraphModule, loader, horizons: tuple[int, ...],
                   images: int, device) -> tuple[g.SpikingGraph, dict]:
    """(the corrected graph, a record {"horizons", "images", "corrected", "uncorrected"}) for
    the first ``images`` images of ``loader``; ``qcfs_ann`` is the network ``graph`` was
    converted from (its QCFS module paths are the IF layers' names)."""
    batches = _first_images(loader, images)
    targets = _activation_means(qcfs_ann, batches, graph, device)
    corrected, uncorrected = [], []
    for layer in progress(graph.neuron_layers, desc="bias correction"):
        source = _biased_node(graph, graph.inputs[layer.name][0])
        if source is None:
            uncorrected.append(layer.name)
            continue
        rates = _readout_means(graph.prefix(layer.name), batches, horizons, device)
        error = (targets[layer.name] - rates.mean(axis=0)).astype(layer.threshold.dtype)
        node = graph.nodes[source]
        bias = np.zeros(node.weight.shape[0], node.weight.dtype) if node.bias is None else node.bias
        graph = graph.with_nodes({source: g.replace(node, bias=bias + error)})
        corrected.append(layer.name)
    record = {"horizons": list(horizons), "images": sum(len(x) for x in batches),
              "corrected": corrected, "uncorrected": uncorrected}
    return graph, record


def _first_images(loader, images: int) -> list[torch.Tensor]:
    batches, count = [], 0
    for batch in loader:
        x = split_batch(batch)[0][: images - count]
        batches.append(x)
        count += len(x)
        if count >= images:
            break
    if not batches:
        raise ValueError("the calibration loader yielded no batches; bias correction needs calibration images")
    return batches


def _channel_sum(tensor: torch.Tensor, batch_axis: int) -> np.ndarray:
    """Σ over the batch and the positions (the axes after the channel axis, which follows the
    batch axis): [..., batch, C, positions...] → [..., C], in float64."""
    return tensor.double().sum([batch_axis, *range(batch_axis + 2, tensor.dim())]).cpu().numpy()


@torch.no_grad()
def _activation_means(qcfs_ann: fx.GraphModule, batches, graph: g.SpikingGraph, device) -> dict[str, np.ndarray]:
    """Per IF layer, the mean over images and positions of the QCFS output it replaces, per
    channel. A module called k > 0 times before in one forward pass is layer ``<path>@k``."""
    sums, counts, calls = defaultdict(float), defaultdict(int), defaultdict(int)

    def record(path):
        def hook(module, args, output):
            name = path if calls[path] == 0 else f"{path}@{calls[path]}"
            calls[path] += 1
            sums[name] = sums[name] + _channel_sum(output, batch_axis=0)
            counts[name] += output.numel() // output.shape[1]
        return hook

    model = copy.deepcopy(qcfs_ann).to(device).eval()
    hooks = [m.register_forward_hook(record(path)) for path, m in model.named_modules() if isinstance(m, QCFS)]
    try:
        with float32_convolutions():
            for x in batches:
                calls.clear()
                model(x.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    missing = [layer.name for layer in graph.neuron_layers if layer.name not in sums]
    if missing:
        raise ValueError(f"IF layer {missing[0]!r} has no QCFS activation in the ANN it was converted from")
    return {name: sums[name] / counts[name] for name in sums}


@torch.no_grad()
def _readout_means(prefix: g.SpikingGraph, batches, horizons: tuple[int, ...], device) -> np.ndarray:
    """[len(horizons), C]: the prefix's readout (the layer's mean graded spike over the first
    h steps) averaged over images and positions, per horizon h."""
    executor = TorchExecutor(prefix).eval().to(device)
    total, count = 0.0, 0
    with float32_convolutions():
        for x in batches:
            readouts, _, _ = executor(x.to(device), max(horizons), horizons=tuple(horizons))
            total = total + _channel_sum(readouts, batch_axis=1)
            count += readouts[0].numel() // readouts.shape[2]
    return total / count


def _biased_node(graph: g.SpikingGraph, name: str) -> str | None:
    """The conv or linear node whose bias reaches every output of ``name`` unchanged — ``name``
    itself, or one found through average pools without padding and residual merges — when
    each node on the way is read by one node only; None where there is none."""
    if len(graph.users(name)) != 1:
        return None
    node = graph.nodes[name]
    if isinstance(node, (g.Conv2d, g.Linear)):
        return name
    if isinstance(node, g.Add):
        return next((found for operand in graph.inputs[name] if (found := _biased_node(graph, operand))), None)
    if type(node) is g.AvgPool2d and not any(node.padding):  # a sum pool would scale the bias
        return _biased_node(graph, graph.inputs[name][0])
    return None
