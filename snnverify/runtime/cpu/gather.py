"""The event kernels' inner loops: spike lists, and the gathers that add the weight rows of the
spiking inputs an output position reads (Numba device functions, inlined into the kernels of
:mod:`snnverify.runtime.cpu.events`).

Order: per output position, over the kernel taps (ky, kx) ascending that land inside the input
and, per tap, the spiking input channels c ascending — the order of
:mod:`snnverify.runtime.plan`, shared with the dense and CUDA kernels.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from snnverify.runtime.cpu.intrinsics import (FLAG_LANES, add_scaled_vector, add_term, add_vector,
                                              append_nonzero_float32, append_spiking, load_vector, move_vector,
                                              stack_buffer, store_vector, summed_in)
from snnverify.runtime.cpu.layouts import NARROW, WIDE


@njit(inline="always")
def spike_entries(planes, channels_last, first, group_in, in_w, entries, starts, read=None):
    """Which weight rows the spikes of one sample-step's map ``planes`` — [C, H·W], or [H·W, C]
    when ``channels_last`` — select: for each position p = (iy, ix) in scan order,
    entries[starts[p] : starts[p + 1]] = ix·C_g + c for the channels c (ascending) among
    ``first`` … ``first`` + C_g − 1 that spike there, C_g = ``group_in`` (see :func:`gather`).
    One position at a time, so that the entries are written contiguously, and without a branch
    per channel (at spike rates of 5–30 % a data-dependent branch mispredicts often). A
    channels-last map is read contiguously; a channels-first one with a stride of H·W. With
    ``read`` (:func:`positions_read`), a position the conv does not read gets an empty list."""
    count = 0
    positions = starts.shape[0] - 1
    for p in range(positions):
        starts[p] = count
        column = (p % in_w) * group_in
        if read is not None and not read[p]:
            continue
        if channels_last:  # the channels of a position are adjacent: 16 at a time
            offset = p * planes.shape[1] + first
            whole = group_in - group_in % FLAG_LANES
            for c in range(0, whole, FLAG_LANES):
                count += append_spiking(entries, count, planes, offset + c, column + c)
            for c in range(whole, group_in):
                entries[count] = column + c
                count += planes[p, first + c]
        else:
            for c in range(group_in):
                entries[count] = column + c
                count += planes[first + c, p]
    starts[positions] = count


@njit(inline="always", cache=True)  # (also called from Python, for a fused kernel's tile)
def positions_read(in_hw, kernel_hw, geometry, out_hw):
    """Whether a conv reads each position of its input map (scan order): (iy, ix) is read when
    iy = oy·s_y − p_y + ky·d_y and ix = ox·s_x − p_x + kx·d_x for an output position (oy, ox)
    and a tap (ky, kx) — a 1 × 1 projection of stride 2 reads a quarter of its map."""
    stride_y, stride_x, pad_y, pad_x, dilation_y, dilation_x = geometry
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    rows, columns = np.zeros(in_h, np.bool_), np.zeros(in_w, np.bool_)
    for oy in range(out_h):
        for ky in range(kernel_hw[0]):
            iy = oy * stride_y - pad_y + ky * dilation_y
            if 0 <= iy < in_h:
                rows[iy] = True
    for ox in range(out_w):
        for kx in range(kernel_hw[1]):
            ix = ox * stride_x - pad_x + kx * dilation_x
            if 0 <= ix < in_w:
                columns[ix] = True
    read = np.empty(in_h * in_w, np.bool_)
    for iy in range(in_h):
        for ix in range(in_w):
            read[iy * in_w + ix] = rows[iy] and columns[ix]
    return read


def append_nonzero(entries, values, at, planes, offset, first_value):
    """For the i in 0 … 15 (ascending) where x = planes[offset + i] (linear index into a
    C-contiguous map) is nonzero: entries[at + …] = first_value + i, values[at + …] = x; returns
    their number. Lanes past it may be overwritten, as :func:`append_spiking` may (typed per
    dtype: :func:`_append_nonzero`)."""
    raise NotImplementedError("compiled code only")


@overload(append_nonzero, inline="always")
def _append_nonzero(entries, values, at, planes, offset, first_value):
    """A float32 map and list: one vector compress of each list (``append_nonzero_float32``);
    any other types (integer graphs, narrower weights): the 16 values one by one."""
    if planes.dtype == types.float32 and values.dtype == types.float32:
        return lambda entries, values, at, planes, offset, first_value: append_nonzero_float32(
            entries, values, at, planes, offset, first_value)

    def one_by_one(entries, values, at, planes, offset, first_value):
        flat, count = planes.reshape(-1), at
        for i in range(FLAG_LANES):
            entries[count] = first_value + i
            values[count] = flat[offset + i]
            count += flat[offset + i] != 0
        return count - at

    return one_by_one


@njit(inline="always")
def nonzero_entries(planes, channels_last, first, group_in, in_w, entries, values, starts):
    """:func:`spike_entries` of a graded map [C, H·W], or [H·W, C] when ``channels_last`` (a
    pooled spike map, mostly zero, or a spike map): the rows of the nonzero inputs, and
    values[e] the input of entries[e]. Returns whether every value is finite (x − x = 0 fails
    only for ±∞ and NaN). A channels-last map's channels are compressed 16 at a time."""
    count = 0
    finite = True
    positions = starts.shape[0] - 1
    for p in range(positions):
        starts[p] = count
        column = (p % in_w) * group_in
        if channels_last:
            offset = p * planes.shape[1] + first
            whole = group_in - group_in % FLAG_LANES
            for c in range(0, whole, FLAG_LANES):
                count += append_nonzero(entries, values, count, planes, offset + c, column + c)
            for c in range(group_in):  # (a loop of its own, which vectorises)
                finite &= planes[p, first + c] - planes[p, first + c] == 0
            for c in range(whole, group_in):
                value = planes[p, first + c]
                entries[count] = column + c
                values[count] = value
                count += value != 0
        else:
            for c in range(group_in):
                value = planes[first + c, p]
                entries[count] = column + c
                values[count] = value
                finite &= values[count] - values[count] == 0
                count += value != 0
    starts[positions] = count
    return finite


