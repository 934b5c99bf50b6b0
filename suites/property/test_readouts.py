"""A run of T steps read out at h ≤ T returns what a run of h steps returns, bit for bit: the
first steps of a run do not depend on how many follow, and each readout sums the output current
over t < h in the order a run of h steps does. Exact on cpu, gpu, loihi2_sim and integer graphs;
on torch in float32 where every sum is exact (dyadic graphs)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import snnverify
from snnverify.api import SNN
from snnverify.strategies import spiking_graphs
from suites.property.test_backends import quantized

SIMULATOR_WORK = 30_000  # multiply-accumulates per run for the CUDA simulator (see test_backends)


def check_readouts(graph, target, x, timesteps, horizons):
    snn = SNN(graph, timesteps, target=target)
    result = snn.run(x, timesteps, horizons=horizons)
    assert sorted(result.readouts) == sorted(set(horizons))
    for h in horizons:
        np.testing.assert_array_equal(result.readouts[h], snnverify.simulate(snn, x, timesteps=h),
                                      err_msg=f"{target}: readout at h={h} of a run of T={timesteps}")
    assert np.array_equal(result.output, snnverify.simulate(snn, x, timesteps=timesteps))


def horizons_of(data, timesteps):
    """1 and T themselves included often: the first step, and the readout equal to the output."""
    return data.draw(st.lists(st.sampled_from([1, timesteps]) | st.integers(1, timesteps), min_size=1, max_size=4))


@settings(max_examples=25, deadline=None)
@given(spiking_graphs(dyadic=False, max_size=8, max_timesteps=12), st.data())
def test_readouts_equal_shorter_runs_float32(case, data):
    check_readouts(case.graph, "cpu", case.x, case.timesteps, horizons_of(data, case.timesteps))


@settings(max_examples=25, deadline=None)
@given(spiking_graphs(dyadic=True, max_size=8, max_timesteps=12), st.data())
def test_readouts_equal_shorter_runs_torch_where_sums_are_exact(case, data):
    """torch sums float32 in its own order, which may change with the number of rows (T·B): on
    arbitrary weights a readout may differ from a shorter run in the last bit (seen: a Linear of
    3 outputs, 1 ulp). On dyadic graphs every sum is exact, so nothing may differ."""
    check_readouts(case.graph, "torch", case.x, case.timesteps, horizons_of(data, case.timesteps))


@settings(max_examples=12, deadline=None)
@given(spiking_graphs(dyadic=False, max_timesteps=6, max_work=SIMULATOR_WORK), st.data())
def test_readouts_equal_shorter_runs_gpu(case, data):
    check_readouts(case.graph, "gpu", case.x, case.timesteps, horizons_of(data, case.timesteps))


@settings(max_examples=15, deadline=None)
@given(spiking_graphs(dyadic=False, max_size=6, max_timesteps=10), st.data())
def test_readouts_equal_shorter_runs_integer(case, data):
    graph = quantized(case)
    horizons = horizons_of(data, case.timesteps)
    for target in ("torch", "cpu"):
        check_readouts(graph, target, case.x, case.timesteps, horizons)


@settings(max_examples=4, deadline=None)
@given(st.integers(1, 12), st.data())
def test_readouts_equal_shorter_runs_loihi2(digits_case, timesteps, data):
    """On the chip simulator, with the converted digits network (the graphs it maps)."""
    x = next(iter(digits_case.test_loader))[0][:16]
    check_readouts(digits_case.snn.graph, "loihi2_sim", x, timesteps, horizons_of(data, timesteps))


def test_accuracy_over_time_is_evaluate_at_each_T(digits_case):
    snn = digits_case.snn
    snnverify.compile(snn, "cpu")
    curve = snnverify.accuracy_over_time(snn, digits_case.test_loader, [8, 2, 5])
    assert list(curve) == [2, 5, 8]
    assert curve == {t: snnverify.evaluate(snn, digits_case.test_loader, timesteps=t) for t in (2, 5, 8)}
