"""The cpu backend's arrays come from a pool of memory reused from run to run
(:mod:`snnverify.runtime.buffers`). Memory is handed out again only when nothing refers to it:
what a caller holds from one run (recorded spikes, outputs) survives the next run, runs of one
backend in several threads do not write into each other, and a run on reused (dirty) memory
gives what a fresh backend gives."""

import threading

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import snnverify
from snnverify.api import SNN
from snnverify.runtime.buffers import BufferPool, empty, zeros
from snnverify.strategies import spiking_graphs


def test_memory_is_handed_out_again_only_when_no_view_of_it_lives():
    pool = BufferPool()
    with pool.active():
        first = empty((4, 8), np.float32)
        address = first.ctypes.data
        view = first.reshape(-1)[3:]  # a view keeps the memory leased after its array is dropped
        del first
        assert pool.free_bytes == 0
        other = empty((32,), np.float32)
        assert other.ctypes.data != address
        del view
        assert pool.free_bytes == 128
        again = zeros((2, 16), np.int32)  # the same number of bytes, another type: the same memory, zeroed
        assert again.ctypes.data == address and pool.free_bytes == 0 and not again.any()


def test_a_pool_keeps_no_more_free_memory_than_its_capacity():
    pool = BufferPool(capacity_bytes=100)
    with pool.active():
        kept, dropped = empty((10,), np.float64), empty((10,), np.float64)
        del kept
        assert pool.free_bytes == 80
        del dropped  # 160 bytes would exceed the capacity: this block is freed instead
        assert pool.free_bytes == 80


def test_outside_a_run_arrays_are_plain_numpy_arrays():
    assert empty((3,), np.float32).base is None and zeros((3,), np.float32).base is None


def copied(recorded) -> tuple:
    output, spikes = recorded
    return output.copy(), {name: s.copy() for name, s in spikes.items()}


def assert_same(a, b) -> None:
    assert list(a[1]) == list(b[1])
    np.testing.assert_array_equal(a[0], b[0])
    for name in a[1]:
        np.testing.assert_array_equal(a[1][name], b[1][name], err_msg=name)


@settings(max_examples=40, deadline=None)
@given(spiking_graphs(dyadic=False, max_size=10, max_timesteps=8), st.randoms(use_true_random=False))
def test_what_a_run_returns_survives_later_runs_and_reused_memory_changes_nothing(comparison_log, case, random):
    backend = SNN(case.graph, case.timesteps, target="cpu")
    other_x = np.asarray(case.x[::-1] * np.float32(random.uniform(0.5, 2.0)), np.float32)
    held = snnverify.simulate(backend, case.x, record=True)
    expected_held = copied(held)
    assert backend.backend.buffers.free_bytes > 0  # what the run no longer reads is pooled
    second = snnverify.simulate(backend, other_x, record=True)  # on the first run's freed memory
    third = snnverify.simulate(backend, other_x, record=True)
    fresh = snnverify.simulate(SNN(case.graph, case.timesteps, target="cpu"), other_x, record=True)
    assert_same(held, expected_held)
    assert_same(second, fresh)
    assert_same(third, fresh)
    comparison_log.record("cpu on pooled memory vs a fresh cpu backend", 2 * sum(s.size for s in fresh[1].values()), 0)


@settings(max_examples=15, deadline=None)
@given(spiking_graphs(dyadic=False, max_size=10, max_timesteps=8))
def test_runs_of_one_backend_in_several_threads_give_the_runs_one_by_one(comparison_log, case):
    backend = SNN(case.graph, case.timesteps, target="cpu")
    inputs = [np.asarray(case.x * np.float32(scale), np.float32) for scale in (1.0, 0.5, 1.5, 2.0)]
    alone = [copied(snnverify.simulate(backend, x, record=True)) for x in inputs]
    together: list = [None] * len(inputs)

    def run(i: int) -> None:
        together[i] = snnverify.simulate(backend, inputs[i], record=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for a, b in zip(together, alone):
        assert_same(a, b)
    comparison_log.record("cpu runs in threads vs one by one", sum(s.size for a in alone for s in a[1].values()), 0)
