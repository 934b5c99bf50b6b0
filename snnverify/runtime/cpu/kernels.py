"""The CPU kernel table (:data:`CPU_KERNELS`): host functions that allocate outputs (from the
run's :class:`~snnverify.runtime.buffers.BufferPool`), lay out arguments and launch the compiled
``*_kernel`` functions of this package."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numba import get_num_threads

from snnverify import graph as g
from snnverify.runtime import buffers
from snnverify.runtime.cpu.dense import (add_into_kernel, conv2d_dense_kernel, if_layer_kernel, pool2d_kernel,
                                         scale_channels_kernel, spike_pool2d_kernel, spike_pool2d_last_kernel)
from snnverify.runtime.cpu.events import (STEP_CHUNK, TILE_ENTRIES, FusedConv, FusedNeurons, FusedResidual, Schedule,
                                          conv2d_events_if_kernel, conv2d_sparse_kernel, depthwise_if_kernel)
from snnverify.runtime.cpu.gather import positions_read
from snnverify.runtime.cpu.layouts import EventWeights, event_weights, events_layout, is_depthwise
from snnverify.runtime.cpu.transpose import to_channels_first, to_channels_last
from snnverify.runtime.plan import EventConv, Kernels, Op, ResidualKind, Signal


#: neurons per job of the IF kernel, at most (its jobs: a sample and a block of neurons)
IF_BLOCK = 1024


def _workers() -> int:
    """Parallel workers of the event kernels: one per Numba thread, each with its own scratch
    (indexed by the worker, not by a thread id, which would make the kernels uncacheable)."""
    return get_num_threads()


def _geometry(node: g.Conv2d) -> tuple[int, ...]:
    """(stride y, stride x, padding y, padding x, dilation y, dilation x)."""
    return (*node.stride, *node.padding, *node.dilation)


def _conv2d(x, weight, bias, node: g.Conv2d, out_shape, sparse, channels_last=False, input_last=False):
    """``weight`` is :class:`~snnverify.runtime.cpu.layouts.EventWeights` when ``sparse``, else
    W in :func:`~snnverify.runtime.cpu.layouts.events_layout`; a sparse conv only:
    ``channels_last``, out [N, H·W·C]; ``input_last``, x [N, H, W, C] (else [N, C, H, W])."""
    return _synapses(x, weight, bias, node.weight.shape[2:], _geometry(node), out_shape, sparse, channels_last,
                     input_last)


def _synapses(x, weight, bias, kernel_hw, geometry, out_shape, sparse, channels_last=False, input_last=False):
    """The conv of :func:`_conv2d`, given its kernel size and geometry."""
    if sparse:  # the sums in the plan's type (W' may be narrower, see row_dtype)
        rows, channels, height, width = out_shape
        out = buffers.empty((rows, height, width, channels) if channels_last else out_shape, bias.dtype)
        conv2d_sparse_kernel(x, input_last, weight.blocks, weight.packed, weight.pack, kernel_hw, bias, geometry,
                             _workers(), channels_last, out)
        if channels_last:
            return out.reshape(rows, -1)
    else:
        out = buffers.empty(out_shape, weight.dtype)
        conv2d_dense_kernel(x, weight, kernel_hw, bias, geometry, _workers(), out)
    return out


def _fused_conv(conv: EventConv) -> FusedConv:
    spikes = conv.spikes
    return FusedConv(spikes.reshape(spikes.shape[0], -1), (spikes.shape[3], spikes.shape[1], spikes.shape[2]),
                     conv.weight.blocks, conv.weight.packed, conv.weight.window, conv.node.weight.shape[2:],
                     _geometry(conv.node), conv.bias)


def _no_shortcut(weight_dtype, dtype) -> FusedConv:
    """A placeholder of the same types as a real shortcut (the kernel reads none of it)."""
    none = np.zeros((1, 1), weight_dtype)
    return FusedConv(np.zeros((1, 1), np.bool_), (1, 1, 1), none, none, none, (1, 1), (1,) * 6, np.zeros(1, dtype))


def _conv2d_if(conv: EventConv, kind: ResidualKind, residual, out_shape, threshold, initial, timesteps, batch):
    """Fused IF(conv(spikes) [+ residual]) (see :class:`~snnverify.runtime.plan.Fusion`; the
    conv may read a pooled spike map instead, float32, and gathers its nonzero values): its
    spikes and their number. A SHORTCUT conv is computed inside when both convs have one group
    and have rows of one type (:func:`~snnverify.runtime.cpu.layouts.row_dtype`), else
    beforehand by :func:`_conv2d` and added as a CURRENT. A depthwise conv of spikes runs as
    :func:`~snnverify.runtime.cpu.events.depthwise_if_kernel`. Spike maps, read and written, are
    channels-last [T·B, H·W·C]; so are θ and v[0]."""
    rows = timesteps * batch
    dtype = conv.bias.dtype  # the plan's: currents and membranes (W' may be narrower)
    # (one accumulator type for both convs: a kernel compiled per mix would cost ~20 s each)
    if kind == ResidualKind.SHORTCUT and (residual.node.groups > 1 or conv.node.groups > 1
                                          or residual.weight.blocks.dtype != conv.weight.blocks.dtype):
        height, width, channels = residual.spikes.shape[1:]
        spikes = to_channels_first(residual.spikes, (channels, height, width)).reshape(rows, channels, height, width)
        kind = ResidualKind.CURRENT
        residual = Signal(_conv2d(spikes, residual.weight, residual.bias, residual.node, (rows, *out_shape), True,
                                  channels_last=True), True, channels_last=True)
    shortcut = _no_shortcut(conv.weight.blocks.dtype, dtype)
    values, residual_spikes = np.zeros((1, 1), dtype), np.zeros((1, 1), np.bool_)
    if kind == ResidualKind.SHORTCUT:
        shortcut = _fused_conv(residual)
    elif kind == ResidualKind.GRADED:
        values, residual_spikes = residual.amplitude.reshape(1, -1), residual.array
    elif kind != ResidualKind.NONE:  # channels-last, the order of the kernel's neurons (read contiguously)
        values = residual.array.reshape(residual.array.shape[0], -1)
        if not residual.channels_last:
            values = to_channels_last(values, out_shape)
    out, counts = buffers.empty((rows, threshold.shape[0]), np.bool_), np.empty(_workers(), np.int64)
    neurons = FusedNeurons(threshold.reshape(-1, out_shape[0]), initial.reshape(-1, out_shape[0]), tuple(out_shape[1:]))
    if is_depthwise(conv.node) and conv.spikes.dtype == np.bool_ and kind != ResidualKind.SHORTCUT:
        spikes = conv.spikes
        depthwise_if_kernel(spikes.reshape(rows, -1), spikes.shape[1:3], conv.weight.depthwise, conv.node.weight.shape[2:],
                            _geometry(conv.node), conv.bias, FusedResidual(int(kind), values, residual_spikes), neurons,
                            timesteps, batch, _workers(), out, counts)
        return out, int(counts.sum())
    map_size = math.prod(conv.spikes.shape[1:]) // conv.node.groups
    if kind == ResidualKind.SHORTCUT:  # the projection's lists hold the positions it reads
        channels, *in_hw = shortcut.in_shape
        map_size += channels * int(positions_read(tuple(in_hw), shortcut.kernel_hw, shortcut.geometry,
                                                  tuple(out_shape[1:])).sum())
    tile = _samples_per_job(batch, conv.node.groups, map_size)
    # adjacent positions packed into one block when both convs allow it
    pack = conv.weight.pack if kind != ResidualKind.SHORTCUT or residual.weight.pack == conv.weight.pack else 1
    conv2d_events_if_kernel(_fused_conv(conv), shortcut, FusedResidual(int(kind), values, residual_spikes), neurons,
                            Schedule(timesteps, batch, tile, _workers(), pack), out, counts)
    return out, int(counts.sum())


def _samples_per_job(batch: int, groups: int, map_size: int) -> int:
    """Samples per job of a fused kernel: at most as many as keep a job's spike entries within
    TILE_ENTRIES (a job reads each weight row once for all its samples), and among those the
    most that load the busiest worker least (:func:`_evenest_tile`)."""
    return _evenest_tile(batch, groups, max(1, min(batch, TILE_ENTRIES // (STEP_CHUNK * map_size))), _workers())


@functools.lru_cache(maxsize=None)
def _evenest_tile(batch: int, groups: int, most: int, workers: int) -> int:
    """The largest tile of at most ``most`` samples among those whose jobs load the busiest
    worker least. Jobs go to the workers in turn, so a split they cannot share evenly costs
    time: 32 samples in jobs of at most 10 made jobs of 10, 10, 10 and 2 on two workers, the
    busier one with 20 samples; on ResNet-18's 512-channel layers, jobs of 3 samples (11 jobs)
    took 112–131 ms where jobs of 2 or 4 took 101–123 (reports/speed)."""

    def busiest(tile: int) -> int:  # the samples of the most loaded worker
        jobs = [min(tile, batch - first) for first in range(0, batch, tile) for _ in range(groups)]
        return max(sum(jobs[worker::workers]) for worker in range(workers))

    return min(range(most, 0, -1), key=busiest)


#: kernel size and geometry of :func:`as_pointwise_conv`'s conv
_POINTWISE = (1, 1), (1, 1, 0, 0, 1, 1)


def as_pointwise_conv(node: g.Linear) -> g.Conv2d:
    """A linear layer as the 1×1 conv of a 1×1 map of its input features (as the GPU runs it):
    the same terms, input j ascending, bias last, so the same sums; the conv kernels put their
    vector lanes over the outputs and, for a mostly zero input, add its nonzero terms only."""
    outputs, features = node.weight.shape
    return g.Conv2d(node.name, weight=node.weight.reshape(outputs, features, 1, 1), bias=node.bias)


def _linear(x, weight, bias, sparse):
    rows, features = x.shape
    if not sparse:
        out = _synapses(x.reshape(rows, features, 1, 1), weight, bias, *_POINTWISE, (rows, bias.shape[0], 1, 1), False)
        return out.reshape(rows, -1)
    # the rows as the positions of channels-last maps, several to a map: a job (one map) reads
    # each block of W' once for all its rows, not once per row (VGG's 4096 × 4096 layer is 64 MB)
    per_job = _rows_per_job(rows)
    out = _synapses(x.reshape(rows // per_job, per_job, 1, features), weight, bias, *_POINTWISE,
                    (rows // per_job, bias.shape[0], per_job, 1), True, channels_last=True, input_last=True)
    return out.reshape(rows, -1)


def _rows_per_job(rows: int, most: int = 128) -> int:
    """Rows of a sparse linear layer per job: the largest divisor of ``rows`` up to ``most``
    that still leaves every worker a job (1 when none does)."""
    fitting = [d for d in range(1, min(most, rows) + 1) if rows % d == 0 and rows // d >= _workers()]
    return max(fitting, default=1)


def _pool2d(x, node: g.AvgPool2d, out_shape, amplitude=None, channels_last=False, input_last=False):
    """The pool's output [N, C, H, W], or with ``channels_last`` [N, H·W·C] (the kernels write
    it through a transposed view: the same sums, stored in the other order); with
    ``input_last``, x is a spike map [N, H, W, C]."""
    dtype = x.dtype if amplitude is None else amplitude.dtype
    rows, channels, height, width = out_shape
    stored = buffers.empty((rows, height, width, channels) if channels_last else out_shape, dtype)
    area = node.kernel_size[0] * node.kernel_size[1]
    average = not isinstance(node, g.SumPool2d)
    # a float average divides in the kernel; an integer graph's (quantize makes them sum
    # pools) is a float mean of the integer sums
    divides = average and dtype.kind == "f"
    geometry = (np.array(node.kernel_size), np.array(node.stride), np.array(node.padding))
    channel_amplitude = None if amplitude is None else _per_channel(amplitude, channels)
    if channel_amplitude is not None:  # (the plan's are: an IF layer's a, repeated per neuron)
        sums = np.zeros((len(channel_amplitude), area + 1), dtype)  # a_c added n times, in sequence
        with np.errstate(over="ignore"):  # a float sum past the largest value is ∞, as the other backends make it
            for count in range(1, area + 1):
                sums[:, count] = sums[:, count - 1] + channel_amplitude
        pool = spike_pool2d_last_kernel if input_last else spike_pool2d_kernel
        pool(np.ascontiguousarray(x), sums / dtype.type(area) if divides else sums, *geometry, stored, channels_last)
    else:
        if input_last:  # a neuron's own amplitude: the general kernel, which reads the graph's order
            x = to_channels_first(x.reshape(x.shape[0], -1), x.shape[3:] + x.shape[1:3]).reshape(
                x.shape[0], x.shape[3], *x.shape[1:3])
        pool2d_kernel(x, None if amplitude is None else amplitude.reshape(x.shape[1:]), *geometry,
                      dtype.type(area if divides else 1), dtype.type(0), stored, channels_last)
    if average and not divides:
        stored = stored / np.float32(area)
    return stored.reshape(rows, -1) if channels_last else stored


def _per_channel(amplitude: np.ndarray, channels: int) -> np.ndarray | None:
    """The amplitude per channel [C] when each channel's neurons share one (bit for bit), else None."""
    planes = amplitude.reshape(channels, -1)
    bits = planes.view(f"i{planes.itemsize}")
    return planes[:, 0] if np.array_equal(bits, np.broadcast_to(bits[:, :1], bits.shape)) else None


