"""Torch reference executor: defines the normative semantics every other backend must match.

Multi-step execution: each synaptic node processes all T steps of its input in one call
(the time axis folded into the batch axis); only the IF neurons loop over time. A signal that
does not depend on t (the input image, and every synaptic node fed only by it) is kept as one
[batch, ...] tensor and computed once, not T times.

The executor is an ``nn.Module``: BPTT fine-tuning trains it directly, and the spike function
carries the atan surrogate gradient, so training and inference share one implementation.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from snnverify import graph as g
from snnverify.runtime import RunResult, check_run, register_backend
from snnverify.runtime.quantize import ExactRange


#: recorded spikes: the torch dtype of :func:`snnverify.graph.spike_dtype`
_TORCH_SPIKES = {np.dtype(np.bool_): torch.bool, np.dtype(np.uint8): torch.uint8}


def atan_surrogate(v: torch.Tensor, theta: torch.Tensor, alpha: float) -> torch.Tensor:
    """∂s/∂v ≈ (α/2) / (1 + (π/2 · α · (v − θ)/θ)²) / θ — SpikingJelly's ATan surrogate on the
    threshold-normalised membrane, so its width scales with θ."""
    x = (v - theta) / theta
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2) / theta


class IFNeurons(torch.autograd.Function):
    """IF neurons over T steps as one autograd node: the forward pass of :func:`if_neurons`,
    and a backward pass through time that the chain rule gives directly, a few fused tensor
    operations per step instead of the autograd graph of every step's operations (the graph's
    elementwise backward passes held most of BPTT's time).

    Forward, per step t: v⁻_t = β·v⁺_{t−1} + γ·I_t; s_t = H(v⁻_t − θ) (v⁻ ≥ θ, or > θ when
    strict); v⁺_t = v⁻_t − θ·s_t, or v_reset where s_t (zero reset). A burst neuron (B > 1)
    repeats the comparison and the reset B times within the step, s_t counting the spikes
    (:class:`~snnverify.graph.IF`); its k-th comparison tests v⁻_t − (k−1)·θ, so its σ′ is the
    sum Σ_k σ′(v⁻_t − (k−1)·θ). With σ′ the surrogate
    :func:`atan_surrogate` and a_t = ∂L/∂v⁺_t (a_T = 0), backward from t = T:

        subtractive reset: ∂L/∂s_t = g_t − θ·a_t,  ∂L/∂v⁻_t = a_t + σ′(v⁻_t)·∂L/∂s_t
        zero reset:        ∂L/∂s_t = g_t,          ∂L/∂v⁻_t = a_t·(1 − s_t) + σ′(v⁻_t)·∂L/∂s_t
        ∂L/∂I_t = γ·∂L/∂v⁻_t,  a_{t−1} = β·∂L/∂v⁻_t

    (g_t = ∂L/∂s_t from the readers; a static current's gradient is the sum over t). θ, β, γ,
    v_reset and the initial membrane are constants: fine-tuning trains weights and biases only.
    """

    @staticmethod
    def forward(ctx, current, theta, v_init, leak, gain, v_reset, timesteps: int, static: bool, strict: bool,
                alpha: float, max_spikes: int):
        v = v_init.expand(current.shape if static else current.shape[1:])
        spikes, membranes = [], []
        keep = ctx.needs_input_grad[0]  # the membranes serve only the backward pass
        for t in range(timesteps):
            step = current if static else current[t]
            if gain is not None:
                step = gain * step
            v = (v if leak is None else leak * v) + step
            if keep:
                membranes.append(v)
            s = torch.zeros_like(v)
            for _ in range(max_spikes):  # a burst: the binary neuron's comparison and reset, B times
                fired = (v > theta if strict else v >= theta).to(v.dtype)
                v = v - theta * fired if v_reset is None else torch.where(fired.bool(), v_reset.expand_as(v), v)
                s = s + fired
            spikes.append(s)
        spikes = torch.stack(spikes)
        if keep:
            ctx.save_for_backward(torch.stack(membranes), spikes, theta, leak, gain)
        ctx.zero_reset, ctx.static, ctx.alpha, ctx.max_spikes = v_reset is not None, static, alpha, max_spikes
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        membranes, spikes, theta, leak, gain = ctx.saved_tensors
        carried = torch.zeros_like(membranes[0])  # a_t = ∂L/∂v⁺_t
        grad_current = []
        for t in range(membranes.shape[0] - 1, -1, -1):
            surrogate = sum(atan_surrogate(membranes[t] - k * theta, theta, ctx.alpha) for k in range(ctx.max_spikes))
            if ctx.zero_reset:
                grad_v = carried * (1 - spikes[t].clamp(max=1)) + grad_spikes[t] * surrogate
            else:
                grad_v = carried + (grad_spikes[t] - theta * carried) * surrogate
            grad_current.append(grad_v if gain is None else gain * grad_v)
            carried = grad_v if leak is None else leak * grad_v
        grad_current = torch.stack(grad_current[::-1])
        if ctx.static:
            grad_current = grad_current.sum(0)
        return grad_current, None, None, None, None, None, None, None, None, None, None


def if_neurons(current: torch.Tensor, theta: torch.Tensor, timesteps: int, static: bool, alpha: float = 2.0,
               foreign: dict[str, torch.Tensor] | None = None, max_spikes: int = 1):
    """Run IF neurons over T steps; returns spikes [T, batch, ...] as floats (0/1, or the counts
    0…B of a burst neuron with ``max_spikes`` B), differentiable with the atan surrogate
    (:class:`IFNeurons`).

    ``current`` is [batch, ...] when ``static`` (the same current at every step) else
    [T, batch, ...]; ``theta`` broadcasts against one step. One step:
    v ← v + I[t];  s = (v ≥ θ);  v ← v − θ·s.   Initial state v = θ/2.

    ``foreign`` holds the :class:`~snnverify.graph.IF` extension fields that are set (tensors
    shaped like ``theta``; ``strict`` for fire_on ">"), for the neuron
    v ← β·v + γ·I[t];  s = (v ≥ θ) or (v > θ);  v ← v − θ·s  or  v ← v_reset where s;  v[0] = v_init.
    """
    foreign = foreign or {}
    v_init = foreign.get("v_init")
    return IFNeurons.apply(current, theta, theta / 2 if v_init is None else v_init, foreign.get("leak"),
                           foreign.get("gain"), foreign.get("v_reset"), timesteps, static,
                           bool(foreign.get("strict", False)), alpha, max_spikes)


class TorchExecutor(nn.Module):
    """Executes a spiking graph in torch; differentiable with respect to weights and biases."""

    def __init__(self, graph: g.SpikingGraph, surrogate_alpha: float = 2.0):
        """A quantised (integer) graph runs in float64, where its integers are exact below 2^53."""
        super().__init__()
        self.graph = graph
        self.surrogate_alpha = surrogate_alpha
        self.ops = nn.ModuleDict()  # keys are node indices: graph names may contain dots
        self.thresholds = nn.ParameterDict()
        self.amplitudes = nn.ParameterDict()
        self.foreign = nn.ParameterDict()  # "<key>_<field>": the IF extension fields that are set
        self._keys = {name: f"n{i}" for i, name in enumerate(graph.nodes)}
        for name, node in graph.nodes.items():
            key = self._keys[name]
            if isinstance(node, g.Conv2d):
                conv = nn.Conv2d(
                    node.weight.shape[1] * node.groups,
                    node.weight.shape[0],
                    node.weight.shape[2:],
                    stride=node.stride,
                    padding=node.padding,
                    dilation=node.dilation,
                    groups=node.groups,
                    bias=node.bias is not None,
                )
                self.ops[key] = _load(conv, node)
            elif isinstance(node, g.Linear):
                self.ops[key] = _load(nn.Linear(node.weight.shape[1], node.weight.shape[0], node.bias is not None), node)
            elif isinstance(node, g.AvgPool2d):  # SumPool2d: the same window, no divisor
                divisor = 1 if isinstance(node, g.SumPool2d) else None
                self.ops[key] = nn.AvgPool2d(node.kernel_size, node.stride, node.padding, count_include_pad=True,
                                             divisor_override=divisor)
            elif isinstance(node, g.Flatten):
                self.ops[key] = nn.Flatten()
            elif isinstance(node, g.IF):
                # thresholds are fixed during fine-tuning (θ = λ from QCFS); only weights train
                self.thresholds[key] = nn.Parameter(torch.from_numpy(node.threshold.copy()), requires_grad=False)
                self.amplitudes[key] = nn.Parameter(torch.from_numpy(node.output_amplitude.copy()),
                                                    requires_grad=False)
                for field in node.extensions:
                    if field != "fire_on":
                        value = torch.from_numpy(getattr(node, field).copy())
                        self.foreign[f"{key}_{field}"] = nn.Parameter(value, requires_grad=False)
        if graph.integer:
            self.double()

    def forward(self, x: torch.Tensor, timesteps: int, record: bool = False, horizons: tuple[int, ...] | None = None):
        """Returns (output current averaged over T [batch, K], spike counts {layer: tensor},
        recorded spikes {layer: bool [T, batch, ...]} or None).

        With ``horizons`` (each ≤ T), the output is [len(horizons), batch, K]: the current
        averaged over the first h steps for each h, what a run stopped at T = h returns."""
        if horizons is not None:
            g.check_horizons(horizons, timesteps)
        graph = self.graph
        remaining_users = {name: len(graph.users(name)) for name in graph.nodes}
        signals: dict[str, tuple[torch.Tensor, bool]] = {}  # name -> (tensor, temporal?)
        counts, spikes = {}, ({} if record else None)
        output = None
        for name, node in graph.nodes.items():
            key = self._keys[name]
            args = [signals[s] for s in graph.inputs[name]]
            if isinstance(node, g.Input):
                dtype = torch.float64 if graph.integer else torch.float32
                current = x if node.scale == 1 and not graph.integer else _input_current(node, x, graph.integer)
                signals[name] = (current.to(dtype), False)
            elif isinstance(node, g.Add):
                temporal = any(t for _, t in args)
                total = args[0][0]
                for tensor, _ in args[1:]:
                    total = total + tensor  # a static [B, ...] broadcasts against a temporal [T, B, ...]
                signals[name] = (total, temporal)
            elif isinstance(node, g.IF):
                (current, temporal) = args[0]
                per_channel = [-1, *[1] * (len(current.shape) - 2 - temporal)]
                theta = self.thresholds[key].view(per_channel)
                foreign = {field: self.foreign[f"{key}_{field}"].view(per_channel)
                           for field in node.extensions if field != "fire_on"}
                foreign["strict"] = node.fire_on == ">"
                s = if_neurons(current, theta, timesteps, static=not temporal, alpha=self.surrogate_alpha,
                               foreign=foreign, max_spikes=node.max_spikes)
                counts[name] = s.sum()  # differentiable when gradients are on: BPTT's rate penalty
                if record:
                    spikes[name] = s.detach().to(_TORCH_SPIKES[g.spike_dtype(node)])
                signals[name] = (s * self.amplitudes[key].view(per_channel), True)
            elif isinstance(node, g.Output):
                (current, temporal) = args[0]
                if horizons is None:
                    output = (current.sum(0) / timesteps if temporal else current) / node.scale
                elif temporal:  # each readout sums the first h steps as a run of h steps does
                    output = torch.stack([current[:h].sum(0) / h for h in horizons]) / node.scale
                else:
                    output = current.expand(len(horizons), *current.shape) / node.scale
            else:
                (tensor, temporal) = args[0]
                op = self.ops[key]
                if temporal:
                    result = op(tensor.flatten(0, 1)).unflatten(0, tensor.shape[:2])
                else:
                    result = op(tensor)
                signals[name] = (result, temporal)
            for source in graph.inputs[name]:  # free what no later node reads
                remaining_users[source] -= 1
                if remaining_users[source] == 0:
                    del signals[source]
        return output, counts, spikes

    def to_graph(self) -> g.SpikingGraph:
        """The graph with this executor's current (possibly fine-tuned) weights and biases."""
        replacements = {}
        for name, node in self.graph.nodes.items():
            if isinstance(node, (g.Conv2d, g.Linear)):
                op = self.ops[self._keys[name]]
                bias = None if op.bias is None else op.bias.detach().cpu().numpy().copy()
                replacements[name] = g.replace(node, weight=op.weight.detach().cpu().numpy().copy(), bias=bias)
        return self.graph.with_nodes(replacements)


def _input_current(node: g.Input, x: torch.Tensor, integer: bool) -> torch.Tensor:
    """I = x·scale, rounded for integer graphs — the shared definition in ``graph.input_current``."""
    dtype = np.int64 if integer else np.float32
    return torch.from_numpy(g.input_current(node, x.detach().cpu().numpy(), dtype)).to(x.device)


def _load(module: nn.Module, node) -> nn.Module:
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(node.weight))
        if node.bias is not None:
            module.bias.copy_(torch.from_numpy(node.bias))
    return module


