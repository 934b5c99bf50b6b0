"""Integer mode: a spiking graph with integer weights, thresholds and amplitudes.

Every signal gets a scale σ (integer value = real value · σ). Per layer:

* Input: σ = ``input_scale`` (a power of two); the image is rounded once, to x·σ.
* Conv2d / Linear: weights W·2^k with the largest k that keeps |W·2^k| ≤ 2^(bits−1) − 1
  and σ_out (times the largest bias, when above 1) ≤ 2^32 (a per-layer power of two),
  rounded; σ_out = σ_in·2^k; bias rounded at σ_out.
* AvgPool2d becomes SumPool2d: σ_out = σ_in·kH·kW (the divisor moves into the scale).
* IF: θ becomes an even integer round(θ·σ_in/2)·2 (so v[0] = θ/2 stays exact); the graded
  output θ·s is re-expressed at its own power-of-two scale 2^a with amplitudes
  round(θ·2^a) ≤ 2^amplitude_bits − 1 (16 bits by default: amplitudes are integers of the
  int64 arithmetic, not chip registers), so scales do not grow from layer to layer. Where a
  conv reading the spikes could otherwise not sum in int32, the amplitudes take fewer bits,
  never fewer than 12 (:func:`_narrow_gather_scale`).
* Add: its inputs must share one scale (see :func:`_scales`). A merge reads an IF layer
  (directly, or through pools) through a rescale node ``<input>.rescale.<merge>``
  (:func:`rescale_merge_inputs`: a depthwise 1×1 conv, or a diagonal linear layer, of weights 1) whose integer weight is the
  exact power of two 2^m ≥ 1 that takes the layer's scale to the merge's. The layer keeps its
  own amplitudes for its other readers, so a conv reading it gathers 16-bit amplitudes, not
  amplitudes at the merge's (often 2^16 times finer) scale, and its sums stay narrow. Only where
  the merge is coarser than the layer are the amplitudes re-rounded at the coarser scale. A
  rescale node runs as the graded spike map it is, or, after a pool, as one product per value
  (``Kernels.scale_channels``), never as a conv. Of two conv/linear inputs, the finer
  one lowers its weight scale to the coarser one. Where a layer would have to become ever
  coarser — its merge is reached again through a conv of weights above the weight limit, whose
  scale 2^k < 1 follows the layer's down — the scales do not settle, and the layers that kept
  moving are split (:func:`split_amplitude`): their conv and linear readers take the amplitudes
  into their weights, W·a, and read unit spikes, and the rescale node becomes an amplitude node
  of weights a, which the merge can rescale like any conv.
* Output: the averaged output current is divided by its σ.

Burst layers (``max_spikes`` B > 1) quantise as binary ones: the same even thresholds and
amplitudes, the B comparisons and subtractions exact in integers as one is. What changes is
the size of what they emit: a step's graded spike is a·s with s ≤ B, so every bound on a sum
that reads it — the int32 gathers of :func:`_narrow_gather_scale` and :class:`ExactRange` —
counts B·max|a| per spike map, not max|a|.

After quantisation all membrane arithmetic is exact integer arithmetic, so every backend gives
identical spikes by construction; only the rounding above changes the network, and its effect
on accuracy is what ``snnverify run`` reports. Exact while every value stays below 2^53 (the
torch reference runs integer graphs in float64): :class:`ExactRange` refuses a run (a batch and
T) that could go beyond, naming the node.
"""

from __future__ import annotations

import math

import numpy as np

from snnverify import graph as g


def _power_of_two_scale(max_abs: float, limit: int) -> float:
    """Largest 2^k with max_abs·2^k ≤ limit (2^⌊log2 limit⌋ for an all-zero tensor, which
    any scale represents exactly — a large one keeps later thresholds precise)."""
    return 2.0 ** math.floor(math.log2(limit / max_abs if max_abs else limit))


