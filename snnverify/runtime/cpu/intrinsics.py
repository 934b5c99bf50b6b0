"""LLVM intrinsics the CPU event kernels are built from (Numba ``@intrinsic``).

Each one exists because Numba's own code for it is slower in a way LLVM cannot undo: a
stack buffer LLVM keeps in vector registers (a heap array's allocation is opaque to it), one
vector compress (without AVX-512, a table lookup per 8 lanes) instead of 16 branches, and one
vector add (or multiply, then add) where LLVM would unroll a short constant loop into scalar
operations.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

#: Channels :func:`append_spiking` examines at once.
FLAG_LANES = 16


def summed_in(dtype: types.Type) -> types.Type:
    """The type the sums of a gather through weight rows of ``dtype`` are kept in: int32 for int16
    rows (each row sign-extended as it is added, see :func:`add_vector`), else the rows' own."""
    return types.int32 if dtype == types.int16 else dtype


@intrinsic
def stack_buffer(typingctx, like, length):
    """Pointer to ``length`` (a compile-time constant) elements of the type sums through
    ``like``'s elements are kept in (:func:`summed_in`: ``like``'s dtype but for int16) in the
    calling function's stack frame. LLVM keeps such a buffer in vector registers across a loop
    that indexes it with constants; a heap array (``np.empty``) it cannot, its allocation is
    opaque."""
    if not isinstance(length, types.IntegerLiteral):
        return None
    count, dtype = length.literal_value, summed_in(like.dtype)

    def codegen(context, builder, signature, args):
        element = context.get_value_type(dtype)
        entry = builder.function.entry_basic_block
        with builder.goto_block(entry):
            builder.position_at_start(entry)
            slot = builder.alloca(ir.ArrayType(element, count))
        return builder.bitcast(slot, element.as_pointer())

    return types.CPointer(dtype)(like, length), codegen


@intrinsic
def is_float_array(typingctx, array):
    """Whether ``array`` holds floating-point values: a constant of the compiled code, so that a
    branch on it leaves only one side in each signature."""
    answer = isinstance(array.dtype, types.Float)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.boolean, answer)

    return types.boolean(array), codegen


