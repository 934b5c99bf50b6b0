"""Numba CUDA backend (``compile(snn, target="gpu")``).

Convs and linear layers fed by spike maps run event-driven (:func:`_event_kernel`): a warp
shares an output position, walks the spikes of its input window, packed 32 channels to a word,
and adds one weight per spike and output channel. The others (the input layer, pooled maps)
run as one tiled implicit-GEMM kernel (:func:`_synapse_kernel`) with products rounded on their
own (``fmul_rn``: never contracted into a fused multiply-add). Each output is summed in exactly
the order of the CPU kernels — kernel row, kernel column, input channel, bias last — so float32
spikes are bit-identical to the CPU backend's. The other kernels take one thread per output
element (or per neuron for IF layers, looping over T). Activations stay on the device from the input to the output;
weights are laid out and copied there once per plan. Without a CUDA GPU the target is an
error, never a silent CPU run; the kernels also run under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, with smaller tiles), which is how CPU-only machines test them,
and ``suites/unit/test_cuda_compile.py`` compiles them for a real GPU (sm_90 PTX) there.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numba
import numpy as np
import torch
from numba import config, cuda
from numba.cuda import libdevice

from snnverify import graph as g
from snnverify.runtime.plan import Kernels, register_kernels

_THREADS = 128
SIMULATOR = bool(config.ENABLE_CUDASIM)


def _run_simulated_blocks_in_one_thread() -> None:
    """Run each block of a simulated launch as greenlets in the calling thread.

    numba-cuda's simulator (0.30.4) runs every CUDA thread as an OS thread, and the launching
    thread releases a barrier by polling the block's threads in a loop. Every ``syncthreads``
    is then a round of GIL handoffs and OS wake-ups, which set the simulator's time, not the
    kernels' arithmetic (a cpu-vs-gpu property test used under a third of its wall time on a
    CPU), and under load each wake-up waits for a core. Here a block's threads are greenlets:
    each runs in thread order until it reaches ``syncthreads`` or returns, and once all have,
    those at the barrier run on to the next one. A thread that returns leaves the block, as on a
    GPU. The kernel API finds the running thread's indices through its greenlet. With no
    preemption, a shared array is also created once per block (the simulator's threads could
    each create their own, and the block then summed uninitialised memory).
    """
    import types

    import greenlet
    from numba.cuda.simulator import kernel as simulator
    from numba.cuda.simulator import kernelapi

    at_barrier = object()  # what a thread hands back to its block when it reaches syncthreads

    class SimulatedThread(greenlet.greenlet):
        """One CUDA thread: its indices, and the barrier methods the kernel API calls."""

        def __init__(self, block, grid_point, thread_point, body):
            super().__init__(body)
            self._manager = block
            self.blockIdx, self.threadIdx = simulator.Dim3(*grid_point), simulator.Dim3(*thread_point)
            x, y, _ = block._block_dim
            self.thread_id = self.threadIdx.x + x * (self.threadIdx.y + y * self.threadIdx.z)

        def syncthreads(self):
            self.parent.switch(at_barrier)

        # the simulator's own: they store into the block's state around two barriers
        syncthreads_count = simulator.BlockThread.syncthreads_count
        syncthreads_and = simulator.BlockThread.syncthreads_and
        syncthreads_or = simulator.BlockThread.syncthreads_or

    def run(self, grid_point, *args):
        running = [SimulatedThread(self, grid_point, point, lambda: self._f(*args))
                   for point in np.ndindex(*self._block_dim)]
        with np.errstate(divide="raise") if self._debug else contextlib.nullcontext():
            while running:
                arrived = []
                for thread in running:
                    try:
                        if thread.switch() is at_barrier:
                            arrived.append(thread)
                    except Exception as error:
                        error.add_note(f"in CUDA thread {list(thread.threadIdx)} of block {list(thread.blockIdx)}")
                        raise
                running = arrived

    simulator.BlockManager.run = run
    kernelapi.threading = types.SimpleNamespace(current_thread=greenlet.getcurrent)


_run_simulated_blocks_in_one_thread()  # inert unless the simulator runs kernels; applied always, one behaviour


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


# Tiles of the conv kernel: a block of _SIDE × _SIDE threads computes _TILE output positions ×
# _TILE output channels, each thread _MICRO × _MICRO of them, reading the inputs and weights
# _DEPTH input channels at a time through shared memory. The simulator interprets every CUDA
# thread in Python, padding included, so it gets the same kernel with small tiles of the same
# structure: several outputs per thread, several staging passes per chunk (_STAGE_ROWS > 1) and
# two tile rows staged by each thread (_DEPTH / _STAGE_ROWS = 2), as on the GPU. Shallow chunks
# waste the least on padding.
_SIDE, _MICRO, _DEPTH = (4, 2, 4) if SIMULATOR else (16, 4, 8)
_TILE = _SIDE * _MICRO
_STAGE_ROWS = _SIDE * _SIDE // _TILE  # tile rows one pass of the block's threads stages
assert _DEPTH % _STAGE_ROWS == 0


def _synapse_kernel(product, cast, dtype):
    """The conv kernel (linear layers run as 1×1 convs) for one kind of arithmetic.

    An implicit GEMM: out[n, g·O + o, y, x] = Σ_(ky, kx, c) W'[g, ky, kx, c, o] · x[n, g·C + c,
    y·s − p + ky·d, x·s − p + kx·d] + b[o], each thread summing its own outputs in exactly that
    order (kernel row, kernel column, input channel; bias last) — the CPU kernels' order. Taps
    that fall in the zero padding, and the channels past C that fill the last tile, add
    W'·0 = ±0, which leaves a sum unchanged: a sum that starts at +0 never becomes −0 under
    round to nearest. For the same reason a spike map's silent inputs (0) may be multiplied
    rather than skipped: the spikes equal the CPU's event-driven sums bit for bit.
    """

    @cuda.jit
    def conv2d(x, w, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, zero, out):
        rows, out_channels, out_h, out_w = out.shape
        kernel_h, kernel_w, group_in, group_out = w.shape[1], w.shape[2], w.shape[3], w.shape[4]
        height, width = x.shape[2], x.shape[3]
        positions = rows * out_h * out_w
        group = cuda.blockIdx.z
        first_position, first_channel = cuda.blockIdx.x * _TILE, cuda.blockIdx.y * _TILE
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        inputs = cuda.shared.array((_DEPTH, _TILE), dtype)
        weights = cuda.shared.array((_DEPTH, _TILE), dtype)
        acc = cuda.local.array((_MICRO, _MICRO), dtype)
        for i in range(_MICRO):
            for j in range(_MICRO):
                acc[i, j] = zero
        # The tile column this thread stages: one output position of the block (its inputs)
        # and one output channel (its weights), for rows first_row, first_row + _STAGE_ROWS, …
        thread = ty * _SIDE + tx
        column, first_row = thread % _TILE, thread // _TILE
        position, channel = first_position + column, first_channel + column
        n = position // (out_h * out_w)
        y, xo = (position // out_w) % out_h, position % out_w
        for ky in range(kernel_h):
            yi = y * stride_h - pad_h + ky * dilation_h
            for kx in range(kernel_w):
                xi = xo * stride_w - pad_w + kx * dilation_w
                inside = position < positions and 0 <= yi < height and 0 <= xi < width
                for c0 in range(0, group_in, _DEPTH):
                    for row in range(first_row, _DEPTH, _STAGE_ROWS):
                        c = c0 + row
                        inputs[row, column] = cast(x[n, group * group_in + c, yi, xi]) if inside and c < group_in \
                            else zero
                        weights[row, column] = w[group, ky, kx, c, channel] if c < group_in and channel < group_out \
                            else zero
                    cuda.syncthreads()
                    for row in range(_DEPTH):
                        for i in range(_MICRO):
                            a = inputs[row, tx + i * _SIDE]
                            for j in range(_MICRO):
                                acc[i, j] += product(weights[row, ty + j * _SIDE], a)
                    cuda.syncthreads()
        for i in range(_MICRO):
            p = first_position + tx + i * _SIDE
            if p < positions:
                for j in range(_MICRO):
                    o = first_channel + ty + j * _SIDE
                    if o < group_out:
                        o += group * group_out
                        out[p // (out_h * out_w), o, (p // out_w) % out_h, p % out_w] = acc[i, j] + bias[o]

    return conv2d


def gemm_layout(weight: np.ndarray, node) -> np.ndarray:
    """W' as the conv kernel reads it: [G, kH, kW, C_in/G, C_out/G] for a conv, a linear layer's
    [K, F] as the 1×1 conv [1, 1, 1, F, K] — a tile row of weights is one coalesced load."""
    if isinstance(node, g.Linear):
        return np.ascontiguousarray(weight.T.reshape(1, 1, 1, *weight.T.shape))
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    grouped = weight.reshape(node.groups, out_channels // node.groups, group_in, kernel_h, kernel_w)
    return np.ascontiguousarray(grouped.transpose(0, 3, 4, 2, 1))


def _inner(device_function):
    """A device function as the conv kernel's inner loop calls it: the compiled function on a
    GPU; its Python body under the simulator, which otherwise swaps module globals around every
    call (one per multiply-accumulate), and runs the same body."""
    return device_function.py_func if SIMULATOR else device_function


_SYNAPSES = {"f": _synapse_kernel(_inner(_float_product), np.float32, numba.float32),
             "i": _synapse_kernel(_inner(_int_product), np.int64, numba.int64)}


# The event kernel: a warp's _LANES threads share one output position at a time, each thread
# summing _PER_LANE output channels (a lane's channels _LANES apart: each weight row is one
# coalesced load), so every branch on the input's spikes is taken by the whole warp alike.
# A block has _WARPS warps, each walking _WARP_POSITIONS consecutive output positions. The
# simulator gets the same structure with fewer threads (it interprets each one in Python).
_LANES, _PER_LANE, _WARPS, _WARP_POSITIONS = (4, 2, 1, 8) if SIMULATOR else (32, 4, 4, 1)
_EVENT_CHANNELS = _LANES * _PER_LANE  # output channels of one block column
_WORD = 32  # channels per packed spike word


@cuda.jit
def _pack_spikes_kernel(x, groups, out):
    """out[n, k, y, x, w] = the spikes of channels k·C/G + 32·w … + 31 of group k at (y, x), bit
    b for channel 32·w + b; one thread per word."""
    rows, _, height, width, words = out.shape
    group_in = x.shape[1] // groups
    index = cuda.grid(1)
    if index >= rows * groups * words * height * width:
        return
    xo, y = index % width, (index // width) % height  # threads next to each other read along a row
    word, group, n = (index // (width * height)) % words, (index // (width * height * words)) % groups, \
        index // (width * height * words * groups)
    bits = 0
    for b in range(min(_WORD, group_in - word * _WORD)):
        if x[n, group * group_in + word * _WORD + b, y, xo]:
            bits |= 1 << b
    out[n, group, y, xo, word] = bits


def _event_kernel(dtype):
    """The conv kernel of a spike map, event-driven: out[n, g·O + o, y, x] = Σ W'[g, ky, kx, c, o]
    over the taps (ky, kx) inside the input and the channels c that spiked there, in the dense
    kernel's order (kernel row, kernel column, input channel; bias last), the silent inputs
    skipped: their products w·0 = ±0 leave a sum unchanged, and a spike's product w·1 = w is
    exact — the same sums, bit for bit, as :func:`_synapse_kernel` and the CPU's. The spikes
    come packed (:func:`_pack_spikes_kernel`): each set bit, lowest first, is one add per lane
    channel; a word without spikes costs one load."""

    @cuda.jit
    def conv2d_events(packed, w, bias, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, zero, out):
        rows, _, out_h, out_w = out.shape
        kernel_h, kernel_w, group_out = w.shape[1], w.shape[2], w.shape[4]
        height, width, words = packed.shape[2], packed.shape[3], packed.shape[4]
        group = cuda.blockIdx.z
        lane_channel = cuda.blockIdx.y * _EVENT_CHANNELS + cuda.threadIdx.x
        acc = cuda.local.array(_PER_LANE, dtype)
        first = (cuda.blockIdx.x * _WARPS + cuda.threadIdx.y) * _WARP_POSITIONS
        for position in range(first, min(first + _WARP_POSITIONS, rows * out_h * out_w)):
            n, y, xo = position // (out_h * out_w), (position // out_w) % out_h, position % out_w
            for j in range(_PER_LANE):
                acc[j] = zero
            for ky in range(kernel_h):
                yi = y * stride_h - pad_h + ky * dilation_h
                if 0 <= yi < height:
                    for kx in range(kernel_w):
                        xi = xo * stride_w - pad_w + kx * dilation_w
                        if 0 <= xi < width:
                            for word in range(words):
                                bits = np.int64(packed[n, group, yi, xi, word])
                                while bits != 0:
                                    c = word * _WORD + cuda.ffs(bits) - 1
                                    bits &= bits - 1
                                    for j in range(_PER_LANE):
                                        o = lane_channel + j * _LANES
                                        if o < group_out:
                                            acc[j] += w[group, ky, kx, c, o]
            for j in range(_PER_LANE):
                o = lane_channel + j * _LANES
                if o < group_out:
                    o += group * group_out
                    out[n, o, y, xo] = acc[j] + bias[o]

    return conv2d_events


_EVENT_SYNAPSES = {"f": _event_kernel(numba.float32), "i": _event_kernel(numba.int64)}


@cuda.jit
def _sum_pool2d_kernel(x, kernel, stride, padding, zero, out):
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
def _if_layer_kernel(current, temporal, threshold, v0, timesteps, batch, max_spikes, spikes):
    """v[0] = θ/2; per step v += I[t], then B = ``max_spikes`` times: if v ≥ θ, v −= θ and
    s += 1 (spikes: bool for B = 1, else the counts, uint8): one thread per (sample, neuron)."""
    neurons = threshold.shape[0]
    index = cuda.grid(1)
    if index >= batch * neurons:
        return
    b, f = index // neurons, index % neurons
    theta = threshold[f]
    v = v0[f]
    for t in range(timesteps):
        v += current[t * batch + b, f] if temporal else current[b, f]
        count = 0
        # the comparisons in turn; once one fails v no longer changes, nor would the rest
        while count < max_spikes and v >= theta:
            v -= theta
            count += 1
        spikes[t * batch + b, f] = count


@cuda.jit
def _add_into_kernel(total, x, temporal_x, batch_rows):
    """total[r] += x[r] (x temporal) or x[r mod B] (x static, broadcast over T)."""
    index = cuda.grid(1)
    width = total.shape[1]
    if index < total.shape[0] * width:
        r, f = index // width, index % width
        total[r, f] += x[r, f] if temporal_x else x[r % batch_rows, f]


def _synapses(x, weight, bias, geometry, out_shape):
    """Launch the conv kernel: event-driven where a spike map feeds it, dense (an implicit
    GEMM) otherwise; ``geometry``: (stride, padding, dilation) as (h, w) pairs."""
    out = cuda.device_array(out_shape, weight.dtype)
    rows, _, out_h, out_w = out_shape
    groups, group_out = weight.shape[0], weight.shape[4]
    scalars = (*(v for pair in geometry for v in pair), weight.dtype.type(0), out)
    if x.dtype == np.bool_:
        packed = cuda.device_array((rows, groups, *x.shape[2:], math.ceil(weight.shape[3] / _WORD)), np.uint32)
        _launch(_pack_spikes_kernel, packed.size, x, groups, packed)
        grid = (math.ceil(rows * out_h * out_w / (_WARPS * _WARP_POSITIONS)), math.ceil(group_out / _EVENT_CHANNELS),
                groups)
        _EVENT_SYNAPSES[weight.dtype.kind][grid, (_LANES, _WARPS)](packed, weight, bias, *scalars)
    else:
        grid = (math.ceil(rows * out_h * out_w / _TILE), math.ceil(group_out / _TILE), groups)
        _SYNAPSES[weight.dtype.kind][grid, (_SIDE, _SIDE)](x, weight, bias, *scalars)
    return out


def _conv2d(x, weight, bias, node: g.Conv2d, out_shape, sparse):
    # a pooled spike map (sparse, graded) runs dense: a zero input adds w·0 = ±0 (see _synapse_kernel)
    return _synapses(x, weight, bias, (node.stride, node.padding, node.dilation), out_shape)


def _linear(x, weight, bias, sparse):
    rows, features = x.shape
    out = _synapses(x.reshape(rows, features, 1, 1), weight, bias, ((1, 1), (0, 0), (1, 1)),
                    (rows, weight.shape[4], 1, 1))
    return out.reshape(rows, weight.shape[4])


def _pool2d(x, node: g.AvgPool2d, out_shape, amplitude=None):
    if amplitude is not None:  # (the graded map first: on a GPU its memory traffic costs little)
        x = _scale_channels(x.reshape(x.shape[0], -1), amplitude).reshape(x.shape)
    sums = cuda.device_array(out_shape, x.dtype)
    geometry = (tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))  # tuples: no host arrays to copy
    _launch(_sum_pool2d_kernel, math.prod(out_shape), x, *geometry, x.dtype.type(0), sums)
    if isinstance(node, g.SumPool2d):
        return sums
    divisor = np.float32(node.kernel_size[0] * node.kernel_size[1])
    out = cuda.device_array(sums.size, np.result_type(sums.dtype, divisor))
    _launch(_divide_kernel, sums.size, sums.reshape(sums.size), divisor, out)
    return out.reshape(sums.shape)


def _zeros(shape, dtype):
    out = cuda.device_array(shape, dtype)
    out[:] = 0
    return out


def _add_into(total, x, temporal, batch):
    _launch(_add_into_kernel, total.size, total, x, temporal, batch)


def _if_layer(current, temporal, threshold, initial, timesteps, batch, layer: g.IF):
    spikes = cuda.device_array((timesteps * batch, threshold.shape[0]), g.spike_dtype(layer))
    _launch(_if_layer_kernel, batch * threshold.shape[0], current, temporal, threshold, initial, timesteps, batch,
            layer.max_spikes, spikes)
    return spikes, _count(spikes)


@cuda.jit
def _scale_channels_kernel(x, factors, out):
    """out[n, f] = x[n, f]·c_f; of spikes, the graded map a_f·s (1·a = a exactly, 0·a = ±0)."""
    index = cuda.grid(1)
    neurons = factors.shape[0]
    if index < x.shape[0] * neurons:
        n, f = index // neurons, index % neurons
        out[n, f] = x[n, f] * factors[f]


def _scale_channels(x, factors):
    out = cuda.device_array(x.shape, factors.dtype)
    _launch(_scale_channels_kernel, x.shape[0] * factors.shape[0], x, factors, out)
    return out


@cuda.jit
def _count_kernel(spikes, total):
    """total[0] += the spikes of the flat ``spikes`` (a grid-stride loop): its true entries, or
    the sum of a burst layer's counts."""
    count = 0
    for index in range(cuda.grid(1), spikes.shape[0], cuda.gridsize(1)):
        count += spikes[index]
    cuda.atomic.add(total, 0, count)


