"""The public Hypothesis strategies keep the bounds they take."""

from hypothesis import given, settings
from hypothesis import strategies as st

from snnverify.graph import multiply_accumulates
from snnverify.strategies import spiking_graphs, timesteps


@given(st.integers(1, 100).flatmap(lambda most: st.tuples(st.just(most), timesteps(most))))
def test_timesteps_stay_within_their_bound(bound_and_steps):
    most, steps = bound_and_steps
    assert 1 <= steps <= most


@settings(max_examples=40)
@given(spiking_graphs(dyadic=False, wide=True, max_size=3, max_timesteps=3, max_blocks=1, max_work=20_000))
def test_generated_runs_stay_within_max_work(case):
    """A dense pass's multiply-accumulates times batch and T: what the CUDA simulator's time grows with."""
    assert multiply_accumulates(case.graph) * len(case.x) * case.timesteps <= 20_000