def map_entries(planes, first, group_in, in_w, entries, values, starts):
    """The entries of one sample-step's channels-last map [H·W, C] as a fused kernel reads it:
    :func:`spike_entries` of a spike map (``values`` None), or :func:`nonzero_entries` of a
    graded one, its inputs into ``values`` (typed per map: :func:`_map_entries`)."""
    raise NotImplementedError("compiled code only")


@overload(map_entries, inline="always")
def _map_entries(planes, first, group_in, in_w, entries, values, starts):
    if isinstance(values, types.NoneType):
        return lambda planes, first, group_in, in_w, entries, values, starts: spike_entries(
            planes, True, first, group_in, in_w, entries, starts)

    def graded(planes, first, group_in, in_w, entries, values, starts):
        # every value is finite: the plan fuses a conv of graded inputs only when it bounds them
        # (Fusion), so the packed gathers' lanes that are no tap add 0·x = ±0
        nonzero_entries(planes, True, first, group_in, in_w, entries, values, starts)

    return graded


def empty_sums(shape, weights):
    """``np.empty(shape)`` in the type the sums of a gather through ``weights``' rows are kept in
    (:func:`~snnverify.runtime.cpu.intrinsics.summed_in`: int32 for int16 rows)."""
    raise NotImplementedError("compiled code only")


@overload(empty_sums, inline="always")
def _empty_sums(shape, weights):
    dtype = as_dtype(summed_in(weights.dtype))
    return lambda shape, weights: np.empty(shape, dtype)


def map_values(planes, rows, size, weights):
    """Scratch for the inputs of ``rows`` spike lists of ``size`` entries when ``planes`` is a
    graded map (in the type of the sums through W, as a sparse conv keeps them); None for a
    spike map, whose entries are all 1 (typed per map: :func:`_map_values`)."""
    raise NotImplementedError("compiled code only")


@overload(map_values, inline="always")
def _map_values(planes, rows, size, weights):
    if isinstance(planes.dtype, types.Boolean):
        return lambda planes, rows, size, weights: None
    return lambda planes, rows, size, weights: empty_sums((rows, size), weights)


def row_of(values, r):
    """values[r]; None when ``values`` is None (a spike map's :func:`map_values`)."""
    raise NotImplementedError("compiled code only")


@overload(row_of, inline="always")
def _row_of(values, r):
    if isinstance(values, types.NoneType):
        return lambda values, r: None
    return lambda values, r: values[r]


