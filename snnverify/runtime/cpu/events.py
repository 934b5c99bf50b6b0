"""The CPU's event-driven conv kernels: a conv fed by a mostly zero input (spikes, or pooled
spikes), and the fused IF(conv(spikes) [+ residual]) that never stores the currents (see
:class:`~snnverify.runtime.plan.Fusion`).

Work grows with the number of spikes: per output position and block of output channels, a
kernel adds the weight rows of the spiking inputs it reads (:mod:`snnverify.runtime.cpu.gather`)
in the order of :mod:`snnverify.runtime.plan`, so its sums equal the dense and CUDA kernels'.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import carray, njit, prange

from snnverify.runtime.cpu.gather import (add_entries, empty_sums, gather, gather_pair, gather_packed, map_entries,
                                         map_values, nonzero_entries, positions_read, row_of, slide_window,
                                         spike_entries)
from snnverify.runtime.cpu.intrinsics import (add_spiking_vector, count_flags, is_float_array, load_vector,
                                             stack_buffer, store_vector)
from snnverify.runtime.cpu.layouts import NARROW, WIDE, block, block_count
from snnverify.runtime.cpu.parallel import call_worker, run_parallel
from snnverify.runtime.plan import ResidualKind

#: Steps whose spike lists a fused kernel builds at once: each weight row it loads then serves
#: up to this many steps at each output position (reuse in the L1/L2 cache); a staged row of
#: neurons without a residual is then updated over all of them at once (integrate_chunk).
STEP_CHUNK = 8
#: Steps integrate_chunk updates int64 membranes over at once (LLVM vectorises 4, not 8).
INTEGER_STEPS = 4
#: Spike-list entries one job of a fused kernel may hold (1 MB): late ResNet layers, with small
#: maps, then take several samples per job and read their weights once for all of them.
TILE_ENTRIES = 1 << 18


class FusedConv(NamedTuple):
    """An event-driven conv as :func:`conv2d_events_if_kernel` reads it."""

    #: its input spike map, channels-last [T·B, H·W·C]; or a graded map (pooled spikes, finite),
    #: whose nonzero inputs the conv gathers times their value
    spikes: np.ndarray
    in_shape: tuple  #: (C, H, W) of that map
    blocks: np.ndarray  #: W' in :func:`~snnverify.runtime.cpu.layouts.events_layout`
    packed: np.ndarray  #: W' in :func:`~snnverify.runtime.cpu.layouts.packed_layout` (or a placeholder)
    #: W' in :func:`~snnverify.runtime.cpu.layouts.window_layout` (or a placeholder, of one lane)
    window: np.ndarray
    kernel_hw: tuple  #: (kH, kW)
    geometry: tuple  #: (stride y, stride x, padding y, padding x, dilation y, dilation x)
    bias: np.ndarray  #: [C_out]


class FusedResidual(NamedTuple):
    """What the fused kernel adds to Σ + b, by ``kind`` (a :class:`ResidualKind`)."""

    kind: int
    values: np.ndarray  #: CURRENT, STATIC: the currents [rows, H·W·C]; GRADED: amplitudes [1, H·W·C]
    spikes: np.ndarray  #: GRADED: the residual spike map [T·B, H·W·C], channels-last


class FusedNeurons(NamedTuple):
    """The IF layer of a fused kernel: θ and v[0] channels-last [H·W, C_out], and (H, W)."""

    threshold: np.ndarray
    v0: np.ndarray
    out_hw: tuple


class Schedule(NamedTuple):
    """How a fused kernel splits its work: T, batch, samples per job (``tile``), parallel
    workers, and output positions gathered at once (``pack``, 1 = none)."""

    timesteps: int
    batch: int
    tile: int
    workers: int
    pack: int


def conv2d_sparse_kernel(x, input_last, weights, packed, pack, kernel_hw, bias, geometry, workers, channels_last,
                         out):
    """The same sums as :func:`~snnverify.runtime.cpu.dense.conv2d_dense_kernel`, from the
    nonzero inputs only (:func:`~snnverify.runtime.cpu.gather.gather` with their values); bias
    last. ``x`` is a spike map (bool) or a graded, mostly zero one (a pooled spike
    map): a zero input adds w·0 = ±0 to a sum from +0, which leaves it unchanged, so skipping
    it is exact. With ``pack`` = Q > 1 (C_out = 64 / Q, one group), Q adjacent output positions
    are gathered at once through ``packed``
    (:func:`~snnverify.runtime.cpu.gather.gather_packed`): Q independent chains of adds in
    flight instead of one, for every row of ``x`` whose values are all finite (a lane that is
    no tap adds 0·x, NaN for an infinite x; such a row takes the one-position gathers).
    ``x`` is [N, C, H, W], or with ``input_last`` [N, H, W, C] (a pooled map as a fused kernel
    reads it for a residual too); ``out`` is [N, C_out, H, W], or with ``channels_last`` [N, H,
    W, C_out] (the order in which an IF layer read by a fused kernel takes its currents: no
    transposed copy of them)."""
    run_parallel(sparse_workers, sparse_worker, x, input_last, weights, packed, pack, kernel_hw, bias, geometry,
                 workers, channels_last, out)


@njit(parallel=True, cache=True)
def sparse_workers(address, x, input_last, weights, packed, pack, kernel_hw, bias, geometry, workers, channels_last,
                   out):
    """The worker at ``address`` (:func:`sparse_worker`) once per worker, in parallel; which of
    them raised (see :mod:`~snnverify.runtime.cpu.parallel`)."""
    failed = np.empty(workers, np.bool_)
    for worker in prange(workers):
        failed[worker] = call_worker(address, (x, input_last, weights, packed, pack, kernel_hw, bias, geometry, workers,
                                               channels_last, out, np.int64(worker)))
    return failed


@njit(cache=True, error_model="numpy")  # (the error model: see fused_worker)
def sparse_worker(x, input_last, weights, packed, pack, kernel_hw, bias, geometry, workers, channels_last, out,
                  worker):
    """The jobs of :func:`conv2d_sparse_kernel` that fall to parallel worker ``worker``: jobs
    ``worker``, ``worker`` + workers, … (a job: one sample of one group)."""
    if channels_last:
        rows, out_h, out_w, out_channels = out.shape
    else:
        rows, out_channels, out_h, out_w = out.shape
    if input_last:
        _, in_h, in_w, channels = x.shape
    else:
        _, channels, in_h, in_w = x.shape
    groups = weights.shape[0]
    group_out, group_in = out_channels // groups, channels // groups
    kernel_h, kernel_w = kernel_hw
    taps = kernel_h * kernel_w * group_in  # rows of a block
    padded = weights.shape[1] // taps
    flat, packed_flat = weights.reshape(-1), packed.reshape(-1)
    span = packed.shape[0] // (kernel_h * group_in)  # input columns a packed row set covers
    # scratch, allocated once per worker and call
    entries = np.empty(in_h * in_w * group_in, np.int32)
    values = empty_sums(in_h * in_w * group_in, weights)
    starts = np.empty(in_h * in_w + 1, np.int64)
    for job in range(worker, rows * groups, workers):
        acc = stack_buffer(weights, WIDE)  # in the worker's stack frame, in the type of W's sums
        sums = carray(acc, WIDE)
        n, group = job // groups, job % groups
        planes = x[n].reshape(-1, channels) if input_last else x[n].reshape(channels, -1)
        finite = nonzero_entries(planes, input_last, group * group_in, group_in, in_w, entries, values, starts)
        if pack > 1 and finite:  # lane j·C_out + o is channel o of position ox0 + j
            for oy in range(out_h):
                for ox0 in range(0, out_w, pack):
                    gather_packed(acc, packed_flat, kernel_h, span, group_in, entries, starts, oy,
                                  ox0 * geometry[1] - geometry[3], geometry, (in_h, in_w), values)
                    for j in range(min(pack, out_w - ox0)):
                        for o in range(out_channels):
                            store(out, channels_last, n, o, oy, ox0 + j, sums[j * out_channels + o] + bias[o])
            continue
        for index in range(block_count(padded)):
            start, wide, lanes = block(index, padded, group_out)
            first = group * group_out + start
            for oy in range(out_h):
                for ox in range(out_w):
                    gather(acc, flat, (group * padded + start) * taps, kernel_hw, group_in, entries, starts, oy, ox,
                           geometry, (in_h, in_w), wide, values)
                    for k in range(lanes):
                        store(out, channels_last, n, first + k, oy, ox, sums[k] + bias[first + k])


@njit(inline="always")
def store(out, channels_last, n, o, oy, ox, value):
    """out[n, o, oy, ox] = value, or out[n, oy, ox, o] when ``channels_last``."""
    if channels_last:
        out[n, oy, ox, o] = value
    else:
        out[n, o, oy, ox] = value


@njit(inline="always")
def repeated(per_channel, length):
    """The per-channel values laid over ``length`` channels-last lanes or neurons: element k is
    per_channel[k mod C] (a bias per lane of a packed block, or per neuron of an output row)."""
    out = np.empty(length, per_channel.dtype)
    for k in range(length):
        out[k] = per_channel[k % per_channel.shape[0]]
    return out


# The IF update of a fused kernel's neurons, one function per residual kind (each call site
# knows its kind, so each inlines one loop). ``placement`` = (at, stride, count, lanes): neuron
# i = q·lanes + k (q < count, k < lanes) has its sum, bias, membrane and θ at i of contiguous
# arrays, and its residual and spike at j = at + q·stride + k of a channels-last map's row (q
# an output position and stride the map's channels: one block of a row of positions). Per
# neuron: v += (Σ + b) + r; s = v ≥ θ; v −= θ·s — the unfused kernels' operations. The indices
# are unsigned: a signed one gets Numba's negative-index select, and LLVM then cannot see the
# lanes as adjacent and does not vectorise (4× slower per neuron, measured). A gather's
# sums are read from its accumulator or from a row they were stored in as whole vectors
# (store_vector): a vector load of lanes just stored one by one stalls (no store forwarding).
# The step s = v ≥ θ, v −= θ·s is written out in each loop: behind an inlined helper LLVM
# did not vectorise these loops (3× slower fused layers, measured).


@njit(inline="always")
def integrate_current(kind, values, bias, membrane, theta, currents, spiked, placement):
    """r = currents[j] (CURRENT, STATIC), or none (NONE)."""
    at, stride, count, lanes = placement
    if kind == ResidualKind.NONE:
        for q in range(count):
            first_i, first_j = np.uint64(q * lanes), np.uint64(at + q * stride)
            for k in range(np.uint64(lanes)):
                i, j = first_i + k, first_j + k
                value = membrane[i] + (values[i] + bias[i])
                fire = value >= theta[i]
                spiked[j] = fire
                membrane[i] = value - theta[i] if fire else value
    else:
        for q in range(count):
            first_i, first_j = np.uint64(q * lanes), np.uint64(at + q * stride)
            for k in range(np.uint64(lanes)):
                i, j = first_i + k, first_j + k
                value = membrane[i] + ((values[i] + bias[i]) + currents[j])
                fire = value >= theta[i]
                spiked[j] = fire
                membrane[i] = value - theta[i] if fire else value


@njit(inline="always")
def steps_at_once(membrane):
    """How many steps :func:`integrate_chunk` takes ``membrane``'s neurons over at once, the most
    LLVM vectorises: all :data:`STEP_CHUNK` of float32 membranes; :data:`INTEGER_STEPS` of int64
    ones (over 8 it left a scalar loop, 2× slower than step by step). A constant of each
    compiled signature."""
    return STEP_CHUNK if is_float_array(membrane) else INTEGER_STEPS


@njit(inline="always")
def integrate_chunk(sums, first_row, offset, bias, membrane, theta, spiked, first_n, batch, placement, steps):
    """:func:`integrate_current` of kind NONE over ``steps`` steps at once (a constant): step c's
    sums at row first_row + c of ``sums`` (2-d, C-contiguous) from column ``offset``, its spikes
    to row first_n + c·batch of ``spiked``. Each neuron takes its steps in order before the next
    neuron (its update reads only its own sums: the same spikes), so its membrane, θ and bias
    are read, and its membrane written, once per ``steps`` steps rather than once per step. The
    steps' loop has a constant trip count, which LLVM unrolls, and vectorises the neurons' loop
    around it. (With a residual's row for each step as well, LLVM checked more overlaps between
    the arrays than it allows and did not vectorise: those kinds go step by step.)"""
    at, stride, count, lanes = placement
    flat_sums, flags = sums.reshape(-1), spiked.reshape(-1)
    sums_first, sums_step = np.uint64(first_row * sums.shape[1] + offset), np.uint64(sums.shape[1])
    flags_first, flags_step = np.uint64(first_n * spiked.shape[1]), np.uint64(batch * spiked.shape[1])
    for q in range(count):
        first_i, first_j = np.uint64(q * lanes), np.uint64(at + q * stride)
        for k in range(np.uint64(lanes)):
            i, j = first_i + k, first_j + k
            value, b, th = membrane[i], bias[i], theta[i]
            for c in range(np.uint64(steps)):
                value = value + (flat_sums[sums_first + c * sums_step + i] + b)
                fire = value >= th
                flags[flags_first + c * flags_step + j] = fire
                value = value - th if fire else value
            membrane[i] = value


@njit(inline="always")
def integrate_graded(values, bias, membrane, theta, amplitudes, spikes, spiked, placement):
    """r = a·s = amplitudes[j]·spikes[j] (GRADED), branch-free: a·0 may be −0, and (Σ + b) +
    (−0) = Σ + b, as Σ + b, a sum from +0, is never −0."""
    at, stride, count, lanes = placement
    for q in range(count):
        first_i, first_j = np.uint64(q * lanes), np.uint64(at + q * stride)
        for k in range(np.uint64(lanes)):
            i, j = first_i + k, first_j + k
            value = membrane[i] + ((values[i] + bias[i]) + amplitudes[j] * spikes[j])
            fire = value >= theta[i]
            spiked[j] = fire
            membrane[i] = value - theta[i] if fire else value


@njit(inline="always")
def integrate_shortcut(values, bias, membrane, theta, shortcut_values, shortcut_bias, spiked, placement):
    """r = Σ' + b' (SHORTCUT): the projection conv's sum and bias, contiguous as Σ and b."""
    at, stride, count, lanes = placement
    for q in range(count):
        first_i, first_j = np.uint64(q * lanes), np.uint64(at + q * stride)
        for k in range(np.uint64(lanes)):
            i, j = first_i + k, first_j + k
            value = membrane[i] + ((values[i] + bias[i]) + (shortcut_values[i] + shortcut_bias[i]))
            fire = value >= theta[i]
            spiked[j] = fire
            membrane[i] = value - theta[i] if fire else value


