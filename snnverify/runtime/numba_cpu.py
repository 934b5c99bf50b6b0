"""Numba CPU backend (``compile(snn, target="cpu")``): parallel kernels, event-driven synapses.

Layers fed by an IF layer are event-driven: the work grows with the number of spikes, not with
the dense input size. Static signals (the input image and layers fed only by it) are computed
once per batch, not T times. Accumulation order (see :mod:`snnverify.runtime.plan`) is the CUDA
backend's, so float32 spikes agree bit for bit.

An event-driven conv *gathers*: per output position and block of output channels, it adds the
weight rows W'[·, c, ky, kx] of the spiking inputs (c, iy, ix) the position reads (lists built
once per sample-step map, :func:`_spike_entries`) into accumulators held in vector registers
(:func:`_stack_buffer`, :func:`_add_vector`) — one load and one add per 16 lanes, no store —
in (ky, kx, c) order. For 16 or 32 output channels, 4 or 2 adjacent positions share one block
(:func:`_gather_packed`). Every IF layer fed by an event-driven conv (plus a residual, which may
itself be an event-driven projection conv) runs as one fused kernel (:func:`_conv2d_events_if`),
so the [T·B, ...] currents are never stored, and writes its spikes channels-last, the order in
which it computes them and in which the next fused kernel reads them (spike lists 16 channels
at a time, graded residuals in place); other readers get them channels-first
(:func:`_to_channels_first`). Over a converted ResNet-18 at T = 32 it does 26 G synaptic adds/s
per core on this project's machines, against 35–69 G/s for its inner loop alone (``snnverify.speed``
reports the events per second beside the speed; the asv benchmark ``EventGather`` the inner loop's).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import carray, get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from snnverify import graph as g
from snnverify.runtime import RunResult, check_run, register_backend
from snnverify.runtime.plan import EventConv, Kernels, Signal, build_plan, execute
from snnverify.runtime.quantize import ExactRange


@njit(parallel=True, cache=True)
def _conv2d_dense(x, w, bias, stride, padding, dilation, groups, zero, out):
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


@intrinsic
def _stack_buffer(typingctx, like, length):
    """Pointer to ``length`` (a compile-time constant) elements of ``like``'s dtype in the calling
    function's stack frame. LLVM keeps such a buffer in vector registers across a loop that
    indexes it with constants; a heap array (``np.empty``) it cannot, its allocation is opaque."""
    if not isinstance(length, types.IntegerLiteral):
        return None
    count, dtype = length.literal_value, like.dtype

    def codegen(context, builder, signature, args):
        element = context.get_value_type(dtype)
        entry = builder.function.entry_basic_block
        with builder.goto_block(entry):
            builder.position_at_start(entry)
            slot = builder.alloca(ir.ArrayType(element, count))
        return builder.bitcast(slot, element.as_pointer())

    return types.CPointer(dtype)(like, length), codegen


#: Output channels one gather accumulates at once (constants, so that the accumulators stay in
#: registers): 64 float32 are 8 AVX registers; a group's last channels go in blocks of 16.
_WIDE, _NARROW = 64, 16
#: Steps whose spike lists a fused kernel builds at once: each weight row it loads then serves
#: up to this many steps at each output position (reuse in the L1/L2 cache).
_STEP_CHUNK = 8
#: Spike-list entries one job of a fused kernel may hold (1 MB): late ResNet layers, with small
#: maps, then take several samples per job and read their weights once for all of them.
_TILE_ENTRIES = 1 << 18


def padded_channels(group_out: int) -> int:
    """A group's output channels rounded up to whole blocks of :data:`_NARROW`."""
    return -(-group_out // _NARROW) * _NARROW


#: Channels :func:`_append_spiking` examines at once.
_FLAG_LANES = 16


@intrinsic
def _append_spiking(typingctx, entries, at, flags, offset, first_value):
    """entries[at : at + k] = first_value + i for the i in 0 … 15 (ascending) where flags[offset +
    i] (linear index into a C-contiguous boolean array) is true; returns k. One masked
    compress-store (``llvm.masked.compressstore``: AVX-512 ``vpcompressd``; LLVM expands it on
    other CPUs) instead of 16 stores, loads and adds."""
    if entries != types.Array(types.int32, 1, "C") or flags.dtype != types.boolean:
        return None
    lanes = _FLAG_LANES

    def codegen(context, builder, signature, args):
        entries_array, at, flags_array, offset, first_value = args
        entries_data = context.make_array(signature.args[0])(context, builder, entries_array).data
        flags_data = context.make_array(signature.args[2])(context, builder, flags_array).data
        i32, index = ir.IntType(32), ir.IntType(64)
        flag_vector = ir.VectorType(ir.IntType(8), lanes)
        loaded = builder.load(builder.bitcast(builder.gep(flags_data, [offset]), flag_vector.as_pointer()), align=1)
        mask = builder.icmp_unsigned("!=", loaded, ir.Constant(flag_vector, [0] * lanes))
        values_type = ir.VectorType(i32, lanes)
        first = builder.insert_element(ir.Constant(values_type, ir.Undefined), builder.trunc(first_value, i32),
                                       ir.Constant(i32, 0))
        first = builder.shuffle_vector(first, ir.Constant(values_type, ir.Undefined),
                                       ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))
        values = builder.add(first, ir.Constant(values_type, list(range(lanes))))
        store_type = ir.FunctionType(ir.VoidType(), [values_type, i32.as_pointer(), mask.type])
        store = cgutils.get_or_insert_function(builder.module, store_type, f"llvm.masked.compressstore.v{lanes}i32")
        builder.call(store, [values, builder.gep(entries_data, [at]), mask])
        bits = ir.IntType(lanes)
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(bits, [bits]), f"llvm.ctpop.i{lanes}")
        return builder.zext(builder.call(popcount, [builder.bitcast(mask, bits)]), index)

    return types.int64(entries, at, flags, offset, first_value), codegen


