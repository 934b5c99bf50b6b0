"""The single-layer identity: an IF layer driven by a constant current z for T steps emits
exactly clip(floor(z·T/θ + 1/2), 0, T) spikes — the QCFS activation with L = T — and a burst
layer of up to B spikes per step clip(floor(z·T/θ + 1/2), 0, B·T)."""

from fractions import Fraction

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snnverify import graph as g
from snnverify import simulate
from snnverify.api import SNN
from snnverify.convert.qcfs import QCFS
from snnverify.strategies import if_drives


def expected_count(z: float, theta: float, steps: int, burst: int = 1) -> int:
    """clip(floor(z·T/θ + 1/2), 0, B·T) in exact rational arithmetic."""
    value = Fraction(z) * steps / Fraction(theta) + Fraction(1, 2)
    return min(max(value.numerator // value.denominator, 0), burst * steps)


def single_if_layer(theta: np.ndarray, steps: int, burst: int = 1) -> SNN:
    """Input (n,) → IF → Output: the input current drives the IF layer directly."""
    n = len(theta)
    nodes = {
        "input": g.Input("input", shape=(n,)),
        "if": g.IF("if", threshold=theta, max_spikes=burst),
        "output": g.Output("output"),
    }
    return SNN(g.SpikingGraph(nodes, {"if": ["input"], "output": ["if"]}), steps)


@given(if_drives())
def test_if_layer_spike_count_is_exact(drive):
    snn = single_if_layer(drive.theta, drive.timesteps, drive.max_spikes)
    _, spikes = simulate(snn, drive.z[None].astype(np.float32), record=True)
    assert spikes["if"].dtype == (bool if drive.max_spikes == 1 else np.uint8)
    assert spikes["if"].max(initial=0) <= drive.max_spikes
    counts = spikes["if"].sum(axis=0, dtype=np.int64)[0]
    expected = [expected_count(z, t, drive.timesteps, drive.max_spikes) for z, t in zip(drive.z, drive.theta)]
    np.testing.assert_array_equal(counts, expected)


@given(if_drives())
def test_drives_reach_exact_ties(drive):
    """The strategy is only useful if it reaches ties; this checks that the tie branch is exact."""
    ties = [(Fraction(z) * drive.timesteps / Fraction(t) + Fraction(1, 2)).denominator == 1
            for z, t in zip(drive.z, drive.theta)]
    # every drawn drive is dyadic, so a tie is exact in float32 as well
    assert all(np.float32(z) == z for z in drive.z)
    if any(ties):
        snn = single_if_layer(drive.theta, drive.timesteps, drive.max_spikes)
        _, spikes = simulate(snn, drive.z[None].astype(np.float32), record=True)
        for i in np.flatnonzero(ties):
            assert spikes["if"][:, 0, i].sum(dtype=np.int64) == expected_count(drive.z[i], drive.theta[i],
                                                                                drive.timesteps, drive.max_spikes)


def test_strategy_reaches_ties_saturation_silence_and_t1():
    seen = {"tie": False, "saturate": False, "silent": False, "t1": False, "burst tie": False,
            "burst saturate": False}

    @settings(max_examples=200, derandomize=True, database=None)
    @given(if_drives())
    def collect(drive):
        for z, t in zip(drive.z, drive.theta):
            value = Fraction(z) * drive.timesteps / Fraction(t) + Fraction(1, 2)
            tie = value.denominator == 1 and 0 < value < drive.max_spikes * drive.timesteps + 1
            seen["tie"] |= tie
            seen["saturate"] |= z > drive.max_spikes * t
            seen["silent"] |= z <= 0
            seen["burst tie"] |= tie and drive.max_spikes > 1 and value > drive.timesteps
            seen["burst saturate"] |= drive.max_spikes > 1 and z > drive.max_spikes * t
        seen["t1"] |= drive.timesteps == 1

    collect()
    assert all(seen.values()), seen


@given(if_drives())
def test_qcfs_activation_equals_if_rate_with_l_equal_t(drive):
    """QCFS(λ = B·θ, L = B·T)(z) = θ·(spike count)/T: the ANN the converter trains is the SNN's
    rate (a burst layer converted with θ = λ/B resolves B·T levels in T steps)."""
    burst = drive.max_spikes
    qcfs = QCFS(torch.tensor(burst * drive.theta, dtype=torch.float64), burst * drive.timesteps).double()
    activation = qcfs(torch.tensor(drive.z[None], dtype=torch.float64))[0].detach().numpy()
    expected = [t * expected_count(z, t, drive.timesteps, burst) / drive.timesteps
                for z, t in zip(drive.z, drive.theta)]
    np.testing.assert_allclose(activation, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(st.integers(1, 200), st.floats(0.05, 10), st.data())
def test_arbitrary_floats_deviate_only_at_rounding_ties(steps, theta, data):
    """With non-dyadic values float32 rounding may flip a count by one, but only where
    z·T/θ + 1/2 is within float32 rounding of an integer; elsewhere the identity is exact."""
    z = np.array(data.draw(st.lists(st.floats(-1, 2 * theta), min_size=1, max_size=64)), dtype=np.float32)
    theta32 = np.float32(theta)
    snn = single_if_layer(np.full(len(z), theta32), steps)
    _, spikes = simulate(snn, z[None], record=True)
    counts = spikes["if"].sum(axis=0)[0]
    for zi, count in zip(z, counts):
        exact = expected_count(float(zi), float(theta32), steps)
        value = float(zi) * steps / float(theta32) + 0.5
        if count != exact:
            assert abs(count - exact) == 1
            assert abs(value - round(value)) <= steps * 4 * np.finfo(np.float32).eps * max(1.0, abs(value))
