"""The spiking graph: the one data structure that carries a converted network's semantics.

Every backend executes a :class:`SpikingGraph`; NIR export and import map it. Nodes are small
typed records of numpy float32 parameters; shapes never include the batch dimension.

Normative semantics (the torch reference executor defines them, every backend matches them):

* discrete time t = 1..T; the input image is a constant input current at every step;
* synaptic nodes (:class:`Conv2d`, :class:`Linear`, :class:`AvgPool2d`, :class:`Flatten`) map
  the current or graded spikes they receive at step t to a current at step t;
* :class:`Add` sums the currents of its inputs at the same step (residual merge);
* :class:`IF` integrates and fires with reset by subtraction, emitting graded spikes θ·s[t];
* :class:`Output` has no neuron: the network output is its input current averaged over T.

This module imports no other part of snnverify and no deep-learning framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

Shape = tuple[int, ...]


def _pair(value: int | tuple[int, int], what: str, node: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise TypeError(f"node {node!r}: {what} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _float_array(value, what: str, node: str, ndim: int) -> np.ndarray:
    """Parameters are float32, or int64 in a quantised graph (integer input stays integer).
    Checked, then cast: a value beyond float32's range is an error, not an overflow to inf."""
    array = np.asarray(value)
    if array.ndim != ndim:
        raise ValueError(f"node {node!r}: {what} must have {ndim} dimensions, got shape {array.shape}")
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if not np.all(np.isfinite(array)):
        bad = array[~np.isfinite(array)].ravel()[0]
        raise ValueError(f"node {node!r}: {what} contains a non-finite value ({bad})")
    largest = float(np.finfo(np.float32).max)
    if np.any(np.abs(array) > largest):
        bad = array[np.abs(array) > largest].ravel()[0]
        raise ValueError(f"node {node!r}: {what} holds {bad:g}, beyond float32's range (±{largest:.4g})")
    return array.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Node:
    """Base class of all nodes. ``name`` is unique within a graph."""

    name: str
    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # (min, max) number of inputs; None = any

    def output_shape(self, input_shapes: list[Shape]) -> Shape:
        """Shape of the node's output (no batch dimension); raises ValueError on a mismatch."""
        raise NotImplementedError

    def parameters(self) -> list[np.ndarray]:
        """The node's array parameters."""
        return [getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)]

    def _error(self, message: str) -> ValueError:
        return ValueError(f"node {self.name!r} ({type(self).__name__}): {message}")


