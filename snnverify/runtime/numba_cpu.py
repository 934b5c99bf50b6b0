"""Numba CPU backend (``compile(snn, target="cpu")``): parallel kernels, event-driven synapses.

Layers fed by an IF layer are event-driven: each spike adds its column of pre-scaled weights
W' = W·θ to the outputs it reaches, so their cost grows with the number of spikes, not with
the dense input size. Static signals (the input image and layers fed only by it) are
computed once per batch, not T times. Accumulation order (see :mod:`snnverify.runtime.plan`)
is the CUDA backend's, so float32 spikes agree bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from snnverify import graph as g
from snnverify.runtime import RunResult, check_input, register_backend
from snnverify.runtime.plan import Kernels, build_plan, execute


@njit(parallel=True, cache=True)
def _conv2d_dense(x, w, bias, stride, padding, dilation, groups, zero, out):
    """out[n, o, y, x] = Σ_{c, ky, kx} w[o, c, ky, kx]·x[n, g·C + c, y·s − p + ky·d, ...] + bias[o]."""
    rows, out_channels, out_h, out_w = out.shape
    group_in, kernel_h, kernel_w = w.shape[1], w.shape[2], w.shape[3]
    group_out = out_channels // groups
    height, width = x.shape[2], x.shape[3]
    for job in prange(rows * out_channels):
        n, o = job // out_channels, job % out_channels
        base = (o // group_out) * group_in
        for y in range(out_h):
            for xo in range(out_w):
                acc = zero
                for c in range(group_in):
                    for ky in range(kernel_h):
                        yi = y * stride[0] - padding[0] + ky * dilation[0]
                        if yi < 0 or yi >= height:
                            continue
                        for kx in range(kernel_w):
                            xi = xo * stride[1] - padding[1] + kx * dilation[1]
                            if xi < 0 or xi >= width:
                                continue
                            acc += w[o, c, ky, kx] * x[n, base + c, yi, xi]
                out[n, o, y, xo] = acc + bias[o]


@njit(parallel=True, cache=True)
def _conv2d_events(spikes, w_events, bias, stride, padding, dilation, groups, out):
    """The same sums, driven by events: every spike (c, yi, xi), in ascending order, adds
    w'[c, ky, kx, :] to the outputs (y, x, :) whose window holds it; bias last.

    ``w_events`` is W' laid out [C_in, kH, kW, C_out / groups] and the sums are built
    channels-last, so the innermost loop runs over contiguous output channels."""
    rows, out_channels, out_h, out_w = out.shape
    channels, height, width = spikes.shape[1], spikes.shape[2], spikes.shape[3]
    kernel_h, kernel_w, group_out = w_events.shape[1], w_events.shape[2], w_events.shape[3]
    group_in = channels // groups
    for n in prange(rows):
        sums = np.zeros((out_h, out_w, out_channels), out.dtype)
        for ci in range(channels):
            first = (ci // group_in) * group_out
            for yi in range(height):
                for xi in range(width):
                    if not spikes[n, ci, yi, xi]:
                        continue
                    for ky in range(kernel_h):
                        ty = yi + padding[0] - ky * dilation[0]
                        if ty < 0 or ty % stride[0] != 0 or ty // stride[0] >= out_h:
                            continue
                        y = ty // stride[0]
                        for kx in range(kernel_w):
                            tx = xi + padding[1] - kx * dilation[1]
                            if tx < 0 or tx % stride[1] != 0 or tx // stride[1] >= out_w:
                                continue
                            xo = tx // stride[1]
                            for o in range(group_out):
                                sums[y, xo, first + o] += w_events[ci, ky, kx, o]
        for o in range(out_channels):
            for y in range(out_h):
                for xo in range(out_w):
                    out[n, o, y, xo] = sums[y, xo, o] + bias[o]


@njit(parallel=True, cache=True)
def _linear_dense(x, w, bias, zero, out):
    rows, outputs = out.shape
    for job in prange(rows * outputs):
        n, o = job // outputs, job % outputs
        acc = zero
        for j in range(x.shape[1]):
            acc += w[o, j] * x[n, j]
        out[n, o] = acc + bias[o]


@njit(parallel=True, cache=True)
def _linear_events(spikes, w, bias, out):
    rows, outputs = out.shape
    for n in prange(rows):
        out[n] = 0
        for j in range(spikes.shape[1]):
            if spikes[n, j]:
                for o in range(outputs):
                    out[n, o] += w[o, j]
        for o in range(outputs):
            out[n, o] += bias[o]


@njit(parallel=True, cache=True)
def _sum_pool2d(x, kernel, stride, padding, zero, out):
    """Window sums in (ky, kx) order over a zero-padded input."""
    rows, channels, out_h, out_w = out.shape
    height, width = x.shape[2], x.shape[3]
    for job in prange(rows * channels):
        n, c = job // channels, job % channels
        for y in range(out_h):
            for xo in range(out_w):
                acc = zero
                for ky in range(kernel[0]):
                    yi = y * stride[0] - padding[0] + ky
                    if yi < 0 or yi >= height:
                        continue
                    for kx in range(kernel[1]):
                        xi = xo * stride[1] - padding[1] + kx
                        if 0 <= xi < width:
                            acc += x[n, c, yi, xi]
                out[n, c, y, xo] = acc


@njit(parallel=True, cache=True)
def _if_layer(current, temporal, threshold, v0, steps, batch, spikes):
    """v[0] = θ/2; per step v += I[t]; s = v ≥ θ; v −= θ·s. current: [T·B, F] or [B, F].

    Parallel over (sample, block of neurons); the inner loop runs over contiguous neurons."""
    neurons = threshold.shape[0]
    block = 1024
    blocks = (neurons + block - 1) // block
    for job in prange(batch * blocks):
        b, start = job // blocks, (job % blocks) * block
        stop = min(start + block, neurons)
        v = v0[start:stop].copy()
        for t in range(steps):
            row = t * batch + b if temporal else b
            for f in range(start, stop):
                value = v[f - start] + current[row, f]
                fired = value >= threshold[f]
                spikes[t * batch + b, f] = fired
                v[f - start] = value - threshold[f] if fired else value


@njit(parallel=True, cache=True)
def _graded(spikes, amplitude, out):
    for n in prange(spikes.shape[0]):
        for f in range(spikes.shape[1]):
            out[n, f] = amplitude[f] if spikes[n, f] else 0


def _add(inputs, steps, batch):
    """Σ inputs left to right; a static input is broadcast over the T steps."""
    temporal = any(t for _, t in inputs)
    total = None
    for array, is_temporal in inputs:
        if temporal and not is_temporal:
            array = np.broadcast_to(array[None], (steps, *array.shape)).reshape(steps * batch, *array.shape[1:])
        total = array.copy() if total is None else total + array
    return total


def _mean_over_time(x, temporal, steps, batch):
    """Σ_t x[t] in ascending t, then / T (float64 for integer graphs)."""
    if not temporal:
        return x.astype(np.float64 if x.dtype.kind == "i" else np.float32)
    total = x[:batch].copy()
    for t in range(1, steps):
        total += x[t * batch : (t + 1) * batch]
    return total / np.float32(steps) if total.dtype.kind == "f" else total / steps


def _conv2d(x, weight, bias, node: g.Conv2d, out_shape, events):
    out = np.empty(out_shape, weight.dtype)
    geometry = np.array(node.stride), np.array(node.padding), np.array(node.dilation), node.groups
    if events:
        _conv2d_events(x, events_layout(weight, node.groups), bias, *geometry, out)
    else:
        _conv2d_dense(x, weight, bias, *geometry, weight.dtype.type(0), out)
    return out


def events_layout(weight: np.ndarray, groups: int) -> np.ndarray:
    """W' [C_out, C_in/g, kH, kW] as [C_in, kH, kW, C_out/g]: row ci holds the weights a spike
    of input channel ci sends to its group's output channels."""
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    grouped = weight.reshape(groups, out_channels // groups, group_in, kernel_h, kernel_w)
    return np.ascontiguousarray(grouped.transpose(0, 2, 3, 4, 1).reshape(groups * group_in, kernel_h, kernel_w, -1))


def _linear(x, weight, bias, events):
    out = np.empty((x.shape[0], weight.shape[0]), weight.dtype)
    if events:
        _linear_events(x, weight, bias, out)
    else:
        _linear_dense(x, weight, bias, weight.dtype.type(0), out)
    return out


def _sum_pool(x, node: g.AvgPool2d, out_shape):
    out = np.empty(out_shape, x.dtype)
    _sum_pool2d(x, np.array(node.kernel_size), np.array(node.stride), np.array(node.padding), x.dtype.type(0), out)
    return out


def _if(current, temporal, threshold, initial, steps, batch):
    spikes = np.empty((steps * batch, threshold.shape[0]), np.bool_)
    _if_layer(np.ascontiguousarray(current), temporal, threshold, initial, steps, batch, spikes)
    return spikes


def _graded_values(spikes, amplitude):
    out = np.empty(spikes.shape, amplitude.dtype)
    _graded(spikes, amplitude, out)
    return out


CPU_KERNELS = Kernels(
    to_device=lambda a: a,
    to_host=lambda a: a,
    conv2d=_conv2d,
    linear=_linear,
    sum_pool2d=_sum_pool,
    divide=lambda x, divisor: x / divisor,
    add=_add,
    if_layer=_if,
    graded=_graded_values,
    mean_over_time=_mean_over_time,
    count=lambda s: int(np.count_nonzero(s)),
)


@register_backend("cpu")
class NumbaCPUBackend:
    """Numba CPU kernels (parallel over samples and channels)."""

    def __init__(self, graph: g.SpikingGraph):
        self.graph = graph
        self.plan = build_plan(graph)

    def run(self, x, timesteps: int, record: bool = False, device=None) -> RunResult:
        if device not in (None, "cpu"):
            raise ValueError(f"the cpu target runs on the CPU; got device={device!r}")
        x = check_input(self.graph, x).numpy()
        output, counts, spikes = execute(self.plan, CPU_KERNELS, x, g.check_timesteps(timesteps), record)
        return RunResult(output=np.asarray(output, np.float32), spike_counts=counts, spikes=spikes)