@njit(inline="always")
def _spike_entries(planes, channels_last, first, group_in, in_w, entries, starts):
    """Which weight rows the spikes of one sample-step's map ``planes`` — [C, H·W], or [H·W, C]
    when ``channels_last`` — select: for each position p = (iy, ix) in scan order,
    entries[starts[p] : starts[p + 1]] = ix·C_g + c for the channels c (ascending) among
    ``first`` … ``first`` + C_g − 1 that spike there, C_g = ``group_in`` (see :func:`_gather`).
    One position at a time, so that the entries are written contiguously, and without a branch
    per channel (at spike rates of 5–30 % a data-dependent branch mispredicts often). A
    channels-last map is read contiguously; a channels-first one with a stride of H·W."""
    count = 0
    positions = starts.shape[0] - 1
    for p in range(positions):
        starts[p] = count
        column = (p % in_w) * group_in
        if channels_last:  # the channels of a position are adjacent: 16 at a time
            offset = p * planes.shape[1] + first
            whole = group_in - group_in % _FLAG_LANES
            for c in range(0, whole, _FLAG_LANES):
                count += _append_spiking(entries, count, planes, offset + c, column + c)
            for c in range(whole, group_in):
                entries[count] = column + c
                count += planes[p, first + c]
        else:
            for c in range(group_in):
                entries[count] = column + c
                count += planes[first + c, p]
    starts[positions] = count


@intrinsic
def _add_vector(typingctx, acc, weights, offset, lanes):
    """acc[:lanes] += weights[offset : offset + lanes] as one LLVM vector add of ``lanes`` (a
    constant) elements — exact IEEE adds, lane by lane, as a scalar loop would do them; ``acc`` is
    a :func:`_stack_buffer`. Written as a vector because LLVM unrolls a short constant loop into
    scalar adds that it does not vectorise again; a vector kept in registers across the event
    loop is the point."""
    if not isinstance(lanes, types.IntegerLiteral):
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        acc_pointer, weight_array, first, _ = args
        data = context.make_array(signature.args[1])(context, builder, weight_array).data
        vector = ir.VectorType(context.get_value_type(signature.args[1].dtype), count)
        source = builder.bitcast(builder.gep(data, [first]), vector.as_pointer())
        target = builder.bitcast(acc_pointer, vector.as_pointer())
        values, total = builder.load(source, align=1), builder.load(target, align=1)
        builder.store(builder.fadd(total, values) if signature.args[1].dtype in types.real_domain
                      else builder.add(total, values), target, align=1)
        return context.get_dummy_value()

    return types.none(acc, weights, offset, lanes), codegen


@njit(inline="always")
def _add_entries(acc, weights, block, row, entries, begin, end, wide):
    """acc += the weight rows ``row`` + entries[e] of the block at ``block`` (rows of its lane
    count), for e = begin … end − 1 in that order."""
    if wide:
        for e in range(begin, end):
            _add_vector(acc, weights, block + (row + entries[e]) * _WIDE, _WIDE)
    else:
        for e in range(begin, end):
            _add_vector(acc, weights, block + (row + entries[e]) * _NARROW, _NARROW)


