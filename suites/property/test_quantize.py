"""Integer mode's fidelity: every quantised weight and amplitude is its float value rounded to
the nearest integer at one scale per array (so it lies within half a last bit of it), every
graph the float backends run quantises — merges that read an IF layer both directly and
through a conv included — and the spikes' agreement with the float network is measured."""

import numpy as np
from hypothesis import event, given, settings

import snnverify
from snnverify import graph as g
from snnverify.api import SNN
from snnverify.runtime.plan import build_plan
from snnverify.runtime.quantize import split_amplitude
from snnverify.strategies import spiking_graphs

from .test_backends import compare, quantized


def within_half_a_last_bit(integer: np.ndarray, real: np.ndarray, what: str) -> None:
    """integer = rint(real·s) for one scale s > 0 of the whole array: |integer − real·s| ≤ 1/2
    for every element. Each element bounds s to an interval; they must share a point."""
    integer, real = integer.astype(np.float64).ravel(), real.astype(np.float64).ravel()
    assert np.all(integer[real == 0] == 0), f"{what}: a zero became nonzero"
    integer, real = integer[real != 0], real[real != 0]
    if not len(real):
        return
    ends = np.stack([(integer - 0.5) / real, (integer + 0.5) / real])
    low, high = max(ends.min(axis=0).max(), 0.0), ends.max(axis=0).min()
    assert low <= high * (1 + 1e-12), f"{what}: no one scale rounds every value to its integer (s in [{low}, {high}])"


def float_reference(float_graph: g.SpikingGraph, integer_graph: g.SpikingGraph) -> g.SpikingGraph:
    """The float graph as quantize laid it out: split IF layers' amplitudes taken into the
    weights of their conv and linear readers."""
    split = {name.removesuffix(".amplitude") for name in integer_graph.nodes if name.endswith(".amplitude")}
    return split_amplitude(float_graph, split) if split else float_graph


@settings(max_examples=100)
@given(spiking_graphs(dyadic=False, max_size=12, max_timesteps=4))
def test_every_weight_and_amplitude_is_the_float_one_rounded_to_nearest(case):
    integer = quantized(case)
    reference = float_reference(case.graph, integer)
    if reference is not case.graph:
        event("an IF layer's amplitude split")
    assert set(integer.nodes) == set(reference.nodes)
    for name, node in integer.nodes.items():
        if isinstance(node, (g.Conv2d, g.Linear)):
            within_half_a_last_bit(node.weight, reference.nodes[name].weight, f"{name} weights")
        elif isinstance(node, g.IF):
            within_half_a_last_bit(node.output_amplitude, reference.nodes[name].output_amplitude,
                                   f"{name} amplitudes")


def test_a_merge_reading_an_if_layer_directly_and_through_a_conv_quantises():
    """c = IF(conv2(b) + a + b), b = IF(conv1(a)): one amplitude per IF layer cannot serve the
    merge and the conv that reaches it again. Integer mode splits both a and b and runs, with
    the same spikes on the torch reference and the cpu backend."""
    rng = np.random.default_rng(0)
    weight = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    threshold = lambda: (rng.random(3) + 0.5).astype(np.float32)  # noqa: E731
    nodes = [g.Input("input", shape=(2, 4, 4)), g.Conv2d("conv0", weight=weight(3, 2, 3, 3), padding=1),
             g.IF("a", threshold=threshold()), g.Conv2d("conv1", weight=weight(3, 3, 3, 3), padding=1),
             g.IF("b", threshold=threshold()), g.Conv2d("conv2", weight=weight(3, 3, 3, 3), padding=1),
             g.Add("add"), g.IF("c", threshold=threshold()), g.Flatten("flat"), g.Linear("fc", weight=weight(4, 48)),
             g.Output("output")]
    inputs = {"input": [], "conv0": ["input"], "a": ["conv0"], "conv1": ["a"], "b": ["conv1"], "conv2": ["b"],
              "add": ["conv2", "a", "b"], "c": ["add"], "flat": ["c"], "fc": ["flat"], "output": ["fc"]}
    graph = g.SpikingGraph({node.name: node for node in nodes}, inputs)
    integer = snnverify.quantize(SNN(graph, 8)).graph
    assert {"a.amplitude", "b.amplitude"} <= set(integer.nodes)
    assert integer.inputs["add"] == ["conv2", "a.amplitude", "b.amplitude"] and integer.inputs["conv2"] == ["b"]
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    runs = [snnverify.simulate(SNN(integer, 8, target=target), x, record=True) for target in ("torch", "cpu")]
    for name in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name])


@settings(max_examples=50)
@given(spiking_graphs(dyadic=False, max_size=12, max_timesteps=16))
def test_integer_spikes_agree_with_the_float_network(comparison_log, case):
    """Measured, not asserted: quantisation changes the network, and how often a spike flips is
    what this records (per layer, in the comparison summary)."""
    integer = quantized(case)
    float_run = snnverify.simulate(SNN(case.graph, case.timesteps, target="cpu"), case.x, record=True)
    integer_run = snnverify.simulate(SNN(integer, case.timesteps, target="cpu"), case.x, record=True)
    # the split amplitude nodes are no IF layers: both runs record the same layers
    compare(comparison_log, "float vs integer, cpu (non-dyadic, measured)", float_run, integer_run, exact=False)


def test_resnet18_whose_first_merge_would_run_away_quantises(comparison_log):
    """cifar_resnet18, calibrated with random weights: at its first strided merge the IF input
    would have to move beyond SCALE_LIMIT at once. That layer is split (its amplitude read
    through ``<layer>.amplitude``), not the graph refused, and the integer network fires alike
    on torch and cpu. The merges that read an amplitude node are fused, the node read as the
    graded spike map it is, so this comparison covers that path of the cpu kernel."""
    from snnverify.jobs.speed import SHAPES, converted

    _, graph = converted("cifar_resnet18")
    integer = snnverify.quantize(SNN(graph, 2, target="cpu"))
    amplitude_nodes = {name for name in integer.graph.nodes if name.endswith(".amplitude")}
    assert amplitude_nodes
    plan = build_plan(integer.graph)
    graded = {op.name for op in plan.ops if op.amplitude is not None and not isinstance(op.node, g.IF)}
    fused_shortcuts = {f.residual for f in plan.fusions.values() if f.shortcut_input}
    assert graded == amplitude_nodes and amplitude_nodes <= fused_shortcuts
    x = np.random.default_rng(0).standard_normal((1, *SHAPES["cifar_resnet18"])).astype(np.float32)
    compare(comparison_log, "torch vs cpu, integer (cifar_resnet18)",
            snnverify.simulate(SNN(integer.graph, 2, target="torch"), x, record=True),
            snnverify.simulate(integer, x, record=True))
