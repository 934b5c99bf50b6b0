"""Loihi 2 simulator (``compile(snn, target="loihi2_sim", reset="subtract"|"zero")``).

Bit-accurate fixed point, as Lava 0.10.0 models the chip (``PyLifModelBitAcc``, the
bit-accurate ``Dense``) and as lava-dl's netx quantises weights (``optimize_weight_bits``).

Neuron (:func:`lif_run`), one step, u and v 24-bit in int arithmetic, tz(x) = sign(x)·(|x| >> 12)::

    bias_eff = bias_mant << bias_exp                       (added every step)
    vth_eff  = vth << 6                                    (scaled once)
    u' = tz(u·(4096 − (du + 1))) + (a_in << 6)
    u  = u' − 2^24 if u' > 2^23;  u' + 2^24 if u' ≤ −2^23;  else u'   (one wrap, as Lava codes it)
    v  = clip(tz(v·(4096 − dv)) + u + bias_eff, −(2^23 − 1), 2^23 − 1)
    reset="zero" (the published CUBA-LIF): s = v > vth_eff; v ← 0 where s;   u[0] = v[0] = 0
    reset="subtract" (a programmable neuron): s = v ≥ vth_eff, coded as v > vth_eff − 1;
                     v ← v − vth_eff where s;   u[0] = 0, v[0] = vth_eff/2 = vth << 5

u is never reset; there is no refractory period. With du = 4095, dv = 0 the neuron is an IF
neuron: u = a_in << 6 and v accumulates. The subtractive variant keeps the whole datapath and
changes only what a Loihi 2 microcoded neuron is free to change — the comparison, the reset and
the initial state — so that it reproduces the converted network's IF semantics (v[0] = θ/2,
v ≥ θ, subtraction) exactly in integers.

Burst neurons (an IF layer's ``max_spikes`` B > 1; subtractive reset only): the comparison and
the subtraction are repeated, up to B times within the step, and the neuron sends the count
s ∈ {0, …, B} as one graded spike::

    s = 0;  B times: if v > vth_eff − 1: v ← v − vth_eff, s ← s + 1

Loihi 2 spikes may carry an integer payload, and the bit-accurate Dense multiplies each weight
by it: Lava 0.10.0's ``Dense`` with ``num_message_bits`` > 0 computes a = W·s over the payloads
(``lava/proc/dense/models.py``, ``PyDenseModelBitAcc``), the a = Σ w·s of LOIHI2_NIR_FACTS.md,
so the synapse model is unchanged (B ≤ 255 is an 8-bit payload). What the hardware model
cannot represent is refused, naming the layer and B: reset="zero" is the published CUBA-LIF,
whose spikes are binary; and a B for which B thresholds, B·(vth << 6), exceed the 24-bit
membrane's 2^23 − 1, where v could never hold the B-th spike (:func:`map_to_loihi2`).

Synapse (:func:`dense_run`): weights clipped to 8 bits ([−256, 255] mixed sign, [0, 255]
excitatory, [−255, 0] inhibitory), then truncated to ``num_weight_bits`` (w ← (w >> t) << t,
t = 8 − num_weight_bits + mixed); a = Σ w·s, then a << weight_exp (arithmetic right shift,
i.e. floor, when weight_exp < 0). a is delivered one step later: each Dense adds a step.

Network (:func:`map_to_loihi2`, :class:`Loihi2Backend`): every IF layer becomes one
neuron group with one threshold ``vth`` for all its neurons; its per-channel thresholds θ are
folded into the weights (each synapse into neuron o is divided by θ_o), so in the layer's
integer units a_in = vth means "one threshold". Each chain of synaptic nodes from an IF layer
(average pools, a flatten, one Conv2d or Linear) is one synapse group; the presynaptic graded
spike θ_c·s and the pools' divisors are folded into its weights, which are rounded to 8-bit
mantissas at one exponent per group and then re-expressed by netx's rule. A residual Add is
several synapse groups into one neuron group (they share the neuron's scale; each keeps its
own exponent). Conv/Linear biases become the neurons' bias mantissa/exponent. The input image
(direct encoding: a constant current) reaches the first IF layer through synaptic nodes that
carry no spikes; the host computes that current (in float64) and writes it as each neuron's
bias, per image — the first Conv2d runs as input encoding, as it would on Loihi's embedded
CPUs, rather than as rate-coded input spikes, which the float SNN does not have.

Latency: a neuron group at depth k (k Dense stages after the input-driven layers) sees its
first input at step k + 1. Where a residual merge joins paths of different depth, the shorter
ones get a synaptic delay (Loihi 2's DelayDense) so that all arrive together. The simulator
runs T + D steps (D = depth of the output) and reads the output over steps D + 1 .. D + T;
each group's bias is enabled by the host when its first input arrives (step k + 1), so a
layer's window is exactly the float SNN's t = 1..T. Spikes are returned per layer in that
window. The output layer has no neuron (as in the float graph): its synapse accumulators are
summed over the window and its bias is added on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from snnverify import graph as g
from snnverify.runtime import RunResult, check_device, check_input, register_backend

UV_LIMIT = 2**23  # u, v are 24-bit signed
DECAY_SHIFT = 12  # decays are 12-bit fractions of 4096
ACT_SHIFT = 6  # a_in is MSB-aligned by 6 bits
VTH_SHIFT = 6  # so is the threshold
DECAY_MAX = 2**12 - 1  # du, dv: unsigned 12-bit
BIAS_MANT_RANGE = (-(2**12), 2**12 - 1)  # signed 13-bit
BIAS_EXP_RANGE = (0, 7)  # 3-bit (Lava right-shifts a negative exponent; the register has none)
VTH_MAX = 2**17 - 1  # unsigned 17-bit
#: The largest bias register, (2^12 − 1) << 7 = 524160 in v units (8190 a_in units).
MAX_BIAS_EFF = (2**12 - 1) << BIAS_EXP_RANGE[1]
#: The network quantiser's largest vth: the largest with vth << 6 < MAX_BIAS_EFF, so that a
#: saturated input bias exceeds the threshold strictly and the reset-to-zero neuron (v > vth_eff)
#: fires on every step; at 8190 they are equal and it fires on every other step.
MAX_VTH_FOR_INPUT = (MAX_BIAS_EFF - 1) >> VTH_SHIFT
#: The weight exponent register. Not in the facts file: Loihi's (NxSDK) signed 4-bit weight
#: exponent, −8..7, which Lava does not check. An exponent outside it is a quantisation error.
WEIGHT_EXP_RANGE = (-8, 7)
#: |a_in| below 2^24 keeps every intermediate of Lava's int32 datapath inside int32, so int64
#: arithmetic here is identical to Lava's; larger inputs are rejected, never wrapped.
A_IN_LIMIT = 2**24
RESETS = ("subtract", "zero")
SIGN_MODES = ("mixed", "excitatory", "inhibitory")
#: Mantissa range per netx sign mode in which optimize_weight_bits gives <= 8 weight bits and
#: the Dense's 8-bit clipping never bites (netx calls −256 inhibitory, Lava clips it to −255).
MANTISSA_LIMITS = {"mixed": (-128, 127), "excitatory": (0, 255), "inhibitory": (-255, -1)}
#: float32 sums of integers are exact below 2^24: the synapses accumulate in float32 (fast
#: convolutions) only when every partial sum is provably below that.
FLOAT32_EXACT = 2**24


# ----------------------------------------------------------------------------- neuron


@njit(parallel=True, cache=True)
def _lif_kernel(a_in, du, dv, bias_eff, vth_eff, subtract, max_spikes, u_out, v_out, s_out):
    """The step equations of the module docstring over [T, M] inputs; parameters are [M].
    Writes spike counts (uint8: 0/1, or up to ``max_spikes`` for a subtractive burst neuron),
    and u and v when ``u_out``/``v_out`` have T rows (else they are [0, M])."""
    steps, neurons = a_in.shape
    record = u_out.shape[0] == steps
    block = 1024
    for job in prange((neurons + block - 1) // block):
        for n in range(job * block, min(job * block + block, neurons)):
            u = np.int64(0)
            v = vth_eff[n] // 2 if subtract else np.int64(0)
            decay_u = 4096 - (du[n] + 1)
            decay_v = 4096 - dv[n]
            for t in range(steps):
                x = u * decay_u
                u = (x >> DECAY_SHIFT) if x >= 0 else -((-x) >> DECAY_SHIFT)  # tz: rounds toward zero
                u += a_in[t, n] << ACT_SHIFT
                if u > UV_LIMIT:
                    u -= 2 * UV_LIMIT
                elif u <= -UV_LIMIT:
                    u += 2 * UV_LIMIT
                y = v * decay_v
                v = (y >> DECAY_SHIFT) if y >= 0 else -((-y) >> DECAY_SHIFT)
                v = min(max(v + u + bias_eff[n], -(UV_LIMIT - 1)), UV_LIMIT - 1)
                fired = 0
                if subtract:
                    while fired < max_spikes and v > vth_eff[n] - 1:
                        v -= vth_eff[n]
                        fired += 1
                elif v > vth_eff[n]:
                    v = 0
                    fired = 1
                s_out[t, n] = fired
                if record:
                    u_out[t, n] = u
                    v_out[t, n] = v


def _check_range(name: str, value, low: int, high: int, where: str = "") -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.rint(array)):
            array = array.astype(np.int64)
        else:
            raise TypeError(f"{where}{name} must be integers, got {array.dtype} values")
    array = array.astype(np.int64)
    bad = (array < low) | (array > high)
    if np.any(bad):
        raise ValueError(f"{where}{name} = {array[bad].ravel()[0]} is outside its register range [{low}, {high}]")
    return array


def _check_reset(reset: str) -> bool:
    if reset not in RESETS:
        raise ValueError(f"unknown reset mode {reset!r}; known: {', '.join(RESETS)}")
    return reset == "subtract"


def _check_burst(max_spikes: int, subtract: bool, where: str) -> None:
    """A burst (max_spikes > 1) needs the subtractive neuron: the published CUBA-LIF resets v
    to 0 at its first spike and sends binary spikes."""
    if max_spikes > 1 and not subtract:
        raise ValueError(f"{where}max_spikes={max_spikes}: reset='zero' is the published CUBA-LIF, whose spikes are "
                         f"binary; burst neurons run with reset='subtract'")


def _neuron_arrays(neurons: int, **parameters) -> list[np.ndarray]:
    arrays = []
    for name, value in parameters.items():
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != neurons):
            raise ValueError(f"{name} must be a scalar or have one entry per neuron ({neurons}), got shape {value.shape}")
        arrays.append(np.ascontiguousarray(np.broadcast_to(value, (neurons,)), np.int64))
    return arrays


def lif_run(a_in, du, dv, bias_mant, bias_exp, vth, reset: str = "zero", max_spikes: int = 1):
    """Run Loihi 2 CUBA-LIF neurons bit-accurately; returns (u, v, s), each [T, N], after every step.

    ``a_in``: integer input activations [T, N] (|a_in| < 2^24; not clipped). ``du``, ``dv``
    (0..4095), ``bias_mant`` (signed 13-bit), ``bias_exp`` (0..7), ``vth`` (unsigned 17-bit):
    scalars or one per neuron. ``reset="zero"`` is exactly Lava's ``PyLifModelBitAcc``;
    ``"subtract"`` the programmable subtractive-reset variant (module docstring), a burst
    neuron with ``max_spikes`` > 1. s is bool, or the uint8 counts of a burst neuron. A
    parameter outside its register is a ValueError naming it and the value.
    """
    subtract = _check_reset(reset)
    max_spikes = g.check_max_spikes(max_spikes)
    _check_burst(max_spikes, subtract, "")
    a_in = _check_range("a_in", a_in, -A_IN_LIMIT + 1, A_IN_LIMIT - 1)
    if a_in.ndim != 2:
        raise ValueError(f"a_in must be [T, N], got shape {a_in.shape}")
    du, dv = _check_range("du", du, 0, DECAY_MAX), _check_range("dv", dv, 0, DECAY_MAX)
    bias_mant = _check_range("bias_mant", bias_mant, *BIAS_MANT_RANGE)
    bias_exp = _check_range("bias_exp", bias_exp, *BIAS_EXP_RANGE)
    vth = _check_range("vth", vth, 0, VTH_MAX)
    steps, neurons = a_in.shape
    du, dv, bias_mant, bias_exp, vth = _neuron_arrays(neurons, du=du, dv=dv, bias_mant=bias_mant,
                                                      bias_exp=bias_exp, vth=vth)
    u, v = np.empty((steps, neurons), np.int64), np.empty((steps, neurons), np.int64)
    s = np.empty((steps, neurons), np.uint8)
    _lif_kernel(np.ascontiguousarray(a_in), du, dv, bias_mant << bias_exp, vth << VTH_SHIFT, subtract, max_spikes,
                u, v, s)
    return u, v, (s.view(np.bool_) if max_spikes == 1 else s)


# ----------------------------------------------------------------------------- synapse


def sign_mode_of(weights: np.ndarray) -> str:
    """Lava's determine_sign_mode: excitatory if min ≥ 0, inhibitory if max ≤ 0, else mixed."""
    if np.min(weights) >= 0:
        return "excitatory"
    if np.max(weights) <= 0:
        return "inhibitory"
    return "mixed"


