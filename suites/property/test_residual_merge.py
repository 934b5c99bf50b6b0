"""Residual merges sum currents: on nested residual graphs whose spike counts have a closed
form (snnverify.strategies.residual_count_graphs), every neuron's count is exactly right."""

import numpy as np
from hypothesis import given, settings

from snnverify import graph as g
from snnverify import simulate
from snnverify.api import SNN
from snnverify.strategies import residual_count_graphs


def analytic_counts(graph: g.SpikingGraph, x: np.ndarray, steps: int):
    """Spike counts per IF layer [batch, features] and the mean output, from total currents.

    Valid when every per-step current into an IF layer lies in [0, θ] (the strategy's
    guarantee): then count = floor(S/θ + 1/2) for total input S. float64 is exact on dyadics."""
    totals, counts = {}, {}
    for name, node in graph.nodes.items():
        sources = [totals[s] for s in graph.inputs[name]]
        if isinstance(node, g.Input):
            totals[name] = x.astype(np.float64) * steps
        elif isinstance(node, g.Linear):
            totals[name] = sources[0] @ node.weight.T.astype(np.float64) + node.bias.astype(np.float64) * steps
        elif isinstance(node, g.Add):
            totals[name] = sum(sources)
        elif isinstance(node, g.IF):
            theta = node.threshold.astype(np.float64)
            counts[name] = np.floor(sources[0] / theta + 0.5)
            totals[name] = counts[name] * theta
        elif isinstance(node, g.Output):
            output = sources[0] / steps
    return counts, output


@settings(max_examples=150)
@given(residual_count_graphs())
def test_nested_residual_spike_counts_match_closed_form(case):
    snn = SNN(case.graph, case.timesteps)
    output, spikes = simulate(snn, case.x, record=True)
    expected, expected_output = analytic_counts(case.graph, case.x, case.timesteps)
    assert set(spikes) == set(expected)
    for name, count in expected.items():
        np.testing.assert_array_equal(spikes[name].sum(axis=0), count, err_msg=f"layer {name}")
    np.testing.assert_allclose(output, expected_output, rtol=1e-6)


def test_residual_strategy_reaches_nesting_multiway_merges_and_silence():
    seen = {"nested": False, "three_way": False, "silent": False, "identity_skip": False, "saturated": False}

    @settings(max_examples=150, derandomize=True, database=None)
    @given(residual_count_graphs())
    def collect(case):
        graph = case.graph
        adds = [n for n, node in graph.nodes.items() if isinstance(node, g.Add)]
        seen["three_way"] |= any(len(graph.inputs[a]) == 3 for a in adds)
        seen["identity_skip"] |= any(isinstance(graph.nodes[s], (g.IF, g.Input)) for a in adds for s in graph.inputs[a])
        # nested: an Add whose input chain contains another Add before reaching the merge's source
        seen["nested"] |= len(adds) >= 2 and any(
            isinstance(graph.nodes[s], g.Linear) and isinstance(graph.nodes[graph.inputs[s][0]], g.IF)
            and graph.inputs[graph.inputs[s][0]] and isinstance(graph.nodes[graph.inputs[graph.inputs[s][0]][0]], g.Add)
            for a in adds for s in graph.inputs[a])
        counts, _ = analytic_counts(graph, case.x, case.timesteps)
        seen["silent"] |= any(c.sum() == 0 for c in counts.values())
        seen["saturated"] |= any((c == case.timesteps).any() for c in counts.values())

    collect()
    assert all(seen.values()), seen