def _count(spikes) -> int:
    """Counted on the device: copying every spike map to the host cost more than the step."""
    total = cuda.to_device(np.zeros(1, np.int64))
    blocks = min(math.ceil(spikes.size / _THREADS), 1024)
    _count_kernel[max(1, blocks), _THREADS](spikes.reshape(spikes.size), total)
    return int(total.copy_to_host()[0])


def _require_gpu() -> None:
    if not cuda.is_available():
        raise RuntimeError(
            "target 'gpu' needs a CUDA GPU and none is available (numba.cuda.is_available() is False); "
            "use target='cpu', or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in the simulator"
        )


@contextlib.contextmanager
def _launches():
    """While a plan runs: numba-cuda warns at every launch of fewer than 128 blocks, and late
    layers of a small batch (a 4×4 map) launch that few by nature, so a warning per layer per
    call is only noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*Grid size \d+ will likely result in GPU under-utilization")
        yield


def _current_device() -> torch.device:
    """The CUDA device the kernels launch on (the simulator's fake device, which has no id, is
    device 0)."""
    return torch.device("cuda", getattr(cuda.get_current_device(), "id", 0))


GPU_KERNELS = Kernels(
    device=_current_device,
    to_device=cuda.to_device,
    to_host=lambda a: a.copy_to_host(),
    zeros=_zeros,
    conv2d=_conv2d,
    linear=_linear,
    pool2d=_pool2d,
    add_into=_add_into,
    if_layer=_if_layer,
    scale_channels=_scale_channels,
    weight_layout=lambda op: gemm_layout(op.weight, op.node),
    require=_require_gpu,
    running=_launches,
)
register_kernels("gpu", GPU_KERNELS)