def chip_weights(weights, num_weight_bits: int = 8, sign_mode: str | None = None) -> np.ndarray:
    """The weights as the bit-accurate Dense stores them: clipped to 8 bits for the sign mode,
    then the low 8 − num_weight_bits + mixed bits truncated (inhibitory weights by magnitude)."""
    weights = np.asarray(weights).astype(np.int64)
    sign_mode = sign_mode or sign_mode_of(weights)
    if sign_mode not in SIGN_MODES:
        raise ValueError(f"unknown sign mode {sign_mode!r}; known: {', '.join(SIGN_MODES)}")
    mixed = int(sign_mode == "mixed")
    sign = -1 if sign_mode == "inhibitory" else 1
    magnitude = np.clip(sign * weights, -256 * mixed, 255)
    truncate = 8 - num_weight_bits + mixed
    return sign * ((magnitude >> truncate) << truncate)


def shift_accumulator(accumulated: np.ndarray, weight_exp: int) -> np.ndarray:
    """a << weight_exp, or an arithmetic right shift (floor) for a negative exponent."""
    return accumulated << weight_exp if weight_exp >= 0 else accumulated >> -weight_exp


def dense_run(s_in, weights, weight_exp: int = 0, num_weight_bits: int = 8, sign_mode: str | None = None):
    """Bit-accurate Dense over T steps: s_in [T, N_in] (spikes, or graded integers), weights
    [N_out, N_in]; returns a_out [T, N_out] with the one-step delay: a_out[0] = 0,
    a_out[t] = shift(W·s_in[t − 1], weight_exp)."""
    s_in = np.asarray(s_in).astype(np.int64)
    w = chip_weights(weights, num_weight_bits, sign_mode)
    a_out = np.zeros((s_in.shape[0], w.shape[0]), np.int64)
    a_out[1:] = shift_accumulator(s_in[:-1] @ w.T, weight_exp)
    return a_out