def compresses_in_registers() -> bool:
    """Whether the CPU Numba compiles for has AVX-512F (the features it targets: NUMBA_CPU_FEATURES,
    else the host's), and so a compress of 16 lanes within a register (``vpcompressd`` to a
    register)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return "+avx512f" in features.split(",")


def _splat(builder, value, vector_type):
    """The vector of ``vector_type`` with ``value`` in every lane."""
    i32 = ir.IntType(32)
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(i32, 0))
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, vector_type.count), [0] * vector_type.count))


def _first_plus_lanes(builder, first_value, lanes):
    """The i32 vector first_value + (0, 1, …, lanes − 1)."""
    vector_type = ir.VectorType(ir.IntType(32), lanes)
    first = _splat(builder, builder.trunc(first_value, ir.IntType(32)), vector_type)
    return builder.add(first, ir.Constant(vector_type, list(range(lanes))))


def _compress_store(builder, vector, mask, target):
    """Store the lanes of ``vector`` where ``mask`` is set, in order, from ``target`` on: compressed
    within a register (AVX-512F) and all lanes stored (see :func:`append_spiking`)."""
    vector_type, element = vector.type, vector.type.element
    name = f"v{vector_type.count}{'f32' if isinstance(element, ir.FloatType) else f'i{element.width}'}"
    compress = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector_type, [vector_type] * 2 + [mask.type]),
                                              f"llvm.x86.avx512.mask.compress.{name}")
    packed = builder.call(compress, [vector, ir.Constant(vector_type, [0] * vector_type.count), mask])
    builder.store(packed, builder.bitcast(target, vector_type.as_pointer()), align=4)


def _set_lanes(builder, mask):
    """How many lanes of ``mask`` are set, as an int64."""
    return _set_bits(builder, builder.bitcast(mask, ir.IntType(mask.type.count)))


def _set_bits(builder, bits):
    """How many bits of the integer ``bits`` are set, as an int64."""
    popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(bits.type, [bits.type]),
                                              f"llvm.ctpop.i{bits.type.width}")
    return builder.zext(builder.call(popcount, [bits]), ir.IntType(64))


def _data(context, builder, array_type, array):
    """The data pointer of a Numba array argument."""
    return context.make_array(array_type)(context, builder, array).data


def _flag_mask(context, builder, flags_type, flags, first, lanes):
    """Which of flags[first : first + lanes] (a boolean array) are true: one vector load of
    their bytes, compared with 0, as an LLVM vector of ``lanes`` i1."""
    vector = ir.VectorType(ir.IntType(8), lanes)
    at = builder.gep(_data(context, builder, flags_type, flags), [first])
    return builder.icmp_unsigned("!=", builder.load(builder.bitcast(at, vector.as_pointer()), align=1),
                                 ir.Constant(vector, [0] * lanes))


@intrinsic
def append_spiking(typingctx, entries, at, flags, offset, first_value):
    """entries[at : at + k] = first_value + i for the i in 0 … 15 (ascending) where flags[offset +
    i] (linear index into a C-contiguous boolean array) is true; returns k. One vector compress
    instead of 16 stores, loads and adds.

    With AVX-512F the lanes are compressed within a register and all 16 stored, so
    entries[at + k : at + 16] are overwritten with unspecified values: the caller must own them
    (at + 16 ≤ len(entries); a spike list never holds more entries than the flags it has read,
    so at ≤ the flags read before these 16 suffices). The compress straight to memory
    (``llvm.masked.compressstore``, which stores only the k lanes) is slow on AMD Zen 4: the
    spike lists alone took 10–15× as long with it (asv ``SpikeLists``' loop, reports/speed).
    Without AVX-512F, LLVM expands that masked compress-store into 16 branches, one per lane,
    which mispredict at spike rates between 0 and 1; so there each half of 8 lanes is
    compressed through a table instead (:func:`_append_set_lanes`), under the same contract."""
    if entries != types.Array(types.int32, 1, "C") or flags.dtype != types.boolean:
        return None
    lanes = FLAG_LANES

    def codegen(context, builder, signature, args):
        entries_array, at, flags_array, offset, first_value = args
        mask = _flag_mask(context, builder, signature.args[2], flags_array, offset, lanes)
        target = builder.gep(_data(context, builder, signature.args[0], entries_array), [at])
        if not compresses_in_registers():
            return _append_set_lanes(builder, mask, first_value, target)
        _compress_store(builder, _first_plus_lanes(builder, first_value, lanes), mask, target)
        return _set_lanes(builder, mask)

    return types.int64(entries, at, flags, offset, first_value), codegen


#: lanes one row of :func:`_set_lane_table` describes
_TABLE_LANES = 8


def _set_lane_table(module):
    """The constant table [256 × 8] i8 of this module whose row m lists the set bits of m
    ascending (then zeros): a compress of 8 lanes as one load."""
    name = "snnverify_set_lanes"
    table = module.globals.get(name)
    if table is None:
        i8 = ir.IntType(8)
        row_type = ir.ArrayType(i8, _TABLE_LANES)
        rows = []
        for bits in range(1 << _TABLE_LANES):
            lanes = [lane for lane in range(_TABLE_LANES) if bits >> lane & 1]
            rows.append(ir.Constant(row_type, lanes + [0] * (_TABLE_LANES - len(lanes))))
        table = ir.GlobalVariable(module, ir.ArrayType(row_type, 1 << _TABLE_LANES), name)
        table.initializer = ir.Constant(table.type.pointee, rows)
        table.global_constant = True
        table.linkage = "internal"
    return table


def _append_set_lanes(builder, mask, first_value, target, source=None, value_target=None):
    """target[0 : k] = first_value + i for the set lanes i of ``mask`` (16 lanes), ascending;
    returns k; with ``source`` (a pointer to the 16 lanes' values), value_target[0 : k] = their
    values too. Per half of 8 lanes: its bits index :func:`_set_lane_table`, whose row, plus
    first_value + the half's first lane, is stored whole (8 lanes) where the half's entries
    begin — one load, one add and one store, no branch; the values are loaded at the row's
    lanes, one by one. Lanes from k to 16 get unspecified values (the contract of
    :func:`append_spiking`)."""
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    row_vector, entry_vector = ir.VectorType(i8, _TABLE_LANES), ir.VectorType(i32, _TABLE_LANES)
    table = _set_lane_table(builder.module)
    bits = builder.bitcast(mask, ir.IntType(mask.type.count))
    count = ir.Constant(i64, 0)
    for half in range(mask.type.count // _TABLE_LANES):
        half_bits = builder.trunc(builder.lshr(bits, ir.Constant(bits.type, half * _TABLE_LANES)), i8)
        row = builder.gep(table, [ir.Constant(i64, 0), builder.zext(half_bits, i64)])
        lanes = builder.zext(builder.load(builder.bitcast(row, row_vector.as_pointer()), align=1), entry_vector)
        base = builder.add(builder.trunc(first_value, i32), ir.Constant(i32, half * _TABLE_LANES))
        builder.store(builder.add(_splat(builder, base, entry_vector), lanes),
                      builder.bitcast(builder.gep(target, [count]), entry_vector.as_pointer()), align=4)
        if source is not None:
            element = source.type.pointee
            value_vector = ir.VectorType(element, _TABLE_LANES)
            gathered = ir.Constant(value_vector, ir.Undefined)
            for lane in range(_TABLE_LANES):
                index = builder.add(builder.extract_element(lanes, ir.Constant(i32, lane)),
                                    ir.Constant(i32, half * _TABLE_LANES))
                value = builder.load(builder.gep(source, [builder.zext(index, i64)]), align=4)
                gathered = builder.insert_element(gathered, value, ir.Constant(i32, lane))
            builder.store(gathered, builder.bitcast(builder.gep(value_target, [count]), value_vector.as_pointer()),
                          align=4)
        count = builder.add(count, _set_bits(builder, half_bits))
    return count


@intrinsic
def append_nonzero_float32(typingctx, entries, values, at, planes, offset, first_value):
    """:func:`append_spiking` of a float32 map: for the i in 0 … 15 (ascending) where x =
    planes[offset + i] is nonzero (NaN included, −0 not), entries[at + …] = first_value + i and
    values[at + …] = x; returns their number. Both lists are written 16 lanes wide, as
    :func:`append_spiking` writes its one."""
    if (entries != types.Array(types.int32, 1, "C") or values != types.Array(types.float32, 1, "C")
            or planes.dtype != types.float32):
        return None
    lanes = FLAG_LANES

    def codegen(context, builder, signature, args):
        entries_array, values_array, at, planes_array, offset, first_value = args
        planes_data = _data(context, builder, signature.args[3], planes_array)
        vector_type = ir.VectorType(ir.FloatType(), lanes)
        loaded = builder.load(builder.bitcast(builder.gep(planes_data, [offset]), vector_type.as_pointer()), align=4)
        mask = builder.fcmp_unordered("!=", loaded, ir.Constant(vector_type, [0.0] * lanes))
        if not compresses_in_registers():
            return _append_set_lanes(builder, mask, first_value,
                                     builder.gep(_data(context, builder, signature.args[0], entries_array), [at]),
                                     builder.gep(planes_data, [offset]),
                                     builder.gep(_data(context, builder, signature.args[1], values_array), [at]))
        for array, vector, index in ((entries_array, _first_plus_lanes(builder, first_value, lanes), 0),
                                     (values_array, loaded, 1)):
            _compress_store(builder, vector, mask, builder.gep(_data(context, builder, signature.args[index], array), [at]))
        return _set_lanes(builder, mask)

    return types.int64(entries, values, at, planes, offset, first_value), codegen


def _weight_row(context, builder, weight_type, weight_array, first, count, acc_type):
    """The ``count`` weights from ``first`` on as one vector of the accumulator's element type:
    loaded, and sign-extended when the rows are narrower (int16 rows into int32 sums)."""
    data = _data(context, builder, weight_type, weight_array)
    vector = ir.VectorType(context.get_value_type(weight_type.dtype), count)
    values = builder.load(builder.bitcast(builder.gep(data, [first]), vector.as_pointer()), align=1)
    wide = ir.VectorType(context.get_value_type(acc_type.dtype), count)
    return values if wide == vector else builder.sext(values, wide)


def _summable(acc, weights) -> bool:
    """Whether ``acc`` (a :func:`stack_buffer`) holds the sums of ``weights``' rows."""
    return acc.dtype == summed_in(weights.dtype)


def _add_row(context, builder, acc_type, weight_type, acc_pointer, weight_array, first, count, scale=None):
    """acc[:count] += the ``count`` weights from ``first`` on, each times ``scale`` (a value of the
    accumulator's element type) unless it is None: the codegen of :func:`add_vector`,
    :func:`add_scaled_vector` and :func:`add_term`."""
    values = _weight_row(context, builder, weight_type, weight_array, first, count, acc_type)
    real = acc_type.dtype in types.real_domain
    if scale is not None:
        broadcast = _splat(builder, scale, values.type)
        values = builder.fmul(values, broadcast) if real else builder.mul(values, broadcast)
    target = builder.bitcast(acc_pointer, values.type.as_pointer())
    total = builder.load(target, align=1)
    builder.store(builder.fadd(total, values) if real else builder.add(total, values), target, align=1)


@intrinsic
def add_vector(typingctx, acc, weights, offset, lanes):
    """acc[:lanes] += weights[offset : offset + lanes] as one LLVM vector add of ``lanes`` (a
    constant) elements — exact IEEE adds, lane by lane, as a scalar loop would do them; ``acc`` is
    a :func:`stack_buffer` (of int32 for int16 rows, each sign-extended: integer sums are exact
    in any type that holds them). Written as a vector because LLVM unrolls a short constant loop
    into scalar adds that it does not vectorise again; a vector kept in registers across the
    event loop is the point."""
    if not isinstance(lanes, types.IntegerLiteral) or not _summable(acc, weights):
        return None

    def codegen(context, builder, signature, args):
        acc_pointer, weight_array, first, _ = args
        _add_row(context, builder, signature.args[0], signature.args[1], acc_pointer, weight_array, first,
                 lanes.literal_value)
        return context.get_dummy_value()

    return types.none(acc, weights, offset, lanes), codegen


def _vector_copy(to_array: bool):
    """The codegen of :func:`store_vector` (``to_array``) and :func:`load_vector`: ``lanes``
    elements between a :func:`stack_buffer` and an array from an offset, as one vector."""

    def codegen(context, builder, signature, args):
        buffer_pointer, array, first, _ = args
        array_type, lanes = signature.args[1], signature.args[3]
        vector = ir.VectorType(context.get_value_type(array_type.dtype), lanes.literal_value)
        buffer = builder.bitcast(buffer_pointer, vector.as_pointer())
        at = builder.bitcast(builder.gep(_data(context, builder, array_type, array), [first]), vector.as_pointer())
        source, target = (buffer, at) if to_array else (at, buffer)
        builder.store(builder.load(source, align=1), target, align=1)
        return context.get_dummy_value()

    return codegen


@intrinsic
def store_vector(typingctx, acc, target, offset, lanes):
    """target[offset : offset + lanes] = acc[:lanes] as one vector store (``acc`` a
    :func:`stack_buffer` of target's type, ``lanes`` a constant): a gather's sums kept for an
    update that reads them later as a plain array (no lane-by-lane store, which a vector load
    of the same lanes would stall on)."""
    if not isinstance(lanes, types.IntegerLiteral) or acc.dtype != target.dtype:
        return None
    return types.none(acc, target, offset, lanes), _vector_copy(to_array=True)


@intrinsic
def load_vector(typingctx, acc, source, offset, lanes):
    """acc[:lanes] = source[offset : offset + lanes] as one vector load (``acc`` a
    :func:`stack_buffer` of source's type, ``lanes`` a constant): sums that :func:`store_vector`
    staged, taken up again to add more terms to."""
    if not isinstance(lanes, types.IntegerLiteral) or acc.dtype != source.dtype:
        return None
    return types.none(acc, source, offset, lanes), _vector_copy(to_array=False)


@intrinsic
def move_vector(typingctx, target, source, lanes):
    """target[:lanes] = source[:lanes] between two :func:`stack_buffer` of one type, as one
    vector (``lanes`` a constant): a register renamed, once LLVM keeps both in registers."""
    if not isinstance(lanes, types.IntegerLiteral) or target != source:
        return None

    def codegen(context, builder, signature, args):
        target_pointer, source_pointer, _ = args
        vector = ir.VectorType(context.get_value_type(signature.args[0].dtype), lanes.literal_value)
        value = builder.load(builder.bitcast(source_pointer, vector.as_pointer()), align=1)
        builder.store(value, builder.bitcast(target_pointer, vector.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.none(target, source, lanes), codegen


@intrinsic
def add_scaled_vector(typingctx, acc, weights, offset, value, lanes):
    """acc[:lanes] += weights[offset : offset + lanes]·value, each product rounded on its own and
    then added (an LLVM ``fmul`` then ``fadd`` without the ``contract`` flag: never fused into
    a multiply-add), lane by lane as the dense kernels' ``acc += w·x`` does it; see
    :func:`add_vector` (int16 rows sign-extended, then multiplied in int32)."""
    if not isinstance(lanes, types.IntegerLiteral) or not _summable(acc, weights):
        return None

    def codegen(context, builder, signature, args):
        acc_pointer, weight_array, first, scale, _ = args
        scale = context.cast(builder, scale, signature.args[3], signature.args[0].dtype)
        _add_row(context, builder, signature.args[0], signature.args[1], acc_pointer, weight_array, first,
                 lanes.literal_value, scale)
        return context.get_dummy_value()

    return types.none(acc, weights, offset, value, lanes), codegen


@intrinsic
def add_term(typingctx, acc, weights, offset, values, r, e, lanes):
    """:func:`add_vector` where ``values`` is None (a spike), else :func:`add_scaled_vector` by
    values[r, e] (a graded input; ``values`` a C-contiguous 2-d array): one intrinsic for both,
    so that a gather is written once for spike maps and graded ones."""
    if not isinstance(lanes, types.IntegerLiteral) or not _summable(acc, weights):
        return None
    graded = not isinstance(values, types.NoneType)

    def codegen(context, builder, signature, args):
        acc_pointer, weight_array, first, value_array, row, entry, _ = args
        scale = None
        if graded:
            array_type = signature.args[3]
            array = context.make_array(array_type)(context, builder, value_array)
            at = cgutils.get_item_pointer(context, builder, array_type, array, [row, entry])
            scale = context.cast(builder, builder.load(at), array_type.dtype, signature.args[0].dtype)
        _add_row(context, builder, signature.args[0], signature.args[1], acc_pointer, weight_array, first,
                 lanes.literal_value, scale)
        return context.get_dummy_value()

    return types.none(acc, weights, offset, values, r, e, lanes), codegen


@intrinsic
def count_flags(typingctx, flags, offset, lanes):
    """How many of flags[offset : offset + lanes] (a boolean array, linear index into it;
    ``lanes`` a constant) are true, as an int64: one vector compare and a popcount of its mask.
    A loop adding the flags one by one widens each to int64 first, 4× the time per byte."""
    if not isinstance(lanes, types.IntegerLiteral) or flags.dtype != types.boolean:
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        array, first, _ = args
        return _set_lanes(builder, _flag_mask(context, builder, signature.args[0], array, first, count))

    return types.int64(flags, offset, lanes), codegen


@intrinsic
def add_spiking_vector(typingctx, acc, acc_offset, weights, offset, flags, flag_offset, lanes):
    """acc[acc_offset + i] += weights[offset + i] where flags[flag_offset + i] is true, and += 0
    where it is not, for i < ``lanes`` (a constant; linear indices into C-contiguous arrays, ``acc``
    of the weights' type, boolean flags): one vector select and add (see :func:`add_vector`).
    Adding +0 leaves a sum from +0 unchanged, as it is never −0, so this is the sum of the
    spiking inputs' weights alone."""
    if not isinstance(lanes, types.IntegerLiteral) or flags.dtype != types.boolean or acc.dtype != weights.dtype:
        return None
    count = lanes.literal_value

    def codegen(context, builder, signature, args):
        acc_array, acc_first, weight_array, first, flag_array, flag_first, _ = args
        element_type = signature.args[2].dtype
        vector = ir.VectorType(context.get_value_type(element_type), count)
        weight_data = _data(context, builder, signature.args[2], weight_array)
        values = builder.load(builder.bitcast(builder.gep(weight_data, [first]), vector.as_pointer()), align=1)
        mask = _flag_mask(context, builder, signature.args[4], flag_array, flag_first, count)
        selected = builder.select(mask, values, ir.Constant(vector, [0] * count))
        acc_data = _data(context, builder, signature.args[0], acc_array)
        target = builder.bitcast(builder.gep(acc_data, [acc_first]), vector.as_pointer())
        total = builder.load(target, align=1)
        builder.store(builder.fadd(total, selected) if element_type in types.real_domain else builder.add(total, selected),
                      target, align=1)
        return context.get_dummy_value()

    return types.none(acc, acc_offset, weights, offset, flags, flag_offset, lanes), codegen
