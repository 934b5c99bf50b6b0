"""Pass 4 — turn a traced, BN-folded QCFS network into a :class:`~snnverify.graph.SpikingGraph`.

Each QCFS activation becomes an IF layer with θ = λ (per channel), v[0] = θ/2, firing on
v ≥ θ with reset by subtraction (the semantics of ``snnverify.graph.IF``) — or, with bursts of
up to B spikes per step, θ = λ/B (the output a = θ, so B·T steps' worth of levels in T); each residual
``add`` becomes an :class:`~snnverify.graph.Add` that sums currents; conv, linear, average
pool and flatten carry over with their parameters. Node names are module paths.
"""

from __future__ import annotations

import operator

from torch import fx, nn

from snnverify import graph as g
from snnverify.convert.qcfs import QCFS


def to_spiking_graph(gm: fx.GraphModule, max_spikes: int = 1) -> g.SpikingGraph:
    """Build the spiking graph of ``gm`` (canonical, folded, QCFS; shapes in ``tensor_meta``),
    its IF layers firing up to ``max_spikes`` spikes per step."""
    nodes: dict[str, g.Node] = {}
    inputs: dict[str, list[str]] = {}
    names: dict[fx.Node, str] = {}  # fx node -> spiking graph node name
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if any(isinstance(n, g.Input) for n in nodes.values()):
                raise ValueError(f"model input {node.name!r}: only models with one input are supported")
            name = node.name
            spiking = g.Input(name, shape=tuple(node.meta["tensor_meta"].shape[1:]))
        elif node.op == "output":
            (result,) = node.args
            if not isinstance(result, fx.Node):
                raise ValueError("the model must return a single tensor")
            name = "output"
            spiking = g.Output(name)
        elif node.op == "call_function" and node.target is operator.add:
            name = node.name
            spiking = g.Add(name)
        elif node.op == "call_module":
            name = node.target
            spiking = _layer(name, gm.get_submodule(node.target), max_spikes)
        else:  # trace() leaves nothing else
            raise ValueError(f"traced node {node.name!r} ({node.op} {node.target}) is not in canonical form")
        if name in nodes:  # a module called twice (a reused conv, say) gives two graph nodes
            k = 1
            while f"{name}@{k}" in nodes:
                k += 1
            name = f"{name}@{k}"
            spiking = g.replace(spiking, name=name)
        names[node] = name
        nodes[name] = spiking
        inputs[name] = [names[a] for a in node.all_input_nodes]
    return g.SpikingGraph(nodes, inputs)


def _layer(name: str, module: nn.Module, max_spikes: int) -> g.Node:
    if isinstance(module, QCFS):
        return g.IF(name, threshold=module.lam.detach().cpu().numpy() / max_spikes, max_spikes=max_spikes)
    if isinstance(module, nn.Conv2d):
        return g.Conv2d(
            name,
            weight=_array(module.weight),
            bias=None if module.bias is None else _array(module.bias),
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
        )
    if isinstance(module, nn.Linear):
        return g.Linear(name, weight=_array(module.weight), bias=None if module.bias is None else _array(module.bias))
    if isinstance(module, nn.AvgPool2d):
        return g.AvgPool2d(name, kernel_size=module.kernel_size, stride=module.stride, padding=module.padding)
    if isinstance(module, nn.Flatten):
        return g.Flatten(name)
    if isinstance(module, nn.ReLU):
        raise ValueError(f"ReLU {name!r} has no QCFS calibration; run insert_qcfs before to_spiking_graph")
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise ValueError(f"BatchNorm {name!r} is not folded; run fold_batchnorm before to_spiking_graph")
    raise ValueError(f"module {name!r} of type {type(module).__name__} has no spiking equivalent")


def _array(tensor):
    return tensor.detach().cpu().float().numpy().copy()