def netx_sign_mode(weights: np.ndarray) -> str:
    """netx's partition, which differs from Lava's at 0: inhibitory only if max < 0."""
    if np.max(weights) < 0:
        return "inhibitory"
    return "excitatory" if np.min(weights) >= 0 else "mixed"


@dataclass
class OptimizedWeights:
    weights: np.ndarray  # mantissas shifted left by scale_bits (what the Dense stores)
    num_weight_bits: int
    weight_exp: int
    sign_mode: str


def optimize_weight_bits(weights) -> OptimizedWeights:
    """lava-dl netx's rule for an integer weight matrix (values in [−256, 255]):

    scale = min(127/max, −128/min) (mixed), −256/min (inhibitory: max < 0), 255/max (else);
    scale_bits = ⌊log2 scale⌋ + is_signed; n = the largest n ≤ 8 (down to 0) with every weight
    divisible by 2^n, minus is_signed; num_weight_bits = 8 − scale_bits − n;
    weight_exp = −scale_bits; weights ← weights << scale_bits.

    Differences from netx, both where netx cannot give a usable result: weights outside
    [−256, 255] are a ValueError (netx clips them with a printed warning), and an all-zero
    matrix (where netx divides by zero) gets 8 bits and exponent 0.
    """
    weights = np.asarray(weights)
    if weights.dtype.kind not in "iu":
        raise TypeError(f"optimize_weight_bits expects integer weights, got {weights.dtype}")
    weights = weights.astype(np.int64)
    low, high = int(weights.min()), int(weights.max())
    if low < -256 or high > 255:
        raise ValueError(f"weights must lie in [-256, 255] to fit the 8-bit synapse, got [{low}, {high}]")
    if low == high == 0:
        return OptimizedWeights(weights, 8, 0, "excitatory")
    sign_mode = netx_sign_mode(weights)
    signed = int(sign_mode == "mixed")
    if sign_mode == "inhibitory":
        scale = -256 / low
    elif sign_mode == "excitatory":
        scale = 255 / high
    else:
        scale = min(127 / high if high > 0 else math.inf, -128 / low)
    scale_bits = math.floor(math.log2(scale)) + signed
    n = 8
    while n > 0 and np.any(weights % (1 << n)):
        n -= 1
    n -= signed
    return OptimizedWeights(weights << scale_bits, 8 - scale_bits - n, -scale_bits, sign_mode)


