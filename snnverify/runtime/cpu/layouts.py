"""How the CPU event kernels lay out W' = W·θ_in: blocks of output channels, built once per plan.

A gather (:mod:`snnverify.runtime.cpu.gather`) accumulates :data:`WIDE` or :data:`NARROW`
output channels at once in vector registers; a block holds, for each (tap, input channel),
the row of weights one spike sends to the block's channels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit
from numba.np.numpy_support import as_dtype, from_dtype

from snnverify import graph as g
from snnverify.runtime.cpu.intrinsics import summed_in
from snnverify.runtime.quantize import gain

#: Output channels one gather accumulates at once (constants, so that the accumulators stay in
#: registers): 64 float32 are 8 AVX registers; a group's last channels go in blocks of 16.
WIDE, NARROW = 64, 16


def padded_channels(group_out: int) -> int:
    """A group's output channels rounded up to whole blocks of :data:`NARROW`."""
    return -(-group_out // NARROW) * NARROW


@njit(inline="always")
def block_count(padded):
    """Blocks of :data:`WIDE`, then :data:`NARROW` lanes that cover ``padded`` channels."""
    return padded // WIDE + (padded % WIDE) // NARROW


@njit(inline="always")
def block(index, padded, group_out):
    """Block ``index`` of a group (see :func:`block_count`): its first channel within the group,
    whether it is wide, and how many of its lanes are real channels (the others pad the group
    to :func:`padded_channels`)."""
    wide_blocks = padded // WIDE
    if index < wide_blocks:
        start, wide = index * WIDE, True
    else:
        start, wide = wide_blocks * WIDE + (index - wide_blocks) * NARROW, False
    return start, wide, min(WIDE if wide else NARROW, group_out - start)


class EventWeights(NamedTuple):
    """W' of an event-driven conv in the layouts of the CPU kernels (built once per plan)."""

    blocks: np.ndarray  #: :func:`events_layout`
    packed: np.ndarray  #: :func:`packed_layout` when ``pack`` > 1, else a placeholder
    pack: int  #: output positions gathered at once (:func:`~snnverify.runtime.cpu.gather.gather_packed`), 1 = none
    #: :func:`window_layout` where the conv :func:`slides`, else a placeholder
    window: np.ndarray
    #: a depthwise conv's :func:`depthwise_layout`, else a placeholder
    depthwise: np.ndarray


def row_dtype(weight: np.ndarray, input_peak: float = 1.0, limit: int = np.iinfo(np.int32).max,
              narrow_limit: int = np.iinfo(np.int16).max) -> np.dtype:
    """The type W' is laid out in for a gather of inputs no larger than ``input_peak`` in
    magnitude (1: unit spikes). An integer W' whose :func:`~snnverify.runtime.quantize.gain`
    times ``input_peak`` is ≤ ``limit`` (at most 2^31 − 1) sums in int32, its rows int16 where
    every |w| ≤ 2^15 − 1 (sign-extended as they are added:
    :func:`~snnverify.runtime.cpu.intrinsics.summed_in`), else int32; any other W' keeps its own
    type (int64 rows and sums). A gather adds some of one output's terms w·x, once each, so no
    partial sum (nor product) leaves ±gain·peak; integer sums are exact in any type that holds
    them, so the spikes are those of int64. int32 fits twice the lanes in a vector register,
    reads half the weight bytes per spike, and multiplies a pooled input in one instruction
    (AVX2 has no 64-bit vector multiply); int16 rows halve the bytes again, which a core whose
    gathers beyond L1 wait on L2 turns into up to twice the adds per second (reports/speed,
    "Narrow weight rows on the Zen 4 host"). ``narrow_limit`` (at most 2^15 − 1; below 0, none)
    bounds the |w| of int16 rows."""
    if weight.dtype.kind != "i":
        return weight.dtype
    if gain(weight) * input_peak > min(limit, np.iinfo(np.int32).max):
        return weight.dtype
    narrow = np.abs(weight).max(initial=0) <= min(narrow_limit, np.iinfo(np.int16).max)
    return np.dtype(np.int16 if narrow else np.int32)


def sums_dtype(rows: np.dtype) -> np.dtype:
    """The type a gather through rows of ``rows``' type sums in (int32 for int16 rows)."""
    return as_dtype(summed_in(from_dtype(rows)))


def event_weights(weight: np.ndarray, node: g.Conv2d, input_peak: float) -> EventWeights:
    """The layouts of W', in :func:`row_dtype` for inputs no larger than ``input_peak``
    (a depthwise conv's own layout in the type of the sums: its kernel adds rows of a few
    channels into a row of sums). Positions are packed when C_out is 16 or 32 (so 4 or 2
    positions fill a block), with one group and unit column dilation; a conv that
    :func:`slides` also gets its :func:`window_layout`."""
    weight = weight.astype(row_dtype(weight, input_peak), copy=False)
    out_channels = weight.shape[0]
    pack = WIDE // out_channels if out_channels in (16, 32) and node.groups == 1 and node.dilation[1] == 1 else 1
    placeholder = np.zeros((1, 1), weight.dtype)
    packed = packed_layout(weight, node.stride[1], pack) if pack > 1 else placeholder
    return EventWeights(events_layout(weight, node), packed, pack,
                        window_layout(weight) if slides(node) else placeholder,
                        depthwise_layout(weight.astype(sums_dtype(weight.dtype))) if is_depthwise(node) else placeholder)


def slides(node: g.Conv2d) -> bool:
    """Whether the fused kernel gathers a conv through its :func:`window_layout`: 16 output
    channels in one group (so also packed), a 3 × 3 kernel of stride and dilation 1, and a
    padding of at most 2, so that every output position is reached from an input position.
    One shape only: each shape the kernel slides for costs it seconds to compile per signature,
    and the 3 × 3 convs of 16 channels are where the packed gathers waste most (reports/speed,
    "Narrow layers gathered through a sliding window")."""
    return (node.weight.shape[:1] + node.weight.shape[2:] == (NARROW, 3, 3) and node.groups == 1
            and tuple(node.stride) == (1, 1) and tuple(node.dilation) == (1, 1) and max(node.padding) <= 2)


def window_layout(weight: np.ndarray) -> np.ndarray:
    """W' [C_out, C_in, kH, kW] as rows c of kH·kW·C_out lanes: lane (ky·kW + j)·C_out + o holds
    W'[o, c, ky, kW − 1 − j]. At stride 1 an input at (iy, ix) reaches output position
    (iy + p_y − ky, ix + p_x − kx) through tap (ky, kx); in a row of sums that keeps position
    ox at slot ox + kW − 1 − p_x, the kW positions a kernel row reaches are the adjacent slots
    ix … ix + kW − 1, and lanes ky·kW·C_out … of the row hold what the input adds to them, one
    tap a lane (see :func:`~snnverify.runtime.cpu.gather.slide_window`)."""
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    layout = aligned_zeros((in_channels, kernel_h * kernel_w * out_channels), weight.dtype)
    layout[:] = weight[:, :, :, ::-1].transpose(1, 2, 3, 0).reshape(layout.shape)
    return layout


def is_depthwise(node: g.Conv2d) -> bool:
    """Whether each output channel reads the one input channel of the same index (groups = C_in
    = C_out)."""
    return node.weight.shape[1] == 1 and node.groups == node.weight.shape[0]


def depthwise_layout(weight: np.ndarray) -> np.ndarray:
    """A depthwise conv's W' [C, 1, kH, kW] as [kH·kW, C]: per tap, the weights of all channels
    side by side, as a channels-last spike map holds a position's inputs (see
    :func:`~snnverify.runtime.cpu.events.depthwise_if_kernel`)."""
    channels = weight.shape[0]
    layout = aligned_zeros((weight.shape[2] * weight.shape[3], channels), weight.dtype)
    layout[:] = weight.reshape(channels, -1).T
    return layout


def packed_layout(weight: np.ndarray, stride: int, pack: int) -> np.ndarray:
    """W' [C_out, C_in, kH, kW] as rows (ky·span + d)·C_in + c of ``pack``·C_out lanes, span =
    (pack − 1)·s + kW: lane j·C_out + o holds W'[o, c, ky, d − j·s], or 0 where d − j·s is not a
    kernel column — the weights an input at column x0 + d sends to output positions ox0 + j (x0
    = ox0·s − p) (see :func:`~snnverify.runtime.cpu.gather.gather_packed`)."""
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    span = (pack - 1) * stride + kernel_w
    lanes = np.zeros((kernel_h, span, in_channels, pack, out_channels), weight.dtype)
    for j in range(pack):
        for kx in range(kernel_w):
            lanes[:, j * stride + kx, :, j, :] = weight[:, :, :, kx].transpose(2, 1, 0)
    layout = aligned_zeros((kernel_h * span * in_channels, pack * out_channels), weight.dtype)
    layout[:] = lanes.reshape(layout.shape)
    return layout


def events_layout(weight: np.ndarray, node: g.Conv2d) -> np.ndarray:
    """W' [C_out, C_in/g, kH, kW] as [g, P·kH·kW·C_in/g], blocks of output channels one after the
    other: a group's channels, zero-padded to P = :func:`padded_channels`, go in blocks of
    :data:`WIDE` then :data:`NARROW` lanes, and a block holds rows (ky·kW + kx)·C_in/g + c of
    its lane count — the weights one spike of input channel c sends through tap (ky, kx). A
    block is contiguous, so that the caches hold it while the gathers read it: with the blocks
    interleaved in each row, 2 KB apart at 512 channels, a block's rows would fall into a small
    part of the cache sets and evict each other."""
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    groups = node.groups
    group_out = out_channels // groups
    padded = padded_channels(group_out)
    lanes = np.zeros((groups, padded, kernel_h, kernel_w, group_in), weight.dtype)
    lanes[:, :group_out] = weight.reshape(groups, group_out, group_in, kernel_h, kernel_w).transpose(0, 1, 3, 4, 2)
    taps = kernel_h * kernel_w * group_in  # rows of a block
    layout = aligned_zeros((groups, padded * taps), weight.dtype)
    for index in range(block_count(padded)):  # the kernels' own block order
        start, wide, _ = block(index, padded, padded)
        width = WIDE if wide else NARROW
        rows = lanes[:, start : start + width].reshape(groups, width, taps).transpose(0, 2, 1)
        layout[:, start * taps : (start + width) * taps] = rows.reshape(groups, -1)
    return layout


def aligned_zeros(shape, dtype, alignment: int = 64) -> np.ndarray:
    """np.zeros whose data starts on a cache line: a row of 16 float32 is then one cache line,
    not two (numpy aligns to 16 bytes; a vector load that spans two lines is slower)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)
