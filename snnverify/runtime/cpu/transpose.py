"""Spike maps between the graph's channels-first order [N, C·H·W] and the channels-last order
[N, H·W·C] in which the fused kernels write and read them (the channels of a position adjacent)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from snnverify.runtime import buffers


@njit(parallel=True, cache=True)
def transpose_rows_kernel(source, out):
    """out[n, a, b] = source[n, b, a] for every row n."""
    for n in prange(source.shape[0]):
        for a in range(source.shape[2]):
            for b in range(source.shape[1]):
                out[n, a, b] = source[n, b, a]


def transposed(array, height: int, width: int):
    """Each row of ``array`` [N, height·width], read as a height × width matrix, transposed."""
    rows = array.shape[0]
    out = buffers.empty((rows, width, height), array.dtype)
    transpose_rows_kernel(np.ascontiguousarray(array).reshape(rows, height, width), out)
    return out.reshape(rows, -1)


def to_channels_first(array, shape):
    """A channels-last map [N, H·W·C] (a fused kernel's spikes) as [N, C·H·W]; shape (C, H, W)."""
    return transposed(array, shape[1] * shape[2], shape[0])


def to_channels_last(array, shape):
    """A map [N, C·H·W] as [N, H·W·C]; shape (C, H, W)."""
    return transposed(array, shape[0], shape[1] * shape[2])

