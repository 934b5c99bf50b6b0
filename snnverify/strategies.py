"""Public Hypothesis strategies for spiking graphs and their inputs.

The values are dyadic rationals (k·2^-e with few significant bits), so float32 arithmetic on
them is exact and a test can demand exact equality with an oracle computed in float64. The
strategies are built to reach the hard cases on purpose: exact threshold ties (v = θ exactly),
saturation (a current above θ at every step — above B·θ for a burst neuron), T = 1, silent
layers, nested residual merges, burst neurons (up to B spikes per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from snnverify import graph as g


def dyadics(min_value: float, max_value: float, denominator: int = 16) -> st.SearchStrategy[float]:
    """Multiples of 1/denominator (a power of two) in [min_value, max_value]."""
    low, high = int(np.ceil(min_value * denominator)), int(np.floor(max_value * denominator))
    return st.integers(low, high).map(lambda k: k / denominator)


def timesteps(max_value: int = 64) -> st.SearchStrategy[int]:
    """T ≤ ``max_value``, with T = 1 and powers of two drawn often."""
    powers = [t for t in (2, 4, 8, 16, 32, 64) if t <= max_value]
    return st.one_of(st.just(1), *([st.sampled_from(powers)] if powers else []), st.integers(1, max_value))


def bursts() -> st.SearchStrategy[int]:
    """``max_spikes`` B of an IF layer: the binary neuron (1) half the time, else a burst of 2…8."""
    return st.one_of(st.just(1), st.integers(2, 8))


@dataclass
class IFDrive:
    """Constant currents ``z`` [N] into IF neurons with thresholds ``theta`` [N] for ``timesteps``
    steps, firing up to ``max_spikes`` spikes per step."""

    z: np.ndarray
    theta: np.ndarray
    timesteps: int
    max_spikes: int = 1


@st.composite
def if_drives(draw, max_neurons: int = 32, max_timesteps: int = 64) -> IFDrive:
    """Drives that include, per neuron, exact ties z·T/θ + 1/2 ∈ ℤ (up to B·T + 1), saturation
    z ≥ B·θ, negative and zero currents (silence), and arbitrary dyadic currents; B from
    :func:`bursts`."""
    steps = draw(timesteps(max_timesteps))
    burst = draw(bursts())
    n = draw(st.integers(1, max_neurons))
    # θ = m·2^-e; ties need z = (k − 1/2)·θ/T, dyadic when θ carries the factor T
    theta = np.array([draw(st.integers(1, 64)) * 2.0 ** -draw(st.integers(0, 4)) for _ in range(n)])
    z = np.empty(n)
    for i in range(n):
        kind = draw(st.sampled_from(["tie", "tie", "any", "saturate", "silent"]))
        if kind == "tie":
            k = draw(st.integers(0, burst * steps + 1))
            theta[i] *= steps  # keeps z dyadic
            z[i] = (k - 0.5) * theta[i] / steps
        elif kind == "saturate":
            z[i] = burst * theta[i] * draw(st.sampled_from([1.0, 1.5, 2.0, 8.0]))
        elif kind == "silent":
            z[i] = -draw(dyadics(0, 4))
        else:
            z[i] = draw(dyadics(-2, 2)) * burst * theta[i]
    return IFDrive(z=z, theta=theta, timesteps=steps, max_spikes=burst)


@dataclass
class CountGraph:
    """A residual graph whose spike counts have a closed form (see :func:`residual_count_graphs`)."""

    graph: g.SpikingGraph
    x: np.ndarray  # [batch, features] inputs in [0, 1]
    timesteps: int


def _pow2_at_least(values: np.ndarray) -> np.ndarray:
    """Smallest power of two ≥ each value (1 for zeros): a threshold that no step's current exceeds."""
    safe = np.where(values > 0, values, 1.0)
    return np.exp2(np.ceil(np.log2(safe)))


