"""The CPU's per-element kernels: dense convs and linear layers (inputs that are not spikes),
event-driven linear layers, sum pooling, the IF layer, graded spikes and the residual add.

Every sum runs in the order of :mod:`snnverify.runtime.plan` (kernel row, kernel column, input
channel, bias last), the CUDA kernels' order, so float32 results agree bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def conv2d_dense_kernel(x, w, bias, stride, padding, dilation, groups, zero, out):
    """out[n, o, y, x] = Σ_{ky, kx, c} w[o, c, ky, kx]·x[n, g·C + c, y·s − p + ky·d, ...] + bias[o],
    the terms in (ky, kx, c) order and taps that fall in the padding skipped. A whole output row
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
            for ky in range(kernel_h):
                yi = y * stride[0] - padding[0] + ky * dilation[0]
                if yi < 0 or yi >= height:
                    continue
                for kx in range(kernel_w):
                    shift = kx * dilation[1] - padding[1]  # xi = xo·s + shift
                    first = max(0, -(shift // stride[1]))  # smallest xo with xi ≥ 0
                    last = min(out_w, (width - 1 - shift) // stride[1] + 1)  # xi ≤ W − 1 below it
                    for c in range(group_in):
                        weight = w[o, c, ky, kx]
                        for xo in range(first, last):
                            acc[xo] += weight * x[n, base + c, yi, xo * stride[1] + shift]
            for xo in range(out_w):
                out[n, o, y, xo] = acc[xo] + bias[o]


@njit(parallel=True, cache=True)
def linear_dense_kernel(x, w, bias, zero, out):
    """out[n, o] = Σ_j w[o, j]·x[n, j] + bias[o], j ascending."""
    rows, outputs = out.shape
    for job in prange(rows * outputs):
        n, o = job // outputs, job % outputs
        acc = zero
        for j in range(x.shape[1]):
            acc += w[o, j] * x[n, j]
        out[n, o] = acc + bias[o]


@njit(parallel=True, cache=True)
def linear_events_kernel(spikes, w, bias, out):
    """out[n, o] = Σ_{j spiking} w'[o, j] + bias[o], j ascending: the dense sums without the
    silent inputs' zero products."""
    rows, outputs = out.shape
    for n in prange(rows):
        out[n] = 0
        for j in range(spikes.shape[1]):
            if spikes[n, j]:
                for o in range(outputs):
                    out[n, o] += w[o, j]
        for o in range(outputs):
            out[n, o] += bias[o]


#: output columns from which a pool sums whole output rows at once (below, window by window)
ROW_POOL_WIDTH = 4


@njit(parallel=True, cache=True)
def pool2d_kernel(x, amplitude, kernel, stride, padding, divisor, zero, out):
    """Window sums in (ky, kx) order over a zero-padded input, then / ``divisor`` (correctly
    rounded; 1 for a sum pool, whose sums are left as they are): of ``x``, or, with
    ``amplitude`` [C, H, W] (``x`` then a spike map), of its graded spikes a·s (+0 where silent)
    without storing them — the same adds, with a spike map read as bytes, not as 4- or 8-byte
    values.

    Maps with at least :data:`ROW_POOL_WIDTH` output columns are summed a whole output row at a
    time: per input row a window reads, its values go to a contiguous row first (the graded
    ones by a select, no branch), then each tap adds that row to the output row's sums over the
    columns where it lands inside the input (bounds computed once per call, no test per term).
    Narrower outputs (a global pool) sum window by window, where a loop per tap and row would
    cost more than its few terms."""
    rows, channels, out_h, out_w = out.shape
    height, width = x.shape[2], x.shape[3]
    firsts, lasts = inside_columns(kernel, stride, padding, width, out_w)
    for n in prange(rows):
        acc, row = np.empty(out_w, out.dtype), np.empty(width, out.dtype)
        for c in range(channels):
            plane, dest = x[n, c], out[n, c]
            for y in range(out_h):
                if out_w < ROW_POOL_WIDTH:
                    for xo in range(out_w):
                        acc[xo] = window_sum(plane, amplitude, c, y, xo, kernel, stride, padding, zero)
                else:
                    for xo in range(out_w):
                        acc[xo] = zero
                    for ky in range(kernel[0]):
                        yi = y * stride[0] - padding[0] + ky
                        if yi < 0 or yi >= height:
                            continue
                        for xi in range(width):
                            if amplitude is None:
                                row[xi] = plane[yi, xi]
                            else:
                                row[xi] = amplitude[c, yi, xi] if plane[yi, xi] else zero
                        for kx in range(kernel[1]):
                            for xo in range(firsts[kx], lasts[kx]):
                                acc[xo] += row[xo * stride[1] + kx - padding[1]]
                for xo in range(out_w):
                    dest[y, xo] = acc[xo] if divisor == 1 else acc[xo] / divisor


@njit(parallel=True, cache=True)
def spike_pool2d_kernel(spikes, table, kernel, stride, padding, out):
    """:func:`pool2d_kernel` of a spike map whose amplitude is one a_c per channel, as a lookup:
    a window with n spikes sums, its taps in (ky, kx) order from +0, to a_c added n times in
    sequence (a silent tap adds +0, which leaves every such partial sum as it is: none is −0), so
    out[.., c, y, x] = ``table[c, n]``, those sums already divided. ``spikes`` is C-contiguous.

    The counts are integers, exact in any order, so they are made in the order that vectorises:
    per output row, the column sums of the window's input rows first (contiguous bytes, a whole
    row at a time), then per output column the sums of its kW columns. Two shapes have loops of
    their own: a window that is the whole map (a global pool) counts the plane's spikes as one
    contiguous run, and a 2 × 2 window of stride 2 without padding (the common pool) takes its
    taps at constant offsets, which the compiler vectorises."""
    rows, channels, out_h, out_w = out.shape
    height, width = spikes.shape[2], spikes.shape[3]
    firsts, lasts = inside_columns(kernel, stride, padding, width, out_w)
    unpadded = padding[0] == 0 and padding[1] == 0
    whole = kernel[0] == height and kernel[1] == width and unpadded
    halving = kernel[0] == kernel[1] == stride[0] == stride[1] == 2 and unpadded  # 2 × 2, stride 2
    planes = spikes.reshape(rows, channels, height * width)
    for n in prange(rows):
        columns, counts = np.empty(width, np.int64), np.empty(out_w, np.int64)
        for c in range(channels):
            sums = table[c]
            if whole:  # out_h = out_w = 1, whatever the stride
                plane, total = planes[n, c], 0
                for i in range(height * width):
                    total += plane[i]
                out[n, c, 0, 0] = sums[total]
                continue
            plane, dest = spikes[n, c], out[n, c]
            if halving:
                for y in range(out_h):
                    upper, lower = plane[2 * y], plane[2 * y + 1]
                    for xi in range(2 * out_w):
                        columns[xi] = upper[xi] + lower[xi]
                    for xo in range(out_w):
                        dest[y, xo] = sums[columns[2 * xo] + columns[2 * xo + 1]]
                continue
            for y in range(out_h):
                for xi in range(width):
                    columns[xi] = 0
                for ky in range(kernel[0]):
                    yi = y * stride[0] - padding[0] + ky
                    if 0 <= yi < height:  # a padding row adds nothing
                        line = plane[yi]
                        for xi in range(width):
                            columns[xi] += line[xi]
                for xo in range(out_w):
                    counts[xo] = 0
                for kx in range(kernel[1]):
                    for xo in range(firsts[kx], lasts[kx]):
                        counts[xo] += columns[xo * stride[1] + kx - padding[1]]
                for xo in range(out_w):
                    dest[y, xo] = sums[counts[xo]]


@njit
def inside_columns(kernel, stride, padding, width, out_w):
    """Per kernel column kx, the output columns [first, last) whose tap xi = xo·s − p + kx lies
    inside the input (bounds computed once per call, so the loops over them test nothing)."""
    firsts, lasts = np.empty(kernel[1], np.int64), np.empty(kernel[1], np.int64)
    for kx in range(kernel[1]):
        shift = kx - padding[1]  # xi = xo·s + shift
        firsts[kx] = max(0, -(shift // stride[1]))  # smallest xo with xi ≥ 0
        lasts[kx] = min(out_w, (width - 1 - shift) // stride[1] + 1)  # xi ≤ W − 1 below it
    return firsts, lasts


@njit(inline="always")
def window_sum(plane, amplitude, c, y, xo, kernel, stride, padding, zero):
    """One window's sum of :func:`pool2d_kernel`, its taps in (ky, kx) order."""
    acc = zero
    for ky in range(kernel[0]):
        yi = y * stride[0] - padding[0] + ky
        if yi < 0 or yi >= plane.shape[0]:
            continue
        for kx in range(kernel[1]):
            xi = xo * stride[1] - padding[1] + kx
            if 0 <= xi < plane.shape[1]:
                if amplitude is None:
                    acc += plane[yi, xi]
                else:  # a select, no branch: spikes are irregular
                    acc += amplitude[c, yi, xi] if plane[yi, xi] else zero
    return acc


@njit(parallel=True, cache=True)
def if_layer_kernel(current, temporal, threshold, v0, timesteps, batch, max_spikes, spikes):
    """v[0] = θ/2; per step v += I[t], then B = ``max_spikes`` times: if v ≥ θ, v −= θ and
    s += 1. current: [T·B, F] or [B, F]; spikes: bool for B = 1, else the counts (uint8).

    Parallel over (sample, block of neurons); the inner loop runs over contiguous neurons, of
    slices indexed from 0 (with indices like f − start, which Numba cannot prove non-negative,
    it keeps a wraparound check per access and the loop stays scalar). The binary neuron keeps
    a loop of its own, without the burst's inner loop."""
    neurons = threshold.shape[0]
    block = 1024
    blocks = (neurons + block - 1) // block
    for job in prange(batch * blocks):
        b, start = job // blocks, (job % blocks) * block
        stop = min(start + block, neurons)
        v = v0[start:stop].copy()
        theta = threshold[start:stop]
        for t in range(timesteps):
            inputs = current[t * batch + b if temporal else b, start:stop]
            fired = spikes[t * batch + b, start:stop]
            if max_spikes == 1:
                for k in range(stop - start):
                    value = v[k] + inputs[k]
                    fired[k] = value >= theta[k]
                    v[k] = value - theta[k] if fired[k] else value
            else:
                for k in range(stop - start):
                    v[k] += inputs[k]
                    fired[k] = 0
                # the comparisons in turn, each over the whole block (a loop that vectorises,
                # where one neuron's while-loop stays scalar and mispredicts): once a neuron's
                # comparison fails its v no longer changes, so the passes after it change
                # nothing; the passes stop when none fired in one
                for _ in range(max_spikes):
                    more = False
                    for k in range(stop - start):
                        fire = v[k] >= theta[k]
                        v[k] = v[k] - theta[k] if fire else v[k]
                        fired[k] += fire
                        more |= fire
                    if not more:
                        break


@njit(parallel=True, cache=True)
def scale_channels_kernel(x, factors, out):
    """out[n, f] = x[n, f]·c_f; of spikes, the graded map a_f·s (1·a = a exactly, 0·a = ±0)."""
    for n in prange(x.shape[0]):
        for f in range(x.shape[1]):
            out[n, f] = x[n, f] * factors[f]


@njit(parallel=True, cache=True)
def add_into_kernel(total, x, temporal_x, batch_rows):
    """total[r] += x[r] (x temporal) or x[r mod B] (x static, broadcast over the T steps)."""
    for r in prange(total.shape[0]):
        source = r if temporal_x else r % np.uint64(batch_rows)  # (prange indices are unsigned)
        for f in range(total.shape[1]):
            total[r, f] += x[source, f]
