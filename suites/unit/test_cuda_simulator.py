"""Shared memory under the CUDA simulator behaves as on a GPU: every thread of a block that
declares a shared array gets the same one. numba-cuda's simulator creates it when the first
thread reaches the declaration, and two threads that both arrive before it is stored get two
arrays (the conv kernel then sums uninitialised memory: a flaky run with outputs of 7e7 where 0
was due). snnverify.runtime.cuda makes that creation atomic."""

import threading
import time

import numba
import numpy as np
from numba.cuda.simulator.kernelapi import FakeCUDAShared

import snnverify.runtime.cuda  # noqa: F401  (installs the atomic creation)


def test_threads_declaring_a_shared_array_at_once_get_one_array(monkeypatch):
    """The race made certain: creating the array sleeps (releasing the GIL), so every thread
    reaches the declaration before the first array is stored."""
    shared, create = FakeCUDAShared(0), np.empty

    def slow_create(*args, **kwargs):
        time.sleep(0.01)
        return create(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_create)
    start, arrays = threading.Barrier(8), []

    def declare():
        start.wait()
        arrays.append(shared.array(4, numba.int64))  # one declaration (source line) for all threads

    threads = [threading.Thread(target=declare) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(arrays) == 8
    assert len({id(array) for array in arrays}) == 1, f"{len({id(a) for a in arrays})} arrays for one declaration"


def test_two_declarations_get_two_arrays():
    """Atomic creation keeps the simulator's key, the declaring line: two lines, two arrays."""
    shared = FakeCUDAShared(0)
    first = shared.array(4, numba.float32)
    second = shared.array(4, numba.float32)
    assert first is not second and first.dtype == np.float32 and first.shape == (4,)
    assert shared.array(4, numba.float32) is not first  # a third line