@njit(inline="always")
def _gather(acc, weights, block, kernel_hw, group_in, entries, starts, oy, ox, geometry, in_hw, wide):
    """acc[k] = Σ_{ky, kx} Σ_c W'[o_k, c, ky, kx] for the output channels o_k of a block's lanes
    (within group g, c over the group's C_g input channels): over the kernel taps (ky, kx)
    ascending that land inside the input and, per tap, the channels c (ascending) that spike at
    the input position it reads — the CUDA kernel's order.

    ``weights`` is the flat :func:`events_layout`; the block starts at ``block`` and holds rows
    (ky·kW + kx)·C_g + c of its lane count; ``entries``, ``starts`` from :func:`_spike_entries`;
    ``acc`` a :func:`_stack_buffer`."""
    values = carray(acc, _WIDE)
    for k in range(_WIDE if wide else _NARROW):
        values[k] = 0
    stride_y, stride_x, pad_y, pad_x, dilation_y, dilation_x = geometry
    kernel_h, kernel_w = kernel_hw
    in_h, in_w = in_hw
    x0 = ox * stride_x - pad_x  # the input column of tap kx = 0
    for ky in range(kernel_h):
        iy = oy * stride_y - pad_y + ky * dilation_y
        if iy < 0 or iy >= in_h:
            continue
        row = iy * in_w
        if dilation_x == 1:
            # the row's taps read the adjacent positions x0 … x0 + kW − 1, whose entries are
            # contiguous and ascend in (ix, c) = (kx, c): one loop, not one per tap (with few
            # spikes per position the loop overhead is most of the work); an entry's own ix·C_g
            # picks its kernel column kx = ix − x0
            lo, hi = max(0, x0), min(in_w, x0 + kernel_w)
            if lo < hi:
                _add_entries(acc, weights, block, (ky * kernel_w - x0) * group_in, entries, starts[row + lo],
                             starts[row + hi], wide)
        else:
            for kx in range(kernel_w):
                ix = x0 + kx * dilation_x
                if 0 <= ix < in_w:
                    _add_entries(acc, weights, block, (ky * kernel_w + kx - ix) * group_in, entries,
                                 starts[row + ix], starts[row + ix + 1], wide)


@njit(inline="always")
def _gather_packed(acc, weights, kernel_h, span, group_in, entries, starts, oy, x0, geometry, in_hw):
    """The gathers of Q adjacent output positions (oy, ox0 + j) at once, for a layer with
    Q·C_out = :data:`_WIDE`: acc[j·C_out + o] = Σ_{ky, kx} Σ_c W'[o, c, ky, kx] in the order of
    :func:`_gather`. ``weights`` is the packed layout (:func:`packed_layout`) of rows
    (ky·span + d)·C_in + c, whose lane (j, o) holds W'[o, c, ky, d − j·s] (0 where that is no
    tap): the input at column x0 + d reaches all Q positions through one row. Each neuron gets
    its terms in the same order as from :func:`_gather`, and +0 for the rows that are not its
    taps; a sum that starts at +0 never becomes −0 (round to nearest), so adding +0 changes
    nothing, and the result is bit-identical. Far fewer, longer vector adds for narrow layers."""
    values = carray(acc, _WIDE)
    for k in range(_WIDE):
        values[k] = 0
    stride_y, pad_y, dilation_y = geometry[0], geometry[2], geometry[4]
    in_h, in_w = in_hw
    lo, hi = max(0, x0), min(in_w, x0 + span)
    if lo >= hi:
        return
    for ky in range(kernel_h):
        iy = oy * stride_y - pad_y + ky * dilation_y
        if 0 <= iy < in_h:
            _add_entries(acc, weights, 0, (ky * span - x0) * group_in, entries, starts[iy * in_w + lo],
                         starts[iy * in_w + hi], True)


