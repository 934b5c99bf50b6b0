"""A CPU kernel's parallel loop calls its worker through the address of the worker compiled for
the call's argument types (snnverify.runtime.cpu.parallel)."""

import numpy as np
import pytest
from numba import njit, prange

from snnverify.runtime.cpu.parallel import call_worker, run_parallel


@njit
def _doubling_worker(values, out, workers, worker):
    """out[i] = 2·values[i] for i = worker, worker + workers, …; a negative value is an error."""
    for i in range(worker, out.shape[0], workers):
        if values[i] < 0:
            raise ValueError("negative value")
        out[i] = values[i] * 2


@njit(parallel=True)
def _doubling_workers(address, values, out, workers):
    failed = np.empty(workers, np.bool_)
    for worker in prange(workers):
        failed[worker] = call_worker(address, (values, out, workers, np.int64(worker)))
    return failed


@pytest.mark.parametrize("workers", [1, 3])
def test_each_argument_type_runs_the_worker_compiled_for_it(workers):
    """Three signatures of one kernel, interleaved: a worker compiled for other types would read
    int32 values as int64 or float64 bits as integers."""
    for dtype in (np.int64, np.float64, np.int32, np.int64, np.float64):
        values = np.arange(1, 8, dtype=dtype) * dtype(3)
        out = np.zeros_like(values)
        run_parallel(_doubling_workers, _doubling_worker, values, out, workers)
        np.testing.assert_array_equal(out, 2 * values)
        assert out.dtype == dtype


def test_an_error_in_a_worker_is_raised_by_the_kernel():
    values = np.array([1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="negative value"):
        run_parallel(_doubling_workers, _doubling_worker, values, np.zeros_like(values), 2)


@njit
def _once_failing_worker(trigger, workers, worker):
    """Raises on the first call after ``trigger[0]`` is set, then clears it."""
    if trigger[0]:
        trigger[0] = False
        raise ValueError("transient failure")


@njit(parallel=True)
def _once_failing_workers(address, trigger, workers):
    failed = np.empty(workers, np.bool_)
    for worker in prange(workers):
        failed[worker] = call_worker(address, (trigger, workers, np.int64(worker)))
    return failed


def test_a_worker_that_fails_only_in_parallel_is_still_an_error():
    with pytest.raises(RuntimeError, match="_once_failing_worker: parallel worker 0 failed, but not when run again"):
        run_parallel(_once_failing_workers, _once_failing_worker, np.array([True]), 1)