@st.composite
def residual_count_graphs(draw, max_depth: int = 3, max_width: int = 6, max_timesteps: int = 64) -> CountGraph:
    """Random nested residual graphs of Linear, Add and IF nodes with non-negative dyadic weights.

    Each IF threshold is a power of two at least as large as the largest current its input can
    carry in one step, so every per-step current lies in [0, θ]. Then the membrane stays in
    [0, θ) after each step and an IF neuron that received total current S over T steps has
    fired exactly floor(S/θ + 1/2) times, whatever the timing — which lets an oracle compute
    every layer's spike counts from totals alone. Merges take 2 or 3 inputs, skips are
    identities or projections, blocks nest up to ``max_depth``; zero weights make silent layers.
    """
    nodes: dict[str, g.Node] = {}
    inputs: dict[str, list[str]] = {}
    bound: dict[str, np.ndarray] = {}  # node -> largest possible per-step output, per feature

    def add(node: g.Node, sources: list[str], node_bound: np.ndarray) -> str:
        nodes[node.name] = node
        inputs[node.name] = sources
        bound[node.name] = node_bound
        return node.name

    def linear(source: str, width: int) -> str:
        fan_in = bound[source].shape[0]
        weight = np.array(draw(st.lists(dyadics(0, 2, 4), min_size=width * fan_in, max_size=width * fan_in)))
        weight = weight.reshape(width, fan_in)
        if draw(st.integers(0, 9)) == 0:
            weight[:] = 0.0  # now and then a silent layer
        bias = np.array(draw(st.lists(dyadics(0, 1, 4), min_size=width, max_size=width)))
        return add(g.Linear(f"linear{len(nodes)}", weight=weight, bias=bias), [source], weight @ bound[source] + bias)

    def neuron(source: str) -> str:
        theta = _pow2_at_least(bound[source])
        return add(g.IF(f"if{len(nodes)}", threshold=theta), [source], theta)

    def block(source: str, depth: int) -> str:
        width = bound[source].shape[0]
        branches = []
        for _ in range(draw(st.integers(1, 2))):
            branch = neuron(linear(source, draw(st.integers(1, max_width))))
            if depth > 0 and draw(st.booleans()):
                branch = block(branch, depth - 1)
            branches.append(linear(branch, width))
        skip = source if draw(st.booleans()) else linear(source, width)
        merged = [skip, *branches]
        total = sum(bound[m] for m in merged)
        return neuron(add(g.Add(f"add{len(nodes)}"), merged, total))

    features = draw(st.integers(1, max_width))
    current = add(g.Input("input", shape=(features,)), [], np.ones(features))
    current = neuron(linear(current, draw(st.integers(1, max_width))))
    for _ in range(draw(st.integers(1, 2))):
        current = block(current, draw(st.integers(0, max_depth)))
    head = linear(current, draw(st.integers(1, 4)))
    add(g.Output("output"), [head], bound[head])
    batch = draw(st.integers(1, 3))
    x = np.array(draw(st.lists(dyadics(0, 1), min_size=batch * features, max_size=batch * features)))
    return CountGraph(g.SpikingGraph(nodes, inputs), x.reshape(batch, features).astype(np.float32),
                      draw(timesteps(max_timesteps)))


@dataclass
class GraphCase:
    """A random spiking graph with an input batch and a number of steps."""

    graph: g.SpikingGraph
    x: np.ndarray  # [batch, *input shape] float32
    timesteps: int


#: Output channel counts of ``spiking_graphs(wide=True)``: packed positions (16, 32), blocks of
#: 16 (24: a padded block; 48), one and two kinds of block (64, 80). As input channels, 24
#: leaves a remainder after the CPU spike lists' steps of 16 channels.
WIDE_CHANNELS = (16, 24, 32, 48, 64, 80)
#: Larger tensors than this are generated from a drawn seed (Hypothesis draws values one by one).
_MAX_DRAWN_VALUES = 1024


