"""The public Hypothesis strategies keep the bounds they take and reach the cases they promise."""

from hypothesis import given, settings
from hypothesis import strategies as st

from snnverify.graph import multiply_accumulates
from snnverify.runtime.cpu import CPU_KERNELS
from snnverify.runtime.plan import build_plan, execute
from snnverify.strategies import spiking_graphs, timesteps
from suites.property.test_backends import SIMULATOR_WORK


@given(st.integers(1, 100).flatmap(lambda most: st.tuples(st.just(most), timesteps(most))))
def test_timesteps_stay_within_their_bound(bound_and_steps):
    most, steps = bound_and_steps
    assert 1 <= steps <= most


@settings(max_examples=40)
@given(spiking_graphs(dyadic=False, wide=True, max_size=3, max_timesteps=3, max_blocks=1, max_work=20_000))
def test_generated_runs_stay_within_max_work(case):
    """A dense pass's multiply-accumulates times batch and T: what the CUDA simulator's time grows with."""
    assert multiply_accumulates(case.graph) * len(case.x) * case.timesteps <= 20_000


def test_generated_graphs_reach_burst_layers_their_readers_and_full_bursts():
    """The backend property tests exercise burst neurons only if the graphs they draw have them:
    at the size of the cpu-vs-gpu tests (``max_work``), burst layers read by a conv, a pool, a
    residual merge (one absorbed by a fused IF layer among them), a flatten and a linear layer,
    which fire several spikes in one step, and B spikes (a full burst)."""
    seen = dict.fromkeys(["Conv2d", "AvgPool2d", "Add", "Flatten", "Linear", "fused merge", "several spikes",
                          "full burst"], False)

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(spiking_graphs(max_work=SIMULATOR_WORK))
    def collect(case):
        graph, plan = case.graph, build_plan(case.graph)
        bursts = {layer.name: layer.max_spikes for layer in graph.neuron_layers if layer.max_spikes > 1}
        for source, reader in graph.edges:
            if source in bursts:
                seen[type(graph.nodes[reader]).__name__] = True
        seen["fused merge"] |= any(fusion.residual in bursts for fusion in plan.fusions.values())
        if bursts:
            spikes = execute(plan, CPU_KERNELS, case.x, case.timesteps, record=True)[2]
            seen["several spikes"] |= any(spikes[name].max() > 1 for name in bursts)
            seen["full burst"] |= any(spikes[name].max() == burst for name, burst in bursts.items())

    collect()
    assert all(seen.values()), seen
