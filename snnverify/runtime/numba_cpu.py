"""Numba CPU backend (``compile(snn, target="cpu")``): parallel kernels, event-driven synapses.

Layers fed by an IF layer are event-driven: each spike adds its column of pre-scaled weights
W' = W·θ to the outputs it reaches, so their cost grows with the number of spikes, not with
the dense input size. Static signals (the input image and layers fed only by it) are
computed once per batch, not T times. Accumulation order (see :mod:`snnverify.runtime.plan`)
is the CUDA backend's, so float32 spikes agree bit for bit.

Every IF layer fed by an event-driven conv (plus a residual, which may itself be an event-driven
projection conv) runs as one fused kernel (:func:`_conv2d_events_if`) per sample and step, so
the [T·B, ...] currents are never stored. The event scatter runs at about 10 G adds/s per core
on this project's machines (ResNet layers of 64–512 channels), close to what a vectorised
load-add-store loop reaches there (13–14 G adds/s in L1); so the time follows the synaptic
events (``snnverify.speed`` reports them).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from snnverify import graph as g
from snnverify.runtime import RunResult, check_input, register_backend
from snnverify.runtime.plan import EventConv, Kernels, build_plan, execute


@njit(parallel=True, cache=True)
def _conv2d_dense(x, w, bias, stride, padding, dilation, groups, zero, out):
    """out[n, o, y, x] = Σ_{c, ky, kx} w[o, c, ky, kx]·x[n, g·C + c, y·s − p + ky·d, ...] + bias[o],
    the terms in (c, ky, kx) order and taps that fall in the padding skipped. A whole output row
    is accumulated at once, so that the innermost loop runs along x (it vectorises)."""
    rows, out_channels, out_h, out_w = out.shape
    group_in, kernel_h, kernel_w = w.shape[1], w.shape[2], w.shape[3]
    group_out = out_channels // groups
    height, width = x.shape[2], x.shape[3]
    for job in prange(rows * out_channels):
        n, o = job // out_channels, job % out_channels
        base = (o // group_out) * group_in
        acc = np.empty(out_w, out.dtype)
        for y in range(out_h):
            acc[:] = zero
            for c in range(group_in):
                for ky in range(kernel_h):
                    yi = y * stride[0] - padding[0] + ky * dilation[0]
                    if yi < 0 or yi >= height:
                        continue
                    for kx in range(kernel_w):
                        shift = kx * dilation[1] - padding[1]  # xi = xo·s + shift
                        first = max(0, -(shift // stride[1]))  # smallest xo with xi ≥ 0
                        last = min(out_w, (width - 1 - shift) // stride[1] + 1)  # xi ≤ W − 1 below it
                        weight = w[o, c, ky, kx]
                        for xo in range(first, last):
                            acc[xo] += weight * x[n, base + c, yi, xo * stride[1] + shift]
            for xo in range(out_w):
                out[n, o, y, xo] = acc[xo] + bias[o]


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
def _axis_taps(size, out_size, stride, padding, dilation, stored_at):
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
def _add_run3(t0, v0, t1, v1, t2, v2):
    """t0 += v0, t1 += v1, t2 += v2 (equal lengths) in one loop: one spike's three kernel rows."""
    for k in range(t0.shape[0]):
        t0[k] += v0[k]
        t1[k] += v1[k]
        t2[k] += v2[k]


