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


def tap_columns(kernel_w: int, stride: int) -> np.ndarray:
    """Where :func:`events_layout` stores kernel column kx: grouped by stride phase
    (kW − 1 − kx) mod s, and within a phase by descending kx. The taps one spike reaches along
    a row are one phase, and with unit dilation their outputs are adjacent columns ascending as
    kx descends — so they are adjacent in this layout too (for s = 1: columns reversed)."""
    order = sorted(range(kernel_w), key=lambda kx: ((kernel_w - 1 - kx) % stride, (kernel_w - 1 - kx) // stride))
    columns = np.empty(kernel_w, np.int64)
    columns[order] = np.arange(kernel_w)
    return columns


@njit(cache=True)
def _conv_taps(size, out_size, stride, padding, dilation, stored_at):
    """For each input coordinate i along one axis, the kernel taps k (ascending) whose output
    coordinate o = (i + p − k·d) / s is an integer in [0, out_size): ``count[i]`` of them, the
    index ``stored_at[k]`` of each in the weight layout, ``tap[i, j]``, and ``position[i, j]`` = o.
    Computed once per layer, so the event loop has no divisions or bounds checks."""
    kernel = stored_at.shape[0]
    count = np.zeros(size, np.int64)
    tap = np.zeros((size, kernel), np.int64)
    position = np.zeros((size, kernel), np.int64)
    for i in range(size):
        for k in range(kernel):
            shifted = i + padding - k * dilation
            if shifted >= 0 and shifted % stride == 0 and shifted // stride < out_size:
                tap[i, count[i]] = stored_at[k]
                position[i, count[i]] = shifted // stride
                count[i] += 1
    return count, tap, position


@njit(inline="always")
def _add_run(target, values):
    """target += values, elementwise (one spike's weights onto the sums it reaches)."""
    for k in range(target.shape[0]):
        target[k] += values[k]


@njit(inline="always")
def _scatter_events(spikes, w_events, groups, rows_taps, cols_taps, sums):
    """sums[y, x·C_out + o] += w'[c, ky, kx, o] for every spike (c, yi, xi) of one sample and
    step, in ascending (c, yi, xi) order, and every tap (ky, kx) that lands on an output.

    ``w_events`` is W' laid out [C_in, kH, kW (see :func:`tap_columns`), C_out / groups] (see
    :func:`events_layout`); the sums are channels-last. With one group and unit column
    dilation (``cols_taps[3]``), the outputs one spike reaches in a kernel row are adjacent
    columns, and so are their weights, so its adds for that row are one contiguous run of
    (columns · C_out) values on both sides — the loop the compiler vectorises best. Each
    output still receives at most one add per spike, so the order of its sums is the scan order."""
    channels, height, width = spikes.shape
    kernel_h, kernel_w, group_out = w_events.shape[1], w_events.shape[2], w_events.shape[3]
    out_channels = group_out * groups
    group_in = channels // groups
    rows_count, rows_tap, rows_at = rows_taps
    cols_count, cols_tap, cols_at, contiguous = cols_taps
    for ci in range(channels):
        first = (ci // group_in) * group_out
        flat_w = w_events[ci].reshape(kernel_h, kernel_w * group_out)
        for yi in range(height):
            for xi in range(width):
                columns = cols_count[xi]
                if not spikes[ci, yi, xi] or columns == 0:
                    continue
                for a in range(rows_count[yi]):
                    ky, y = rows_tap[yi, a], rows_at[yi, a]
                    if contiguous:
                        # taps ascending ↔ columns descending: the run starts at the last
                        # tap's output column and at its place in the weight layout
                        run = columns * group_out
                        start = cols_at[xi, columns - 1] * out_channels
                        w_start = cols_tap[xi, columns - 1] * group_out
                        _add_run(sums[y, start : start + run], flat_w[ky, w_start : w_start + run])
                    else:
                        for b in range(columns):
                            start = cols_at[xi, b] * out_channels + first
                            w_start = cols_tap[xi, b] * group_out
                            _add_run(sums[y, start : start + group_out], flat_w[ky, w_start : w_start + group_out])


@njit(cache=True)
def _taps(in_shape, out_shape, stride, padding, dilation, kernel_h, stored_at, groups):
    """Tap tables of both axes (see :func:`_conv_taps`); the column one says whether runs are contiguous."""
    rows_taps = _conv_taps(in_shape[0], out_shape[0], stride[0], padding[0], dilation[0], np.arange(kernel_h))
    count, tap, position = _conv_taps(in_shape[1], out_shape[1], stride[1], padding[1], dilation[1], stored_at)
    return rows_taps, (count, tap, position, groups == 1 and dilation[1] == 1)


@njit(parallel=True, cache=True)
def _conv2d_events(spikes, w_events, bias, stride, padding, dilation, groups, stored_at, out):
    """The same sums as :func:`_conv2d_dense`, driven by events (:func:`_scatter_events`); bias last."""
    rows, out_channels, out_h, out_w = out.shape
    rows_taps, cols_taps = _taps(spikes.shape[2:], out.shape[2:], stride, padding, dilation, w_events.shape[1],
                                 stored_at, groups)
    for n in prange(rows):
        sums = np.zeros((out_h, out_w * out_channels), out.dtype)
        _scatter_events(spikes[n], w_events, groups, rows_taps, cols_taps, sums)
        for o in range(out_channels):
            for y in range(out_h):
                for xo in range(out_w):
                    out[n, o, y, xo] = sums[y, xo * out_channels + o] + bias[o]


@njit(parallel=True, cache=True)
def _conv2d_events_if(spikes, w_events, bias, stride, padding, dilation, groups, stored_at, out_hw,
                      residual, residual_spikes, residual_kind, threshold, v0, steps, batch, out_spikes):
    """IF(conv(spikes) [+ residual]) per sample, step by step, without storing currents.

    For sample b and step t: Σ = the event sums (:func:`_scatter_events`); for every neuron
    f = (o, y, x): I = (Σ + bias[o]) + r, with r by ``residual_kind``: 0 none, 1 ``residual[t·B + b, f]``,
    2 ``residual[b, f]`` (static), 3 ``residual[f]`` if ``residual_spikes[t·B + b, f]`` (a graded
    spike map); then v += I, s = v ≥ θ, v −= θ·s — the unfused kernels' operations, in their order."""
    out_h, out_w = out_hw[0], out_hw[1]
    out_channels = bias.shape[0]
    rows_taps, cols_taps = _taps(spikes.shape[2:], out_hw, stride, padding, dilation, w_events.shape[1], stored_at,
                                 groups)
    neurons = threshold.shape[0]
    for b in prange(batch):
        v = v0.copy()
        sums = np.empty((out_h, out_w * out_channels), v.dtype)
        current = np.empty(neurons, v.dtype)
        for t in range(steps):
            n = t * batch + b
            sums[:] = 0
            _scatter_events(spikes[n], w_events, groups, rows_taps, cols_taps, sums)
            # separate simple loops rather than one loop with every case: each vectorises
            for o in range(out_channels):
                for y in range(out_h):
                    for xo in range(out_w):
                        current[(o * out_h + y) * out_w + xo] = sums[y, xo * out_channels + o] + bias[o]
            if residual_kind == 1:
                current += residual[n]
            elif residual_kind == 2:
                current += residual[b]
            elif residual_kind == 3:  # + a·s, branch-free: adding a·0 = 0 changes no sum
                for f in range(neurons):
                    current[f] += residual[0, f] * residual_spikes[n, f]
            for f in range(neurons):
                value = v[f] + current[f]
                fired = value >= threshold[f]
                out_spikes[n, f] = fired
                v[f] = value - threshold[f] if fired else value


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


@njit(parallel=True, cache=True)
def _add_into(total, x, temporal_x, batch_rows):
    """total[r] += x[r] (x temporal) or x[r mod B] (x static, broadcast over the T steps)."""
    for r in prange(total.shape[0]):
        source = r if temporal_x else r % np.uint64(batch_rows)  # (prange indices are unsigned)
        for f in range(total.shape[1]):
            total[r, f] += x[source, f]


def _add(inputs, steps, batch):
    """Σ inputs left to right, as the CUDA kernel sums them (from zero, in place)."""
    temporal = any(t for _, t in inputs)
    first = inputs[0][0]
    total = np.zeros((steps * batch if temporal else batch, first[0].size), first.dtype)
    for array, is_temporal in inputs:
        _add_into(total, np.ascontiguousarray(array).reshape(array.shape[0], -1), is_temporal, batch)
    return total.reshape(total.shape[0], *first.shape[1:])


def _mean_over_time(x, temporal, steps, batch):
    """Σ_t x[t] in ascending t, then / T (float64 for integer graphs)."""
    if not temporal:
        return x.astype(np.float64 if x.dtype.kind == "i" else np.float32)
    total = x[:batch].copy()
    for t in range(1, steps):
        total += x[t * batch : (t + 1) * batch]
    return total / np.float32(steps) if total.dtype.kind == "f" else total / steps


def _geometry(node: g.Conv2d):
    return np.array(node.stride), np.array(node.padding), np.array(node.dilation), node.groups


def _event_geometry(node: g.Conv2d):
    return *_geometry(node), tap_columns(node.weight.shape[3], node.stride[1])


def _conv2d(x, weight, bias, node: g.Conv2d, out_shape, events):
    """``weight`` is in :func:`events_layout` when ``events`` (the plan applies it once)."""
    out = np.empty(out_shape, weight.dtype)
    if events:
        _conv2d_events(x, weight, bias, *_event_geometry(node), out)
    else:
        _conv2d_dense(x, weight, bias, *_geometry(node), weight.dtype.type(0), out)
    return out


def _conv2d_if(spikes, weight, bias, node: g.Conv2d, out_shape, residual, threshold, initial, steps, batch):
    """Fused IF(conv(spikes) [+ residual]) (see :class:`~snnverify.runtime.plan.Fusion`)."""
    out_hw = np.array(out_shape[1:])
    rows = steps * batch
    no_spikes = np.zeros((1, 1), np.bool_)
    if residual is None:
        kind, values, residual_spikes = 0, np.zeros((1, 1), weight.dtype), no_spikes
    elif residual.amplitude is not None:
        kind, values, residual_spikes = 3, residual.amplitude.reshape(1, -1), residual.array.reshape(rows, -1)
    else:
        kind, values, residual_spikes = (1 if residual.temporal else 2), residual.array, no_spikes
        values = np.ascontiguousarray(values).reshape(values.shape[0], -1)
    out = np.empty((rows, threshold.shape[0]), np.bool_)
    _conv2d_events_if(spikes, weight, bias, *_event_geometry(node), out_hw, values, residual_spikes, kind,
                      threshold, initial, steps, batch, out)
    return out


def events_layout(weight: np.ndarray, node: g.Conv2d) -> np.ndarray:
    """W' [C_out, C_in/g, kH, kW] as [C_in, kH, kW, C_out/g]: row ci holds the weights a spike of
    input channel ci sends to its group's output channels, kernel columns in the order of
    :func:`tap_columns` so that they run in the order of the output columns they reach."""
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    groups = node.groups
    columns = np.empty_like(weight)
    columns[..., tap_columns(kernel_w, node.stride[1])] = weight
    grouped = columns.reshape(groups, out_channels // groups, group_in, kernel_h, kernel_w)
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
    event_weight_layout=events_layout,
    conv2d_if=_conv2d_if,
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