# ----------------------------------------------------------------------------- quantisation


@dataclass
class SynapseGroup:
    """One Dense (or convolutional) synapse group from IF layer ``source`` into a neuron group.

    The spikes go through ``pools`` (window sums of non-overlapping windows, or one window
    geometry of any kind when no weighted op follows), are flattened to the op's input, and
    are weighted: ``kind`` "conv" (Conv2d geometry in ``conv``), "linear" ([N_out, N_in]) or
    "elementwise" (one weight per element of the source map after pooling, in the target's
    shape: identity skips and pool-only paths). a = shift(Σ weights·s, weight_exp).
    """

    source: str
    kind: str
    weights: np.ndarray  # chip weights (8-bit mantissas << netx's scale_bits), int64
    num_weight_bits: int
    weight_exp: int
    sign_mode: str
    pools: list[tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    conv: g.Conv2d | None = None  # geometry of a "conv" group
    delay: int = 1  # steps from the source's spike to delivery (1: Dense; more: DelayDense)
    rounding_error: float = 0.0  # max |quantised − exact| weight, in a_in units
    nodes: list[str] = field(default_factory=list)  # the graph nodes folded into this group


@dataclass
class NeuronGroup:
    """An IF layer as Loihi 2 neurons: one ``vth`` (a_in units per threshold), per-neuron
    bias mantissa/exponent (constant part), synapse groups, and the host-computed input
    current nodes ``static`` (their sum becomes bias, per image)."""

    name: str
    shape: tuple[int, ...]
    vth: int
    theta: np.ndarray  # float threshold per neuron (flattened), for the normalisation
    bias: np.ndarray  # constant bias per neuron in float a_in units (before encoding)
    bias_mant: np.ndarray
    bias_exp: np.ndarray
    groups: list[SynapseGroup]
    static: list[str]
    latency: int = 0
    bias_error: float = 0.0  # max |encoded − exact| constant bias, in a_in units
    max_spikes: int = 1  # B: the graded spike's largest payload (1: binary spikes)


@dataclass
class OutputReadout:
    """The output node: synapse groups read as accumulators (``vth`` a_in units per output
    unit, i.e. per current unit / Output.scale), float bias (output units) added on the host,
    static currents (current units) computed on the host."""

    name: str
    vth: int
    bias: np.ndarray  # float, per output
    groups: list[SynapseGroup]
    static: list[str]
    scale: float  # the graph's Output.scale
    latency: int = 0


@dataclass
class Loihi2Network:
    """A spiking graph quantised for Loihi 2 (see the module docstring)."""

    graph: g.SpikingGraph
    layers: dict[str, NeuronGroup]
    output: OutputReadout
    vth: int

    @property
    def exact(self) -> bool:
        """Whether every weight and constant bias was represented without rounding."""
        groups = [grp for layer in self.layers.values() for grp in layer.groups] + self.output.groups
        return all(grp.rounding_error == 0 for grp in groups) and all(
            layer.bias_error == 0 for layer in self.layers.values())


def _chains(graph: g.SpikingGraph, name: str, top: bool = True) -> list[list[str]]:
    """The paths (source first, ``name`` last) whose signals sum to ``name``'s output; each
    starts at an IF or Input node. Merges distribute only directly in front of a neuron."""
    node = graph.nodes[name]
    if isinstance(node, (g.IF, g.Input)):
        return [[name]]
    if isinstance(node, g.Add):
        if not top:
            raise ValueError(f"loihi2_sim: merge {name!r} feeds a synaptic node; it must feed an IF layer "
                             f"or the output directly")
        return [chain for source in graph.inputs[name] for chain in _chains(graph, source, top=True)]
    (source,) = graph.inputs[name]
    return [chain + [name] for chain in _chains(graph, source, top=False)]


def _overlapping(pool: g.AvgPool2d) -> bool:
    return pool.stride != pool.kernel_size or pool.padding != (0, 0)


def _mantissas(exact: np.ndarray) -> tuple[np.ndarray, int, float]:
    """8-bit mantissas m and exponent E with m·2^E ≈ ``exact`` (a_in units): the smallest E
    at which round(exact/2^E) fits the mantissa range of its netx sign mode (so the most bits
    survive, and netx's re-expression of m is lossless)."""
    peak = float(np.abs(exact).max())
    if peak == 0:
        return np.zeros(exact.shape, np.int64), 0, 0.0
    # log2 of each factor: peak / 255 underflows to 0 for subnormal peaks; 2^−1074 is the smallest float
    exponent = max(math.floor(math.log2(peak) - math.log2(255)) - 1, -1074)
    while True:
        m = np.rint(exact / 2.0**exponent)
        low, high = MANTISSA_LIMITS[netx_sign_mode(m)] if m.any() else (0, 0)
        if m.min() >= low and m.max() <= high:
            break
        exponent += 1
    return m.astype(np.int64), exponent, float(np.abs(m * 2.0**exponent - exact).max())


def synapse_registers(mantissas: np.ndarray, exponent: int) -> OptimizedWeights:
    """The Dense registers for weights m·2^E: netx's re-expression of the mantissas, with the
    exponents combined (weight_exp = E − scale_bits).

    One exception, found by the property tests: netx scales inhibitory weights by −256/min,
    which maps a power-of-two |min| to −256; the Dense clips that to −255 and truncation then
    zeroes it (e.g. a lone −128 gets 0 weight bits and delivers nothing). Where netx's result
    does not survive the Dense's clip and truncation, the mantissas are stored as they are
    (8 bits, exponent E), which is lossless."""
    optimized = optimize_weight_bits(mantissas)
    if not np.array_equal(chip_weights(optimized.weights, optimized.num_weight_bits, optimized.sign_mode),
                          optimized.weights):
        return OptimizedWeights(mantissas.astype(np.int64), 8, exponent, netx_sign_mode(mantissas))
    return OptimizedWeights(optimized.weights, optimized.num_weight_bits, exponent + optimized.weight_exp,
                            optimized.sign_mode)


def _amplitude_per_element(amplitude: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-channel vector repeated over the (C, H, W) or (F,) map, flattened."""
    return np.repeat(amplitude, math.prod(shape) // len(amplitude))


def _spike_group(graph: g.SpikingGraph, chain: list[str], theta: np.ndarray, vth: int, target: str):
    """(SynapseGroup, bias contribution in a_in units per target neuron) of one spike chain.
    ``theta``: the target's threshold per (flattened) neuron; the output's scale for the output."""
    shapes = graph.shapes
    source = graph.nodes[chain[0]]
    ops = [graph.nodes[name] for name in chain[1:]]
    weighted = [op for op in ops if isinstance(op, (g.Conv2d, g.Linear))]
    if len(weighted) > 1 or (weighted and ops[-1] is not weighted[0]):
        raise ValueError(f"loihi2_sim: the path {' -> '.join(chain)} into {target!r} has synaptic nodes after a "
                         f"Conv2d/Linear; one Dense carries at most one weighted layer, last")
    pools = [op for op in ops if isinstance(op, g.AvgPool2d)]
    if (weighted or len(pools) > 1) and any(_overlapping(p) for p in pools):
        bad = next(p for p in pools if _overlapping(p))
        raise ValueError(f"loihi2_sim: pooling {bad.name!r} (kernel {bad.kernel_size}, stride {bad.stride}, "
                         f"padding {bad.padding}) has overlapping windows; folded into the next synapse it would sum "
                         f"several weights into one 8-bit weight")
    area = math.prod(p.kernel_size[0] * p.kernel_size[1] for p in pools if not isinstance(p, g.SumPool2d))
    # most spikes one input can count: a window of B-spike bursts
    window = source.max_spikes * math.prod(p.kernel_size[0] * p.kernel_size[1] for p in pools)
    pooled_shape = shapes[pools[-1].name] if pools else shapes[source.name]
    amplitude = source.output_amplitude.astype(np.float64)
    op = weighted[0] if weighted else None
    if isinstance(op, g.Conv2d):
        group_in = op.weight.shape[1]
        channel = np.arange(group_in * op.groups).reshape(op.groups, group_in)
        per_out = channel[np.arange(op.weight.shape[0]) // (op.weight.shape[0] // op.groups)]
        theta_out = theta.reshape(op.weight.shape[0], -1)[:, 0]
        exact = op.weight * amplitude[per_out][:, :, None, None] / area / theta_out[:, None, None, None] * vth
        kind = "conv"
    elif isinstance(op, g.Linear):
        amp_in = _amplitude_per_element(amplitude, pooled_shape)
        exact = op.weight * amp_in[None, :] / area / theta[:, None] * vth
        kind = "linear"
    else:
        exact = _amplitude_per_element(amplitude, pooled_shape) / area / theta * vth
        kind = "elementwise"
    mantissas, exponent, error = _mantissas(exact)
    optimized = synapse_registers(mantissas, exponent)
    weight_exp = optimized.weight_exp
    if not WEIGHT_EXP_RANGE[0] <= weight_exp <= WEIGHT_EXP_RANGE[1]:
        raise ValueError(f"loihi2_sim: layer {target!r}: synapses from {chain[0]!r} need weight exponent {weight_exp} "
                         f"(largest weight {np.abs(exact).max():.6g} a_in units, vth {vth}), outside the chip's "
                         f"{list(WEIGHT_EXP_RANGE)}")
    fan_in = np.abs(optimized.weights).reshape(optimized.weights.shape[0], -1).sum(1).max() * window
    if fan_in >= FLOAT32_EXACT:
        raise ValueError(f"loihi2_sim: layer {target!r}: synapses from {chain[0]!r} can accumulate {fan_in} per step, "
                         f"beyond the simulator's exact range 2^24")
    group = SynapseGroup(
        source=source.name, kind=kind, weights=optimized.weights, num_weight_bits=optimized.num_weight_bits,
        weight_exp=weight_exp, sign_mode=optimized.sign_mode,
        pools=[(p.kernel_size, p.stride, p.padding) for p in pools], conv=op if kind == "conv" else None,
        rounding_error=error, nodes=chain[1:])
    bias = np.zeros(len(theta))
    if op is not None and op.bias is not None:
        bias = _amplitude_per_element(op.bias.astype(np.float64), (len(theta),)) / theta * vth
    return group, bias


def encode_bias(bias: np.ndarray, saturate: bool = False, layer: str = "",
                reason: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bias mantissa/exponent per neuron for a bias in a_in units: bias_eff = bias·2^6 =
    mant << exp with the smallest exp in 0..7 whose mantissa fits 13 bits (the finest
    resolution). Returns (mant, exp, |encoded − exact| in a_in units). Out of range: a
    ValueError naming the layer and value (and ``reason``, why it may not saturate), or with
    ``saturate`` the nearest representable."""
    target = np.asarray(bias, np.float64) * 2.0**ACT_SHIFT
    low, high = BIAS_MANT_RANGE
    exp = np.full(target.shape, BIAS_EXP_RANGE[1], np.int64)
    for e in range(BIAS_EXP_RANGE[1], BIAS_EXP_RANGE[0] - 1, -1):
        fits = (np.rint(target / 2.0**e) >= low) & (np.rint(target / 2.0**e) <= high)
        exp = np.where(fits, e, exp)
    mant = np.rint(target / 2.0**exp)
    over = (mant < low) | (mant > high)
    if np.any(over) and not saturate:
        raise ValueError(f"loihi2_sim: layer {layer!r}: bias {target[over].ravel()[0] / 2**ACT_SHIFT:.6g} a_in units "
                         f"(neuron {np.flatnonzero(over.ravel())[0]}) exceeds the 13-bit mantissa at exponent 7, "
                         f"±{2**12 * 2**7 / 2**ACT_SHIFT:g}{reason}")
    mant = np.clip(mant, low, high).astype(np.int64)
    return mant, exp, np.abs((mant << exp) - target) / 2.0**ACT_SHIFT


def map_to_loihi2(graph: g.SpikingGraph, vth: int = 2**10) -> Loihi2Network:
    """Quantise a converted spiking graph to Loihi 2 fixed point (see the module docstring).

    ``vth``: every neuron group's threshold mantissa, i.e. how many a_in units make one
    threshold θ. 2^10 leaves 2^17/vth = 128 thresholds of headroom before v saturates and
    keeps bias resolution at θ/2^16. At most 8189: a saturated input bias (4095 << 7) must
    exceed vth << 6 strictly, so that a neuron driven above one threshold fires every step
    under both resets (the reset-to-zero neuron fires on v > vth << 6). A burst layer (B > 1)
    needs B·(vth << 6) ≤ 2^23 − 1, or v could never hold its B-th spike. Raises ValueError
    naming the layer and the value for anything the chip cannot represent (weight exponent,
    bias, vth, burst, unsupported structure).
    """
    if isinstance(vth, bool) or not isinstance(vth, (int, np.integer)) or not 1 <= vth <= MAX_VTH_FOR_INPUT:
        raise ValueError(f"vth must be an integer in [1, {MAX_VTH_FOR_INPUT}] (a saturated input bias "
                         f"{MAX_BIAS_EFF} must exceed vth << 6), got {vth!r}")
    vth = int(vth)
    shapes = graph.shapes
    layers: dict[str, NeuronGroup] = {}
    latency: dict[str, int] = {}

    def groups_into(name: str, target: str, theta: np.ndarray):
        groups, static, bias = [], [], np.zeros(len(theta))
        for chain in _chains(graph, graph.inputs[name][0]):
            if isinstance(graph.nodes[chain[0]], g.Input):
                static.append(chain[-1])
                continue
            group, chain_bias = _spike_group(graph, chain, theta, vth, target)
            groups.append(group)
            bias += chain_bias
        depth = max((latency[grp.source] + 1 for grp in groups), default=0)
        for grp in groups:
            grp.delay = depth - latency[grp.source]
        return groups, static, bias, depth

    for name, node in graph.nodes.items():
        if isinstance(node, g.IF):
            burst = node.max_spikes
            if burst * (vth << VTH_SHIFT) > UV_LIMIT - 1:
                raise ValueError(f"loihi2_sim: IF layer {name!r} has max_spikes={burst}: {burst} thresholds of vth "
                                 f"{vth} ({burst * (vth << VTH_SHIFT)}) exceed the 24-bit membrane's {UV_LIMIT - 1}; "
                                 f"use vth <= {(UV_LIMIT - 1) // burst >> VTH_SHIFT}")
            theta = _amplitude_per_element(node.threshold.astype(np.float64), shapes[name])
            groups, static, bias, depth = groups_into(name, name, theta)
            latency[name] = depth
            mant, exp, error = encode_bias(bias, layer=name)
            layers[name] = NeuronGroup(name, shapes[name], vth, theta, bias, mant, exp, groups, static, depth,
                                       float(error.max(initial=0.0)), node.max_spikes)
        elif isinstance(node, g.Output):
            # normalised by the output's scale (integer graphs), so the readout is in output units
            scale = np.full(math.prod(shapes[name]), float(node.scale))
            groups, static, bias, depth = groups_into(name, name, scale)
            output = OutputReadout(name, vth, bias / vth, groups, static, node.scale, depth)
    return Loihi2Network(graph, layers, output, vth)


# ----------------------------------------------------------------------------- simulation


def _static_value(graph: g.SpikingGraph, name: str, x: torch.Tensor, cache: dict) -> torch.Tensor:
    """A node fed only by the input, in float64 on the host: [B, ...]."""
    if name in cache:
        return cache[name]
    node = graph.nodes[name]
    args = [_static_value(graph, s, x, cache) for s in graph.inputs[name]]
    if isinstance(node, g.Input):
        value = x
    elif isinstance(node, g.Conv2d):
        bias = None if node.bias is None else torch.from_numpy(node.bias.astype(np.float64))
        value = F.conv2d(args[0], torch.from_numpy(node.weight.astype(np.float64)), bias, node.stride, node.padding,
                         node.dilation, node.groups)
    elif isinstance(node, g.Linear):
        bias = None if node.bias is None else torch.from_numpy(node.bias.astype(np.float64))
        value = F.linear(args[0], torch.from_numpy(node.weight.astype(np.float64)), bias)
    elif isinstance(node, g.AvgPool2d):
        value = F.avg_pool2d(args[0], node.kernel_size, node.stride, node.padding, count_include_pad=True,
                             divisor_override=1 if isinstance(node, g.SumPool2d) else None)
    elif isinstance(node, g.Flatten):
        value = args[0].flatten(1)
    elif isinstance(node, g.Add):
        value = sum(args[1:], args[0])
    else:
        raise ValueError(f"loihi2_sim: node {name!r} ({type(node).__name__}) cannot be computed on the host")
    cache[name] = value
    return value


def _accumulate(group: SynapseGroup, spikes: np.ndarray, a_in: np.ndarray) -> None:
    """a_in += shift(Σ w·s) for spikes [R, *source shape] (R = T·B rows), a_in int64 [R, N].
    Sums run in float32 (fast convolutions), exact because every partial sum is an integer
    below 2^24; the shift is the Dense's, in integers."""
    x = torch.from_numpy(spikes).to(torch.float32)
    for kernel, stride, padding in group.pools:
        x = F.avg_pool2d(x, kernel, stride, padding, count_include_pad=True, divisor_override=1)
    w = torch.from_numpy(group.weights.astype(np.float32))
    if group.kind == "conv":
        c = group.conv
        x = F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)
    elif group.kind == "linear":
        x = x.flatten(1) @ w.T
    else:
        x = x.flatten(1) * w.flatten()[None, :]
    inexact = _add_shifted(np.ascontiguousarray(x.reshape(a_in.shape).numpy()), group.weight_exp, a_in)
    if inexact:  # a convolution algorithm that is not exact on integers (never seen; checked, not assumed)
        raise RuntimeError(f"loihi2_sim: {inexact} synaptic sums from {group.source!r} were not integers")


@njit(parallel=True, cache=True)
def _add_shifted(sums, weight_exp, a_in):
    """a_in += int(sums) << weight_exp (arithmetic right shift, i.e. floor, when negative);
    returns how many sums were not integers."""
    rows, columns = a_in.shape
    inexact = 0
    for r in prange(rows):
        for c in range(columns):
            value = np.int64(sums[r, c])
            inexact += value != sums[r, c]
            a_in[r, c] += (value << weight_exp) if weight_exp >= 0 else (value >> -weight_exp)
    return inexact


@register_backend("loihi2_sim")
class Loihi2Backend:
    """Loihi 2 fixed-point simulator of a spiking graph (``reset``: "subtract" or "zero")."""

    options = ("reset", "vth")

    def __init__(self, graph: g.SpikingGraph, reset: str = "subtract", vth: int = 2**10):
        self.subtract = _check_reset(reset)
        for layer in graph.neuron_layers:
            _check_burst(layer.max_spikes, self.subtract, f"loihi2_sim: IF layer {layer.name!r} has ")
        self.reset = reset
        self.graph = graph
        self.network = map_to_loihi2(graph, vth)
        #: batches are split so that the largest layer's int64 input (T·B·N) stays below this
        self.max_elements = 2**25

    @property
    def latency(self) -> dict[str, int]:
        """Chip step − 1 at which each layer's (and the output's) window starts."""
        return {**{n: layer.latency for n, layer in self.network.layers.items()},
                self.network.output.name: self.network.output.latency}

    def _static_currents(self, x) -> dict[str, np.ndarray]:
        """The input-driven currents [B, N] that feed neuron groups and the output, computed on
        the host in float64 from the input current I = x·scale (rounded in integer graphs)."""
        current = g.input_current(self.graph.input_node, check_input(self.graph, x).numpy(),
                                  np.int64 if self.graph.integer else np.float64)
        x64, cache = torch.from_numpy(current.astype(np.float64)), {}
        names = [s for layer in self.network.layers.values() for s in layer.static] + self.network.output.static
        return {s: _static_value(self.graph, s, x64, cache).reshape(len(x64), -1).numpy() for s in names}

    def input_bias(self, x, currents: dict[str, np.ndarray] | None = None):
        """The per-image bias registers {layer: (mant, exp, rounding error)}, each [B, N], of the
        neuron groups that receive the input current. A current beyond the register saturates
        only in layers without synaptic input, whose spikes it cannot change: the register
        holds +8190 and −8192 a_in units, beyond ±vth (vth ≤ 8189), so a neuron driven by more
        than one threshold fires every step, by less than minus one threshold never. A burst
        layer (B > 1) fires B spikes every step when driven by more than B thresholds: that
        holds of the saturated register only while B·vth ≤ 8190; beyond, a current past the
        register is a ValueError naming the layer and B."""
        currents = self._static_currents(x) if currents is None else currents
        register = MAX_BIAS_EFF >> ACT_SHIFT
        fields = {}
        for name, layer in self.network.layers.items():
            if not layer.static:
                continue
            bursts_saturate = layer.max_spikes * layer.vth <= register
            reason = "" if bursts_saturate else (
                f"; it may not saturate: burst layer (max_spikes={layer.max_spikes}) would fire at most "
                f"{register // layer.vth} spikes per step at vth {layer.vth} "
                f"(use vth <= {register // layer.max_spikes})")
            fields[name] = encode_bias(layer.bias + sum(currents[s] for s in layer.static) / layer.theta * layer.vth,
                                       saturate=not layer.groups and bursts_saturate, layer=name, reason=reason)
        return fields

    def run(self, x, timesteps: int, record: bool = False, device=None, horizons: tuple[int, ...] = ()) -> RunResult:
        check_device(self.target, device, torch.device("cpu"))
        x = check_input(self.graph, x)
        timesteps = g.check_timesteps(timesteps)
        horizons = g.check_horizons(horizons, timesteps)
        largest = max((math.prod(layer.shape) for layer in self.network.layers.values()), default=1)
        chunk = max(1, self.max_elements // (timesteps * largest))
        results = [self._run(x[i:i + chunk], timesteps, record, horizons) for i in range(0, len(x), chunk)]
        counts = {k: sum(r.spike_counts[k] for r in results) for k in results[0].spike_counts}
        spikes = {k: np.concatenate([r.spikes[k] for r in results], axis=1) for k in counts} if record else None
        readouts = {h: np.concatenate([r.readouts[h] for r in results]) for h in horizons} if horizons else None
        return RunResult(np.concatenate([r.output for r in results]), counts, spikes, readouts)

    def _run(self, x: torch.Tensor, timesteps: int, record: bool, horizons: tuple[int, ...]) -> RunResult:
        network = self.network
        batch = len(x)
        currents = self._static_currents(x)
        fields = self.input_bias(x, currents)
        spikes: dict[str, np.ndarray] = {}  # layer -> counts [T·B, *shape], rows t-major, in its window
        for name, layer in network.layers.items():
            neurons = math.prod(layer.shape)
            a_in = np.zeros((timesteps * batch, neurons), np.int64)
            for group in layer.groups:
                _accumulate(group, spikes[group.source], a_in)
            if name in fields:
                mant, exp, _ = fields[name]
            else:
                mant, exp = np.broadcast_to(layer.bias_mant, (batch, neurons)), np.broadcast_to(layer.bias_exp,
                                                                                                (batch, neurons))
            bias_eff = np.ascontiguousarray(mant << exp, np.int64).ravel()
            columns = batch * neurons
            vth_eff = np.full(columns, layer.vth << VTH_SHIFT, np.int64)
            s = np.empty((timesteps, columns), np.uint8)
            empty = np.empty((0, columns), np.int64)
            # IF neurons: du = 4095 (u = a_in << 6 each step), dv = 0 (v integrates)
            _lif_kernel(a_in.reshape(timesteps, columns), np.full(columns, DECAY_MAX, np.int64),
                        np.zeros(columns, np.int64), bias_eff, vth_eff, self.subtract, layer.max_spikes, empty, empty,
                        s)
            spikes[name] = s.reshape(timesteps * batch, *layer.shape).view(g.spike_dtype(self.graph.nodes[name]))
        output = network.output
        classes = len(output.bias)
        accumulators = np.zeros((timesteps * batch, classes), np.int64)
        for group in output.groups:
            _accumulate(group, spikes[group.source], accumulators)
        running = accumulators.reshape(timesteps, batch, classes).cumsum(0)  # int64: exact in any order

        def readout(h: int) -> np.ndarray:
            current = running[h - 1] / h / output.vth + output.bias
            if output.static:
                current = current + sum(currents[s] for s in output.static) / output.scale
            return current.astype(np.float32)

        counts = {name: int(s.sum(dtype=np.int64)) for name, s in spikes.items()}
        recorded = {name: s.reshape(timesteps, batch, *s.shape[1:]) for name, s in spikes.items()} if record else None
        return RunResult(readout(timesteps), counts, recorded, {h: readout(h) for h in horizons})