@njit(inline="always")
def _scatter_events(spikes, w_events, taps, sums, events):
    """sums[y, x·C_out + o] += w'[c, ky, kx, o] for every spike (c, yi, xi) of one sample and
    step, in ascending (c, yi, xi) order, and every tap (ky, kx) that lands on an output.

    ``w_events`` is W' laid out [C_in, kH, kW (see :func:`tap_columns`), C_out / groups] (see
    :func:`events_layout`); the sums are channels-last; ``taps`` come from :func:`conv_taps`;
    ``events`` is scratch for one channel's spike positions. With one group and unit column
    dilation, the outputs one spike reaches in a kernel row are adjacent columns, and so are
    their weights, so its adds for that row are one contiguous run of (columns · C_out) values
    on both sides — the loop the compiler vectorises best. Each output still receives at most
    one add per spike, so the order of its sums is the scan order."""
    rows_count, rows_tap, rows_at, cols_count, cols_tap, cols_at, contiguous, groups = taps
    channels, height, width = spikes.shape
    kernel_h, kernel_w, group_out = w_events.shape[1], w_events.shape[2], w_events.shape[3]
    out_channels = group_out * groups
    group_in = channels // groups
    planes = spikes.reshape(channels, height, width)
    row_end = np.empty(height, np.int64)
    for ci in range(channels):
        first = (ci // group_in) * group_out
        flat_w = w_events[ci].reshape(kernel_h, kernel_w * group_out)
        # the channel's spike columns row by row, gathered without a branch per position (a
        # data-dependent branch at spike rates of 5–30 % mispredicts often)
        count = 0
        for yi in range(height):
            for xi in range(width):
                events[count] = xi
                count += planes[ci, yi, xi]
            row_end[yi] = count
        for yi in range(height):
            row_start = row_end[yi - 1] if yi > 0 else 0
            if row_start == row_end[yi]:
                continue
            if contiguous and rows_count[yi] == 3:
                # a 3-row kernel away from the border: the three rows' runs in one loop (one
                # loop's overhead instead of three; with 16–64 channels that overhead is a large
                # part of a run). Each run still goes to a different output row, so no sum's
                # order changes.
                s0, s1, s2 = sums[rows_at[yi, 0]], sums[rows_at[yi, 1]], sums[rows_at[yi, 2]]
                w0, w1, w2 = flat_w[rows_tap[yi, 0]], flat_w[rows_tap[yi, 1]], flat_w[rows_tap[yi, 2]]
                for e in range(row_start, row_end[yi]):
                    xi = events[e]
                    columns = cols_count[xi]
                    run = columns * group_out
                    start = cols_at[xi, columns - 1] * out_channels
                    w_start = cols_tap[xi, columns - 1] * group_out
                    _add_run3(s0[start : start + run], w0[w_start : w_start + run], s1[start : start + run],
                              w1[w_start : w_start + run], s2[start : start + run], w2[w_start : w_start + run])
                continue
            for a in range(rows_count[yi]):
                sums_row, w_row = sums[rows_at[yi, a]], flat_w[rows_tap[yi, a]]
                for e in range(row_start, row_end[yi]):
                    xi = events[e]
                    columns = cols_count[xi]
                    if contiguous:
                        # taps ascending ↔ columns descending: the run starts at the last
                        # tap's output column and at its place in the weight layout
                        run = columns * group_out
                        start = cols_at[xi, columns - 1] * out_channels
                        w_start = cols_tap[xi, columns - 1] * group_out
                        _add_run(sums_row[start : start + run], w_row[w_start : w_start + run])
                    else:
                        for b in range(columns):
                            start = cols_at[xi, b] * out_channels + first
                            w_start = cols_tap[xi, b] * group_out
                            _add_run(sums_row[start : start + group_out], w_row[w_start : w_start + group_out])


@njit(cache=True)
def _taps(in_shape, out_shape, stride, padding, dilation, kernel_h, stored_at, groups):
    """Tap tables of both axes (see :func:`_axis_taps`), whether a spike's adds along a kernel row
    are one contiguous run (one group, unit column dilation), and the group count."""
    rows_count, rows_tap, rows_at = _axis_taps(in_shape[0], out_shape[0], stride[0], padding[0], dilation[0],
                                               np.arange(kernel_h))
    cols_count, cols_tap, cols_at = _axis_taps(in_shape[1], out_shape[1], stride[1], padding[1], dilation[1],
                                               stored_at)
    return (rows_count, rows_tap, rows_at, cols_count, cols_tap, cols_at, groups == 1 and dilation[1] == 1,
            groups)


def conv_taps(node: g.Conv2d, in_shape, out_shape):
    """The tap tables the event kernels of ``node`` need (computed once per call, not per spike)."""
    stride, padding, dilation, groups = _geometry(node)
    return _taps(np.array(in_shape[-2:]), np.array(out_shape[-2:]), stride, padding, dilation,
                 node.weight.shape[2], tap_columns(node.weight.shape[3], node.stride[1]), groups)


@njit(inline="always")
def _to_channels_first(sums, bias, current):
    """current[(o·H + y)·W + x] = sums[y, x·C + o] + bias[o]; row by row, so that the reads of
    one output row (W·C values) stay in the L1 cache."""
    out_channels = bias.shape[0]
    out_h, out_w = sums.shape[0], sums.shape[1] // out_channels
    for y in range(out_h):
        for o in range(out_channels):
            for xo in range(out_w):
                current[(o * out_h + y) * out_w + xo] = sums[y, xo * out_channels + o] + bias[o]


@njit(parallel=True, cache=True)
def _conv2d_events(spikes, w_events, bias, taps, out):
    """The same sums as :func:`_conv2d_dense`, driven by events (:func:`_scatter_events`); bias last."""
    rows, out_channels, out_h, out_w = out.shape
    for n in prange(rows):
        sums = np.zeros((out_h, out_w * out_channels), out.dtype)
        events = np.empty(spikes.shape[2] * spikes.shape[3], np.int64)
        _scatter_events(spikes[n], w_events, taps, sums, events)
        _to_channels_first(sums, bias, out[n].reshape(-1))


@njit(parallel=True, cache=True)
def _conv2d_events_if(spikes, w_events, bias, taps, out_hw, residual_kind, residual, residual_spikes, shortcut_spikes,
                      shortcut_w, shortcut_bias, shortcut_taps, threshold, v0, steps, batch, out_spikes):
    """IF(conv(spikes) [+ residual]) per sample, step by step, without storing currents.

    For sample b and step t: Σ = the event sums (:func:`_scatter_events`); for every neuron
    f = (o, y, x): I = (Σ + bias[o]) + r, with r by ``residual_kind``: 0 none, 1 ``residual[t·B + b, f]``,
    2 ``residual[b, f]`` (static), 3 ``residual[f]`` if ``residual_spikes[t·B + b, f]`` (a graded
    spike map), 4 Σ' + ``shortcut_bias[o]`` with Σ' the event sums of a second conv (a projection
    shortcut) over ``shortcut_spikes``; then v += I, s = v ≥ θ, v −= θ·s — the unfused kernels'
    operations, in their order."""
    out_h, out_w = out_hw[0], out_hw[1]
    out_channels = bias.shape[0]
    neurons = threshold.shape[0]
    for b in prange(batch):
        v = v0.copy()
        sums = np.empty((out_h, out_w * out_channels), v.dtype)
        shortcut_sums = np.empty((out_h, out_w * out_channels) if residual_kind == 4 else (1, 1), v.dtype)
        events = np.empty(max(spikes.shape[2] * spikes.shape[3], shortcut_spikes.shape[2] * shortcut_spikes.shape[3]),
                          np.int64)
        current = np.empty(neurons, v.dtype)
        shortcut = np.empty(neurons if residual_kind == 4 else 1, v.dtype)
        for t in range(steps):
            n = t * batch + b
            sums[:] = 0
            _scatter_events(spikes[n], w_events, taps, sums, events)
            _to_channels_first(sums, bias, current)
            # separate simple loops rather than one loop with every case: each vectorises
            if residual_kind == 1:
                current += residual[n]
            elif residual_kind == 2:
                current += residual[b]
            elif residual_kind == 3:  # + a·s, branch-free: adding a·0 = 0 changes no sum
                for f in range(neurons):
                    current[f] += residual[0, f] * residual_spikes[n, f]
            elif residual_kind == 4:
                shortcut_sums[:] = 0
                _scatter_events(shortcut_spikes[n], shortcut_w, shortcut_taps, shortcut_sums, events)
                _to_channels_first(shortcut_sums, shortcut_bias, shortcut)
                current += shortcut
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


def _conv2d(x, weight, bias, node: g.Conv2d, out_shape, events):
    """``weight`` is in :func:`events_layout` when ``events`` (the plan applies it once)."""
    out = np.empty(out_shape, weight.dtype)
    if events:
        _conv2d_events(x, weight, bias, conv_taps(node, x.shape, out_shape), out)
    else:
        _conv2d_dense(x, weight, bias, *_geometry(node), weight.dtype.type(0), out)
    return out


def _conv2d_if(conv: EventConv, residual, out_shape, threshold, initial, steps, batch):
    """Fused IF(conv(spikes) [+ residual]) (see :class:`~snnverify.runtime.plan.Fusion`);
    ``residual`` is None, a :class:`Signal` or an :class:`EventConv` (a projection shortcut)."""
    rows = steps * batch
    dtype = conv.weight.dtype
    taps = conv_taps(conv.node, conv.spikes.shape, out_shape)
    no_spikes = np.zeros((1, 1), np.bool_)
    values, residual_spikes = np.zeros((1, 1), dtype), no_spikes
    shortcut, shortcut_taps = EventConv(np.zeros((1, 1, 1, 1), np.bool_), np.zeros((1, 1, 1, 1), dtype),
                                        np.zeros(1, dtype), None), taps
    if residual is None:
        kind = 0
    elif isinstance(residual, EventConv):
        kind, shortcut, shortcut_taps = 4, residual, conv_taps(residual.node, residual.spikes.shape, out_shape)
    elif residual.amplitude is not None:
        kind, values, residual_spikes = 3, residual.amplitude.reshape(1, -1), residual.array.reshape(rows, -1)
    else:
        kind, values = (1 if residual.temporal else 2), residual.array
        values = np.ascontiguousarray(values).reshape(values.shape[0], -1)
    out = np.empty((rows, threshold.shape[0]), np.bool_)
    _conv2d_events_if(conv.spikes, conv.weight, conv.bias, taps, np.array(out_shape[1:]), kind, values,
                      residual_spikes, shortcut.spikes, shortcut.weight, shortcut.bias, shortcut_taps, threshold,
                      initial, steps, batch, out)
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
