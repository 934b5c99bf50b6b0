"""asv benchmark: how fast the CPU event kernel's inner loop gathers integer weight rows of each
width it could store W' = W·a_c in.

At the quantiser's defaults (8-bit weights, 16-bit amplitudes) |W'| ≤ 128·(2^16 − 1) < 2^23, so
a lane needs 24 bits. The runtime stores such rows as int32 (4 bytes a lane) and rows whose
|W'| ≤ 2^15 − 1 as int16 (2 bytes, sign-extended as they are added:
``snnverify.runtime.cpu.layouts.row_dtype``). Two 3-byte formats are measured beside them, so
that what a narrower row of the default widths would buy is a figure, not a guess:

- ``int24``: 3 bytes a lane, packed; each row loaded as 3·lanes bytes and spread into int32 lanes
  by one byte shuffle (the low byte of each lane zero), then shifted right by 8 (arithmetic,
  which sign-extends);
- ``int16+int8``: two planes, the low 16 bits (unsigned) and the high 8 (signed), each added
  into int32 sums of its own, joined once per stream as high·2^16 + low (wrapping int32
  arithmetic, exact where the true sum fits int32, which the runtime's gain bound ensures);
- ``int8·a``: W alone, 1 byte a lane, each row sign-extended and multiplied by its input
  channel's amplitude a_c (one int32 vector multiply per 16 lanes) as it is added.

Run: ``SNNVERIFY_BENCH_FULL=1 asv run --python=same -E existing --bench IntegerRowWidths`` (without
``SNNVERIFY_BENCH_FULL``, the nightly grid: int32 and int16 rows at 144 KB and 1.15 MB).
"""

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from snnverify.jobs.speed import interleaved_best_times
from snnverify.runtime.cpu.intrinsics import _data, stack_buffer
from snnverify.runtime.cpu.layouts import WIDE, aligned_zeros

from . import grid
from .bench_backends import _gather_rows


@intrinsic
def _add_int24_row(typingctx, acc, packed, row, lanes):
    """acc[:lanes] += row ``row`` of ``packed`` (uint8, 3 little-endian bytes a lane), each lane
    sign-extended to int32: bytes (0, b0, b1, b2) as an int32, shifted right by 8."""
    if not isinstance(lanes, types.IntegerLiteral):
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        acc_pointer, packed_array, row_index, _ = args
        i8, i32 = ir.IntType(8), ir.IntType(32)
        bytes_type, lanes_type = ir.VectorType(i8, 3 * count), ir.VectorType(i32, count)
        first = builder.mul(row_index, ir.Constant(row_index.type, 3 * count))
        data = _data(context, builder, signature.args[1], packed_array)
        raw = builder.load(builder.bitcast(builder.gep(data, [first]), bytes_type.as_pointer()), align=1)
        zero_lane = 3 * count  # the first lane of the shuffle's second operand, all zeros
        order = [index for lane in range(count) for index in (zero_lane, 3 * lane, 3 * lane + 1, 3 * lane + 2)]
        spread = builder.shuffle_vector(raw, ir.Constant(bytes_type, [0] * (3 * count)),
                                        ir.Constant(ir.VectorType(i32, 4 * count), order))
        values = builder.ashr(builder.bitcast(spread, lanes_type), ir.Constant(lanes_type, [8] * count))
        target = builder.bitcast(acc_pointer, lanes_type.as_pointer())
        builder.store(builder.add(builder.load(target, align=1), values), target, align=1)
        return context.get_dummy_value()

    return types.none(acc, packed, row, lanes), codegen


@intrinsic
def _add_split_row(typingctx, low_acc, high_acc, low, high, row, lanes):
    """low_acc[:lanes] += row ``row`` of ``low`` (uint16, zero-extended) and high_acc[:lanes] +=
    the same row of ``high`` (int8, sign-extended), both in int32."""
    if not isinstance(lanes, types.IntegerLiteral):
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        low_pointer, high_pointer, low_array, high_array, row_index, _ = args
        lanes_type = ir.VectorType(ir.IntType(32), count)
        first = builder.mul(row_index, ir.Constant(row_index.type, count))
        for pointer, array, array_type, extend in ((low_pointer, low_array, signature.args[2], builder.zext),
                                                   (high_pointer, high_array, signature.args[3], builder.sext)):
            plane_type = ir.VectorType(context.get_value_type(array_type.dtype), count)
            data = _data(context, builder, array_type, array)
            values = extend(builder.load(builder.bitcast(builder.gep(data, [first]), plane_type.as_pointer()), align=1),
                            lanes_type)
            target = builder.bitcast(pointer, lanes_type.as_pointer())
            builder.store(builder.add(builder.load(target, align=1), values), target, align=1)
        return context.get_dummy_value()

    return types.none(low_acc, high_acc, low, high, row, lanes), codegen


@intrinsic
def _add_int8_row_times(typingctx, acc, weights, row, factor, lanes):
    """acc[:lanes] += row ``row`` of ``weights`` (int8, sign-extended to int32)·``factor``."""
    if not isinstance(lanes, types.IntegerLiteral):
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        acc_pointer, weight_array, row_index, scale, _ = args
        lanes_type = ir.VectorType(ir.IntType(32), count)
        first = builder.mul(row_index, ir.Constant(row_index.type, count))
        data = _data(context, builder, signature.args[1], weight_array)
        narrow = ir.VectorType(ir.IntType(8), count)
        values = builder.sext(builder.load(builder.bitcast(builder.gep(data, [first]), narrow.as_pointer()), align=1),
                              lanes_type)
        broadcast = builder.insert_element(ir.Constant(lanes_type, ir.Undefined),
                                           builder.trunc(scale, ir.IntType(32)), ir.Constant(ir.IntType(32), 0))
        broadcast = builder.shuffle_vector(broadcast, ir.Constant(lanes_type, ir.Undefined),
                                           ir.Constant(lanes_type, [0] * count))
        target = builder.bitcast(acc_pointer, lanes_type.as_pointer())
        builder.store(builder.add(builder.load(target, align=1), builder.mul(values, broadcast)), target, align=1)
        return context.get_dummy_value()

    return types.none(acc, weights, row, factor, lanes), codegen