def _scales(graph: g.SpikingGraph, weight_limit: int, input_scale: float, amplitude_scale: dict[str, float],
            rescalers: dict[str, str]):
    """σ of every node and the weight scale of every conv/linear, aligning each merge's inputs.

    At a merge, a rescale node (``rescalers``: its name -> the IF layer it reads) takes any
    scale at least its input's exactly (a weight 2^m ≥ 1), and a coarser one by moving its IF
    layer's scale (re-rounding the amplitudes); an input that comes (through pooling or
    flattening) from an IF layer directly takes any scale by moving it; conv/linear inputs can
    only become coarser (finer weights would overflow). The merge settles on the coarsest of
    the latter (or the finest of the others when there are none); IF layers that must move are
    returned in ``moved`` so the caller recomputes from the start, and finer conv/linear inputs
    lower their weight scale."""
    scale: dict[str, float] = {}
    weight_scale: dict[str, float] = {}
    for name, node in graph.nodes.items():
        sources = graph.inputs[name]
        if isinstance(node, g.Input):
            scale[name] = input_scale
        elif name in rescalers:  # 2^0 until its merge chooses the power of two
            weight_scale[name], scale[name] = 1.0, scale[sources[0]]
        elif isinstance(node, (g.Conv2d, g.Linear)):
            # the finest scale the weights allow, but no finer than SCALE_LIMIT (nor the bias beyond it)
            bias = 1.0 if node.bias is None else max(1.0, float(np.abs(node.bias.astype(np.float64)).max()))
            weight_scale[name] = min(_power_of_two_scale(float(np.abs(node.weight).max()), weight_limit),
                                     _power_of_two_scale(scale[sources[0]] * bias, SCALE_LIMIT))
            scale[name] = scale[sources[0]] * weight_scale[name]
        elif isinstance(node, g.AvgPool2d):
            area = 1 if isinstance(node, g.SumPool2d) else node.kernel_size[0] * node.kernel_size[1]
            scale[name] = scale[sources[0]] * area
        elif isinstance(node, g.IF):
            scale[name] = amplitude_scale[name]
        elif isinstance(node, g.Add):
            origins = {source: rescalers.get(source) or _if_origin(graph, source) for source in sources}
            fixed = [scale[s] for s in sources if origins[s] is None]
            # conv/linear inputs can only become coarser; the others can take any scale
            target = min(fixed) if fixed else max(scale[s] for s in sources)
            moved = {origins[s]: amplitude_scale[origins[s]] * target / scale[s] for s in sources
                     if origins[s] is not None and (target < scale[s] if s in rescalers else target != scale[s])}
            if moved:
                return scale, weight_scale, moved
            for source in sources:
                if scale[source] == target:
                    continue
                if source in rescalers:  # finer by 2^m: an exact integer weight
                    weight_scale[source], scale[source] = target / scale[source], target
                    continue
                if not isinstance(graph.nodes[source], (g.Conv2d, g.Linear)) or len(graph.users(source)) != 1:
                    raise ValueError(
                        f"cannot quantise merge {name!r}: input {source!r} ({type(graph.nodes[source]).__name__}) "
                        f"has scale {scale[source]:g}, finer than {target:g}, and cannot be rescaled"
                    )
                weight_scale[source] *= target / scale[source]
                scale[source] = target
            scale[name] = target
        else:  # Flatten, Output
            scale[name] = scale[sources[0]]
    return scale, weight_scale, {}


#: bound on any integer parameter: sums of a few of them must still fit the int64 arithmetic
INT_LIMIT = 2.0**62
#: the finest scale of a conv or linear layer's output (and of its bias), and of an IF layer
#: moved by a merge: a layer of negligible weights (10^-30) takes this scale, its weights
#: rounding to 0, rather than one near 2^106 that no threshold or bias after it could be held
#: at; and the sums of the next layers stay below 2^53
SCALE_LIMIT = 2**32


def _rounded(values: np.ndarray, what: str, node: str, scale: float) -> np.ndarray:
    """round(values) as int64, or a ValueError naming the node when a value does not fit
    (a cast of a float beyond the int64 range would wrap silently)."""
    values = np.rint(values)
    too_large = ~(np.abs(values) < INT_LIMIT)
    if np.any(too_large):
        raise ValueError(f"cannot quantise {node!r}: its {what} at scale {scale:g} reach {values[too_large][0]:g}, "
                         f"beyond the integer range (2^62); lower input_scale or weight_bits")
    return values.astype(np.int64)


def _if_origin(graph: g.SpikingGraph, name: str) -> str | None:
    """The IF layer whose output reaches ``name`` through pooling and flattening only, if any."""
    origin, _ = g.through_pools(graph, name)
    return origin if isinstance(graph.nodes[origin], g.IF) else None


