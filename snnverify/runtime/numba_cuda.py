"""Numba CUDA backend (``compile(snn, target="gpu")``).

One thread per output element (or per neuron for IF layers, looping over T), accumulating
in exactly the order of the CPU kernels — kernel row, kernel column, input channel, bias last —
with products rounded on their own (``fmul_rn``: never contracted into a fused multiply-add),
so float32 spikes are bit-identical to the CPU backend's. Without a CUDA GPU the target is an
error, never a silent CPU run; the kernels also run under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which is how CPU-only machines test them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda
from numba.cuda import libdevice

from snnverify import graph as g
from snnverify.runtime import RunResult, check_input, register_backend
from snnverify.runtime.plan import Kernels, build_plan, execute

_THREADS = 128
SIMULATOR = bool(config.ENABLE_CUDASIM)


def _launch(kernel, count: int, *args):
    kernel[max(1, math.ceil(count / _THREADS)), _THREADS](*args)


@cuda.jit(device=True)
def _float_product(a, b):
    """a·b rounded on its own: NVVM contracts a·b + c into an FMA by default, the CPU does not.
    (The simulator's libdevice is a stub; its numpy float32 product is already rounded alone.)"""
    return a * b if SIMULATOR else libdevice.fmul_rn(a, b)


@cuda.jit(device=True)
def _int_product(a, b):
    return a * b


@cuda.jit(device=True)
def _output_position(index, channels, height, width):
    """(sample, channel, row, column) of flat output ``index`` in a [N, C, H, W] array."""
    return (index // (width * height * channels), (index // (width * height)) % channels,
            (index // width) % height, index % width)


def _synapse_kernels(product):
    """The conv and linear kernels for one kind of arithmetic (float32 or int64)."""

    @cuda.jit
    def conv2d(x, w, bias, stride, padding, dilation, groups, events, zero, out):
        rows, out_channels, out_h, out_w = out.shape
        index = cuda.grid(1)
        if index >= rows * out_channels * out_h * out_w:
            return
        n, o, y, xo = _output_position(index, out_channels, out_h, out_w)
        group_in, kernel_h, kernel_w = w.shape[1], w.shape[2], w.shape[3]
        base = (o // (out_channels // groups)) * group_in
        height, width = x.shape[2], x.shape[3]
        acc = zero
        for ky in range(kernel_h):
            yi = y * stride[0] - padding[0] + ky * dilation[0]
            if yi < 0 or yi >= height:
                continue
            for kx in range(kernel_w):
                xi = xo * stride[1] - padding[1] + kx * dilation[1]
                if xi < 0 or xi >= width:
                    continue
                for c in range(group_in):
                    if events:
                        if x[n, base + c, yi, xi]:
                            acc += w[o, c, ky, kx]
                    else:
                        acc += product(w[o, c, ky, kx], x[n, base + c, yi, xi])
        out[n, o, y, xo] = acc + bias[o]

    @cuda.jit
    def linear(x, w, bias, events, zero, out):
        rows, outputs = out.shape
        index = cuda.grid(1)
        if index >= rows * outputs:
            return
        n, o = index // outputs, index % outputs
        acc = zero
        for j in range(x.shape[1]):
            if events:
                if x[n, j]:
                    acc += w[o, j]
            else:
                acc += product(w[o, j], x[n, j])
        out[n, o] = acc + bias[o]

    return conv2d, linear


_SYNAPSES = {"f": _synapse_kernels(_float_product), "i": _synapse_kernels(_int_product)}


@cuda.jit
def _sum_pool_kernel(x, kernel, stride, padding, zero, out):
    rows, channels, out_h, out_w = out.shape
    index = cuda.grid(1)
    if index >= rows * channels * out_h * out_w:
        return
    n, c, y, xo = _output_position(index, channels, out_h, out_w)
    acc = zero
    for ky in range(kernel[0]):
        yi = y * stride[0] - padding[0] + ky
        if yi < 0 or yi >= x.shape[2]:
            continue
        for kx in range(kernel[1]):
            xi = xo * stride[1] - padding[1] + kx
            if 0 <= xi < x.shape[3]:
                acc += x[n, c, yi, xi]
    out[n, c, y, xo] = acc


@cuda.jit
def _divide_kernel(x, divisor, out):
    index = cuda.grid(1)
    if index < x.size:
        out[index] = x[index] / divisor


@cuda.jit
def _if_kernel(current, temporal, threshold, v0, steps, batch, spikes):
    neurons = threshold.shape[0]
    index = cuda.grid(1)
    if index >= batch * neurons:
        return
    b, f = index // neurons, index % neurons
    theta = threshold[f]
    v = v0[f]
    for t in range(steps):
        v += current[t * batch + b, f] if temporal else current[b, f]
        fired = v >= theta
        spikes[t * batch + b, f] = fired
        if fired:
            v -= theta


@cuda.jit
def _graded_kernel(spikes, amplitude, out):
    index = cuda.grid(1)
    neurons = amplitude.shape[0]
    if index < spikes.shape[0] * neurons:
        n, f = index // neurons, index % neurons
        out[n, f] = amplitude[f] if spikes[n, f] else amplitude[f] * 0


@cuda.jit
def _add_kernel(total, x, temporal_x, batch_rows):
    """total[r] += x[r] (x temporal) or x[r mod B] (x static, broadcast over T)."""
    index = cuda.grid(1)
    width = total.shape[1]
    if index < total.shape[0] * width:
        r, f = index // width, index % width
        total[r, f] += x[r, f] if temporal_x else x[r % batch_rows, f]


@cuda.jit
def _mean_kernel(x, steps, batch, out):
    index = cuda.grid(1)
    width = out.shape[1]
    if index < batch * width:
        b, f = index // width, index % width
        acc = x[b, f]
        for t in range(1, steps):
            acc += x[t * batch + b, f]
        out[b, f] = acc / steps


def _conv2d(x, weight, bias, node: g.Conv2d, out_shape, events):
    out = cuda.device_array(out_shape, weight.dtype)
    geometry = (np.array(node.stride), np.array(node.padding), np.array(node.dilation), node.groups)
    kernel = _SYNAPSES[weight.dtype.kind][0]
    _launch(kernel, math.prod(out_shape), x, weight, bias, *geometry, events, weight.dtype.type(0), out)
    return out


def _linear(x, weight, bias, events):
    out = cuda.device_array((x.shape[0], weight.shape[0]), weight.dtype)
    _launch(_SYNAPSES[weight.dtype.kind][1], out.size, x, weight, bias, events, weight.dtype.type(0), out)
    return out


def _sum_pool(x, node: g.AvgPool2d, out_shape):
    sums = cuda.device_array(out_shape, x.dtype)
    geometry = (np.array(node.kernel_size), np.array(node.stride), np.array(node.padding))
    _launch(_sum_pool_kernel, math.prod(out_shape), x, *geometry, x.dtype.type(0), sums)
    return sums


def _divide(x, divisor):
    out = cuda.device_array(x.size, x.dtype)
    _launch(_divide_kernel, x.size, x.reshape(x.size), divisor, out)
    return out.reshape(x.shape)


def _add(inputs, steps, batch):
    temporal = any(t for _, t in inputs)
    first = inputs[0][0]
    rows = steps * batch if temporal else batch
    total = cuda.device_array((rows, math.prod(first.shape[1:])), first.dtype)
    total[:] = 0
    for array, is_temporal in inputs:
        flat = array.reshape(array.shape[0], -1)
        _launch(_add_kernel, total.size, total, flat, is_temporal, batch)
    return total.reshape(rows, *first.shape[1:])


def _if(current, temporal, threshold, initial, steps, batch):
    spikes = cuda.device_array((steps * batch, threshold.shape[0]), np.bool_)
    _launch(_if_kernel, batch * threshold.shape[0], current, temporal, threshold, initial, steps, batch, spikes)
    return spikes


def _graded(spikes, amplitude):
    out = cuda.device_array(spikes.shape, amplitude.dtype)
    _launch(_graded_kernel, spikes.shape[0] * amplitude.shape[0], spikes, amplitude, out)
    return out


def _mean_over_time(x, temporal, steps, batch):
    host = x.copy_to_host()
    if not temporal:
        return host.astype(np.float64 if host.dtype.kind == "i" else np.float32)
    out = cuda.device_array((batch, x.shape[1]), np.float64 if x.dtype.kind == "i" else x.dtype)
    _launch(_mean_kernel, out.size, x, steps, batch, out)
    return out.copy_to_host()


def _count(spikes) -> int:
    return int(np.count_nonzero(spikes.copy_to_host()))


GPU_KERNELS = Kernels(
    to_device=cuda.to_device,
    to_host=lambda a: a.copy_to_host(),
    conv2d=_conv2d,
    linear=_linear,
    sum_pool2d=_sum_pool,
    divide=_divide,
    add=_add,
    if_layer=_if,
    graded=_graded,
    mean_over_time=_mean_over_time,
    count=_count,
)


@register_backend("gpu")
class NumbaCUDABackend:
    """Numba CUDA kernels on the current GPU (or the CUDA simulator)."""

    def __init__(self, graph: g.SpikingGraph):
        if not cuda.is_available():
            raise RuntimeError(
                "target 'gpu' needs a CUDA GPU and none is available (numba.cuda.is_available() is False); "
                "use target='cpu', or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in the simulator"
            )
        self.graph = graph
        self.plan = build_plan(graph)

    def run(self, x, timesteps: int, record: bool = False, device=None) -> RunResult:
        x = check_input(self.graph, x).numpy()
        output, counts, spikes = execute(self.plan, GPU_KERNELS, x, g.check_timesteps(timesteps), record)
        return RunResult(output=np.asarray(output, np.float32), spike_counts=counts, spikes=spikes)