@contextlib.contextmanager
def float32_convolutions():
    """cuDNN convolutions (and CUDA matrix products) in float32 while the reference runs: torch
    lets cuDNN round a float32 convolution's inputs to TF32 (10 mantissa bits) by default, which
    would make the reference on a GPU another network than the graph."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@register_backend("torch")
class TorchBackend:
    """The reference backend: :class:`TorchExecutor` on a torch device (CPU by default)."""

    def __init__(self, graph: g.SpikingGraph):
        self.graph = graph
        self.executor = TorchExecutor(graph).eval()
        self.exact_range = ExactRange(graph) if graph.integer else None

    @torch.no_grad()
    def run(self, x, timesteps: int, record: bool = False, device=None, horizons: tuple[int, ...] = ()) -> RunResult:
        # the reference executor runs on any torch device
        x, timesteps = check_run(self.graph, x, timesteps, self.exact_range)
        horizons = g.check_horizons(horizons, timesteps)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.executor.to(device)
        steps = tuple(sorted({*horizons, timesteps}))  # the full run's output is its readout at T
        with float32_convolutions():
            readouts, counts, spikes = self.executor(x.to(device), timesteps, record, horizons=steps)
        readouts = dict(zip(steps, readouts.cpu().numpy().astype(np.float32)))
        return RunResult(
            output=readouts[timesteps],
            spike_counts={k: int(v) for k, v in counts.items()},
            spikes=None if spikes is None else {k: v.cpu().numpy() for k, v in spikes.items()},
            readouts={h: readouts[h] for h in horizons} if horizons else None,
        )