def _if_layer(current, temporal, threshold, initial, timesteps, batch, layer: g.IF):
    neurons = threshold.shape[0]
    spikes = buffers.empty((timesteps * batch, neurons), g.spike_dtype(layer))
    counts = np.empty((batch, max(1, -(-neurons // IF_BLOCK))), np.int64)
    if_layer_kernel(np.ascontiguousarray(current), temporal, threshold, initial, timesteps, batch, layer.max_spikes,
                    spikes, counts)
    return spikes, int(counts.sum())


def _scale_channels(x, factors):
    out = buffers.empty(x.shape, factors.dtype)
    scale_channels_kernel(x, factors, out)
    return out


def _add_into(total, x, temporal, batch):
    add_into_kernel(total, np.ascontiguousarray(x), temporal, batch)


def _weight_layout(op: Op) -> np.ndarray | EventWeights:
    """Weights as the CPU kernels read them: a sparse conv's
    :func:`~snnverify.runtime.cpu.layouts.event_weights`, a dense conv's
    :func:`~snnverify.runtime.cpu.layouts.events_layout`; a linear layer's those of
    :func:`as_pointwise_conv`."""
    node, weight = op.node, op.weight
    if isinstance(node, g.Linear):
        node, weight = as_pointwise_conv(node), weight.reshape(*weight.shape, 1, 1)
    return event_weights(weight, node, op.input_peak) if op.sparse else events_layout(weight, node)


CPU_KERNELS = Kernels(
    device=lambda: torch.device("cpu"),
    to_device=lambda a: a,
    to_host=lambda a: a,
    zeros=buffers.zeros,
    conv2d=_conv2d,
    linear=_linear,
    pool2d=_pool2d,
    add_into=_add_into,
    if_layer=_if_layer,
    scale_channels=_scale_channels,
    weight_layout=_weight_layout,
    conv2d_if=_conv2d_if,
    channels_last=to_channels_last,
    channels_first=to_channels_first,
)
