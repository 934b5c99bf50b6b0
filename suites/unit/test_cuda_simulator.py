"""The CUDA simulator runs a block's threads as greenlets (snnverify.runtime.cuda): barriers,
shared memory, early returns and errors behave as on a GPU."""

import numpy as np
import pytest
from numba import cuda

import snnverify.runtime.cuda  # noqa: F401  (installs the block runner)

BLOCKS, THREADS = 3, 8


@cuda.jit
def _read_the_neighbours_write(buffer, out):
    """Each thread writes its slot of global memory, waits at the barrier, reads the next slot."""
    tid, block = cuda.threadIdx.x, cuda.blockIdx.x
    base = block * cuda.blockDim.x
    buffer[base + tid] = base + tid + 1
    cuda.syncthreads()
    out[base + tid] = buffer[base + (tid + 1) % cuda.blockDim.x]


def test_a_barrier_orders_every_threads_write_before_any_read():
    """Without the barrier, thread 0 would read slot 1 before thread 1 wrote it (still 0)."""
    buffer, out = np.zeros(BLOCKS * THREADS, np.int64), np.zeros(BLOCKS * THREADS, np.int64)
    _read_the_neighbours_write[BLOCKS, THREADS](buffer, out)
    slots = np.arange(BLOCKS * THREADS)
    expected = (slots // THREADS) * THREADS + (slots % THREADS + 1) % THREADS + 1
    np.testing.assert_array_equal(out, expected)


@cuda.jit
def _sum_through_shared_memory(out):
    shared = cuda.shared.array(THREADS, np.int64)
    tid = cuda.threadIdx.x
    shared[tid] = tid + 10 * cuda.blockIdx.x
    cuda.syncthreads()
    if tid == 0:
        total = 0
        for i in range(THREADS):
            total += shared[i]
        out[cuda.blockIdx.x] = total


def test_the_threads_of_a_block_share_one_array_per_declaration():
    out = np.zeros(BLOCKS, np.int64)
    _sum_through_shared_memory[BLOCKS, THREADS](out)
    np.testing.assert_array_equal(out, [sum(range(THREADS)) + 10 * THREADS * b for b in range(BLOCKS)])


@cuda.jit
def _half_the_block_returns_first(buffer, out):
    tid = cuda.threadIdx.x
    if tid >= THREADS // 2:
        return
    buffer[tid] = tid + 1
    cuda.syncthreads()
    out[tid] = buffer[(tid + 1) % (THREADS // 2)]


def test_a_thread_that_returns_leaves_the_block_and_the_others_pass_the_barrier():
    buffer, out = np.zeros(THREADS, np.int64), np.full(THREADS, -1, np.int64)
    _half_the_block_returns_first[1, THREADS](buffer, out)
    np.testing.assert_array_equal(out, [2, 3, 4, 1] + [-1] * (THREADS // 2))


@cuda.jit
def _count_at_the_barrier(out):
    tid = cuda.threadIdx.x
    out[tid] = cuda.syncthreads_count(tid % 3 == 0)


def test_syncthreads_count_counts_the_whole_block():
    out = np.zeros(THREADS, np.int64)
    _count_at_the_barrier[1, THREADS](out)
    assert (out == len(range(0, THREADS, 3))).all(), out


@cuda.jit
def _thread_3_of_block_1_reads_past_the_end(small, out):
    tid, block = cuda.threadIdx.x, cuda.blockIdx.x
    cuda.syncthreads()
    out[block * cuda.blockDim.x + tid] = small[tid + 10] if (tid == 3 and block == 1) else 1


def test_an_error_names_the_thread_and_block_and_the_next_launch_runs_clean():
    with pytest.raises(IndexError) as raised:
        _thread_3_of_block_1_reads_past_the_end[BLOCKS, THREADS](np.zeros(4, np.int64), np.zeros(BLOCKS * THREADS))
    assert "in CUDA thread [3, 0, 0] of block [1, 0, 0]" in raised.value.__notes__
    test_a_barrier_orders_every_threads_write_before_any_read()  # no thread of the failed launch lingers