@njit  # not cached, as _gather_rows
def _gather_narrow_rows(rows, amplitudes, entries, starts, out):
    """:func:`_gather_rows` of rows of 3-byte lanes (``amplitudes`` None), or of int8 rows, each
    times its amplitude (Numba drops the branch an argument's type rules out)."""
    acc = stack_buffer(out, WIDE)
    sums = carray(acc, WIDE)
    for s in range(starts.shape[0] - 1):
        for k in range(WIDE):
            sums[k] = 0
        for e in range(starts[s], starts[s + 1]):
            if amplitudes is None:
                _add_int24_row(acc, rows, entries[e], WIDE)
            else:
                _add_int8_row_times(acc, rows, entries[e], amplitudes[entries[e]], WIDE)
        for k in range(WIDE):
            out[s, k] = sums[k]


@njit  # not cached, as _gather_rows
def _gather_split_rows(low, high, entries, starts, out):
    """:func:`_gather_rows` of rows split into a low uint16 plane and a high int8 plane."""
    low_acc, high_acc = stack_buffer(out, WIDE), stack_buffer(out, WIDE)
    low_sums, high_sums = carray(low_acc, WIDE), carray(high_acc, WIDE)
    for s in range(starts.shape[0] - 1):
        for k in range(WIDE):
            low_sums[k] = 0
            high_sums[k] = 0
        for e in range(starts[s], starts[s + 1]):
            _add_split_row(low_acc, high_acc, low, high, entries[e], WIDE)
        for k in range(WIDE):
            out[s, k] = high_sums[k] * 65536 + low_sums[k]


class IntegerRowWidths:
    """Adds per second of the event gather from rows of each width, one thread, the streams of
    ``EventGather`` (bench_backends: 64 ascending random rows per stream, 4096 streams) from a
    block of ``rows`` rows of 64 lanes: 128 (32 KB as int32, in L1), 576 (144 KB: a 3 × 3 conv
    of 64 input channels), 2304 (576 KB: 256 channels) and 4608 (1.15 MB: 512 input channels,
    beyond a 1 MB L2). ``int16`` gathers W' >> 8 (the same work; W' itself does not fit); the
    others gather W' (``int8·a``: W' = W·a_c with W of 8 bits and a_c of 16, one per row), and
    setup checks that their sums are int64's."""

    # the nightly grid times the runtime's own formats; the full one also the three it does not build
    params = [grid([576, 4608], [128, 576, 2304, 4608]),
              grid(["int32", "int16"], ["int32", "int16", "int24", "int16+int8", "int8·a"])]
    param_names = ["rows", "width"]
    number = 1
    repeat = 5
    rounds = 1

    def setup(self, rows, width):
        rng = np.random.default_rng(0)
        narrow = rng.integers(-128, 128, (rows, WIDE), dtype=np.int32)  # W, and a_c per row: W' = W·a_c
        amplitudes = rng.integers(1, 2**16, rows, dtype=np.int32)
        weights = narrow * amplitudes[:, None]
        streams, per_stream = 4096, 64
        entries = np.concatenate([np.sort(rng.choice(rows, per_stream, replace=False))
                                  for _ in range(streams)]).astype(np.int32)
        starts = np.arange(streams + 1, dtype=np.int64) * per_stream
        self.adds = len(entries) * WIDE
        self.out = np.empty((streams, WIDE), np.int32)
        if width in ("int32", "int16"):  # the runtime's own gather (add_entries)
            rows_of = aligned_zeros((rows * WIDE,), np.dtype(width))
            rows_of[:] = (weights if width == "int32" else weights >> 8).reshape(-1)
            self.gather = lambda: _gather_rows(rows_of, entries, starts, self.out)
        elif width == "int24":
            packed = aligned_zeros((rows * WIDE * 3,), np.uint8)
            packed[:] = weights.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].reshape(-1)
            self.gather = lambda: _gather_narrow_rows(packed, None, entries, starts, self.out)
        elif width == "int8·a":
            rows_of = aligned_zeros((rows * WIDE,), np.int8)
            rows_of[:] = narrow.reshape(-1)
            self.gather = lambda: _gather_narrow_rows(rows_of, amplitudes, entries, starts, self.out)
        else:
            low, high = aligned_zeros((rows * WIDE,), np.uint16), aligned_zeros((rows * WIDE,), np.int8)
            low[:], high[:] = (weights & 0xFFFF).reshape(-1), (weights >> 16).reshape(-1)
            self.gather = lambda: _gather_split_rows(low, high, entries, starts, self.out)
        self.gather()  # compile outside the timing
        if width != "int16":
            expected = np.add.reduceat(weights[entries].astype(np.int64), starts[:-1], axis=0)
            if not np.array_equal(self.out, expected):
                raise AssertionError(f"{width} rows gathered other sums than int64's")

    def time_gather(self, rows, width):
        self.gather()

    def track_adds_per_second(self, rows, width):
        return self.adds / interleaved_best_times({"gather": self.gather}, 3)["gather"] / 1e9

    track_adds_per_second.unit = "G adds/s"