def add_entries(acc, weights, block, row, entries, begin, end, wide, values):
    """acc += the weight rows ``row`` + entries[e] of the block at ``block`` (rows of its lane
    count), for e = begin … end − 1 in that order; each row times values[e] when ``values`` is
    not None (a graded input: the products rounded, then added, as the dense kernels do). Typed
    per ``values`` (:func:`_add_entries`), so that a None known only from its type selects the
    plain adds."""
    raise NotImplementedError("compiled code only")


@overload(add_entries, inline="always")
def _add_entries(acc, weights, block, row, entries, begin, end, wide, values):
    if isinstance(values, types.NoneType):
        def plain(acc, weights, block, row, entries, begin, end, wide, values):
            if wide:
                for e in range(begin, end):
                    add_vector(acc, weights, block + (row + entries[e]) * WIDE, WIDE)
            else:
                for e in range(begin, end):
                    add_vector(acc, weights, block + (row + entries[e]) * NARROW, NARROW)

        return plain

    def scaled(acc, weights, block, row, entries, begin, end, wide, values):
        if wide:
            for e in range(begin, end):
                add_scaled_vector(acc, weights, block + (row + entries[e]) * WIDE, values[e], WIDE)
        else:
            for e in range(begin, end):
                add_scaled_vector(acc, weights, block + (row + entries[e]) * NARROW, values[e], NARROW)

    return scaled


@njit(inline="always")
def gather(acc, weights, block, kernel_hw, group_in, entries, starts, oy, ox, geometry, in_hw, wide, values):
    """acc[k] = Σ_{ky, kx} Σ_c W'[o_k, c, ky, kx] for the output channels o_k of a block's lanes
    (within group g, c over the group's C_g input channels): over the kernel taps (ky, kx)
    ascending that land inside the input and, per tap, the channels c (ascending) that spike at
    the input position it reads.

    ``weights`` is the flat :func:`~snnverify.runtime.cpu.layouts.events_layout`; the block
    starts at ``block`` and holds rows (ky·kW + kx)·C_g + c of its lane count; ``entries``,
    ``starts`` from :func:`spike_entries`; ``acc`` a :func:`~snnverify.runtime.cpu.intrinsics.stack_buffer`.
    With ``values`` (from :func:`nonzero_entries`), each term is W'[o_k, c, ky, kx]·x[c, iy, ix]."""
    sums = carray(acc, WIDE)
    for k in range(WIDE if wide else NARROW):
        sums[k] = 0
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
                add_entries(acc, weights, block, (ky * kernel_w - x0) * group_in, entries, starts[row + lo],
                            starts[row + hi], wide, values)
        else:
            for kx in range(kernel_w):
                ix = x0 + kx * dilation_x
                if 0 <= ix < in_w:
                    add_entries(acc, weights, block, (ky * kernel_w + kx - ix) * group_in, entries,
                                starts[row + ix], starts[row + ix + 1], wide, values)


@njit(inline="always")
def gather_packed(acc, weights, kernel_h, span, group_in, entries, starts, oy, x0, geometry, in_hw, values):
    """The gathers of Q adjacent output positions (oy, ox0 + j) at once, for a layer with
    Q·C_out = :data:`WIDE`: acc[j·C_out + o] = Σ_{ky, kx} Σ_c W'[o, c, ky, kx] in the order of
    :func:`gather`. ``weights`` is the packed layout
    (:func:`~snnverify.runtime.cpu.layouts.packed_layout`) of rows (ky·span + d)·C_in + c, whose
    lane (j, o) holds W'[o, c, ky, d − j·s] (0 where that is no tap): the input at column x0 + d
    reaches all Q positions through one row. Each neuron gets its terms in the same order as
    from :func:`gather`, and +0 for the rows that are not its taps; a sum that starts at +0
    never becomes −0 (round to nearest), so adding +0 changes nothing, and the result is
    bit-identical. Far fewer, longer vector adds for narrow layers. With ``values`` (from
    :func:`nonzero_entries`), each row is scaled by its input: a lane that is no tap then adds
    0·x = ±0, which changes no sum from +0 either, as long as x is finite (0·∞ is NaN; see
    :func:`~snnverify.runtime.cpu.layouts.event_weights`)."""
    sums = carray(acc, WIDE)
    for k in range(WIDE):
        sums[k] = 0
    stride_y, pad_y, dilation_y = geometry[0], geometry[2], geometry[4]
    in_h, in_w = in_hw
    lo, hi = max(0, x0), min(in_w, x0 + span)
    if lo >= hi:
        return
    for ky in range(kernel_h):
        iy = oy * stride_y - pad_y + ky * dilation_y
        if 0 <= iy < in_h:
            add_entries(acc, weights, 0, (ky * span - x0) * group_in, entries, starts[iy * in_w + lo],
                        starts[iy * in_w + hi], True, values)