@njit(inline="always")
def _residual_currents(kind, residual, n, sample, p, first, out_channels, count, positions, part):
    """part[j·w + k] = the residual current of neuron (channel ``first`` + k, position p + j), w =
    min(count, C_out): ``residual[n, f]`` (kind 1) or ``residual[sample, f]`` (2, static), f its
    channels-first index (a strided read, in place: copying the map channels-last first cost
    more, and the copy evicted the weights from the caches)."""
    width = min(count, out_channels)
    source = residual[n if kind == 1 else sample]
    for j in range(count // width):
        for k in range(width):
            part[j * width + k] = source[(first + k) * positions + p + j]


#: What :func:`_integrate` adds to a lane's Σ + b: nothing, a graded spike a·s, a shortcut
#: conv's Σ' + b', a current.
_NONE, _GRADED, _SHORTCUT, _CURRENT = 0, 1, 2, 3


@njit(inline="always")
def _integrate(values, bias, residual, first_terms, second_terms, membrane, theta, spiked):
    """Per lane k: v += (Σ + b) + r; s = v ≥ θ; v −= θ·s — the unfused kernels' operations —
    with r by ``residual``: none, a·s (first_terms[k]·second_terms[k], branch-free: a·0 may be
    −0, and (Σ + b) + (−0) = Σ + b, as Σ + b, a sum from +0, is never −0), Σ' + b'
    (first_terms[k] + second_terms[k]) or first_terms[k]. Computed here, lane by lane, not
    staged in a buffer: a vector load of lanes just stored one by one stalls (no store
    forwarding), which cost more than the residual itself (measured: +20 % on a 64-channel layer)."""
    lanes = spiked.shape[0]
    if residual == _NONE:
        for k in range(lanes):
            value = membrane[k] + (values[k] + bias[k])
            spiked[k] = value >= theta[k]
            membrane[k] = value - theta[k] if spiked[k] else value
    elif residual == _GRADED:
        for k in range(lanes):
            value = membrane[k] + ((values[k] + bias[k]) + first_terms[k] * second_terms[k])
            spiked[k] = value >= theta[k]
            membrane[k] = value - theta[k] if spiked[k] else value
    elif residual == _SHORTCUT:
        for k in range(lanes):
            value = membrane[k] + ((values[k] + bias[k]) + (first_terms[k] + second_terms[k]))
            spiked[k] = value >= theta[k]
            membrane[k] = value - theta[k] if spiked[k] else value
    else:
        for k in range(lanes):
            value = membrane[k] + ((values[k] + bias[k]) + first_terms[k])
            spiked[k] = value >= theta[k]
            membrane[k] = value - theta[k] if spiked[k] else value


@njit(inline="always")
def _block_count(padded):
    """Blocks of :data:`_WIDE`, then :data:`_NARROW` lanes that cover ``padded`` channels."""
    return padded // _WIDE + (padded % _WIDE) // _NARROW


@njit(inline="always")
def _block(block, padded, group_out):
    """Block ``block`` of a group (see :func:`_block_count`): its first channel within the group,
    whether it is wide, and how many of its lanes are real channels (the others pad the group
    to :func:`padded_channels`)."""
    wide_blocks = padded // _WIDE
    if block < wide_blocks:
        start, wide = block * _WIDE, True
    else:
        start, wide = wide_blocks * _WIDE + (block - wide_blocks) * _NARROW, False
    return start, wide, min(_WIDE if wide else _NARROW, group_out - start)


@njit(parallel=True, cache=True)
def _conv2d_events(spikes, weights, kernel_hw, bias, geometry, workers, out):
    """The same sums as :func:`_conv2d_dense`, from the spikes (:func:`_gather`); bias last."""
    rows, out_channels, out_h, out_w = out.shape
    groups, channels, in_h, in_w = weights.shape[0], spikes.shape[1], spikes.shape[2], spikes.shape[3]
    group_out, group_in = out_channels // groups, channels // groups
    kernel_h, kernel_w = kernel_hw
    taps = kernel_h * kernel_w * group_in  # rows of a block
    padded = weights.shape[1] // taps
    flat = weights.reshape(-1)
    # scratch per worker (one per thread), allocated once per call
    all_entries = np.empty((workers, in_h * in_w * group_in), np.int32)
    all_starts = np.empty((workers, in_h * in_w + 1), np.int64)
    for worker in prange(workers):
        for job in range(worker, rows * groups, workers):
            acc = _stack_buffer(bias, _WIDE)  # in the worker's stack frame
            entries, starts = all_entries[worker], all_starts[worker]
            n, group = job // groups, job % groups
            _spike_entries(spikes[n].reshape(channels, -1), False, group * group_in, group_in, in_w, entries, starts)
            for block in range(_block_count(padded)):
                start, wide, lanes = _block(block, padded, group_out)
                first = group * group_out + start
                for oy in range(out_h):
                    for ox in range(out_w):
                        _gather(acc, flat, (group * padded + start) * taps, kernel_hw, group_in, entries, starts, oy, ox,
                                geometry, (in_h, in_w), wide)
                        values = carray(acc, _WIDE)
                        for k in range(lanes):
                            out[n, first + k, oy, ox] = values[k] + bias[first + k]


@njit(parallel=True, cache=True)
def _conv2d_events_if(conv, shortcut, pack, out_hw, residual_kind, residual, residual_spikes, threshold, v0, steps,
                      batch, tile, workers, out_spikes):
    """IF(conv(spikes) [+ residual]) without storing currents; the spikes go to ``out_spikes``
    [T·B, H·W·C_out], channels-last.

    ``conv`` and ``shortcut`` are (spike map, channels-last [T·B, H·W·C], its (C, H, W), W' in
    blocks (:func:`events_layout`), W' packed (:func:`packed_layout`), (kH, kW), geometry, bias).
    For every neuron f = (o, y, x) and step: I = (Σ + bias[o]) + r, Σ = :func:`_gather`, with r
    by ``residual_kind``: 0 none, 1 ``residual[t·B + b, f]``, 2 ``residual[b, f]`` (static), 3
    ``residual[0, f]``·``residual_spikes[t·B + b, f]`` (a graded spike map; f channels-last
    here), 4 Σ' + bias'[o] with Σ' the gather of the second conv (a projection shortcut; both
    convs have one group); then v += I, s = v ≥ θ, v −= θ·s — the unfused kernels' operations,
    in their order. ``threshold`` and
    ``v0`` are channels-last [H·W, C_out]. With ``pack`` = Q > 1 (C_out = 64 / Q), Q adjacent
    positions are gathered at once (:func:`_gather_packed`).

    A job is ``tile`` samples of one group; their steps go in chunks of :data:`_STEP_CHUNK`, and
    per chunk, block of output channels and output position, every sample and step of the
    chunk is gathered before the next position: the weights of a block (up to 9·C_in·64 values)
    are then read from memory once per chunk and tile, and from the caches for the rest."""
    spikes, (channels, in_h, in_w), weights, packed, kernel_hw, geometry, bias = conv
    (shortcut_spikes, (shortcut_channels, shortcut_h, shortcut_w), shortcut_weights, shortcut_packed, shortcut_kernel,
     shortcut_geometry, shortcut_bias) = shortcut
    out_h, out_w = out_hw[0], out_hw[1]
    positions = out_h * out_w
    groups = weights.shape[0]
    out_channels = bias.shape[0]
    group_out, group_in = out_channels // groups, channels // groups
    taps = kernel_hw[0] * kernel_hw[1] * group_in  # rows of a block
    padded = weights.shape[1] // taps
    flat, packed_flat = weights.reshape(-1), packed.reshape(-1)
    span = packed.shape[0] // (kernel_hw[0] * group_in)  # input columns a packed row set covers
    shortcut_flat, shortcut_packed_flat = shortcut_weights.reshape(-1), shortcut_packed.reshape(-1)
    shortcut_taps = shortcut_kernel[0] * shortcut_kernel[1] * shortcut_channels
    shortcut_span = shortcut_packed.shape[0] // (shortcut_kernel[0] * shortcut_channels)
    projection = residual_kind == 4
    thresholds = threshold.reshape(-1)
    lane_bias, shortcut_lane_bias = np.empty(_WIDE, bias.dtype), np.empty(_WIDE, bias.dtype)
    for k in range(_WIDE):  # packed: lane j·C_out + o is channel o
        lane_bias[k] = bias[k % out_channels]
        shortcut_lane_bias[k] = shortcut_bias[k % shortcut_bias.shape[0]]
    rows = tile * _STEP_CHUNK  # (sample, step) pairs of a job's chunk: r = s·chunk + c
    # scratch per worker (one per thread), allocated once per call: fresh pages per job cost
    # more than the adds
    all_entries = np.zeros((workers, rows, in_h * in_w * group_in), np.int32)
    all_starts = np.empty((workers, rows, in_h * in_w + 1), np.int64)
    shortcut_size = shortcut_h * shortcut_w if projection else 0
    all_shortcut_entries = np.zeros((workers, rows, shortcut_size * shortcut_channels), np.int32)
    all_shortcut_starts = np.empty((workers, rows, shortcut_size + 1), np.int64)
    all_v = np.empty((workers, tile, positions, padded), v0.dtype)
    tiles = -(-batch // tile)
    for worker in prange(workers):
        for job in range(worker, tiles * groups, workers):
            acc = _stack_buffer(bias, _WIDE)  # in the worker's stack frame
            shortcut_acc = _stack_buffer(bias, _WIDE)
            values, shortcut_values = carray(acc, _WIDE), carray(shortcut_acc, _WIDE)
            entries, starts, v = all_entries[worker], all_starts[worker], all_v[worker]
            shortcut_entries, shortcut_starts = all_shortcut_entries[worker], all_shortcut_starts[worker]
            part = carray(_stack_buffer(bias, _WIDE), _WIDE)  # residual currents (kinds 1, 2) of a gather's lanes
            first_sample, group = (job // groups) * tile, job % groups
            samples = min(tile, batch - first_sample)
            for s in range(samples):
                v[s, :, :group_out] = v0[:, group * group_out : (group + 1) * group_out]
            for t0 in range(0, steps, _STEP_CHUNK):
                chunk = min(_STEP_CHUNK, steps - t0)
                for s in range(samples):
                    for c in range(chunk):
                        n, r = (t0 + c) * batch + first_sample + s, s * chunk + c
                        _spike_entries(spikes[n].reshape(-1, channels), True, group * group_in, group_in, in_w,
                                       entries[r], starts[r])
                        if projection:
                            _spike_entries(shortcut_spikes[n].reshape(-1, shortcut_channels), True, 0,
                                           shortcut_channels, shortcut_w, shortcut_entries[r], shortcut_starts[r])
                for block in range(1 if pack > 1 else _block_count(padded)):
                    if pack > 1:  # one block of all channels
                        start, wide, lanes = 0, True, group_out
                    else:
                        start, wide, lanes = _block(block, padded, group_out)
                    first = group * group_out + start
                    if pack > 1:
                        for oy in range(out_h):
                            for ox0 in range(0, out_w, pack):
                                base = (oy * out_w + ox0) * lanes
                                count = min(pack, out_w - ox0) * lanes  # the lanes of positions inside the map
                                theta = thresholds[base : base + count]
                                for s in range(samples):
                                    membrane = v[s].reshape(-1)[base : base + count]
                                    for c in range(chunk):
                                        n, r = (t0 + c) * batch + first_sample + s, s * chunk + c
                                        _gather_packed(acc, packed_flat, kernel_hw[0], span, group_in, entries[r], starts[r],
                                                       oy, ox0 * geometry[1] - geometry[3], geometry, (in_h, in_w))
                                        if projection:
                                            _gather_packed(shortcut_acc, shortcut_packed_flat, shortcut_kernel[0],
                                                           shortcut_span, shortcut_channels, shortcut_entries[r],
                                                           shortcut_starts[r], oy,
                                                           ox0 * shortcut_geometry[1] - shortcut_geometry[3],
                                                           shortcut_geometry, (shortcut_h, shortcut_w))
                                        # lane j·C_out + o is channel o of position p + j: channels-last
                                        fired = out_spikes[n, base : base + count]
                                        if projection:
                                            _integrate(values, lane_bias, _SHORTCUT, shortcut_values,
                                                       shortcut_lane_bias, membrane, theta, fired)
                                        elif residual_kind == 3:
                                            _integrate(values, lane_bias, _GRADED, residual[0, base : base + count],
                                                       residual_spikes[n, base : base + count], membrane, theta, fired)
                                        else:
                                            if residual_kind != 0:
                                                _residual_currents(residual_kind, residual, n, first_sample + s,
                                                                   oy * out_w + ox0, 0, lanes, count, positions, part)
                                            mode = _CURRENT if residual_kind != 0 else _NONE
                                            _integrate(values, lane_bias, mode, part, part, membrane, theta, fired)
                    else:
                        for oy in range(out_h):
                            for ox in range(out_w):
                                p = oy * out_w + ox
                                base = p * lanes
                                theta = threshold[p, first : first + lanes]
                                out = p * out_channels + first
                                for s in range(samples):
                                    membrane = v[s, p, start : start + lanes]
                                    for c in range(chunk):
                                        n, r = (t0 + c) * batch + first_sample + s, s * chunk + c
                                        _gather(acc, flat, (group * padded + start) * taps, kernel_hw, group_in, entries[r],
                                                starts[r], oy, ox, geometry, (in_h, in_w), wide)
                                        if projection:
                                            _gather(shortcut_acc, shortcut_flat, first * shortcut_taps, shortcut_kernel,
                                                    shortcut_channels, shortcut_entries[r], shortcut_starts[r], oy, ox,
                                                    shortcut_geometry, (shortcut_h, shortcut_w), wide)
                                        fired = out_spikes[n, out : out + lanes]
                                        block_bias = bias[first : first + lanes]
                                        if projection:
                                            _integrate(values, block_bias, _SHORTCUT, shortcut_values,
                                                       shortcut_bias[first : first + lanes], membrane, theta, fired)
                                        elif residual_kind == 3:
                                            _integrate(values, block_bias, _GRADED, residual[0, out : out + lanes],
                                                       residual_spikes[n, out : out + lanes], membrane, theta, fired)
                                        else:
                                            if residual_kind != 0:
                                                _residual_currents(residual_kind, residual, n, first_sample + s, p,
                                                                   first, out_channels, lanes, positions, part)
                                            mode = _CURRENT if residual_kind != 0 else _NONE
                                            _integrate(values, block_bias, mode, part, part, membrane, theta, fired)


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

    Parallel over (sample, block of neurons); the inner loop runs over contiguous neurons, of
    slices indexed from 0 (with indices like f − start, which Numba cannot prove non-negative,
    it keeps a wraparound check per access and the loop stays scalar: 5.6× slower, measured)."""
    neurons = threshold.shape[0]
    block = 1024
    blocks = (neurons + block - 1) // block
    for job in prange(batch * blocks):
        b, start = job // blocks, (job % blocks) * block
        stop = min(start + block, neurons)
        v = v0[start:stop].copy()
        theta = threshold[start:stop]
        for t in range(steps):
            inputs = current[t * batch + b if temporal else b, start:stop]
            fired = spikes[t * batch + b, start:stop]
            for k in range(stop - start):
                value = v[k] + inputs[k]
                fired[k] = value >= theta[k]
                v[k] = value - theta[k] if fired[k] else value


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


def _gather_geometry(node: g.Conv2d) -> tuple[int, ...]:
    return (*node.stride, *node.padding, *node.dilation)


def _conv2d(x, weight, bias, node: g.Conv2d, out_shape, events):
    """``weight`` is :class:`EventWeights` when ``events`` (the plan lays it out once)."""
    if events:
        out = np.empty(out_shape, weight.blocks.dtype)
        _conv2d_events(x, weight.blocks, node.weight.shape[2:], bias, _gather_geometry(node), _workers(), out)
    else:
        out = np.empty(out_shape, weight.dtype)
        _conv2d_dense(x, weight, bias, *_geometry(node), weight.dtype.type(0), out)
    return out


def _workers() -> int:
    """Parallel workers of the event kernels: one per Numba thread, each with its own scratch
    (indexed by the worker, not by a thread id, which would make the kernels uncacheable)."""
    return get_num_threads()


def _channels_last(per_neuron: np.ndarray, shape) -> np.ndarray:
    """[C·H·W] (one value per neuron) as [H·W, C]."""
    return _to_channels_last(per_neuron.reshape(1, -1), shape).reshape(-1, shape[0])


def _conv2d_if(conv: EventConv, residual, out_shape, threshold, initial, steps, batch):
    """Fused IF(conv(spikes) [+ residual]) (see :class:`~snnverify.runtime.plan.Fusion`);
    ``residual`` is None, a :class:`Signal` or an :class:`EventConv` (a projection shortcut,
    computed inside when both convs have one group, else beforehand by :func:`_conv2d`). Spike
    maps, read and written, are channels-last [T·B, H·W·C]."""
    rows = steps * batch
    dtype = conv.weight.blocks.dtype
    no_spikes = np.zeros((1, 1, 1, 1), np.bool_)
    values, residual_spikes = np.zeros((1, 1), dtype), no_spikes.reshape(1, 1)
    no_weights = np.zeros((1, 1), dtype)
    shortcut = EventConv(no_spikes, EventWeights(no_weights, no_weights, 1), np.zeros(1, dtype), None)
    if isinstance(residual, EventConv) and (residual.node.groups > 1 or conv.node.groups > 1):
        height, width, channels = residual.spikes.shape[1:]
        spikes = _to_channels_first(residual.spikes, (channels, height, width)).reshape(rows, channels, height, width)
        current = _conv2d(spikes, residual.weight, residual.bias, residual.node, (rows, *out_shape), True)
        residual = Signal(current, True)
    if residual is None:
        kind = 0
    elif isinstance(residual, EventConv):
        kind, shortcut = 4, residual
    elif residual.amplitude is not None:  # a graded spike map
        kind, values, residual_spikes = 3, _channels_last(residual.amplitude, out_shape).reshape(1, -1), residual.array
    else:
        kind, values = (1 if residual.temporal else 2), residual.array
        values = np.ascontiguousarray(values).reshape(values.shape[0], -1)
    out = np.empty((rows, threshold.shape[0]), np.bool_)
    # samples per job: as many as keep a job's spike entries within _TILE_ENTRIES
    map_size = math.prod(conv.spikes.shape[1:]) // conv.node.groups + math.prod(shortcut.spikes.shape[1:])
    tile = max(1, min(batch, _TILE_ENTRIES // (_STEP_CHUNK * map_size)))
    # adjacent positions packed into one block when both convs allow it
    pack = conv.weight.pack if kind != 4 or shortcut.weight.pack == conv.weight.pack else 1

    def kernel_args(event_conv: EventConv):
        node, spikes = event_conv.node, event_conv.spikes
        return (spikes.reshape(spikes.shape[0], -1), (spikes.shape[3], spikes.shape[1], spikes.shape[2]),
                event_conv.weight.blocks, event_conv.weight.packed, node.weight.shape[2:] if node else (1, 1),
                _gather_geometry(node) if node else (1,) * 6, event_conv.bias)

    _conv2d_events_if(kernel_args(conv), kernel_args(shortcut), pack, np.array(out_shape[1:]), kind, values,
                      residual_spikes, _channels_last(threshold, out_shape),
                      _channels_last(initial, out_shape), steps, batch, tile, _workers(), out)
    return out


@njit(parallel=True, cache=True)
def _transpose_rows(source, out):
    """out[n, a, b] = source[n, b, a] for every row n."""
    for n in prange(source.shape[0]):
        for a in range(source.shape[2]):
            for b in range(source.shape[1]):
                out[n, a, b] = source[n, b, a]


def _transposed(array, height: int, width: int):
    """Each row of ``array`` [N, height·width], read as a height × width matrix, transposed."""
    rows = array.shape[0]
    out = np.empty((rows, width, height), array.dtype)
    _transpose_rows(np.ascontiguousarray(array).reshape(rows, height, width), out)
    return out.reshape(rows, -1)


def _to_channels_first(array, shape):
    """A channels-last map [N, H·W·C] (a fused kernel's spikes) as [N, C·H·W]."""
    return _transposed(array, shape[1] * shape[2], shape[0])


def _to_channels_last(array, shape):
    """A map [N, C·H·W] as [N, H·W·C]."""
    return _transposed(array, shape[0], shape[1] * shape[2])


class EventWeights(NamedTuple):
    """W' of an event-driven conv in the layouts of the CPU kernels (built once per plan)."""

    blocks: np.ndarray  #: :func:`events_layout`
    packed: np.ndarray  #: :func:`packed_layout` when ``pack`` > 1, else a placeholder
    pack: int  #: output positions gathered at once (:func:`_gather_packed`), 1 = none


def event_weights(weight: np.ndarray, node: g.Conv2d) -> EventWeights:
    """Both layouts of W' (the CPU kernels' ``weight_layout`` of an event-driven conv). Positions are packed
    when C_out is 16 or 32 (so 4 or 2 positions fill a block), with one group and unit column
    dilation."""
    out_channels = weight.shape[0]
    pack = _WIDE // out_channels if out_channels in (16, 32) and node.groups == 1 and node.dilation[1] == 1 else 1
    packed = packed_layout(weight, node.stride[1], pack) if pack > 1 else np.zeros((1, 1), weight.dtype)
    return EventWeights(events_layout(weight, node), packed, pack)


def packed_layout(weight: np.ndarray, stride: int, pack: int) -> np.ndarray:
    """W' [C_out, C_in, kH, kW] as rows (ky·span + d)·C_in + c of ``pack``·C_out lanes, span =
    (pack − 1)·s + kW: lane j·C_out + o holds W'[o, c, ky, d − j·s], or 0 where d − j·s is not a
    kernel column — the weights an input at column x0 + d sends to output positions ox0 + j (x0
    = ox0·s − p) (see :func:`_gather_packed`)."""
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    span = (pack - 1) * stride + kernel_w
    lanes = np.zeros((kernel_h, span, in_channels, pack, out_channels), weight.dtype)
    for j in range(pack):
        for kx in range(kernel_w):
            lanes[:, j * stride + kx, :, j, :] = weight[:, :, :, kx].transpose(2, 1, 0)
    layout = _aligned_zeros((kernel_h * span * in_channels, pack * out_channels), weight.dtype)
    layout[:] = lanes.reshape(layout.shape)
    return layout


def events_layout(weight: np.ndarray, node: g.Conv2d) -> np.ndarray:
    """W' [C_out, C_in/g, kH, kW] as [g, P·kH·kW·C_in/g], blocks of output channels one after the
    other: a group's channels, zero-padded to P = :func:`padded_channels`, go in blocks of
    :data:`_WIDE` then :data:`_NARROW` lanes, and a block holds rows (ky·kW + kx)·C_in/g + c of
    its lane count — the weights one spike of input channel c sends through tap (ky, kx). A
    block is contiguous, so that the caches hold it while the gathers read it: with the blocks
    interleaved in each row, 2 KB apart at 512 channels, a block's rows would fall into a small
    part of the cache sets and evict each other (measured: 2.5× slower on 512 channels)."""
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    groups = node.groups
    group_out = out_channels // groups
    padded = padded_channels(group_out)
    lanes = np.zeros((groups, padded, kernel_h, kernel_w, group_in), weight.dtype)
    lanes[:, :group_out] = weight.reshape(groups, group_out, group_in, kernel_h, kernel_w).transpose(0, 1, 3, 4, 2)
    taps = kernel_h * kernel_w * group_in  # rows of a block
    layout = _aligned_zeros((groups, padded * taps), weight.dtype)
    for block in range(_block_count(padded)):  # the kernels' own block order
        start, wide, _ = _block(block, padded, padded)
        width = _WIDE if wide else _NARROW
        rows = lanes[:, start : start + width].reshape(groups, width, taps).transpose(0, 2, 1)
        layout[:, start * taps : (start + width) * taps] = rows.reshape(groups, -1)
    return layout


def _aligned_zeros(shape, dtype, alignment: int = 64) -> np.ndarray:
    """np.zeros whose data starts on a cache line: a row of 16 float32 is then one cache line,
    not two (numpy aligns to 16 bytes; a vector load that spans two lines is slower)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


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


def _weight_layout(weight: np.ndarray, node, events: bool):
    """W' as the CPU kernels read it: an event-driven conv's :func:`event_weights`, else as stored."""
    return event_weights(weight, node) if events and isinstance(node, g.Conv2d) else weight


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
    weight_layout=_weight_layout,
    conv2d_if=_conv2d_if,
    channels_last=_to_channels_last,
    channels_first=_to_channels_first,
)


@register_backend("cpu")
class NumbaCPUBackend:
    """Numba CPU kernels (parallel over samples and channels)."""

    def __init__(self, graph: g.SpikingGraph):
        self.graph = graph
        self.plan = build_plan(graph)
        self.exact_range = ExactRange(graph) if graph.integer else None

    def run(self, x, timesteps: int, record: bool = False, device=None) -> RunResult:
        if device not in (None, "cpu"):
            raise ValueError(f"the cpu target runs on the CPU; got device={device!r}")
        x, steps = check_run(self.graph, x, timesteps, self.exact_range)
        output, counts, spikes = execute(self.plan, CPU_KERNELS, x.numpy(), steps, record)
        return RunResult(output=np.asarray(output, np.float32), spike_counts=counts, spikes=spikes)