@dataclass(frozen=True, eq=False)
class Input(Node):
    """Graph input; the image x is applied as a constant current I[t] = x·scale at every step
    (rounded to the nearest integer, ties to even, in a quantised graph)."""

    shape: Shape = ()  # (C, H, W) or (features,)
    scale: float = 1.0  # current units per input unit; quantised graphs use a power of two
    arity: ClassVar = (0, 0)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if not self.shape or min(self.shape) < 1:
            raise self._error(f"shape must be non-empty with positive sizes, got {self.shape}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise self._error(f"scale must be a positive number, got {self.scale}")

    def output_shape(self, input_shapes):
        return self.shape


@dataclass(frozen=True, eq=False)
class Conv2d(Node):
    """2-d convolution: I_out[t] = W ⋆ I_in[t] + b (cross-correlation, as torch.nn.Conv2d)."""

    weight: np.ndarray = None  # [C_out, C_in / groups, kH, kW]
    bias: np.ndarray | None = None  # [C_out] or None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)  # zero padding
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        object.__setattr__(self, "weight", _float_array(self.weight, "weight", self.name, 4))
        if self.bias is not None:
            object.__setattr__(self, "bias", _float_array(self.bias, "bias", self.name, 1))
            if self.bias.shape[0] != self.weight.shape[0]:
                raise self._error(f"bias has {self.bias.shape[0]} entries for {self.weight.shape[0]} channels")
        for name in ("stride", "padding", "dilation"):
            object.__setattr__(self, name, _pair(getattr(self, name), name, self.name))
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise self._error(f"invalid stride {self.stride}, padding {self.padding} or dilation {self.dilation}")
        if self.groups < 1 or self.weight.shape[0] % self.groups:
            raise self._error(f"groups={self.groups} does not divide {self.weight.shape[0]} output channels")

    def output_shape(self, input_shapes):
        (shape,) = input_shapes
        if len(shape) != 3:
            raise self._error(f"expects a (C, H, W) input, got {shape}")
        if shape[0] != self.weight.shape[1] * self.groups:
            raise self._error(
                f"expects {self.weight.shape[1] * self.groups} input channels, got {shape[0]} (input shape {shape})"
            )
        spatial = []
        for size, k, s, p, d in zip(shape[1:], self.weight.shape[2:], self.stride, self.padding, self.dilation):
            out = (size + 2 * p - d * (k - 1) - 1) // s + 1
            if out < 1:
                raise self._error(f"kernel {self.weight.shape[2:]} does not fit input {shape}")
            spatial.append(out)
        return (self.weight.shape[0], *spatial)


@dataclass(frozen=True, eq=False)
class Linear(Node):
    """Dense layer: I_out[t] = W · I_in[t] + b."""

    weight: np.ndarray = None  # [out_features, in_features]
    bias: np.ndarray | None = None  # [out_features] or None

    def __post_init__(self):
        object.__setattr__(self, "weight", _float_array(self.weight, "weight", self.name, 2))
        if self.bias is not None:
            object.__setattr__(self, "bias", _float_array(self.bias, "bias", self.name, 1))
            if self.bias.shape[0] != self.weight.shape[0]:
                raise self._error(f"bias has {self.bias.shape[0]} entries for {self.weight.shape[0]} outputs")

    def output_shape(self, input_shapes):
        (shape,) = input_shapes
        if shape != (self.weight.shape[1],):
            raise self._error(f"expects input shape ({self.weight.shape[1]},), got {shape}")
        return (self.weight.shape[0],)


@dataclass(frozen=True, eq=False)
class AvgPool2d(Node):
    """Average pooling with zero padding counted in the divisor: I_out = (Σ_window I_in) / (kH·kW)."""

    kernel_size: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)

    def __post_init__(self):
        for name in ("kernel_size", "stride", "padding"):
            object.__setattr__(self, name, _pair(getattr(self, name), name, self.name))
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise self._error(f"invalid kernel {self.kernel_size}, stride {self.stride} or padding {self.padding}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise self._error(f"padding {self.padding} exceeds half the kernel {self.kernel_size}")

    def output_shape(self, input_shapes):
        (shape,) = input_shapes
        if len(shape) != 3:
            raise self._error(f"expects a (C, H, W) input, got {shape}")
        spatial = [
            (size + 2 * p - k) // s + 1 for size, k, s, p in zip(shape[1:], self.kernel_size, self.stride, self.padding)
        ]
        if min(spatial) < 1:
            raise self._error(f"kernel {self.kernel_size} does not fit input {shape}")
        return (shape[0], *spatial)


@dataclass(frozen=True, eq=False)
class SumPool2d(AvgPool2d):
    """Window sum with zero padding: I_out = Σ_window I_in (average pooling of a quantised graph,
    whose scales carry the divisor)."""


@dataclass(frozen=True, eq=False)
class Flatten(Node):
    """Flattens (C, H, W) to (C·H·W,) in C order, as torch.flatten(x, 1)."""

    def output_shape(self, input_shapes):
        (shape,) = input_shapes
        return (math.prod(shape),)


@dataclass(frozen=True, eq=False)
class Add(Node):
    """Residual merge: I_out[t] = Σ_inputs I_in[t], all inputs of one shape."""

    arity: ClassVar = (2, None)

    def output_shape(self, input_shapes):
        if len(set(input_shapes)) != 1:
            raise self._error(f"inputs have different shapes {input_shapes}")
        return input_shapes[0]


#: the largest burst an IF layer may fire in one step (spike counts fit a byte on every backend)
MAX_BURST = 255


@dataclass(frozen=True, eq=False)
class IF(Node):
    """Integrate-and-fire neurons with reset by subtraction, one threshold per channel.

    v[0] = θ/2;  v[t] = v[t-1] + I[t];  s[t] = 1 if v[t] ≥ θ else 0;  v[t] ← v[t] − θ·s[t].
    Output: graded spikes a·s[t] with amplitude a = θ unless given (a quantised graph gives
    its own, at the next layer's scale). Channel = first axis of the (no-batch) shape.
    Under a constant current z the neuron fires exactly clip(floor(z·T/θ + 1/2), 0, T) times.

    Burst neurons (``max_spikes`` B > 1, every backend): up to B spikes per step, by B
    comparisons in turn —  s[t] = 0, then B times: if v ≥ θ: v ← v − θ, s[t] ← s[t] + 1  —
    and the output is a·s[t] (s[t] ∈ {0, …, B}). The subtractions are the binary neuron's, one
    after another, so float32 backends agree bit for bit as for B = 1. Under a constant current
    z the neuron fires exactly clip(floor(z·T/θ + 1/2), 0, B·T) times: a layer converted with
    θ = λ/B and a = λ/B resolves λ/(B·T) in T steps, as a binary one does in B·T.

    Foreign semantics (networks imported from NIR files of other frameworks; the defaults give
    the normative neuron above, and only the torch reference executes the others):

        v[0] = v_init;  v[t] = β·v[t-1] + γ·I[t];  s[t] = v[t] ≥ θ  (fire_on ">=") or v[t] > θ  (">");
        v[t] ← v[t] − θ·s[t]  (v_reset None)  or  v[t] ← v_reset where s[t] = 1.

    β = ``leak`` (1 − dt/τ for a NIR LIF), γ = ``gain`` (R·dt/τ for a NIR LIF, R for a NIR IF).
    """

    threshold: np.ndarray = None  # θ > 0, shape [C]; even integers in a quantised graph
    amplitude: np.ndarray | None = None  # graded output per spike, shape [C]; None: θ
    v_init: np.ndarray | None = None  # v[0], shape [C]; None: θ/2
    v_reset: np.ndarray | None = None  # membrane after a spike, shape [C]; None: reset by subtraction
    fire_on: str = ">="  # ">=" (normative) or ">" (NIR's strict rule)
    leak: np.ndarray | None = None  # β, membrane decay per step, shape [C]; None: 1 (no leak)
    gain: np.ndarray | None = None  # γ, input gain, shape [C]; None: 1
    max_spikes: int = 1  # B: spikes per step at most (1: the binary neuron; > 1: a burst neuron)

    #: the fields that leave the normative neuron when set (cpu, gpu and quantize reject them)
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("v_init", "v_reset", "fire_on", "leak", "gain")

    def __post_init__(self):
        threshold = _float_array(self.threshold, "threshold", self.name, 1)
        if np.any(threshold <= 0):
            raise self._error(f"threshold must be > 0, got {threshold[threshold <= 0].ravel()[0]}")
        if threshold.dtype.kind == "i" and np.any(threshold % 2):
            raise self._error(f"integer thresholds must be even (v[0] = θ/2), got {threshold[threshold % 2 != 0][0]}")
        object.__setattr__(self, "threshold", threshold)
        for name in ("amplitude", "v_init", "v_reset", "leak", "gain"):
            if getattr(self, name) is not None:
                value = _float_array(getattr(self, name), name, self.name, 1)
                if value.shape != threshold.shape or value.dtype != threshold.dtype:
                    raise self._error(f"{name} {value.shape} {value.dtype} must match threshold "
                                      f"{threshold.shape} {threshold.dtype}")
                object.__setattr__(self, name, value)
        if self.fire_on not in (">=", ">"):
            raise self._error(f"fire_on must be '>=' or '>', got {self.fire_on!r}")
        try:
            object.__setattr__(self, "max_spikes", check_max_spikes(self.max_spikes))
        except ValueError as error:
            raise self._error(str(error)) from None

    @property
    def output_amplitude(self) -> np.ndarray:
        return self.threshold if self.amplitude is None else self.amplitude

    @property
    def extensions(self) -> list[str]:
        """The foreign-semantics fields this layer sets (empty for the normative neuron)."""
        return [name for name in self.EXTENSIONS
                if (self.fire_on != ">=" if name == "fire_on" else getattr(self, name) is not None)]

    def output_shape(self, input_shapes):
        (shape,) = input_shapes
        if shape[0] != self.threshold.shape[0]:
            raise self._error(f"has {self.threshold.shape[0]} thresholds for {shape[0]} channels (input {shape})")
        return shape


def check_max_spikes(max_spikes) -> int:
    """A burst size B must be an integer in 1..:data:`MAX_BURST`."""
    if (isinstance(max_spikes, bool) or not isinstance(max_spikes, (int, np.integer))
            or not 1 <= max_spikes <= MAX_BURST):
        raise ValueError(f"max_spikes must be an integer in [1, {MAX_BURST}], got {max_spikes!r}")
    return int(max_spikes)


def spike_dtype(layer: IF) -> np.dtype:
    """The dtype every backend records an IF layer's spikes in: bool for the binary neuron,
    the counts as uint8 for a burst neuron (``max_spikes`` > 1; at most :data:`MAX_BURST`)."""
    return np.dtype(np.bool_ if layer.max_spikes == 1 else np.uint8)


def require_normative(graph: "SpikingGraph", executor: str) -> None:
    """Raise ValueError naming the first IF layer with foreign semantics, for executors that
    implement only the normative neuron (burst layers are normative: every executor runs them)."""
    for layer in graph.neuron_layers:
        if layer.extensions:
            raise ValueError(
                f"{executor} executes only the normative IF neuron (v[0] = θ/2, fire on ≥, reset by subtraction, "
                f"no leak); IF layer {layer.name!r} sets {', '.join(layer.extensions)}: use target='torch'"
            )


@dataclass(frozen=True, eq=False)
class Output(Node):
    """Network output: the input current averaged over T, divided by ``scale``; the prediction
    is its argmax."""

    scale: float = 1.0  # current units per output unit (quantised graphs)

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise self._error(f"scale must be a positive number, got {self.scale}")

    def output_shape(self, input_shapes):
        (shape,) = input_shapes
        return shape


def folded_weight(node: Conv2d | Linear, amplitude: np.ndarray, input_shape: Shape, dtype=None) -> np.ndarray:
    """The weights of ``node`` with its input's graded amplitude folded in, as ``dtype``:
    W'[o, c, ...] = W[o, c, ...]·a_c, so that W' ⋆ s = W ⋆ (a·s) for a spike map s. ``amplitude``
    is per channel of ``input_shape`` (a grouped convolution's column c of group k reads channel
    k·C_in/groups + c; a Linear layer's feature j reads channel j // (features / channels))."""
    dtype = node.weight.dtype if dtype is None else np.dtype(dtype)
    weight, amplitude = node.weight.astype(dtype), amplitude.astype(dtype)
    if isinstance(node, Conv2d):
        group_in = weight.shape[1]
        channel = np.arange(group_in * node.groups).reshape(node.groups, group_in)
        per_out = channel[np.arange(weight.shape[0]) // (weight.shape[0] // node.groups)]
        return weight * amplitude[per_out][:, :, None, None]
    per_feature = np.repeat(amplitude, math.prod(input_shape) // len(amplitude))
    return weight * per_feature[None, :]


def input_current(node: Input, x: np.ndarray, dtype) -> np.ndarray:
    """The constant current I = x·scale of an input batch, as ``dtype``; integer graphs round
    to the nearest integer (ties to even) — the one place where a quantised graph rounds."""
    current = np.asarray(x, np.float64 if np.dtype(dtype).kind == "i" else np.float32) * node.scale
    if np.dtype(dtype).kind == "i":
        current = np.rint(current)
    return np.ascontiguousarray(current, dtype=dtype)


def multiply_accumulates(graph: SpikingGraph) -> int:
    """Multiply-accumulates of one dense forward pass (conv and linear layers), per image."""
    shapes, total = graph.shapes, 0
    for name, node in graph.nodes.items():
        if isinstance(node, (Conv2d, Linear)):
            total += math.prod(shapes[name]) * math.prod(node.weight.shape[1:])
    return total


def check_timesteps(timesteps) -> int:
    """The number of simulation steps T must be an integer >= 1."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    return int(timesteps)


def check_horizons(horizons, timesteps: int) -> tuple[int, ...]:
    """Readout steps h of a run of T steps: integers in 1..T, sorted, without repeats. The
    readout at h is the output current averaged over the first h steps, what a run of h steps
    returns (a run's first steps do not depend on how many follow)."""
    if isinstance(horizons, (str, bytes)) or not all(
            not isinstance(h, bool) and isinstance(h, (int, np.integer)) and 1 <= h <= timesteps for h in horizons):
        raise ValueError(f"horizons must be integers in 1..{timesteps} (the steps run), got {horizons!r}")
    return tuple(sorted({int(h) for h in horizons}))


def replace(node: Node, **changes) -> Node:
    """A copy of ``node`` with some fields changed (validated again)."""
    values = {f.name: getattr(node, f.name) for f in fields(node)}
    values.update(changes)
    return type(node)(**values)


@dataclass(eq=False)
class SpikingGraph:
    """A directed acyclic graph of nodes, stored in topological order.

    ``inputs[name]`` lists the node's sources in order. Exactly one :class:`Input` and one
    :class:`Output`. Construction validates structure, parameters and shapes.
    """

    nodes: dict[str, Node]
    inputs: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        seen: set[str] = set()
        for key, node in self.nodes.items():
            if not isinstance(node, Node):
                raise TypeError(f"node {key!r} is a {type(node).__name__}, not a snnverify.graph.Node")
            if key != node.name:
                raise ValueError(f"node stored under {key!r} is named {node.name!r}")
            sources = self.inputs.setdefault(key, [])
            low, high = node.arity
            if len(sources) < low or (high is not None and len(sources) > high):
                raise ValueError(f"node {key!r} ({type(node).__name__}) has {len(sources)} inputs {sources}")
            for source in sources:
                if source not in self.nodes:
                    raise ValueError(f"node {key!r} reads from unknown node {source!r}")
                if source not in seen:
                    raise ValueError(f"node {key!r} reads from {source!r}, which does not come before it (cycle?)")
            seen.add(key)
        for key in self.inputs:
            if key not in self.nodes:
                raise ValueError(f"inputs given for unknown node {key!r}")
        for kind in (Input, Output):
            found = [n for n in self.nodes.values() if isinstance(n, kind)]
            if len(found) != 1:
                raise ValueError(f"a spiking graph needs exactly one {kind.__name__} node, found {len(found)}")
        self.shapes  # validates every node's input shapes

    @property
    def shapes(self) -> dict[str, Shape]:
        """Output shape of every node (no batch dimension)."""
        shapes: dict[str, Shape] = {}
        for name, node in self.nodes.items():
            shapes[name] = node.output_shape([shapes[s] for s in self.inputs[name]])
        return shapes

    @property
    def input_node(self) -> Input:
        return next(n for n in self.nodes.values() if isinstance(n, Input))

    @property
    def output_node(self) -> Output:
        return next(n for n in self.nodes.values() if isinstance(n, Output))

    @property
    def neuron_layers(self) -> list[IF]:
        """The IF nodes, in topological order."""
        return [n for n in self.nodes.values() if isinstance(n, IF)]

    @property
    def integer(self) -> bool:
        """Whether the graph is quantised: every parameter an integer (then all arithmetic is)."""
        kinds = {a.dtype.kind for node in self.nodes.values() for a in node.parameters()}
        return kinds == {"i"}

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(source, name) for name in self.nodes for source in self.inputs[name]]

    def users(self, name: str) -> list[str]:
        """The nodes that read ``name``'s output."""
        return [dst for src, dst in self.edges if src == name]

    def prefix(self, name: str) -> "SpikingGraph":
        """The part of the graph ``name`` depends on, read out at ``name``: its output averaged
        over T is the new graph's output (for an IF layer, its mean graded spike per neuron)."""
        if name not in self.nodes or isinstance(self.nodes[name], Output):
            raise ValueError(f"no node {name!r} to read out (an Output node is already a readout)")
        needed, stack = set(), [name]
        while stack:
            node = stack.pop()
            if node not in needed:
                needed.add(node)
                stack.extend(self.inputs[node])
        readout = Output(f"{name}:readout")
        nodes = {k: n for k, n in self.nodes.items() if k in needed} | {readout.name: readout}
        return SpikingGraph(nodes, {k: list(self.inputs[k]) for k in needed} | {readout.name: [name]})

    def with_nodes(self, replacements: dict[str, Node]) -> "SpikingGraph":
        """A new graph with some nodes replaced (same names, same edges)."""
        return SpikingGraph({k: replacements.get(k, n) for k, n in self.nodes.items()}, dict(self.inputs))


def _reach(size: int, out_size: int, kernel: int, stride: int, padding: int, dilation: int) -> np.ndarray:
    """For each input coordinate along one axis, how many kernel taps land on an output."""
    shifted = np.arange(size)[:, None] + padding - np.arange(kernel)[None, :] * dilation
    return ((shifted >= 0) & (shifted % stride == 0) & (shifted // stride < out_size)).sum(axis=1)


def _window_sums(values: np.ndarray, pool: AvgPool2d) -> np.ndarray:
    """Σ over each window of ``pool`` (zero padding) of values [N, C, H, W]."""
    (kernel_h, kernel_w), (stride_h, stride_w), (pad_h, pad_w) = pool.kernel_size, pool.stride, pool.padding
    padded = np.pad(values, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel_h, kernel_w), axis=(2, 3))
    return windows[:, :, ::stride_h, ::stride_w].sum(axis=(4, 5))


def through_pools(graph: SpikingGraph, name: str) -> tuple[str, list[AvgPool2d]]:
    """The node whose output reaches node ``name`` through average (or sum) pools and flattening
    only (``name`` itself when it is neither), and the pools on the way, the first applied first."""
    pools = []
    while isinstance(node := graph.nodes[name], (AvgPool2d, Flatten)):
        if isinstance(node, AvgPool2d):
            pools.insert(0, node)
        name = graph.inputs[name][0]
    return name, pools


def _input_events(graph: SpikingGraph, name: str, spikes: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per input of node ``name``, the number of (step, sample) pairs at which it carries an
    event, in the shape of its input; None unless it reads an IF layer, directly or through average or sum
    pools and flattening. Read directly, an event is a firing neuron. Through pools, it is a
    nonzero pooled value: a window with a spike in it, of a channel whose amplitude is not 0 (a
    pool sums one channel's a·s, all of one sign, so no window of spikes sums to 0)."""
    source, pools = through_pools(graph, graph.inputs[name][0])
    layer = graph.nodes[source]
    if not isinstance(layer, IF):
        return None
    if not pools:
        counts = np.count_nonzero(spikes[source], axis=(0, 1))
    else:
        counts = 0
        for step in spikes[source]:  # [B, C, H, W], a step at a time: the pooled maps stay small
            windows = step.astype(np.int64)
            for pool in pools:
                windows = _window_sums(windows, pool)
            counts = counts + np.count_nonzero(windows, axis=0)
        counts = counts * (layer.output_amplitude != 0)[:, None, None]
    return np.reshape(counts, graph.shapes[graph.inputs[name][0]])


def synaptic_events(graph: SpikingGraph, spikes: dict[str, np.ndarray]) -> int:
    """Synaptic operations that event-driven layers (conv and linear layers fed by an IF layer,
    directly or through average or sum pools and flattening) must do for the recorded ``spikes``
    ([T, B, ...] per IF layer): each event adds one weighted value to every output it reaches —
    for a conv, its taps that land inside the output, times C_out / groups. An event is a neuron
    that fires at a step, one spike or a burst of several, carried as one graded value a·s (so a
    burst costs one operation per output, not one per spike); behind a pool, a nonzero pooled
    value, which is what the layer is defined on (:func:`_input_events`)."""
    shapes, total = graph.shapes, 0
    for name, node in graph.nodes.items():
        if not isinstance(node, (Linear, Conv2d)) or not graph.inputs[name]:
            continue
        counts = _input_events(graph, name, spikes)
        if counts is None:
            continue
        if isinstance(node, Linear):
            total += int(counts.sum()) * node.weight.shape[0]
        else:
            (_, in_h, in_w), (out_channels, out_h, out_w) = counts.shape, shapes[name]
            rows = _reach(in_h, out_h, node.weight.shape[2], node.stride[0], node.padding[0], node.dilation[0])
            cols = _reach(in_w, out_w, node.weight.shape[3], node.stride[1], node.padding[1], node.dilation[1])
            total += int((counts * np.outer(rows, cols)).sum()) * (out_channels // node.groups)
    return total