def add_entries_twice(acc, other, weights, block, row, other_row, entries, begin, end, values):
    """:func:`add_entries` of one list into two sums at once (:data:`WIDE` lanes each): acc +=
    the rows ``row`` + entries[e] and ``other`` += the rows ``other_row`` + entries[e], e = begin
    … end − 1 in that order (each row times values[e] when ``values`` is not None)."""
    raise NotImplementedError("compiled code only")


@overload(add_entries_twice, inline="always")
def _add_entries_twice(acc, other, weights, block, row, other_row, entries, begin, end, values):
    if isinstance(values, types.NoneType):
        def plain(acc, other, weights, block, row, other_row, entries, begin, end, values):
            for e in range(begin, end):
                add_vector(acc, weights, block + (row + entries[e]) * WIDE, WIDE)
                add_vector(other, weights, block + (other_row + entries[e]) * WIDE, WIDE)

        return plain

    def scaled(acc, other, weights, block, row, other_row, entries, begin, end, values):
        for e in range(begin, end):
            add_scaled_vector(acc, weights, block + (row + entries[e]) * WIDE, values[e], WIDE)
            add_scaled_vector(other, weights, block + (other_row + entries[e]) * WIDE, values[e], WIDE)

    return scaled


@njit(inline="always")
def gather_pair(acc, other, weights, block, kernel_hw, group_in, entries, starts, oy, ox, pair, geometry, in_hw,
                values):
    """:func:`gather` of output position (oy, ox) into ``acc`` and, with ``pair``, of (oy, ox + 1)
    into ``other`` at once, for a wide block and unit column dilation. Per kernel row the two
    positions read the input columns [x0, x0 + kW) and [x1, x1 + kW), x1 = x0 + s_x; their union
    is walked once, ascending: the columns of the first position alone, then those both read
    (each entry adding its row for either position: kernel columns ix − x0 and ix − x1), then
    those of the second alone. Each position gets its terms in :func:`gather`'s order, so its
    sums are bit-identical; an entry's load and index arithmetic serve both, and eight chains of
    adds are in flight instead of four (in cifar_resnet18's fused layers, 1.04× the images/s of
    one position at a time; reports/speed)."""
    first, second = carray(acc, WIDE), carray(other, WIDE)
    for k in range(WIDE):
        first[k] = 0
        second[k] = 0
    stride_y, stride_x, pad_y, pad_x, dilation_y, _ = geometry
    kernel_h, kernel_w = kernel_hw
    in_h, in_w = in_hw
    x0 = ox * stride_x - pad_x
    x1 = x0 + stride_x
    lo0, hi0 = max(0, x0), min(in_w, x0 + kernel_w)
    lo1, hi1 = (max(0, x1), min(in_w, x1 + kernel_w)) if pair else (hi0, hi0)  # (no second: its columns empty)
    alone, shared = min(hi0, lo1), max(hi0, lo1)  # first alone: [lo0, alone); both: [lo1, hi0); second: [shared, hi1)
    for ky in range(kernel_h):
        iy = oy * stride_y - pad_y + ky * dilation_y
        if iy < 0 or iy >= in_h:
            continue
        row = iy * in_w
        row0, row1 = (ky * kernel_w - x0) * group_in, (ky * kernel_w - x1) * group_in
        if lo0 < alone:
            add_entries(acc, weights, block, row0, entries, starts[row + lo0], starts[row + alone], True, values)
        if lo1 < hi0:
            add_entries_twice(acc, other, weights, block, row0, row1, entries, starts[row + lo1], starts[row + hi0],
                              values)
        if shared < hi1:
            add_entries(other, weights, block, row1, entries, starts[row + shared], starts[row + hi1], True, values)