@st.composite
def spiking_graphs(draw, dyadic: bool = True, max_channels: int = 4, max_size: int = 6, max_timesteps: int = 8,
                   max_blocks: int = 3, wide: bool = False, max_work: int | None = None) -> GraphCase:
    """Random graphs of Conv2d, AvgPool2d, Flatten, Linear, Add and IF nodes (binary or burst,
    :func:`bursts`), small enough for the CUDA simulator.

    Reaches on purpose: nested residual merges with identity and projection skips (strided or
    not) and 2- or 3-way sums, and merges that read an IF layer both directly and through one
    conv (``c = IF(conv(b) + b)``, where integer mode splits b's amplitude); grouped and strided convolutions; thresholds that make exact ties likely
    (``dyadic``: weights, inputs and thresholds are multiples of 1/8 and average pools divide by
    4, so every sum is exact and membranes hit θ exactly); silent layers (zero weights or a huge θ); saturating layers (θ far below the
    input current); T = 1. With ``dyadic=False`` weights are arbitrary floats, where float32
    rounding differs between accumulation orders. ``wide``: convs have :data:`WIDE_CHANNELS`
    output channels instead of up to ``max_channels`` — the sizes at which the CPU kernels
    switch layouts (packed positions, blocks of 16 and of 64 channels); tensors too large to
    draw element by element come from a seeded generator.

    ``max_work``: at most this many multiply-accumulates per run (a dense pass's, times batch and
    T), which then come out smaller; a graph whose single step of one sample is above it is
    rejected. For the CUDA simulator, where one takes ~15 µs: without a bound, one rare wide
    draw ran for over ten minutes.
    """
    nodes: dict[str, g.Node] = {}
    inputs: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def values(shape, low=-1.0, high=1.0):
        count = int(np.prod(shape))
        if count > _MAX_DRAWN_VALUES:
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            data = (rng.integers(int(np.ceil(low * 8)), int(np.floor(high * 8)), size=count, endpoint=True) / 8
                    if dyadic else rng.uniform(low, high, count))
        elif dyadic:
            data = draw(st.lists(dyadics(low, high, 8), min_size=count, max_size=count))
        else:
            data = draw(st.lists(st.floats(low, high, width=32), min_size=count, max_size=count))
        return np.array(data, np.float32).reshape(shape)

    def channel_count(most: int) -> int:
        return draw(st.sampled_from(WIDE_CHANNELS)) if wide else draw(st.integers(1, most))

    def add(node: g.Node, sources: list[str]) -> str:
        nodes[node.name] = node
        inputs[node.name] = sources
        shapes[node.name] = node.output_shape([shapes[s] for s in sources])
        return node.name

    def neuron(source: str) -> str:
        channels = shapes[source][0]
        kind = draw(st.sampled_from(["tie", "tie", "any", "silent", "saturate"]))
        if kind == "silent":
            theta = np.full(channels, 1e4, np.float32)
        elif kind == "saturate":
            theta = np.full(channels, 1 / 64, np.float32)
        elif kind == "tie":
            theta = np.array(draw(st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.5]), min_size=channels,
                                           max_size=channels)), np.float32)
        else:
            theta = values((channels,), 0.125, 2.0)
        return add(g.IF(f"if{len(nodes)}", threshold=theta, max_spikes=draw(bursts())), [source])

    def conv(source: str, out_channels: int | None = None, same_shape: bool = False, stride: int | None = None) -> str:
        """A conv; ``same_shape``: one group and stride 1 (or ``stride``), as in a residual block."""
        channels, height, width = shapes[source]
        kernel = draw(st.sampled_from([1, 3])) if min(height, width) >= 3 else 1
        groups = draw(st.sampled_from([1, channels])) if not same_shape and out_channels is None else 1
        if out_channels is None:
            out_channels = channels if wide and groups > 1 else groups * channel_count(max(1, max_channels // groups))
        if stride is None:
            stride = 1 if same_shape else draw(st.sampled_from([1, 1, 2]))
        weight = values((out_channels, channels // groups, kernel, kernel))
        if draw(st.integers(0, 9)) == 0:
            weight[:] = 0  # a silent branch
        bias = values((out_channels,), -0.5, 0.5) if draw(st.booleans()) else None
        return add(g.Conv2d(f"conv{len(nodes)}", weight=weight, bias=bias, stride=stride, padding=kernel // 2,
                            groups=groups), [source])

    def residual(source: str, depth: int, downsample: bool = True) -> str:
        """A residual block: 1 or 2 branches (conv, IF, maybe a nested block, conv; or one conv)
        summed with an identity skip, or with a projection conv — strided (downsampling, as in ResNets, unless
        the block is nested in a branch, which must keep its shape) or not."""
        channels, height, width = shapes[source]
        stride = draw(st.sampled_from([1, 2])) if downsample and min(height, width) >= 2 else 1
        branches = []
        for _ in range(draw(st.integers(1, 2))):
            if draw(st.integers(0, 3)) == 0:  # one conv: with an identity skip, c = IF(conv(b) + b)
                branches.append(conv(source, out_channels=channels, same_shape=True, stride=stride))
                continue
            branch = neuron(conv(source, out_channels=channel_count(max_channels), same_shape=True,
                                 stride=stride))
            if depth > 0 and draw(st.booleans()):
                branch = residual(branch, depth - 1, downsample=False)
            branches.append(conv(branch, out_channels=channels, same_shape=True))
        identity = stride == 1 and draw(st.booleans())
        skip = source if identity else conv(source, out_channels=channels, same_shape=True, stride=stride)
        return neuron(add(g.Add(f"add{len(nodes)}"), [skip, *branches]))

    channels, size = draw(st.integers(1, 3)), draw(st.integers(2, max_size))
    current = add(g.Input("input", shape=(channels, size, size)), [])
    current = neuron(conv(current))
    for _ in range(draw(st.integers(0, max_blocks))):
        kind = draw(st.sampled_from(["conv", "residual", "residual", "pool"]))
        if kind == "conv":
            current = neuron(conv(current))
        elif kind == "residual":
            current = residual(current, draw(st.integers(0, 2)))
        elif min(shapes[current][1:]) >= 2:
            # dyadic graphs keep every sum exact: only windows of 4 (a divisor that is a power of two)
            window = draw(st.sampled_from([(2, 2, 0), (2, 1, 0)] if dyadic else [(2, 2, 0), (3, 1, 1)]))
            current = add(g.AvgPool2d(f"pool{len(nodes)}", kernel_size=window[0], stride=window[1],
                                      padding=window[2]), [current])
            if draw(st.booleans()):
                current = neuron(current)
    current = add(g.Flatten(f"flatten{len(nodes)}"), [current])
    for _ in range(draw(st.integers(0, 1))):
        width = draw(st.integers(1, 8))
        current = neuron(add(g.Linear(f"fc{len(nodes)}", weight=values((width, shapes[current][0])),
                                      bias=values((width,), -0.5, 0.5)), [current]))
    classes = draw(st.integers(2, 4))
    current = add(g.Linear(f"fc{len(nodes)}", weight=values((classes, shapes[current][0]))), [current])
    add(g.Output("output"), [current])
    graph = g.SpikingGraph(nodes, inputs)
    work = g.multiply_accumulates(graph)  # per sample and step
    if max_work is not None:
        assume(work <= max_work)
    batch = draw(st.integers(1, 2 if max_work is None else min(2, max_work // work)))
    scale = draw(st.sampled_from([1.0, 1.0, 8.0]))  # 8: saturating inputs
    x = values((batch, channels, size, size), -2.0, 2.0) * np.float32(scale)
    steps = max_timesteps if max_work is None else min(max_timesteps, max_work // (work * batch))
    return GraphCase(graph, x, draw(timesteps(steps)))