def _channel_scaler(name: str, factors: np.ndarray, shape: tuple[int, ...]) -> g.Conv2d | g.Linear:
    """A node multiplying each channel of a signal of ``shape`` by its factor: a depthwise 1×1
    conv, or a diagonal linear layer on a flat signal (each channel's features in a run)."""
    if len(shape) == 3:
        return g.Conv2d(name, weight=factors.reshape(-1, 1, 1, 1), groups=len(factors))
    return g.Linear(name, weight=np.diag(np.repeat(factors, shape[0] // len(factors))))


def rescale_merge_inputs(graph: g.SpikingGraph) -> tuple[g.SpikingGraph, dict[str, str]]:
    """The same network with every merge input that comes from an IF layer (directly, or
    through pools and flattening) read through a rescale node ``<input>.rescale.<merge>`` of
    weights 1, placed just before the merge; and {rescale node: the IF layer it reads}."""
    nodes, inputs, rescalers = {}, {}, {}
    for name, node in graph.nodes.items():
        sources = list(graph.inputs[name])
        if isinstance(node, g.Add):
            for k, source in enumerate(sources):
                origin = _if_origin(graph, source)
                if origin is None:
                    continue
                rescaler = f"{source}.rescale.{name}"
                channels = len(graph.nodes[origin].threshold)
                nodes[rescaler] = _channel_scaler(rescaler, np.ones(channels, np.float32), graph.shapes[source])
                inputs[rescaler], sources[k], rescalers[rescaler] = [source], rescaler, origin
        nodes[name], inputs[name] = node, sources
    return g.SpikingGraph(nodes, inputs), rescalers


def split_amplitude(graph: g.SpikingGraph, names: set[str]) -> g.SpikingGraph:
    """The same network with each IF layer in ``names`` emitting unit spikes. Its amplitudes a
    move to where its output is read, past any average pools and flattening (both per channel):
    a conv or linear reader gets W·a as weights (what the kernels compute from graded spikes
    anyway), any other reader (a merge, the output) reads through ``<source>.amplitude``, a
    depthwise 1×1 conv (a diagonal linear layer on a flat signal) of weights a."""
    carries = {}  # node -> the split IF layer whose unit spikes it carries (through pools, flattening)
    nodes, inputs = {}, {}
    for name, node in graph.nodes.items():
        sources = list(graph.inputs[name])
        carried = [carries[s] for s in sources if s in carries]
        if carried and isinstance(node, (g.AvgPool2d, g.Flatten)):
            carries[name] = carried[0]
        elif carried and isinstance(node, (g.Conv2d, g.Linear)):
            amplitude = graph.nodes[carried[0]].output_amplitude
            node = g.replace(node, weight=g.folded_weight(node, amplitude, graph.shapes[sources[0]], np.float32))
        elif carried:
            for k, source in enumerate(sources):
                if source not in carries:
                    continue
                reader = f"{source}.amplitude"
                amplitude = graph.nodes[carries[source]].output_amplitude
                nodes[reader] = _channel_scaler(reader, amplitude, graph.shapes[source])
                inputs[reader], sources[k] = [source], reader
        if name in names:
            carries[name] = name
            node = g.replace(node, amplitude=np.ones_like(node.output_amplitude))
        nodes[name], inputs[name] = node, sources
    return g.SpikingGraph(nodes, inputs)


#: amplitudes keep at least this many bits when :func:`_narrow_gather_scale` trims them: still
#: finer than the weights' 8, so the product W·a stays as precise as W
NARROW_AMPLITUDE_BITS = 12


def _narrow_gather_scale(graph: g.SpikingGraph, name: str, weight_limit: int, amplitude_bits: int,
                         rescalers: dict[str, str]) -> float:
    """The largest power-of-two scale of IF layer ``name``'s amplitudes at which every conv
    reading its spikes (directly or through pools) provably sums in int32 — gain(W_int) · B ·
    max amplitude · the sum pools' areas ≤ 2^31 − 1, B the layer's ``max_spikes`` (a burst's
    graded spike is a·s, s ≤ B; W_int at the finest scale the weights allow, which bounds any
    coarser one) — so the backends' kernels may gather in int32; or +inf when that would leave
    the amplitudes fewer than :data:`NARROW_AMPLITUDE_BITS` bits (such a conv gathers in int64
    instead)."""
    layer = graph.nodes[name]
    amplitude = float(np.abs(layer.output_amplitude).max(initial=0))
    peak = layer.max_spikes * amplitude  # the largest graded spike a·s
    scale, readers = math.inf, [(user, 1) for user in graph.users(name)]
    while readers:
        reader, area = readers.pop()
        node = graph.nodes[reader]
        if isinstance(node, (g.AvgPool2d, g.Flatten)):
            area *= node.kernel_size[0] * node.kernel_size[1] if isinstance(node, g.AvgPool2d) else 1
            readers += [(user, area) for user in graph.users(reader)]
        elif isinstance(node, g.Conv2d) and reader not in rescalers and peak:
            largest = float(np.abs(node.weight).max(initial=0))
            weight = np.rint(node.weight.astype(np.float64) * _power_of_two_scale(largest, weight_limit))
            if gain(weight):
                scale = min(scale, _power_of_two_scale(gain(weight) * peak * area, np.iinfo(np.int32).max))
    floor = 2.0 ** (min(amplitude_bits, NARROW_AMPLITUDE_BITS) - 1) / amplitude if amplitude else 0.0
    return scale if scale >= floor else math.inf


def _settled_scales(graph: g.SpikingGraph, weight_limit: int, input_scale: float, amplitude_bits: int,
                    rescalers: dict[str, str]):
    """(σ per node, weight scales) once every merge's inputs share a scale,
    or (None, the IF layers that moved) when they do not settle."""
    amplitude_scale = {  # the IF layers' output scales; merges may move them
        name: min(_power_of_two_scale(float(node.output_amplitude.max()), 2**amplitude_bits - 1),
                  _narrow_gather_scale(graph, name, weight_limit, amplitude_bits, rescalers))
        for name, node in graph.nodes.items() if isinstance(node, g.IF)
    }
    ever_moved = set()
    for _ in range(10 * len(graph.nodes)):  # moving an IF's scale changes what follows: recompute
        scale, weight_scale, moved = _scales(graph, weight_limit, input_scale, amplitude_scale, rescalers)
        if not moved:
            return (scale, weight_scale), ever_moved
        ever_moved |= set(moved)  # a layer that would run away is one to split too
        if not all(1 / SCALE_LIMIT < value < SCALE_LIMIT for value in moved.values()):
            break  # a scale running away: a merge that cannot settle at a scale the arithmetic holds
        amplitude_scale.update(moved)
    return None, ever_moved


def check_amplitude_bits(bits: int, name: str = "amplitude_bits") -> None:
    """Raise a ValueError naming ``name`` unless ``bits`` is a width of amplitudes (1..32)."""
    if not 1 <= bits <= 32:
        raise ValueError(f"{name} must be in 1..32, got {bits}")


def laid_out(graph: g.SpikingGraph, weight_bits: int = 8, amplitude_bits: int = 16, input_scale: float = 2.0**6):
    """(the float graph as quantize lays it out — rescale nodes, split layers — and its scales:
    σ per node, weight scales). Computes the same function as ``graph``."""
    if graph.integer:
        raise ValueError("the graph is already quantised")
    g.require_normative(graph, "quantize")
    if not 2 <= weight_bits <= 32:
        raise ValueError(f"weight_bits must be in 2..32, got {weight_bits}")
    check_amplitude_bits(amplitude_bits)
    if not (input_scale > 0 and math.log2(input_scale).is_integer()):
        raise ValueError(f"input_scale must be a power of two, got {input_scale}")
    weight_limit = 2 ** (weight_bits - 1) - 1
    graph, rescalers = rescale_merge_inputs(graph)
    split: set[str] = set()
    while True:
        settled, moved = _settled_scales(graph, weight_limit, input_scale, amplitude_bits, rescalers)
        if settled:
            return graph, settled
        # the IF layers the merges kept moving: a split layer is no merge's input any more
        if not moved or moved & split:
            raise ValueError("cannot quantise: the scales of the residual merges do not settle")
        split |= moved
        graph = split_amplitude(graph, moved)
        # their rescale nodes now hold the amplitudes: convs like any other, which a merge coarsens
        rescalers = {name: origin for name, origin in rescalers.items() if origin not in split}


def quantize_graph(
    graph: g.SpikingGraph, weight_bits: int = 8, amplitude_bits: int = 16, input_scale: float = 2.0**6
) -> g.SpikingGraph:
    """The integer version of a float graph (see the module docstring)."""
    graph, (scale, weight_scale) = laid_out(graph, weight_bits, amplitude_bits, input_scale)

    nodes = {}
    for name, node in graph.nodes.items():
        sources = graph.inputs[name]
        if isinstance(node, g.Input):
            nodes[name] = g.replace(node, scale=input_scale)
        elif isinstance(node, (g.Conv2d, g.Linear)):
            # ≤ the weight limit, but for a rescale node's power of two
            weight = _rounded(node.weight.astype(np.float64) * weight_scale[name], "weights", name, weight_scale[name])
            bias = np.zeros(weight.shape[0]) if node.bias is None else node.bias.astype(np.float64)
            nodes[name] = g.replace(node, weight=weight, bias=_rounded(bias * scale[name], "bias", name, scale[name]))
        elif isinstance(node, g.AvgPool2d):
            nodes[name] = g.SumPool2d(name, kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
        elif isinstance(node, g.IF):
            threshold = 2 * _rounded(node.threshold.astype(np.float64) * scale[sources[0]] / 2, "thresholds", name,
                                     scale[sources[0]])
            if np.any(threshold < 2):
                bad = node.threshold[threshold < 2][0]
                raise ValueError(
                    f"cannot quantise IF layer {name!r}: threshold {bad:g} at scale {scale[sources[0]]:g} rounds to "
                    f"below 2; raise input_scale or weight_bits (or amplitude_bits, where spikes feed it)"
                )
            amplitude = _rounded(node.output_amplitude.astype(np.float64) * scale[name], "amplitudes", name,
                                 scale[name])
            nodes[name] = g.replace(node, threshold=threshold, amplitude=amplitude)
        elif isinstance(node, g.Output):
            nodes[name] = g.replace(node, scale=scale[sources[0]])
        else:
            nodes[name] = node
    return g.SpikingGraph(nodes, {k: list(v) for k, v in graph.inputs.items()})


def gain(weight: np.ndarray) -> float:
    """max_o Σ|W[o, ·]|: no sum of some of an output's terms, each times an input in [−1, 1],
    leaves [−gain, gain]. In float64: exact below 2^53."""
    return float(np.abs(weight.astype(np.float64)).reshape(len(weight), -1).sum(axis=1).max(initial=0))


#: Magnitudes below which every backend computes an integer graph exactly: the torch executor
#: runs it in float64 (a 53-bit significand), the Numba kernels in int64.
EXACT_LIMIT = 2.0**53


class ExactRange:
    """Refuses a run of an integer graph that could leave the range where its arithmetic is exact.

    Bounds on |value| per node, for a batch x and T steps: the input current max|rint(x·σ)|; a
    conv or linear layer max_o Σ|W[o, ·]|·b_in + max|bias|; a sum pool kH·kW·b_in; a merge the
    sum of its inputs' bounds; an IF layer's membrane |v[0]| + T·(b_in + max θ), and its output
    B·max|amplitude| (B = ``max_spikes``: a step emits a·s with s ≤ B spikes); the output
    layer's sum over the steps T·b_in. The membrane bound holds for any B: each step adds its
    input, and a subtraction, made only where v ≥ θ, leaves v − θ in [0, v), so no number of
    them grows |v| (the T·θ term is margin). Beyond :data:`EXACT_LIMIT` torch's float64 rounds
    where int64 does not (and int64 wraps at 2^63), so backends could disagree, or all be wrong:
    such a run is an error that names the node, never a silent result."""

    def __init__(self, graph: g.SpikingGraph):
        self.graph = graph
        self.gains = {  # conv/linear: (max_o Σ|W[o, ·]|, max |bias|)
            name: (gain(node.weight), 0.0 if node.bias is None else float(np.abs(node.bias).max()))
            for name, node in graph.nodes.items() if isinstance(node, (g.Conv2d, g.Linear))}

    def check(self, x: np.ndarray, timesteps: int) -> None:
        """A ValueError naming the node where a bound reaches 2^53."""
        bound: dict[str, float] = {}
        for name, node in self.graph.nodes.items():
            inputs = [bound[source] for source in self.graph.inputs[name]]
            what = "value"
            if isinstance(node, g.Input):
                bound[name] = peak = float(np.abs(np.rint(x.astype(np.float64) * node.scale)).max(initial=0))
                what = "input current"
            elif isinstance(node, (g.Conv2d, g.Linear)):
                gain, bias = self.gains[name]
                bound[name] = peak = gain * inputs[0] + bias
            elif isinstance(node, g.SumPool2d):
                bound[name] = peak = node.kernel_size[0] * node.kernel_size[1] * inputs[0]
            elif isinstance(node, g.IF):
                start = node.threshold / 2 if node.v_init is None else node.v_init
                peak = float(np.abs(start).max()) + timesteps * (inputs[0] + float(node.threshold.max()))
                bound[name] = node.max_spikes * float(np.abs(node.output_amplitude).max())
                what = "membrane potential"
            elif isinstance(node, g.Add):
                bound[name] = peak = sum(inputs)
            elif isinstance(node, g.Output):
                bound[name] = peak = timesteps * inputs[0]
                what = "output current summed over the steps"
            else:  # Flatten, and an AvgPool2d (its mean is no larger than its inputs)
                bound[name] = peak = inputs[0]
            if not peak < EXACT_LIMIT:
                raise ValueError(
                    f"integer graph: {what} of {name!r} ({type(node).__name__}) may reach {peak:.3g} for this input "
                    f"(largest |x| {float(np.abs(x).max(initial=0)):g}) and T = {timesteps}, beyond 2^53, where the "
                    f"backends' integer arithmetic stops being exact; lower quantize's input_scale, weight_bits or "
                    f"amplitude_bits, or scale the input"
                )
