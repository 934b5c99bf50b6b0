"""Execution plan shared by the Numba CPU and Numba CUDA backends.

The plan fixes, once per graph, everything that decides the arithmetic: the dtype (float32,
or int64 for quantised graphs), which synaptic layers are *event-driven* (fed by exactly one
IF layer, so their input is a binary spike map and each spike adds a column of pre-scaled
weights W'[o, c, ...] = W[o, c, ...]·θ_c), and the accumulation order. Both backends
accumulate every neuron's input in the same order — kernel row, then kernel column, then
input channel ascending (the order in which a gather per output position meets its spiking
inputs), bias last — so that float32 spikes are bit-identical between CPU and GPU. Products are never fused into a
multiply-add (the CUDA kernels use ``fmul_rn``; Numba's CPU code is compiled without
fast-math, so LLVM does not contract them either).

:func:`execute` walks the plan with a kernel set (CPU or GPU) — the walk is written once. The
plan also lists :class:`Fusion` s — IF layers that may absorb the event-driven conv (and the
two-input residual add) feeding them; a kernel set with a fused kernel runs those as one step
(the CPU's: no [T·B, ...] currents stored), the others step by step, with the same arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from snnverify import graph as g


def graph_dtype(graph: g.SpikingGraph) -> np.dtype:
    """int64 for a quantised graph (exact integer arithmetic), else float32."""
    return np.dtype(np.int64) if graph.integer else np.dtype(np.float32)


def initial_membrane(threshold: np.ndarray) -> np.ndarray:
    """v[0] = θ/2: exact in float; quantised graphs have even integer thresholds."""
    return threshold // 2 if threshold.dtype.kind == "i" else threshold * np.float32(0.5)


@dataclass
class Step:
    """One node of the plan. ``events``: the input is the spike map of IF node ``source_if``."""

    name: str
    node: g.Node
    inputs: list[str]
    events: bool = False
    weight: np.ndarray | None = None  # W' (event-driven) or W, in the plan's dtype
    bias: np.ndarray | None = None
    threshold: np.ndarray | None = None  # IF: θ per neuron of one sample, flattened
    amplitude: np.ndarray | None = None  # IF: graded output a per neuron, flattened
    initial: np.ndarray | None = None  # IF: v[0] = θ/2 per neuron


@dataclass(frozen=True)
class Fusion:
    """An event-driven conv whose only reader is an IF layer, directly or through a two-input
    Add whose only reader is that IF layer: ``IF(conv(spikes) [+ residual])``. A backend with a
    fused kernel computes the conv's sums, the merge and the membrane update per sample and
    step without storing the currents; the arithmetic is unchanged — current = (Σ + bias) +
    residual (two-term float sums commute exactly), then v += current. When the residual is
    itself an event-driven conv read only by the Add (a ResNet's projection shortcut), it is
    computed inside too (``shortcut_input``: its spike map) and residual = Σ' + bias'."""

    conv: str
    conv_input: str  # the IF layer whose spikes drive the conv
    add: str | None = None
    residual: str | None = None  # the Add's other input
    shortcut_input: str | None = None  # the residual's spike map, when the residual is absorbed too

    @property
    def reads(self) -> list[str]:
        """The stored signals the fused step reads (the conv's spike map, the residual or its spike map)."""
        residual = self.shortcut_input or self.residual
        return [self.conv_input, *([residual] if residual else [])]

    @property
    def absorbed(self) -> list[str]:
        """The steps computed inside the fused step, never stored."""
        return [self.conv, *([self.add] if self.add else []), *([self.residual] if self.shortcut_input else [])]


@dataclass
class EventConv:
    """An event-driven conv a fused kernel computes: its input spike map on the backend,
    channels-last [T·B, H, W, C], W' in the backend's event layout, the bias and the graph node."""

    spikes: Any
    weight: Any
    bias: Any
    node: g.Conv2d


@dataclass
class Plan:
    graph: g.SpikingGraph
    dtype: np.dtype
    steps: list[Step]
    shapes: dict[str, tuple[int, ...]]
    users: dict[str, int] = field(default_factory=dict)  # how many nodes read each node
    fusions: dict[str, Fusion] = field(default_factory=dict)  # IF step name -> what it absorbs
    device_arrays: dict[int, Any] = field(default_factory=dict)  # id(plan array) -> on the backend

    def parameter(self, array: np.ndarray, to_device):
        """A plan array on the backend, copied there once (the plan keeps the host array alive,
        so its id stays valid)."""
        key = id(array)
        if key not in self.device_arrays:
            self.device_arrays[key] = to_device(array)
        return self.device_arrays[key]


def build_plan(graph: g.SpikingGraph) -> Plan:
    g.require_normative(graph, "the Numba cpu and gpu backends")
    dtype = graph_dtype(graph)
    shapes = graph.shapes
    steps = []
    for name, node in graph.nodes.items():
        sources = graph.inputs[name]
        step = Step(name, node, sources)
        if isinstance(node, (g.Conv2d, g.Linear)):
            source = graph.nodes[sources[0]]
            weight = node.weight.astype(dtype)
            if isinstance(source, g.IF):
                step.events = True
                weight = g.folded_weight(node, source.output_amplitude, shapes[source.name], dtype)
            step.weight = np.ascontiguousarray(weight, dtype=dtype)
            step.bias = np.zeros(weight.shape[0], dtype) if node.bias is None else node.bias.astype(dtype)
        elif isinstance(node, g.IF):
            per_channel = math.prod(shapes[name]) // len(node.threshold)
            step.threshold = np.repeat(node.threshold.astype(dtype), per_channel)
            step.amplitude = np.repeat(node.output_amplitude.astype(dtype), per_channel)
            step.initial = initial_membrane(step.threshold)
        steps.append(step)
    users = {name: len(graph.users(name)) for name in graph.nodes}
    return Plan(graph, dtype, steps, shapes, users, fusions=_fusions(steps, users))


def _fusions(steps: list[Step], users: dict[str, int]) -> dict[str, Fusion]:
    """The IF layers that can absorb the event-driven conv (and two-input Add) feeding them."""
    by_name = {step.name: step for step in steps}

    def sole_event_conv(name: str) -> bool:
        step = by_name[name]
        return isinstance(step.node, g.Conv2d) and step.events and users[name] == 1

    fusions = {}
    for step in steps:
        if not isinstance(step.node, g.IF):
            continue
        (source,) = step.inputs
        if sole_event_conv(source):
            fusions[step.name] = Fusion(source, by_name[source].inputs[0])
            continue
        merge = by_name[source]
        two_distinct_inputs = len(merge.inputs) == 2 and len(set(merge.inputs)) == 2
        if isinstance(merge.node, g.Add) and users[source] == 1 and two_distinct_inputs:
            for conv, residual in (merge.inputs, merge.inputs[::-1]):
                if sole_event_conv(conv):
                    shortcut_input = by_name[residual].inputs[0] if sole_event_conv(residual) else None
                    fusions[step.name] = Fusion(conv, by_name[conv].inputs[0], source, residual, shortcut_input)
                    break
    return fusions


@dataclass
class Kernels:
    """What a backend provides to :func:`execute`. Arrays are the backend's (numpy or device).

    Temporal signals are [T·B, ...]; static ones [B, ...]. ``if_layer`` returns the boolean
    spikes [T·B, F] of neurons with θ per flattened neuron; ``graded`` turns spikes into θ·s.
    """

    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]
    conv2d: Callable  # (x, weight, bias, node, out_shape, events) -> out
    linear: Callable  # (x, weight, bias, events) -> out
    sum_pool2d: Callable  # (x, node, out_shape) -> window sums
    divide: Callable  # (x, float32 divisor) -> x / divisor, correctly rounded
    add: Callable  # (list of (x, temporal), steps, batch) -> sum, temporal when any input is
    if_layer: Callable  # (current, temporal, threshold, initial membrane, steps, batch) -> spikes
    graded: Callable  # (spikes, amplitude) -> a·s
    mean_over_time: Callable  # (x, temporal, steps, batch) -> [B, K]
    count: Callable  # (spikes) -> int
    #: host-side layout of a conv's or linear layer's W' (weight, node, fed by spikes) -> array,
    #: applied once per plan
    weight_layout: Callable = lambda weight, node, events: weight
    #: optional fused IF(conv(spikes) [+ residual]) (see :class:`Fusion`): (EventConv, residual
    #: (None, a Signal or an EventConv), IF shape, threshold, initial membrane, steps, batch) ->
    #: spikes; backends without it run the steps one by one. The spike maps it reads and writes
    #: are channels-last [T·B, H·W·C]: the order in which such a kernel produces them (per
    #: position, a block of channels) and reads them (the channels at an input position).
    conv2d_if: Callable | None = None
    #: (array [N, C·H·W], (C, H, W)) -> [N, H·W·C] and back; needed with ``conv2d_if``
    channels_last: Callable | None = None
    channels_first: Callable | None = None


@dataclass
class Signal:
    """A node's output on a backend: [T·B, ...] when temporal else [B, ...]. A spike map (the
    output of an IF layer) is kept as booleans with its amplitudes, for event-driven consumers."""

    array: Any
    temporal: bool
    amplitude: Any = None  # device array a per flattened neuron when this is a spike map
    channels_last: bool = False  # a spike map [T·B, H·W·C], as fused kernels read and write them


def execute(plan: Plan, kernels: Kernels, x: np.ndarray, steps: int, record: bool):
    """Run the plan on a batch; returns (output [B, K] float, spike counts, recorded spikes)."""
    batch = x.shape[0]
    values: dict[str, Signal] = {}
    remaining = dict(plan.users)
    counts, spikes = {}, ({} if record else None)
    output = None

    converted = {}  # channels-last spike maps in channels-first order, for the readers that need it

    def channels_first(name: str):
        """A node's output array, a spike map in the graph's [T·B, C, H, W] order."""
        signal = values[name]
        if not signal.channels_last:
            return signal.array
        if name not in converted:
            shape = plan.shapes[name]
            converted[name] = kernels.channels_first(signal.array, shape).reshape(signal.array.shape[0], *shape)
        return converted[name]

    def analog(name: str):
        """A node's output as currents: a spike map becomes its graded spikes a·s."""
        signal, array = values[name], channels_first(name)
        if signal.amplitude is None:
            return array
        rows = array.shape[0]
        return kernels.graded(array.reshape(rows, -1), signal.amplitude).reshape(array.shape)

    fusions = plan.fusions if kernels.conv2d_if is not None else {}
    absorbed = {name for fusion in fusions.values() for name in fusion.absorbed}
    by_name = {step.name: step for step in plan.steps}

    def weights(step: Step):
        weight = plan.parameter(step.weight,
                                lambda w: kernels.to_device(kernels.weight_layout(w, step.node, step.events)))
        return weight, plan.parameter(step.bias, kernels.to_device)

    def event_conv(conv: str, spike_map: str, rows: int) -> EventConv:
        step, signal = by_name[conv], values[spike_map]
        channels, height, width = plan.shapes[spike_map]
        return EventConv(signal.array.reshape(rows, height, width, channels), *weights(step), step.node)

    # the spike maps fused kernels read: kept channels-last (an IF layer that is not fused
    # converts its output once, not each of its fused readers)
    fused_reads = {name for fusion in fusions.values() for name in fusion.reads
                   if isinstance(plan.graph.nodes[name], g.IF)}

    for step in plan.steps:
        if step.name in absorbed:
            continue  # computed inside the IF step that absorbs it
        node = step.node
        fusion = fusions.get(step.name)
        reads = fusion.reads if fusion else step.inputs
        temporal = fusion is not None or any(values[s].temporal for s in step.inputs)
        rows = steps * batch if temporal else batch
        shape_in = (rows, *plan.shapes[step.inputs[0]]) if step.inputs else None
        if isinstance(node, g.Input):
            values[step.name] = Signal(kernels.to_device(g.input_current(node, x, plan.dtype)), False)
        elif isinstance(node, g.IF):
            threshold = plan.parameter(step.threshold, kernels.to_device)
            initial = plan.parameter(step.initial, kernels.to_device)
            if fusion:
                if fusion.shortcut_input:
                    residual = event_conv(fusion.residual, fusion.shortcut_input, rows)
                else:
                    residual = values[fusion.residual] if fusion.residual else None
                s = kernels.conv2d_if(event_conv(fusion.conv, fusion.conv_input, rows), residual,
                                      plan.shapes[step.name], threshold, initial, steps, batch)
            else:
                current = analog(step.inputs[0]).reshape(rows, -1)
                if step.name in fused_reads:  # IF is per neuron: its inputs in that order, its spikes too
                    shape = plan.shapes[step.name]
                    current = kernels.channels_last(current, shape)
                    threshold, initial = (kernels.channels_last(a.reshape(1, -1), shape).reshape(-1)
                                          for a in (threshold, initial))
                s = kernels.if_layer(current, temporal, threshold, initial, steps, batch)
            counts[step.name] = kernels.count(s)
            channels_last = fusion is not None or step.name in fused_reads
            amplitude = plan.parameter(step.amplitude, kernels.to_device)
            values[step.name] = Signal(s, True, amplitude, channels_last=channels_last)
            if record:
                spikes[step.name] = kernels.to_host(channels_first(step.name)).reshape(steps, batch,
                                                                                       *plan.shapes[step.name])
        elif isinstance(node, (g.Conv2d, g.Linear)):
            source = channels_first(step.inputs[0]) if step.events else analog(step.inputs[0])
            weight, bias = weights(step)
            if isinstance(node, g.Conv2d):
                out = kernels.conv2d(source.reshape(shape_in), weight, bias, node,
                                     (rows, *plan.shapes[step.name]), step.events)
            else:
                out = kernels.linear(source.reshape(rows, -1), weight, bias, step.events)
            values[step.name] = Signal(out, temporal)
        elif isinstance(node, g.AvgPool2d):  # SumPool2d too
            out = kernels.sum_pool2d(analog(step.inputs[0]).reshape(shape_in), node, (rows, *plan.shapes[step.name]))
            if not isinstance(node, g.SumPool2d):
                out = kernels.divide(out, np.float32(node.kernel_size[0] * node.kernel_size[1]))
            values[step.name] = Signal(out, temporal)
        elif isinstance(node, g.Flatten):
            values[step.name] = Signal(analog(step.inputs[0]).reshape(rows, -1), temporal)
        elif isinstance(node, g.Add):
            terms = [(analog(name), values[name].temporal) for name in step.inputs]
            values[step.name] = Signal(kernels.add(terms, steps, batch), temporal)
        elif isinstance(node, g.Output):
            mean = kernels.mean_over_time(analog(step.inputs[0]).reshape(rows, -1), temporal, steps, batch)
            output = mean if node.scale == 1 else mean / node.scale
        for source in reads:
            remaining[source] -= 1
            if remaining[source] == 0:
                del values[source]
                converted.pop(source, None)
    return output, counts, spikes