@njit(inline="always")
def slide_window(sums, window, starts, entries, rows, first, in_w, group_in, targets, values):
    """The adds of one input row into the rows of sums r < ``rows`` of a conv that slides
    (:func:`~snnverify.runtime.cpu.layouts.slides`: 3 × 3, 16 output channels): for each input
    column ix, whose entries are entries[r, starts[r, first + ix] : starts[r, first + ix + 1]]
    (ix·C_in + c, see :func:`spike_entries`), in order, and each kernel row ky, slots ix, ix + 1
    and ix + 2 of the row of sums at sums[r, targets[ky]:] += lanes (3·ky + j)·16 … of window
    row c (``window`` flat; each row times values[r, e] when ``values`` is not None).
    ``targets[ky]`` is where the sums of the output row kernel row ky reaches start, a slot of 16
    lanes per position (:func:`~snnverify.runtime.cpu.layouts.window_layout`), so each lane is a
    tap. Called for the input rows in order, this gives each position its terms in
    :func:`gather`'s order: kernel rows ascending, then columns, so taps, ascending, then
    channels ascending.

    Per row r, the three slots of each kernel row that a column reaches stay in stack buffers
    (registers) along the input row: per column, three slots come in and three that are done go
    out. Loading and storing all nine at every column cost more than the adds at a spike rate
    of 0.13 (two entries a column of 16 channels)."""
    size = sums.shape[1]
    flat = sums.reshape(-1)
    span = 9 * NARROW  # a window row
    # slot j of kernel row 0, 1, 2 (a, b, c): position ix + j of the column ix at hand
    a0, a1, a2 = stack_buffer(window, NARROW), stack_buffer(window, NARROW), stack_buffer(window, NARROW)
    b0, b1, b2 = stack_buffer(window, NARROW), stack_buffer(window, NARROW), stack_buffer(window, NARROW)
    c0, c1, c2 = stack_buffer(window, NARROW), stack_buffer(window, NARROW), stack_buffer(window, NARROW)
    for r in range(rows):
        top, middle, bottom = r * size + targets[0], r * size + targets[1], r * size + targets[2]
        load_vector(a0, flat, top, NARROW)
        load_vector(a1, flat, top + NARROW, NARROW)
        load_vector(b0, flat, middle, NARROW)
        load_vector(b1, flat, middle + NARROW, NARROW)
        load_vector(c0, flat, bottom, NARROW)
        load_vector(c1, flat, bottom + NARROW, NARROW)
        for ix in range(in_w):
            at = ix * NARROW
            load_vector(a2, flat, top + at + 2 * NARROW, NARROW)
            load_vector(b2, flat, middle + at + 2 * NARROW, NARROW)
            load_vector(c2, flat, bottom + at + 2 * NARROW, NARROW)
            for e in range(starts[r, first + ix], starts[r, first + ix + 1]):
                w = (entries[r, e] - ix * group_in) * span
                add_term(a0, window, w, values, r, e, NARROW)
                add_term(a1, window, w + NARROW, values, r, e, NARROW)
                add_term(a2, window, w + 2 * NARROW, values, r, e, NARROW)
                add_term(b0, window, w + 3 * NARROW, values, r, e, NARROW)
                add_term(b1, window, w + 4 * NARROW, values, r, e, NARROW)
                add_term(b2, window, w + 5 * NARROW, values, r, e, NARROW)
                add_term(c0, window, w + 6 * NARROW, values, r, e, NARROW)
                add_term(c1, window, w + 7 * NARROW, values, r, e, NARROW)
                add_term(c2, window, w + 8 * NARROW, values, r, e, NARROW)
            # slot 0 is done with this input row; the others move down a slot
            store_vector(a0, flat, top + at, NARROW)
            store_vector(b0, flat, middle + at, NARROW)
            store_vector(c0, flat, bottom + at, NARROW)
            move_vector(a0, a1, NARROW)
            move_vector(a1, a2, NARROW)
            move_vector(b0, b1, NARROW)
            move_vector(b1, b2, NARROW)
            move_vector(c0, c1, NARROW)
            move_vector(c1, c2, NARROW)
        at = in_w * NARROW
        store_vector(a0, flat, top + at, NARROW)
        store_vector(a1, flat, top + at + NARROW, NARROW)
        store_vector(b0, flat, middle + at, NARROW)
        store_vector(b1, flat, middle + at + NARROW, NARROW)
        store_vector(c0, flat, bottom + at, NARROW)
        store_vector(c1, flat, bottom + at + NARROW, NARROW)
