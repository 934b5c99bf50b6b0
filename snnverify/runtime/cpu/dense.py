"""The CPU's per-element kernels: dense convs (inputs that are not spikes; linear layers run as
1×1 convs), sum pooling, the IF layer, graded spikes and the residual add.

Every sum runs in the order of :mod:`snnverify.runtime.plan` (kernel row, kernel column, input
channel, bias last), the CUDA kernels' order, so float32 results agree bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange

from snnverify.runtime.cpu.intrinsics import add_scaled_vector, stack_buffer
from snnverify.runtime.cpu.layouts import NARROW, WIDE, block, block_count
from snnverify.runtime.cpu.parallel import call_worker, run_parallel


#: output positions a narrow block of :func:`conv2d_dense_kernel` sums at once
NARROW_POSITIONS = 4


def conv2d_dense_kernel(x, weights, kernel_hw, bias, geometry, workers, out):
    """out[n, o, y, x] = Σ_{ky, kx, c} W[o, c, ky, kx]·x[n, g·C + c, y·s − p + ky·d, ...] + bias[o],
    the terms in (ky, kx, c) order, each product rounded, then added (never a fused multiply-add).
    ``weights`` is W in :func:`~snnverify.runtime.cpu.layouts.events_layout`: per block of output
    channels, the row of weights one input (c, ky, kx) sends to them, so a term is one vector
    multiply-add over the block's channels.

    Taps in the padding read a zero border instead of being skipped, with no test per tap: W is
    finite (the graph holds no other values), so such a tap adds w·0 = ±0, and a sum from +0
    plus ±0 is that sum (round to nearest; such a sum is never −0). Per job (one sample of one
    group) the input goes channels-last into a zero-bordered copy, where a tap's channels are
    adjacent. A wide block (64 lanes) sums one position at a time, a narrow one (16 lanes)
    :data:`NARROW_POSITIONS` adjacent positions: either way 4 independent chains of 16-lane adds
    in flight."""
    run_parallel(dense_workers, dense_worker, x, weights, kernel_hw, bias, geometry, workers, out)


@njit(parallel=True, cache=True)
def dense_workers(address, x, weights, kernel_hw, bias, geometry, workers, out):
    """The worker at ``address`` (:func:`dense_worker`) once per worker, in parallel; which of
    them raised (see :mod:`~snnverify.runtime.cpu.parallel`)."""
    failed = np.empty(workers, np.bool_)
    for worker in prange(workers):
        failed[worker] = call_worker(address, (x, weights, kernel_hw, bias, geometry, workers, out, np.int64(worker)))
    return failed


@njit(cache=True, error_model="numpy")  # (the error model: see events.fused_worker)
def dense_worker(x, weights, kernel_hw, bias, geometry, workers, out, worker):
    """The jobs of :func:`conv2d_dense_kernel` that fall to parallel worker ``worker``: jobs
    ``worker``, ``worker`` + workers, … (a job: one sample of one group)."""
    rows, out_channels, out_h, out_w = out.shape
    groups, channels, in_h, in_w = weights.shape[0], x.shape[1], x.shape[2], x.shape[3]
    group_out, group_in = out_channels // groups, channels // groups
    kernel_h, kernel_w = kernel_hw
    stride_y, stride_x, pad_y, pad_x, dilation_y, dilation_x = geometry
    taps = kernel_h * kernel_w * group_in  # rows of a block
    padded = weights.shape[1] // taps
    flat = weights.reshape(-1)
    # the zero-bordered copy, wide enough for a narrow block's positions past the map's last
    columns = -(-out_w // NARROW_POSITIONS) * NARROW_POSITIONS
    border_h = max(in_h + 2 * pad_y, (out_h - 1) * stride_y + (kernel_h - 1) * dilation_y + 1)
    border_w = max(in_w + 2 * pad_x, (columns - 1) * stride_x + (kernel_w - 1) * dilation_x + 1)
    bordered = np.zeros(border_h * border_w * group_in, weights.dtype)  # scratch, once per worker and call
    step = stride_x * group_in  # from one position's inputs to the next one's
    # a kernel row's taps (kx, c) in runs of adjacent terms, in the copy and in W alike: with
    # unit column dilation the whole row is one run (one loop of kW·C terms, not kW of C)
    runs, run = (1, kernel_w * group_in) if dilation_x == 1 else (kernel_w, group_in)
    sizes = (out_h, out_w, border_w, runs, run)
    row_sums = np.empty((out_w, WIDE), weights.dtype)
    for job in range(worker, rows * groups, workers):
        n, group = job // groups, job % groups
        for c in range(group_in):  # only the interior is ever written: the border stays 0
            plane = x[n, group * group_in + c]
            for iy in range(in_h):
                line = ((iy + pad_y) * border_w + pad_x) * group_in + c
                for ix in range(in_w):
                    bordered[line + ix * group_in] = plane[iy, ix]
        accs = (stack_buffer(weights, NARROW), stack_buffer(weights, NARROW), stack_buffer(weights, NARROW),
                stack_buffer(weights, NARROW))
        for index in range(block_count(padded)):
            start, wide, lanes = block(index, padded, group_out)
            first = group * group_out + start
            rows_at = (group * padded + start) * taps
            # constants at each call: each inlined copy is compiled for its kind of block
            if wide:  # one position; per input, the block's 4 quarters of a weight row
                block_sums(accs, flat, rows_at, bordered, 1, WIDE, NARROW, 0, sizes, geometry, kernel_hw,
                           group_in, row_sums, out, n, first, lanes, bias)
            else:  # 4 positions; per weight row, their 4 inputs
                block_sums(accs, flat, rows_at, bordered, NARROW_POSITIONS, NARROW, 0, step, sizes, geometry,
                           kernel_hw, group_in, row_sums, out, n, first, lanes, bias)


@njit(inline="always")
def block_sums(accs, flat, rows_at, bordered, positions, width, row_step, input_step, sizes, geometry, kernel_hw,
               group_in, row_sums, out, n, first, lanes, bias):
    """The outputs of one block of :func:`conv2d_dense_kernel` for sample ``n``: per output row,
    ``positions`` positions at a time into the 4 accumulators ``accs`` of 16 lanes, accumulator q
    adding weight row element ``offset + q·row_step`` times input ``value + q·input_step`` (a wide
    block's quarters at one position, or a narrow block at 4 positions), then the row stored."""
    out_h, out_w, border_w, runs, run = sizes
    stride_y, stride_x, _, _, dilation_y, dilation_x = geometry
    kernel_h, kernel_w = kernel_hw
    acc0, acc1, acc2, acc3 = accs
    quad = (carray(acc0, NARROW), carray(acc1, NARROW), carray(acc2, NARROW), carray(acc3, NARROW))
    for oy in range(out_h):
        for ox0 in range(0, out_w, positions):
            for k in range(NARROW):
                quad[0][k] = 0
                quad[1][k] = 0
                quad[2][k] = 0
                quad[3][k] = 0
            for ky in range(kernel_h):
                line = (oy * stride_y + ky * dilation_y) * border_w + ox0 * stride_x
                for kx in range(runs):
                    at = (line + kx * dilation_x) * group_in
                    row = rows_at + (ky * kernel_w + kx) * group_in * width
                    for t in range(run):
                        offset, value = row + t * width, at + t
                        add_scaled_vector(acc0, flat, offset, bordered[value], NARROW)
                        add_scaled_vector(acc1, flat, offset + row_step, bordered[value + input_step], NARROW)
                        add_scaled_vector(acc2, flat, offset + 2 * row_step, bordered[value + 2 * input_step], NARROW)
                        add_scaled_vector(acc3, flat, offset + 3 * row_step, bordered[value + 3 * input_step], NARROW)
            for q in range(4):
                for k in range(NARROW):
                    if positions == 1:
                        row_sums[ox0, q * NARROW + k] = quad[q][k]
                    elif ox0 + q < out_w:
                        row_sums[ox0 + q, k] = quad[q][k]
        store_row(out, n, first, lanes, oy, row_sums, bias)


@njit(inline="always")
def store_row(out, n, first, lanes, oy, row_sums, bias):
    """out[n, first + k, oy, x] = row_sums[x, k] + bias[first + k]: an output row's sums, gathered
    position by position, written channel by channel (contiguous; one position's channels lie
    H·W apart, a stride that can map them all to one cache set)."""
    for k in range(lanes):
        for ox in range(out.shape[3]):
            out[n, first + k, oy, ox] = row_sums[ox, k] + bias[first + k]


#: output columns from which a pool sums whole output rows at once (below, window by window)
ROW_POOL_WIDTH = 4


@njit(parallel=True, cache=True)
def pool2d_kernel(x, amplitude, kernel, stride, padding, divisor, zero, out, channels_last):
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
    cost more than its few terms. ``out``, ``channels_last``: see :func:`sample_out`."""
    firsts, lasts = inside_columns(kernel, stride, padding, x.shape[3], out_width(out, channels_last))
    # the parallel loop only calls a function per sample (see
    # snnverify.runtime.cpu.events.conv2d_events_if_kernel), which LLVM inlines (forceinline:
    # a call per sample cost 5–30 % of a small map's pool)
    for n in prange(out.shape[0]):
        pool_sample(x[n], amplitude, kernel, stride, padding, divisor, zero, firsts, lasts,
                    sample_out(out, n, channels_last))


@njit(error_model="numpy", forceinline=True)
def pool_sample(x, amplitude, kernel, stride, padding, divisor, zero, firsts, lasts, out):
    """One sample of :func:`pool2d_kernel`: ``x`` [C, H, W], ``out`` [C, H', W']."""
    channels, out_h, out_w = out.shape
    height, width = x.shape[1], x.shape[2]
    acc, row = np.empty(out_w, out.dtype), np.empty(width, out.dtype)
    for c in range(channels):
        plane, dest = x[c], out[c]
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
def spike_pool2d_kernel(spikes, table, kernel, stride, padding, out, channels_last):
    """:func:`pool2d_kernel` of a spike map whose amplitude is one a_c per channel, as a lookup:
    a window with n spikes sums, its taps in (ky, kx) order from +0, to a_c added n times in
    sequence (a silent tap adds +0, which leaves every such partial sum as it is: none is −0), so
    out[.., c, y, x] = ``table[c, n]``, those sums already divided. ``spikes`` is C-contiguous.

    The counts are integers, exact in any order, so they are made in the order that vectorises:
    per output row, the column sums of the window's input rows first (contiguous bytes, a whole
    row at a time), then per output column the sums of its kW columns. Two shapes have loops of
    their own: a window that is the whole map (a global pool) counts the plane's spikes as one
    contiguous run, and a 2 × 2 window of stride 2 without padding (the common pool) adds its
    four taps' bytes directly (1.4 against 2.0 ms with column sums, 1024 maps of 16 × 28 × 28).
    ``out``, ``channels_last``: see :func:`sample_out`."""
    height, width = spikes.shape[2], spikes.shape[3]
    firsts, lasts = inside_columns(kernel, stride, padding, width, out_width(out, channels_last))
    unpadded = padding[0] == 0 and padding[1] == 0
    whole = kernel[0] == height and kernel[1] == width and unpadded
    halving = kernel[0] == kernel[1] == stride[0] == stride[1] == 2 and unpadded  # 2 × 2, stride 2
    flags = spikes.view(np.uint8)  # (narrow adds; a bool's byte is 0 or 1)
    # the parallel loop only calls a function per sample (see pool2d_kernel)
    for n in prange(out.shape[0]):
        spike_pool_sample(spikes[n], flags[n], table, kernel, stride, padding, firsts, lasts, whole, halving,
                          sample_out(out, n, channels_last))


@njit(error_model="numpy", forceinline=True)
def spike_pool_sample(spikes, flags, table, kernel, stride, padding, firsts, lasts, whole, halving, out):
    """One sample of :func:`spike_pool2d_kernel`: ``spikes`` [C, H, W] (``flags``, its bytes),
    ``out`` [C, H', W']; ``whole``, ``halving``: its two shapes with loops of their own."""
    channels, out_h, out_w = out.shape
    height, width = spikes.shape[1], spikes.shape[2]
    planes = spikes.reshape(channels, height * width)
    columns, counts = np.empty(width, np.int64), np.empty(out_w, np.int64)
    for c in range(channels):
        sums = table[c]
        if whole:  # out_h = out_w = 1, whatever the stride
            plane, total = planes[c], 0
            for i in range(height * width):
                total += plane[i]
            out[c, 0, 0] = sums[total]
            continue
        plane, dest = spikes[c], out[c]
        if halving:  # the four taps' bytes added directly: no column sums stored and reloaded
            for y in range(out_h):
                upper, lower = flags[c, 2 * y], flags[c, 2 * y + 1]
                for xo in range(out_w):
                    dest[y, xo] = sums[upper[2 * xo] + upper[2 * xo + 1] + lower[2 * xo] + lower[2 * xo + 1]]
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


@njit(parallel=True, cache=True)
def spike_pool2d_last_kernel(spikes, table, kernel, stride, padding, out, channels_last):
    """:func:`spike_pool2d_kernel` of a channels-last spike map [N, H, W, C] (a fused kernel's,
    read without a transposed copy): per window, the spike counts of all channels at once, its
    taps' channel vectors added in turn (integers, exact in any order). ``out``,
    ``channels_last``: see :func:`sample_out`."""
    height, width, channels = spikes.shape[1], spikes.shape[2], spikes.shape[3]
    for n in prange(out.shape[0]):
        dest = sample_out(out, n, channels_last)
        out_h, out_w = dest.shape[1], dest.shape[2]
        counts = np.empty(channels, np.int64)
        for y in range(out_h):
            for x in range(out_w):
                counts[:] = 0
                for ky in range(kernel[0]):
                    yi = y * stride[0] - padding[0] + ky
                    for kx in range(kernel[1]):
                        xi = x * stride[1] - padding[1] + kx
                        if 0 <= yi < height and 0 <= xi < width:
                            tap = spikes[n, yi, xi]
                            for c in range(channels):
                                counts[c] += tap[c]
                for c in range(channels):
                    dest[c, y, x] = table[c, counts[c]]


@njit(inline="always")
def sample_out(out, n, channels_last):
    """Sample n of a pool's output as [C, H', W']: ``out`` is C-contiguous, [N, C, H', W'], or
    with ``channels_last`` [N, H', W', C] (the same sums, stored in the other order). Either is
    written through one array type, so that a pool compiles once per dtype, not once per order."""
    return out[n].transpose(2, 0, 1) if channels_last else out[n]


@njit(inline="always")
def out_width(out, channels_last):
    """W' of a pool's output ``out`` (see :func:`sample_out`)."""
    return out.shape[2] if channels_last else out.shape[3]


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
def if_layer_kernel(current, temporal, threshold, v0, timesteps, batch, max_spikes, spikes, counts):
    """v[0] = θ/2; per step v += I[t], then B = ``max_spikes`` times: if v ≥ θ, v −= θ and
    s += 1. current: [T·B, F] or [B, F]; spikes: bool for B = 1, else the counts (uint8).
    ``counts`` [B, blocks] receives the number of spikes of each job (counted where they are
    made: a second pass would read the whole map again from memory).

    Parallel over jobs, a sample and a block of neurons (``counts.shape[1]`` blocks per
    sample); the inner loop runs over contiguous neurons, of slices indexed from 0 (with
    indices like f − start, which Numba cannot prove non-negative, it keeps a wraparound check
    per access and the loop stays scalar). The binary neuron keeps a loop of its own, without
    the burst's inner loop."""
    neurons, blocks = threshold.shape[0], counts.shape[1]
    size = -(-neurons // blocks)
    for job in prange(batch * blocks):
        b, start = job // blocks, (job % blocks) * size
        stop = min(start + size, neurons)
        v = v0[start:stop].copy()
        theta = threshold[start:stop]
        total = 0
        for t in range(timesteps):
            inputs = current[t * batch + b if temporal else b, start:stop]
            fired = spikes[t * batch + b, start:stop]
            if max_spikes == 1:
                for k in range(stop - start):
                    value = v[k] + inputs[k]
                    fire = value >= theta[k]
                    fired[k] = fire
                    v[k] = value - theta[k] if fire else value
                    total += fire
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
                        total += fire
                        more |= fire
                    if not more:
                        break
        counts[b, job % blocks] = total


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
