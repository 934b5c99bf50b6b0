"""Execution plan shared by the Numba CPU and Numba CUDA backends, and the one backend class
that runs it over either kernel table.

The plan fixes, once per graph, everything that decides the arithmetic: the dtype (float32,
or int64 for quantised graphs), which synaptic layers are *event-driven* (fed by exactly one
binary IF layer, so their input is a spike map and each spike adds a column of pre-scaled
weights W'[o, c, ...] = W[o, c, ...]·θ_c), and the accumulation order. A burst IF layer
(``max_spikes`` B > 1) emits counts s ∈ {0, …, B}; its readers take its graded map a·s, each
value one product of the count and the amplitude (``Kernels.scale_channels``: the count
converts exactly and the product rounds once, so every backend makes the same map), as they
take a pooled spike map. Both backends
accumulate every neuron's input in the same order — kernel row, then kernel column, then
input channel ascending (the order in which a gather per output position meets its spiking
inputs), bias last — so that float32 spikes are bit-identical between CPU and GPU. Products are never fused into a
multiply-add (the CUDA kernels use ``fmul_rn``; Numba's CPU code is compiled without
fast-math, so LLVM does not contract them either).

:func:`execute` walks the plan with a kernel table (CPU or GPU) — the walk is written once;
:class:`KernelBackend` is the backend of both targets, over their tables. The
plan also lists :class:`Fusion` s — IF layers that may absorb the event-driven conv (and the
two-input residual add) feeding them; a kernel table with a fused kernel runs those as one op
(the CPU's: no [T·B, ...] currents stored), the others op by op, with the same arithmetic.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable

import numpy as np
import torch

from snnverify import graph as g
from snnverify.runtime import RunResult, check_device, check_run, register_backend
from snnverify.runtime.buffers import BufferPool
from snnverify.runtime.quantize import ExactRange


def graph_dtype(graph: g.SpikingGraph) -> np.dtype:
    """int64 for a quantised graph (exact integer arithmetic), else float32."""
    return np.dtype(np.int64) if graph.integer else np.dtype(np.float32)


def initial_membrane(threshold: np.ndarray) -> np.ndarray:
    """v[0] = θ/2: exact in float; quantised graphs have even integer thresholds."""
    return threshold // 2 if threshold.dtype.kind == "i" else threshold * np.float32(0.5)


@dataclass
class Op:
    """One node of the plan. ``events``: the input is the spike map of a binary IF node (and
    the weights are W' = W·θ_in). ``sparse``: the input is mostly zero — a spike map, a burst
    layer's graded map, or either pooled by average or sum pools — so a kernel may skip its
    zeros (the sums are unchanged); ``input_peak`` then bounds its values' magnitude."""

    name: str
    node: g.Node
    inputs: list[str]
    events: bool = False
    sparse: bool = False
    #: sparse: no input value's magnitude exceeds it (1 for unit spikes, W' holding the
    #: amplitude; a graded map: :func:`_graded_spike_peak`)
    input_peak: float = 1.0
    weight: np.ndarray | None = None  # W' (event-driven) or W, in the plan's dtype
    bias: np.ndarray | None = None
    threshold: np.ndarray | None = None  # IF: θ per neuron of one sample, flattened
    #: IF: graded output a per neuron, flattened; a conv that only scales each channel
    #: (:func:`_channel_scaling`): W'_c per neuron — of a spike map, its output is a graded one
    amplitude: np.ndarray | None = None
    initial: np.ndarray | None = None  # IF: v[0] = θ/2 per neuron


@dataclass(frozen=True)
class Fusion:
    """An event-driven conv whose only reader is an IF layer, directly or through a two-input
    Add whose only reader is that IF layer: ``IF(conv(spikes) [+ residual])``. A backend with a
    fused kernel computes the conv's sums, the merge and the membrane update per sample and
    timestep without storing the currents; the arithmetic is unchanged — current = (Σ + bias) +
    residual (two-term float sums commute exactly), then v += current. When the residual is
    itself an event-driven conv read only by the Add (a ResNet's projection shortcut), it is
    computed inside too (``shortcut_input``: its spike map) and residual = Σ' + bias'. What is
    added is named by :class:`ResidualKind`.

    The conv may also read a pooled spike map (graded, mostly zero: the conv after a ResNet
    stem's pool), in a float32 plan whose pools provably sum to finite values
    (:func:`_graded_spike_peak`); the kernel then gathers its nonzero inputs times their value,
    as the sparse conv does. Integer plans keep such a conv unfused: its own types would be
    one more compiled set of the fused kernel (~20 s each)."""

    conv: str
    conv_input: str  # the IF layer whose spikes drive the conv, or the pool of them
    add: str | None = None
    residual: str | None = None  # the Add's other input
    shortcut_input: str | None = None  # the residual's spike map, when the residual is absorbed too

    @property
    def reads(self) -> list[str]:
        """The stored signals the fused op reads (the conv's spike map, the residual or its spike map)."""
        residual = self.shortcut_input or self.residual
        return [self.conv_input, *([residual] if residual else [])]

    @property
    def absorbed(self) -> list[str]:
        """The ops computed inside the fused op, never stored."""
        return [self.conv, *([self.add] if self.add else []), *([self.residual] if self.shortcut_input else [])]


@dataclass
class EventConv:
    """An event-driven conv a fused kernel computes: its input spike map (or pooled spike map,
    see :class:`Fusion`) on the backend, channels-last [T·B, H, W, C], W' in the backend's event
    layout, the bias and the graph node."""

    spikes: Any
    weight: Any
    bias: Any
    node: g.Conv2d


@dataclass
class Plan:
    graph: g.SpikingGraph
    dtype: np.dtype
    ops: list[Op]
    shapes: dict[str, tuple[int, ...]]
    users: dict[str, int] = field(default_factory=dict)  # how many nodes read each node
    fusions: dict[str, Fusion] = field(default_factory=dict)  # IF op name -> what it absorbs
    #: (id(plan array), layout) -> the array on the backend, in that layout
    device_arrays: dict[tuple[int, str], Any] = field(default_factory=dict)

    def parameter(self, array: np.ndarray, to_device, layout: str = ""):
        """A plan array on the backend, copied there once (the plan keeps the host array alive,
        so its id stays valid); ``to_device`` may also lay it out, named by ``layout``."""
        key = (id(array), layout)
        if key not in self.device_arrays:
            self.device_arrays[key] = to_device(array)
        return self.device_arrays[key]


def build_plan(graph: g.SpikingGraph) -> Plan:
    """The plan of ``graph`` in :func:`graph_dtype` (a kernel table may lay out some weights
    narrower, where every sum they make is known to fit: see ``Kernels.weight_layout``)."""
    g.require_normative(graph, "the Numba cpu and gpu backends")
    dtype = graph_dtype(graph)
    shapes = graph.shapes
    ops = []
    for name, node in graph.nodes.items():
        sources = graph.inputs[name]
        op = Op(name, node, sources)
        if isinstance(node, (g.Conv2d, g.Linear)):
            source = graph.nodes[unflattened(graph, sources[0])]
            weight = node.weight.astype(dtype)
            if binary_spikes(source):
                op.events = op.sparse = True
                weight = g.folded_weight(node, source.output_amplitude, shapes[source.name], dtype)
            elif (graded_peak := _graded_spike_peak(graph, source.name)) is not None:
                op.sparse, op.input_peak = True, graded_peak
            op.weight = np.ascontiguousarray(weight, dtype=dtype)
            op.bias = np.zeros(weight.shape[0], dtype) if node.bias is None else node.bias.astype(dtype)
            if _channel_scaling(node):
                op.amplitude = np.repeat(op.weight.reshape(-1), math.prod(shapes[name][1:]))
        elif isinstance(node, g.IF):
            per_channel = math.prod(shapes[name]) // len(node.threshold)
            op.threshold = np.repeat(node.threshold.astype(dtype), per_channel)
            op.amplitude = np.repeat(node.output_amplitude.astype(dtype), per_channel)
            op.initial = initial_membrane(op.threshold)
        ops.append(op)
    users = {name: len(graph.users(name)) for name in graph.nodes}
    return Plan(graph, dtype, ops, shapes, users, fusions=_fusions(graph, dtype, ops, users))


def _channel_scaling(node: g.Conv2d | g.Linear) -> bool:
    """Whether a conv only scales each channel: depthwise, 1×1, stride 1, no padding, no bias
    (quantize's rescale and amplitude nodes). Each of its sums is one term from +0, so it runs as
    the products W'_c·x (``Kernels.scale_channels``); fed by spikes s, as the graded spike map
    W'_c·s, nothing computed (a·0 = ±0 adds to a current, or into a pool's or a readout's sum,
    as +0 does)."""
    return (isinstance(node, g.Conv2d) and node.weight.shape == (node.groups, 1, 1, 1) and node.stride == (1, 1)
            and node.padding == (0, 0) and (node.bias is None or not np.any(node.bias)))


def unflattened(graph: g.SpikingGraph, name: str) -> str:
    """The node whose values ``name`` holds: ``name``, or the node behind its Flatten nodes (a
    reader of a flattened spike map takes the spikes as events, of a flattened pooled one its
    nonzero values)."""
    while isinstance(graph.nodes[name], g.Flatten):
        (name,) = graph.inputs[name]
    return name


def binary_spikes(node: g.Node) -> bool:
    """Whether ``node`` outputs a binary spike map (an IF layer of one spike per step at most),
    which its readers take as events."""
    return isinstance(node, g.IF) and node.max_spikes == 1


def _graded_spike_peak(graph: g.SpikingGraph, name: str, partial_sums: bool = False) -> float | None:
    """When ``name`` is a graded spike map — a burst IF layer's a·s, or the spike map of any IF
    layer pooled by one or more average or sum pools: a bound on its values' magnitude,
    B·max|a| of the IF layer (B = ``max_spikes``) times the window area kH·kW of each sum pool
    (an average is no larger than its inputs); with ``partial_sums``, a bound on every sum the
    pools make on the way too (each average's area counted as well: it divides after summing).
    None for any other node, a binary IF layer included (its readers take its spikes as events)."""
    peak, pooled = 1.0, False
    while isinstance(node := graph.nodes[name], g.AvgPool2d):  # SumPool2d too
        if partial_sums or isinstance(node, g.SumPool2d):
            peak *= node.kernel_size[0] * node.kernel_size[1]
        name, pooled = graph.inputs[name][0], True
    if not isinstance(node, g.IF) or not (pooled or node.max_spikes > 1):
        return None
    return peak * node.max_spikes * float(np.abs(node.output_amplitude).max(initial=0))


def _fusions(graph: g.SpikingGraph, dtype: np.dtype, ops: list[Op], users: dict[str, int]) -> dict[str, Fusion]:
    """The binary IF layers that can absorb the event-driven conv, or the conv of a pooled spike
    map (see :class:`Fusion`), feeding them (and a two-input Add between). A burst layer is
    never fused (its counts are not the spikes a fused kernel writes); as a residual, its graded
    map is a current."""
    by_name = {op.name: op for op in ops}
    largest = float(np.finfo(np.float32).max)

    def sole_conv(name: str, pooled_too: bool) -> bool:
        op = by_name[name]
        if not isinstance(op.node, g.Conv2d) or users[name] != 1:
            return False
        if op.events or not pooled_too:
            return op.events
        # a conv of pooled spikes, in float32, whose pools' sums are all finite (with a factor 2
        # to spare for their rounding): its packed gathers then add 0·x = ±0 where no tap is
        return (op.sparse and op.amplitude is None and isinstance(graph.nodes[op.inputs[0]], g.AvgPool2d)
                and dtype == np.float32
                and _graded_spike_peak(graph, op.inputs[0], partial_sums=True) <= largest / 2)

    fusions = {}
    for op in ops:
        if not binary_spikes(op.node):
            continue
        (source,) = op.inputs
        if sole_conv(source, pooled_too=True):
            fusions[op.name] = Fusion(source, by_name[source].inputs[0])
            continue
        merge = by_name[source]
        two_distinct_inputs = len(merge.inputs) == 2 and len(set(merge.inputs)) == 2
        if isinstance(merge.node, g.Add) and users[source] == 1 and two_distinct_inputs:
            for conv, residual in (merge.inputs, merge.inputs[::-1]):
                if sole_conv(conv, pooled_too=True):
                    # (a shortcut computed inside gathers spikes only)
                    shortcut_input = by_name[residual].inputs[0] if sole_conv(residual, pooled_too=False) else None
                    fusions[op.name] = Fusion(conv, by_name[conv].inputs[0], source, residual, shortcut_input)
                    break
    return fusions


class ResidualKind(IntEnum):
    """What a fused IF op adds to its conv's Σ + b (see :class:`Fusion`): the one naming of
    residuals for the plan and every kernel table."""

    NONE = 0  #: IF(conv)
    CURRENT = 1  #: a temporal current r[t·B + b, f]
    STATIC = 2  #: a static current r[b, f], the same at every step
    GRADED = 3  #: a graded spike map a_f·s[t·B + b, f]
    SHORTCUT = 4  #: a projection conv computed inside the fused op: Σ' + b'


@dataclass
class Kernels:
    """What a backend provides to :func:`execute`. Arrays are the backend's (numpy or device).

    Temporal signals are [T·B, ...]; static ones [B, ...]. ``if_layer`` returns the spikes
    [T·B, F] of neurons with θ per flattened neuron, booleans or a burst layer's counts
    (:func:`~snnverify.graph.spike_dtype`), and their number (a burst layer's counts summed);
    ``scale_channels`` turns either into their graded map a·s.
    """

    device: Callable[[], torch.device]  # the device the kernels run on
    to_device: Callable[[np.ndarray], Any]
    to_host: Callable[[Any], np.ndarray]
    zeros: Callable  # (shape, dtype) -> a zero array
    #: (x, weight, bias, node, out_shape, sparse) -> out; ``sparse``: x is mostly zero (a spike
    #: map or a pooled one, see :class:`Op`), which a kernel may skip. A table with
    #: ``conv2d_if`` also takes, for a sparse conv, the keywords ``channels_last=True``: out
    #: [N, H·W·C], the order of the currents of an IF layer that a fused kernel reads, and
    #: ``input_last=True``: x [N, H, W, C] (a pool's map, see :func:`channels_last_pools`)
    conv2d: Callable
    linear: Callable  # (x [N, F], weight, bias, sparse) -> out; ``sparse`` as for conv2d
    #: (x, node, out_shape, amplitude) -> the pool's output: window sums of x, or with an
    #: amplitude per flattened neuron (x a spike map) of its graded spikes a·s, divided by the
    #: window area kH·kW (correctly rounded) unless the node is a SumPool2d; a table with
    #: ``conv2d_if`` also takes the keywords ``channels_last=True``: out [N, H·W·C], and
    #: ``input_last=True``: x a spike map [N, H, W, C], as a fused kernel writes it
    pool2d: Callable
    add_into: Callable  # (total [R, F], x [R or B, F], x temporal, batch) -> None: total += x
    #: (current, temporal, threshold, initial membrane, timesteps, batch, IF node) -> (spikes,
    #: their number), the spikes in the node's spike dtype; a burst node's B comparisons and
    #: subtractions in turn, per step
    if_layer: Callable
    #: (x [R, F], factor per flattened neuron [F]) -> x·factor, each a product; of spikes s
    #: (booleans or a burst layer's counts) and amplitudes a, the graded map a·s
    scale_channels: Callable
    #: host-side layout of a conv's or linear layer's weights (op) -> array, from ``op.weight``,
    #: applied once per plan
    weight_layout: Callable = lambda op: op.weight
    #: optional fused IF(conv(spikes) [+ residual]) (see :class:`Fusion`): (EventConv, residual
    #: kind, residual (None, a Signal or an EventConv), IF shape, threshold, initial membrane,
    #: timesteps, batch) -> (spikes, their number); tables without it run the ops one by one.
    #: The spike maps it reads and writes are channels-last [T·B, H·W·C]: the order in which
    #: such a kernel produces them (per position, a block of channels) and reads them (the
    #: channels at an input position); so are the per-neuron arrays it takes (θ, v[0], a
    #: GRADED residual's amplitudes).
    conv2d_if: Callable | None = None
    #: (array [N, C·H·W], (C, H, W)) -> [N, H·W·C] and back; needed with ``conv2d_if``
    channels_last: Callable | None = None
    channels_first: Callable | None = None
    #: raises when the kernels cannot run here (no device), naming what is missing
    require: Callable[[], None] = lambda: None
    #: the context a run executes in (the place to silence a launcher's routine warnings)
    running: Callable = contextlib.nullcontext


@dataclass
class Signal:
    """A node's output on a backend: [T·B, ...] when temporal else [B, ...]. A spike map (the
    output of a binary IF layer) is kept as booleans with its amplitudes, for event-driven
    consumers; a burst layer's output is its graded map a·s, like a current."""

    array: Any
    temporal: bool
    amplitude: Any = None  # device array a per flattened neuron when this is a spike map
    #: [T·B, H·W·C]: a spike map as fused kernels read and write them, such a layer's currents,
    #: or a pool's map that a fused op and graded convs read (:func:`channels_last_pools`)
    channels_last: bool = False


def spike_maps_read_fused(plan: Plan) -> set[str]:
    """The binary IF layers whose spikes a fused op reads (:attr:`Fusion.reads`), with a fused
    kernel (a burst layer's graded map is read as a current, in the graph's order)."""
    return {name for fusion in plan.fusions.values() for name in fusion.reads
            if binary_spikes(plan.graph.nodes[name])}


def spike_maps_of_overlapping_pools(plan: Plan) -> set[str]:
    """With a fused kernel: the binary IF layers, not fused, whose readers are all pools of
    overlapping windows (a stride below the window in a dimension: torchvision ResNet's stem
    pool, 3 × 3 of stride 2). They write their spikes channels-last, where the spike pool adds
    a tap's channels at once: on that stem's map (64 channels of 16 × 16, 1024 rows), 2.9–3.8
    ms from channels-last spikes against 12.7–13.2 ms from the graph's order, in which each
    channel's overlapping windows are summed column by column (reports/speed)."""

    def overlapping(reader: str) -> bool:
        node = plan.graph.nodes[reader]
        return isinstance(node, g.AvgPool2d) and any(s < k for s, k in zip(node.stride, node.kernel_size))

    return {op.name for op in plan.ops
            if isinstance(op.node, g.IF) and binary_spikes(op.node) and op.name not in plan.fusions
            and (readers := plan.graph.users(op.name)) and all(overlapping(reader) for reader in readers)}


def spike_maps_written_channels_last(plan: Plan) -> set[str]:
    """With a fused kernel: the unfused binary IF layers that write their spikes channels-last,
    [T·B, H·W·C] (:func:`spike_maps_read_fused`, :func:`spike_maps_of_overlapping_pools`);
    their θ, v[0] and currents are laid out in that order too."""
    return (spike_maps_read_fused(plan) | spike_maps_of_overlapping_pools(plan)) - set(plan.fusions)


def channels_last_currents(plan: Plan) -> set[str]:
    """With a fused kernel: the sparse convs whose one reader is an IF layer of
    :func:`spike_maps_written_channels_last` (a conv of pooled spikes, or of a burst layer's
    graded map). They write their currents channels-last, the order in which that IF layer
    must write its spikes. A conv that only scales each channel is not one of them: it runs as
    products (``Kernels.scale_channels``), not as a conv."""
    by_name, written_last = {op.name: op for op in plan.ops}, spike_maps_written_channels_last(plan)

    def writes_them(name: str) -> bool:
        conv = by_name[name]
        return (isinstance(conv.node, g.Conv2d) and conv.sparse and conv.amplitude is None
                and plan.users[name] == 1)

    return {op.inputs[0] for op in plan.ops if op.name in written_last and writes_them(op.inputs[0])}


def channels_last_pools(plan: Plan) -> set[str]:
    """With a fused kernel: the pools whose every reader takes their map channels-last — a fused
    op that adds it as its residual (a ResNet block's pooled input), or a conv of graded inputs
    (not a channel scaling). They write it so (``Kernels.pool2d``'s ``channels_last``): no
    transposed copy for the fused op, and the conv reads each position's channels contiguously."""
    by_name = {op.name: op for op in plan.ops}
    residuals = {(fusion.add, fusion.residual) for fusion in plan.fusions.values() if not fusion.shortcut_input}

    def takes_it_channels_last(pool: str, reader: str) -> bool:
        op = by_name[reader]
        graded_conv = isinstance(op.node, g.Conv2d) and op.sparse and not op.events and op.amplitude is None
        return graded_conv or (reader, pool) in residuals

    pools = [op.name for op in plan.ops if isinstance(op.node, g.AvgPool2d)]  # SumPool2d too
    return {pool for pool in pools if (readers := plan.graph.users(pool))
            and all(takes_it_channels_last(pool, reader) for reader in readers)}


def execute(plan: Plan, kernels: Kernels, x: np.ndarray, timesteps: int, record: bool,
            horizons: tuple[int, ...] = ()):
    """Run the plan on a batch; returns (output [B, K] float, spike counts, recorded spikes,
    readouts {h: output of the first h steps} for each h in ``horizons``)."""
    batch = x.shape[0]
    values: dict[str, Signal] = {}
    remaining = dict(plan.users)
    counts, spikes = {}, ({} if record else None)
    output, readouts = None, {}

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
        return kernels.scale_channels(array.reshape(rows, -1), signal.amplitude).reshape(array.shape)

    def add(terms: list[tuple[Any, bool]], rows: int, shape):
        """Σ of the terms left to right, from zero: a static term is broadcast over the steps."""
        total = kernels.zeros((rows, math.prod(shape)), plan.dtype)
        for array, temporal in terms:
            kernels.add_into(total, array.reshape(array.shape[0], -1), temporal, batch)
        return total.reshape(rows, *shape)

    def means_over_time(name: str, temporal: bool, steps: set[int]) -> dict[int, np.ndarray]:
        """For each h in ``steps``: Σ_{t<h} x[t] in ascending t, then / h (float64 for integer
        graphs) — the sum a run of h steps makes, as its first h steps are this run's."""
        array = analog(name)
        if not temporal:
            total = kernels.to_host(array).reshape(batch, -1)
            return dict.fromkeys(steps, total.astype(np.float64) if total.dtype.kind == "i" else total)
        total, means = kernels.zeros((batch, math.prod(array.shape[1:])), plan.dtype), {}
        for t in range(1, timesteps + 1):
            kernels.add_into(total, array[(t - 1) * batch : t * batch].reshape(batch, -1), True, batch)
            if t in steps:
                host = kernels.to_host(total).reshape(batch, -1)
                means[t] = host / t if host.dtype.kind == "i" else host / np.float32(t)  # a copy: total goes on
        return means

    fusions = plan.fusions if kernels.conv2d_if is not None else {}
    absorbed = {name for fusion in fusions.values() for name in fusion.absorbed}
    by_name = {op.name: op for op in plan.ops}

    def weights(op: Op):
        weight = plan.parameter(op.weight, lambda _: kernels.to_device(kernels.weight_layout(op)))
        return weight, plan.parameter(op.bias, kernels.to_device)

    def channels_last_neurons(array: np.ndarray, name: str):
        """A plan array of one value per neuron of node ``name`` on the backend, in the
        channels-last order [H·W·C] of a fused kernel's neurons (laid out once per plan)."""
        shape = plan.shapes[name]
        return plan.parameter(array, lambda a: kernels.channels_last(kernels.to_device(a).reshape(1, -1),
                                                                     shape).reshape(-1), "channels-last")

    def as_written(name: str, rows: int):
        """A map's array as its writer stored it, and its shape channels-last [N, H, W, C]."""
        channels, height, width = plan.shapes[name]
        return values[name].array, (rows, height, width, channels)

    def event_conv(conv: str, spike_map: str, rows: int) -> EventConv:
        array, shape = as_written(spike_map, rows)
        if not values[spike_map].channels_last:  # a pool that a reader takes in the graph's order too
            array = kernels.channels_last(array.reshape(rows, -1), plan.shapes[spike_map])
        return EventConv(array.reshape(shape), *weights(by_name[conv]), by_name[conv].node)

    def fused_residual(fusion: Fusion, rows: int) -> tuple[ResidualKind, Any]:
        if fusion.shortcut_input:
            scaling = by_name[fusion.residual].amplitude
            if scaling is not None:  # a per-channel scaling of spikes: their graded map, not a conv
                spike_map = values[fusion.shortcut_input]
                return ResidualKind.GRADED, Signal(spike_map.array, True,
                                                   channels_last_neurons(scaling, fusion.residual), True)
            return ResidualKind.SHORTCUT, event_conv(fusion.residual, fusion.shortcut_input, rows)
        if fusion.residual is None:
            return ResidualKind.NONE, None
        signal = values[fusion.residual]
        if signal.amplitude is not None:
            amplitude = channels_last_neurons(by_name[fusion.residual].amplitude, fusion.residual)
            return ResidualKind.GRADED, Signal(signal.array, True, amplitude, True)
        return (ResidualKind.CURRENT if signal.temporal else ResidualKind.STATIC), signal

    # the spike maps fused kernels read, and those of overlapping pools: kept channels-last (an
    # IF layer that is not fused converts its output once, not each of its fused readers)
    written_last = spike_maps_written_channels_last(plan) if fusions else set()
    currents_last = channels_last_currents(plan) if fusions else set()
    pools_last = channels_last_pools(plan) if fusions else set()

    for op in plan.ops:
        if op.name in absorbed:
            continue  # computed inside the IF op that absorbs it
        node = op.node
        fusion = fusions.get(op.name)
        reads = fusion.reads if fusion else op.inputs
        temporal = fusion is not None or any(values[s].temporal for s in op.inputs)
        rows = timesteps * batch if temporal else batch
        shape_in = (rows, *plan.shapes[op.inputs[0]]) if op.inputs else None
        if isinstance(node, g.Input):
            values[op.name] = Signal(kernels.to_device(g.input_current(node, x, plan.dtype)), False)
        elif isinstance(node, g.IF):
            shape = plan.shapes[op.name]
            if fusion or op.name in written_last:  # IF is per neuron: θ and v[0] in the order of its spikes
                threshold, initial = (channels_last_neurons(a, op.name) for a in (op.threshold, op.initial))
            else:
                threshold, initial = (plan.parameter(a, kernels.to_device) for a in (op.threshold, op.initial))
            if fusion:
                kind, residual = fused_residual(fusion, rows)
                s, counts[op.name] = kernels.conv2d_if(event_conv(fusion.conv, fusion.conv_input, rows), kind,
                                                       residual, shape, threshold, initial, timesteps, batch)
            else:
                if op.inputs[0] in currents_last:  # its conv wrote them in the order of its spikes
                    current = values[op.inputs[0]].array
                else:
                    current = analog(op.inputs[0]).reshape(rows, -1)
                    if op.name in written_last:  # its inputs in the order of its spikes too
                        current = kernels.channels_last(current, shape)
                s, counts[op.name] = kernels.if_layer(current, temporal, threshold, initial, timesteps, batch, node)
            amplitude = plan.parameter(op.amplitude, kernels.to_device)
            binary = binary_spikes(node)
            if binary:
                channels_last = fusion is not None or op.name in written_last
                values[op.name] = Signal(s, True, amplitude, channels_last=channels_last)
            else:  # the graded map a·s, made once for all readers (a burst layer is never fused)
                values[op.name] = Signal(kernels.scale_channels(s, amplitude), True)
            if record:
                recorded = channels_first(op.name) if binary else s
                spikes[op.name] = kernels.to_host(recorded).reshape(timesteps, batch, *plan.shapes[op.name])
        elif op.amplitude is not None and op.events:  # a channel scaling of spikes: their graded map W'_c·s
            spike_map = values[op.inputs[0]]
            values[op.name] = Signal(spike_map.array, True, plan.parameter(op.amplitude, kernels.to_device),
                                     spike_map.channels_last)
        elif op.amplitude is not None:  # a channel scaling of currents or a graded map: one product each
            factors = plan.parameter(op.amplitude, kernels.to_device)
            out = kernels.scale_channels(analog(op.inputs[0]).reshape(rows, -1), factors)
            values[op.name] = Signal(out.reshape(rows, *plan.shapes[op.name]), temporal)
        elif isinstance(node, (g.Conv2d, g.Linear)):
            weight, bias = weights(op)
            last = op.name in currents_last
            layout = {"channels_last": True} if last else {}
            if op.inputs[0] in pools_last:  # its map as the pool wrote it: [N, H, W, C]
                (source, shape_in), layout["input_last"] = as_written(op.inputs[0], rows), True
            else:
                source = channels_first(op.inputs[0]) if op.events else analog(op.inputs[0])
            if isinstance(node, g.Conv2d):
                out = kernels.conv2d(source.reshape(shape_in), weight, bias, node, (rows, *plan.shapes[op.name]),
                                     op.sparse, **layout)
            else:
                out = kernels.linear(source.reshape(rows, -1), weight, bias, op.sparse)
            values[op.name] = Signal(out, temporal, channels_last=last)
        elif isinstance(node, g.AvgPool2d):  # SumPool2d too
            # a spike map is pooled with its amplitudes, its graded map a·s never stored
            source, last = values[op.inputs[0]], op.name in pools_last
            layout = {"channels_last": True} if last else {}
            if source.amplitude is None:
                pooled = analog(op.inputs[0])
            elif source.channels_last:  # read as the fused kernel wrote it: [N, H, W, C]
                (pooled, shape_in), layout["input_last"] = as_written(op.inputs[0], rows), True
            else:
                pooled = source.array
            out = kernels.pool2d(pooled.reshape(shape_in), node, (rows, *plan.shapes[op.name]), source.amplitude,
                                 **layout)
            values[op.name] = Signal(out, temporal, channels_last=last)
        elif isinstance(node, g.Flatten):  # a spike map stays one, in the graph's order (C, H, W)
            source = values[op.inputs[0]]
            array = channels_first(op.inputs[0]) if source.amplitude is not None else analog(op.inputs[0])
            values[op.name] = Signal(array.reshape(rows, -1), temporal, source.amplitude)
        elif isinstance(node, g.Add):
            terms = [(analog(name), values[name].temporal) for name in op.inputs]
            values[op.name] = Signal(add(terms, rows, plan.shapes[op.name]), temporal)
        elif isinstance(node, g.Output):
            means = {h: mean if node.scale == 1 else mean / node.scale
                     for h, mean in means_over_time(op.inputs[0], temporal, {timesteps, *horizons}).items()}
            output, readouts = means[timesteps], {h: means[h] for h in horizons}
        for source in reads:
            remaining[source] -= 1
            if remaining[source] == 0:
                del values[source]
                converted.pop(source, None)
    return output, counts, spikes, readouts


class KernelBackend:
    """The ``cpu`` and ``gpu`` backends: the graph's plan executed over a kernel table. An
    integer graph's runs are checked to stay where integer arithmetic is exact
    (:class:`~snnverify.runtime.quantize.ExactRange`). Host arrays a run allocates come from the
    backend's :class:`~snnverify.runtime.buffers.BufferPool`, memory a former run no longer needs."""

    def __init__(self, graph: g.SpikingGraph, target: str, kernels: Kernels):
        kernels.require()
        self.graph, self.target, self.kernels = graph, target, kernels
        self.plan = build_plan(graph)
        self.exact_range = ExactRange(graph) if graph.integer else None
        self.buffers = BufferPool()

    def run(self, x, timesteps: int, record: bool = False, device=None, horizons: tuple[int, ...] = ()) -> RunResult:
        check_device(self.target, device, self.kernels.device())
        x, timesteps = check_run(self.graph, x, timesteps, self.exact_range)
        horizons = g.check_horizons(horizons, timesteps)
        with self.buffers.active(), self.kernels.running():
            output, counts, spikes, readouts = execute(self.plan, self.kernels, x.numpy(), timesteps, record, horizons)
        return RunResult(output=np.asarray(output, np.float32), spike_counts=counts, spikes=spikes,
                         readouts={h: np.asarray(r, np.float32) for h, r in readouts.items()} if horizons else None)


def register_kernels(target: str, kernels: Kernels) -> None:
    """Make ``compile(snn, target=target)`` a :class:`KernelBackend` over ``kernels``."""
    register_backend(target, functools.partial(KernelBackend, target=target, kernels=kernels))