@njit(inline="always")
def ring_row(out_row, out_h):
    """Which of a sliding conv's staged rows holds the sums of output row ``out_row``: one of a
    ring of 3, or the spare row 3 where no output row is (see :func:`fused_worker`)."""
    return out_row % 3 if 0 <= out_row < out_h else 3


@njit(inline="always")
def membrane_index(p, k, positions, padded, rows_at_once):
    """Where neuron (output position p, channel k of its group) lies in a fused worker's
    membranes of one sample: position-major [positions, padded], or block-major [blocks,
    positions, WIDE] in a layer updated a row at a time (one block's row then contiguous)."""
    if rows_at_once:
        return ((k // WIDE) * positions + p) * WIDE + k % WIDE
    return p * padded + k


def conv2d_events_if_kernel(conv, shortcut, residual, neurons, schedule, out_spikes, counts):
    """IF(conv(spikes) [+ residual]) without storing currents; the spikes go to ``out_spikes``
    [T·B, H·W·C_out], channels-last, and their number, per parallel worker, to ``counts``
    [workers] (counted while a chunk's maps are still in the caches).

    ``conv``, ``shortcut``: :class:`FusedConv` (``shortcut`` is read when ``residual.kind`` is
    SHORTCUT, a projection conv computed inside; both convs then have one group; ``conv`` may
    read a graded map, see :class:`FusedConv`). For every
    neuron f = (o, y, x) and step: I = (Σ + bias[o]) + r, Σ = the gather of ``conv``, with r by
    the residual's kind: NONE, CURRENT ``values[t·B + b, f]``, STATIC ``values[b, f]``, GRADED
    ``values[0, f]``·``spikes[t·B + b, f]`` (f channels-last in all), SHORTCUT Σ' + bias'[o]; then
    v += I, s = v ≥ θ, v −= θ·s — the unfused kernels' operations, in their order. A layer of
    whole blocks of 64 channels in one group, of unit column dilation, gathers, block by block,
    a row of output positions, two at a time (:func:`~snnverify.runtime.cpu.gather.gather_pair`),
    for every step of a chunk into a staged row of sums (and its projection's, if any), then
    updates the block's row in one loop, which LLVM vectorises (a neuron's update reads only its
    own sums, so the order of its steps, and every spike, is the same): step by step, or without
    a residual each neuron over all the chunk's steps at once (:func:`integrate_chunk`); its
    membranes lie block-major for that (see :func:`membrane_index`). With ``schedule.pack`` = Q
    > 1 (C_out = 64 / Q), a row's positions are gathered Q at a time, as
    :func:`~snnverify.runtime.cpu.gather.gather_packed` does, into a staged row, which is updated
    the same way (its membranes, position-major, hold a row contiguous). Those gathers go kernel
    row by kernel row over all the row's positions and steps, each position's sums stored in the
    staged row and loaded again for the next kernel row (exact: the same values, their terms in
    the same order): a kernel row's third of the packed rows stays in L1, where all of them do
    not (24.6 of 73.7 KB for a 3 × 3 conv of 16 channels to 16). A packed conv that slides
    (:func:`~snnverify.runtime.cpu.layouts.slides`: 3 × 3, stride 1, 16 channels) gathers
    through its window layout instead, by input rows: each input row, in order, adds each
    input's 9 taps to the 9 output positions it reaches
    (:func:`~snnverify.runtime.cpu.gather.slide_window`), which lie in the staged rows of the 3
    output rows in progress (a ring); an output row is updated once its last input row is added.
    Every add is a tap (a packed gather of 16 channels adds a 64-lane row per input column of
    its 4 positions, of which 16 to 48 lanes are taps, +0 in the others), and an input is read
    once, not once per kernel row and group of Q positions: 1.1–1.4× the packed path's speed on
    such convs (reports/speed). The other layers update the lanes of each gather in turn.

    A job is ``schedule.tile`` samples of one group; their steps go in chunks of
    :data:`STEP_CHUNK`, and per chunk, block of output channels and output position, every
    sample and step of the chunk is gathered before the next position: the weights of a block
    (up to 9·C_in·64 values) are then read from memory once per chunk and tile, and from the
    caches for the rest."""
    run_parallel(fused_workers, fused_worker, conv, shortcut, residual, neurons, schedule, out_spikes, counts)


@njit(parallel=True, cache=True)
def fused_workers(address, conv, shortcut, residual, neurons, schedule, out_spikes, counts):
    """The worker at ``address`` (:func:`fused_worker`) once per worker, in parallel; which of
    them raised (see :mod:`~snnverify.runtime.cpu.parallel`)."""
    # Numba passes only arrays and scalars into a parallel loop, so the tuples are unpacked
    # before it and built again inside, in the same types. The loop's index is unsigned; it goes
    # as int64, the type of the worker's signature.
    spikes, in_shape, weights, packed, window, kernel_hw, geometry, bias = conv
    (shortcut_spikes, shortcut_shape, shortcut_weights, shortcut_packed, shortcut_window, shortcut_kernel,
     shortcut_geometry, shortcut_bias) = shortcut
    kind, residual_values, residual_spikes = residual
    threshold, v0, out_hw = neurons
    timesteps, batch, tile, workers, pack = schedule
    failed = np.empty(workers, np.bool_)
    for worker in prange(workers):
        failed[worker] = call_worker(
            address, (FusedConv(spikes, in_shape, weights, packed, window, kernel_hw, geometry, bias),
                      FusedConv(shortcut_spikes, shortcut_shape, shortcut_weights, shortcut_packed, shortcut_window,
                                shortcut_kernel, shortcut_geometry, shortcut_bias),
                      FusedResidual(kind, residual_values, residual_spikes), FusedNeurons(threshold, v0, out_hw),
                      Schedule(timesteps, batch, tile, workers, pack), out_spikes, counts, np.int64(worker)))
    return failed


@njit(cache=True, error_model="numpy")
def fused_worker(conv, shortcut, residual, neurons, schedule, out_spikes, counts, worker):
    """The jobs of :func:`conv2d_events_if_kernel` that fall to parallel worker ``worker``:
    jobs ``worker``, ``worker`` + workers, … (a job: ``schedule.tile`` samples of one group);
    ``counts[worker]`` = the spikes they wrote."""
    # Compiled with error_model="numpy", as Numba compiles a parallel loop's body: no test for a
    # zero divisor at each integer division (every divisor here is a size, never 0).
    spikes, (channels, in_h, in_w), weights, packed, window, kernel_hw, geometry, bias = conv
    (shortcut_spikes, (shortcut_channels, shortcut_h, shortcut_w), shortcut_weights, shortcut_packed, _,
     shortcut_kernel, shortcut_geometry, shortcut_bias) = shortcut
    kind, residual_values, residual_spikes = residual
    threshold, v0, (out_h, out_w) = neurons
    timesteps, batch, tile, workers, pack = schedule
    positions = out_h * out_w
    groups = weights.shape[0]
    out_channels = bias.shape[0]
    group_out, group_in = out_channels // groups, channels // groups
    taps = kernel_hw[0] * kernel_hw[1] * group_in  # rows of a block
    padded = weights.shape[1] // taps
    flat, packed_flat, window_flat = weights.reshape(-1), packed.reshape(-1), window.reshape(-1)
    span = packed.shape[0] // (kernel_hw[0] * group_in)  # input columns a packed row set covers
    # a conv with a window layout (a placeholder has one lane) slides (see the docstring) unless
    # its projection shortcut keeps it from being packed
    sliding = pack > 1 and window.shape[1] > 1
    # its rows of sums keep output position ox at slot ox + 2 − p_x (window_layout): a ring of
    # 3 for the output rows in progress, and a spare row for the adds of kernel rows that reach
    # no output row
    slot_span = (in_w + 2) * group_out
    window_first = (2 - geometry[3]) * group_out
    shortcut_flat, shortcut_packed_flat = shortcut_weights.reshape(-1), shortcut_packed.reshape(-1)
    shortcut_taps = shortcut_kernel[0] * shortcut_kernel[1] * shortcut_channels
    shortcut_span = shortcut_packed.shape[0] // (shortcut_kernel[0] * shortcut_channels)
    projection = kind == ResidualKind.SHORTCUT
    currents = kind == ResidualKind.CURRENT or kind == ResidualKind.STATIC
    thresholds = threshold.reshape(-1)
    rows = tile * STEP_CHUNK  # (sample, step) pairs of a job's chunk: r = s·chunk + c
    # scratch, allocated once per worker and call: fresh pages per job cost more than the adds
    entries = np.zeros((rows, in_h * in_w * group_in), np.int32)
    inputs = map_values(spikes, rows, in_h * in_w * group_in, weights)  # None for a spike map
    starts = np.empty((rows, in_h * in_w + 1), np.int64)
    shortcut_size = shortcut_h * shortcut_w if projection else 0
    shortcut_entries = np.zeros((rows, shortcut_size * shortcut_channels), np.int32)
    shortcut_starts = np.empty((rows, shortcut_size + 1), np.int64)
    # the projection's lists hold only the positions it reads (a quarter of the map at stride 2)
    shortcut_read = positions_read((shortcut_h, shortcut_w), shortcut_kernel, shortcut_geometry, (out_h, out_w))
    # membranes of one sample per row, see membrane_index: a layer of whole blocks of 64 channels
    # in one group, of unit column dilation (gather_pair's), gathers a block's row of positions
    # for every step of the chunk, then updates it at once (see the docstring), so a block's row
    # lies contiguous; so do its θ and its sums (and the projection's) staged per (sample, step).
    # A packed layer (one block of C_out = 64 / Q channels) does the same: its membranes,
    # position-major, hold a row's neurons contiguous already.
    rows_at_once = groups == 1 and group_out % WIDE == 0 and geometry[5] == 1
    v = np.empty((tile, positions * padded), v0.dtype)
    # the neurons of a block's output row when rows_at_once, or of an output row when packed
    row_span = out_w * (WIDE if rows_at_once else group_out)
    # a packed gather stores Q positions' lanes: whole blocks of WIDE, past the row's last position
    staged_span = out_w * WIDE if rows_at_once else -(-out_w // pack) * WIDE
    if sliding:
        staged_span = max(staged_span, 4 * slot_span)
    staged_rows = rows_at_once or pack > 1
    staged = empty_sums((rows, staged_span) if staged_rows else (1, 1), weights)
    shortcut_staged = empty_sums((rows, staged_span) if staged_rows and projection else (1, 1), shortcut_weights)
    block_thresholds = np.empty(positions * padded if rows_at_once else 1, thresholds.dtype)
    for p in range(positions if rows_at_once else 0):
        for k in range(padded):
            block_thresholds[membrane_index(p, k, positions, padded, True)] = threshold[p, k]
    tiles = -(-batch // tile)
    fired_total = 0
    for job in range(worker, tiles * groups, workers):
        # in the worker's stack frame, in the type of W's sums (narrower than the membranes
        # where it holds every sum, see row_dtype)
        acc, next_acc = stack_buffer(weights, WIDE), stack_buffer(weights, WIDE)
        shortcut_acc = stack_buffer(shortcut_weights, WIDE)
        values, shortcut_values = carray(acc, WIDE), carray(shortcut_acc, WIDE)
        first_sample, group = (job // groups) * tile, job % groups
        samples = min(tile, batch - first_sample)
        # element by element: a slice assignment would compile Numba's shape-mismatch error, its
        # string formatting included (~5 s per process, a quarter of this worker's compile)
        for s in range(samples):
            for p in range(positions):
                for k in range(group_out):
                    v[s, membrane_index(p, k, positions, padded, rows_at_once)] = v0[p, group * group_out + k]
        for t0 in range(0, timesteps, STEP_CHUNK):
            chunk = min(STEP_CHUNK, timesteps - t0)
            for s in range(samples):
                for c in range(chunk):
                    n, r = (t0 + c) * batch + first_sample + s, s * chunk + c
                    map_entries(spikes[n].reshape(-1, channels), group * group_in, group_in, in_w, entries[r],
                                row_of(inputs, r), starts[r])
                    if projection:
                        spike_entries(shortcut_spikes[n].reshape(-1, shortcut_channels), True, 0,
                                      shortcut_channels, shortcut_w, shortcut_entries[r], shortcut_starts[r],
                                      shortcut_read)
            for index in range(1 if pack > 1 else block_count(padded)):
                if pack > 1:  # one block of all channels
                    start, wide, lanes = 0, True, group_out
                else:
                    start, wide, lanes = block(index, padded, group_out)
                first = group * group_out + start
                if staged_rows:
                    # the block's bias (and the projection's) per neuron of a row
                    row_bias = repeated(bias[start : start + lanes], row_span)
                    shortcut_row_bias = repeated(shortcut_bias[start : start + lanes] if projection else shortcut_bias,
                                                 row_span if projection else 0)
                    next_row = 0  # the next input row a sliding layer adds
                    for oy in range(out_h):
                        if sliding:  # the input rows output row oy reads, as far as not added yet
                            if oy == 0:
                                staged[: samples * chunk] = 0
                            for iy in range(next_row, min(in_h, oy - geometry[2] + 3)):
                                # kernel row ky adds to output row iy + p_y − ky
                                targets = (ring_row(iy + geometry[2], out_h) * slot_span,
                                           ring_row(iy + geometry[2] - 1, out_h) * slot_span,
                                           ring_row(iy + geometry[2] - 2, out_h) * slot_span)
                                slide_window(staged, window_flat, starts, entries, samples * chunk, iy * in_w, in_w,
                                             group_in, targets, inputs)
                                next_row = iy + 1
                        elif pack > 1:  # Q positions a gather, lane j·C_out + o channel o of position ox0 + j
                            # kernel row by kernel row, the sums staged between them (see the docstring);
                            # a kernel row's adds written out here, not through a helper shared with
                            # gather_packed: that measured slower (reports/speed, "Packed layers
                            # gathered kernel row by kernel row")
                            for ky in range(kernel_hw[0]):
                                iy = oy * geometry[0] - geometry[2] + ky * geometry[4]
                                for ox0 in range(0, out_w, pack):
                                    x0 = ox0 * geometry[1] - geometry[3]
                                    lo, hi = max(0, x0), min(in_w, x0 + span)
                                    for r in range(samples * chunk):
                                        if ky == 0:
                                            for k in range(WIDE):
                                                values[k] = 0
                                        else:
                                            load_vector(acc, staged[r], ox0 * lanes, WIDE)
                                        if 0 <= iy < in_h and lo < hi:
                                            add_entries(acc, packed_flat, 0, (ky * span - x0) * group_in, entries[r],
                                                        starts[r][iy * in_w + lo], starts[r][iy * in_w + hi], True,
                                                        row_of(inputs, r))
                                        store_vector(acc, staged[r], ox0 * lanes, WIDE)
                        else:
                            for ox0 in range(0, out_w, 2):  # two positions at once (the last alone if W_out is odd)
                                last = min(ox0 + 2, out_w)
                                for r in range(samples * chunk):
                                    gather_pair(acc, next_acc, flat, start * taps, kernel_hw, group_in, entries[r],
                                                starts[r], oy, ox0, last - ox0 == 2, geometry, (in_h, in_w),
                                                row_of(inputs, r))
                                    store_vector(acc, staged[r], ox0 * WIDE, WIDE)
                                    if last - ox0 == 2:
                                        store_vector(next_acc, staged[r], (ox0 + 1) * WIDE, WIDE)
                                    if projection:
                                        for ox in range(ox0, last):
                                            gather(shortcut_acc, shortcut_flat, start * shortcut_taps,
                                                   shortcut_kernel, shortcut_channels, shortcut_entries[r],
                                                   shortcut_starts[r], oy, ox, shortcut_geometry,
                                                   (shortcut_h, shortcut_w), True, None)
                                            store_vector(shortcut_acc, shortcut_staged[r], ox * WIDE, WIDE)
                        if pack > 1 and projection:
                            for ox0 in range(0, out_w, pack):
                                for r in range(samples * chunk):
                                    gather_packed(shortcut_acc, shortcut_packed_flat, shortcut_kernel[0],
                                                  shortcut_span, shortcut_channels, shortcut_entries[r],
                                                  shortcut_starts[r], oy,
                                                  ox0 * shortcut_geometry[1] - shortcut_geometry[3],
                                                  shortcut_geometry, (shortcut_h, shortcut_w), None)
                                    store_vector(shortcut_acc, shortcut_staged[r], ox0 * lanes, WIDE)
                        # where the sums of output row oy start in the staged row
                        ring_first = (oy % 3) * slot_span + window_first if sliding else 0
                        # the block's row in v and its θ (block-major, or position-major when packed)
                        at = start * positions + oy * row_span
                        theta = (block_thresholds if rows_at_once else thresholds)[at : at + row_span]
                        # its neurons in the maps: W_out positions of out_channels, its lanes from start;
                        # a packed row's are all of the row's, contiguous: one run of them (a loop of
                        # 16 or 32 lanes per position would fall short of LLVM's vectorised body)
                        placement = ((oy * row_span, 0, 1, row_span) if pack > 1
                                     else (oy * out_w * out_channels + start, out_channels, out_w, lanes))
                        for s in range(samples):
                            membrane = v[s, at : at + row_span]
                            if kind == ResidualKind.NONE and chunk == STEP_CHUNK:
                                steps = steps_at_once(membrane)
                                for c in range(0, STEP_CHUNK, steps):
                                    integrate_chunk(staged, s * chunk + c, ring_first, row_bias, membrane, theta,
                                                    out_spikes, (t0 + c) * batch + first_sample + s, batch, placement,
                                                    steps)
                                continue
                            for c in range(chunk):
                                n, r = (t0 + c) * batch + first_sample + s, s * chunk + c
                                if projection:
                                    integrate_shortcut(staged[r, ring_first:], row_bias, membrane, theta,
                                                       shortcut_staged[r], shortcut_row_bias, out_spikes[n], placement)
                                elif kind == ResidualKind.GRADED:
                                    integrate_graded(staged[r, ring_first:], row_bias, membrane, theta,
                                                     residual_values[0], residual_spikes[n], out_spikes[n], placement)
                                else:
                                    row = n if kind == ResidualKind.CURRENT else first_sample + s
                                    integrate_current(kind, staged[r, ring_first:], row_bias, membrane, theta,
                                                      residual_values[row if currents else 0], out_spikes[n],
                                                      placement)
                        if sliding:  # its ring row, free for output row oy + 3
                            for r in range(samples * chunk):
                                staged[r, ring_first - window_first : ring_first - window_first + slot_span] = 0
                else:
                    block_bias = bias[first : first + lanes]
                    for oy in range(out_h):
                        for ox in range(out_w):
                            p = oy * out_w + ox
                            at = p * padded + start
                            theta = threshold[p, first : first + lanes]
                            placement = (p * out_channels + first, 0, 1, lanes)
                            for s in range(samples):
                                membrane = v[s, at : at + lanes]
                                for c in range(chunk):
                                    n, r = (t0 + c) * batch + first_sample + s, s * chunk + c
                                    gather(acc, flat, (group * padded + start) * taps, kernel_hw, group_in,
                                           entries[r], starts[r], oy, ox, geometry, (in_h, in_w), wide,
                                           row_of(inputs, r))
                                    if projection:
                                        gather(shortcut_acc, shortcut_flat, first * shortcut_taps, shortcut_kernel,
                                               shortcut_channels, shortcut_entries[r], shortcut_starts[r], oy, ox,
                                               shortcut_geometry, (shortcut_h, shortcut_w), wide, None)
                                    if projection:
                                        integrate_shortcut(values, block_bias, membrane, theta, shortcut_values,
                                                           shortcut_bias[first : first + lanes], out_spikes[n],
                                                           placement)
                                    elif kind == ResidualKind.GRADED:
                                        integrate_graded(values, block_bias, membrane, theta, residual_values[0],
                                                         residual_spikes[n], out_spikes[n], placement)
                                    else:
                                        row = n if kind == ResidualKind.CURRENT else first_sample + s
                                        integrate_current(kind, values, block_bias, membrane, theta,
                                                          residual_values[row if currents else 0], out_spikes[n],
                                                          placement)
            for s in range(samples):
                for c in range(chunk):
                    fired_total += group_spikes(out_spikes[(t0 + c) * batch + first_sample + s], out_channels,
                                                group * group_out, group_out)
    counts[worker] = fired_total


#: spikes a fused kernel counts at once (:func:`group_spikes`): a 64-byte vector's mask
COUNTED_FLAGS = 64


@njit(inline="always")
def group_spikes(row, channels, first, size):
    """The spikes of channels [first, first + size) in a channels-last map [H·W·C] of
    ``channels`` channels."""
    total = 0
    if size == channels:  # one group: the whole row, contiguous, COUNTED_FLAGS at a time
        whole = row.shape[0] - row.shape[0] % COUNTED_FLAGS
        for i in range(0, whole, COUNTED_FLAGS):
            total += count_flags(row, i, COUNTED_FLAGS)
        for i in range(whole, row.shape[0]):
            total += row[i]
    else:
        for base in range(first, row.shape[0], channels):
            for i in range(base, base + size):
                total += row[i]
    return total


def depthwise_if_kernel(spikes, in_hw, weights, kernel_hw, geometry, bias, residual, neurons, timesteps, batch, workers,
                        out_spikes, counts):
    """IF(depthwise conv(spikes) [+ residual]), the fused kernel of a depthwise conv (each output
    channel reads its own input channel; see :func:`~snnverify.runtime.cpu.layouts.is_depthwise`):
    its spikes to ``out_spikes`` [T·B, H·W·C] and their number, per worker, to ``counts``.

    A neuron (c, y, x) has one term per tap, Σ = Σ_{ky, kx} W'[c, ky, kx]·s[c, y·s − p + ky·d,
    …] over the taps (ascending) inside the input: the gather's terms in its order. A row of
    output positions is summed at once, channels-last as the maps hold it: per tap, each
    position's channels take one vector select-and-add per 16 over ``weights`` [kH·kW, C]
    (:func:`~snnverify.runtime.cpu.layouts.depthwise_layout`) whatever the spikes, as a silent
    input adds w·0 = ±0, which leaves a sum from +0 unchanged (it is never −0), as skipping it
    does. Then the row's W_out·C neurons take the residual and IF update of
    :func:`conv2d_events_if_kernel` (``residual.kind`` NONE, CURRENT, STATIC or GRADED) in one
    loop, which LLVM vectorises. The fused kernel's gathers, per group of one channel, would use
    one lane in 16 and read the map once per channel. A job is one sample, all its steps in turn."""
    run_parallel(depthwise_workers, depthwise_worker, spikes, in_hw, weights, kernel_hw, geometry, bias, residual,
                 neurons, timesteps, batch, workers, out_spikes, counts)


@njit(parallel=True, cache=True)
def depthwise_workers(address, spikes, in_hw, weights, kernel_hw, geometry, bias, residual, neurons, timesteps, batch,
                      workers, out_spikes, counts):
    """The worker at ``address`` (:func:`depthwise_worker`) once per worker, in parallel; which of
    them raised (tuples unpacked before the loop, as in :func:`fused_workers`)."""
    kind, residual_values, residual_spikes = residual
    threshold, v0, out_hw = neurons
    failed = np.empty(workers, np.bool_)
    for worker in prange(workers):
        failed[worker] = call_worker(
            address, (spikes, in_hw, weights, kernel_hw, geometry, bias,
                      FusedResidual(kind, residual_values, residual_spikes), FusedNeurons(threshold, v0, out_hw),
                      timesteps, batch, workers, out_spikes, counts, np.int64(worker)))
    return failed


@njit(cache=True, error_model="numpy")  # (the error model: see fused_worker)
def depthwise_worker(spikes, in_hw, weights, kernel_hw, geometry, bias, residual, neurons, timesteps, batch, workers,
                     out_spikes, counts, worker):
    """The samples of :func:`depthwise_if_kernel` that fall to parallel worker ``worker``:
    ``worker``, ``worker`` + workers, …; ``counts[worker]`` = the spikes they wrote."""
    kind, residual_values, residual_spikes = residual
    threshold, v0, (out_h, out_w) = neurons
    in_h, in_w = in_hw
    kernel_h, kernel_w = kernel_hw
    stride_y, stride_x, pad_y, pad_x, dilation_y, dilation_x = geometry
    channels = bias.shape[0]
    vectors = channels - channels % NARROW  # channels summed 16 at a time; the rest lane by lane
    span = out_w * channels  # the neurons of one output row
    currents = kind == ResidualKind.CURRENT or kind == ResidualKind.STATIC
    initial, thresholds = v0.reshape(-1), threshold.reshape(-1)
    # scratch, once per worker and call: membranes, a row's sums, the bias per neuron of a row
    v, acc, row_bias = np.empty(initial.shape[0], v0.dtype), np.empty(span, weights.dtype), repeated(bias, span)
    flat = weights.reshape(-1)
    fired_total = 0
    for sample in range(worker, batch, workers):
        for i in range(v.shape[0]):
            v[i] = initial[i]
        for t in range(timesteps):
            n = t * batch + sample
            inputs = spikes[n]
            for oy in range(out_h):
                for i in range(span):
                    acc[i] = 0
                for ky in range(kernel_h):
                    iy = oy * stride_y - pad_y + ky * dilation_y
                    if iy < 0 or iy >= in_h:
                        continue
                    for kx in range(kernel_w):
                        # the columns ox whose input column ix = ox·s − shift lies inside the map
                        shift = pad_x - kx * dilation_x
                        first_ox, end_ox = max(0, -(-shift // stride_x)), min(out_w, (in_w - 1 + shift) // stride_x + 1)
                        tap = ky * kernel_w + kx
                        for ox in range(first_ox, end_ox):
                            source, target = (iy * in_w + ox * stride_x - shift) * channels, ox * channels
                            for c in range(0, vectors, NARROW):
                                add_spiking_vector(acc, target + c, flat, tap * channels + c, inputs, source + c, NARROW)
                            for c in range(vectors, channels):
                                acc[target + c] += weights[tap, c] * inputs[source + c]
                out = oy * span
                membrane, theta, placement = v[out : out + span], thresholds[out : out + span], (out, 0, 1, span)
                if kind == ResidualKind.GRADED:
                    integrate_graded(acc, row_bias, membrane, theta, residual_values[0], residual_spikes[n],
                                     out_spikes[n], placement)
                else:
                    row = n if kind == ResidualKind.CURRENT else sample
                    integrate_current(kind, acc, row_bias, membrane, theta, residual_values[row if currents else 0],
                                      out_spikes[n], placement)
            fired_total += group_spikes(out_spikes[n], channels, 0, channels)
    counts[worker] = fired_total
