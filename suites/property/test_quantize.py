"""Integer mode's fidelity: every quantised weight and amplitude is its float value rounded to
the nearest integer at one scale per array (so it lies within half a last bit of it), every
graph the float backends run quantises — merges that read an IF layer both directly and
through a conv included — and the spikes' agreement with the float network is measured."""

import dataclasses

import numpy as np
import pytest
from hypothesis import event, example, given, settings

import snnverify
from snnverify import graph as g
from snnverify.api import SNN
from snnverify.runtime.cpu import CPU_KERNELS
from snnverify.runtime.plan import build_plan, execute
from snnverify.runtime.quantize import ExactRange, gain, laid_out
from snnverify.strategies import IFDrive, if_drives, spiking_graphs

from .test_backends import compare, quantized
from .test_if_identity import expected_count, single_if_layer


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


@settings(max_examples=100)
@given(spiking_graphs(dyadic=False, max_size=12, max_timesteps=4))
def test_every_weight_and_amplitude_is_the_float_one_rounded_to_nearest(case):
    integer, budget = quantized(case, with_budget=True)
    # the float graph as quantize laid it out: merges read IF layers through rescale nodes
    # (weights 1), split layers' amplitudes are in their readers' weights
    reference, _ = laid_out(case.graph, **budget)
    if any(name.endswith(".amplitude") or (".rescale." in name and hasattr(node, "weight") and np.any(node.weight != 1))
           for name, node in reference.nodes.items()):
        event("an IF layer's amplitude split")
    assert set(integer.nodes) == set(reference.nodes)
    for name, node in integer.nodes.items():
        if isinstance(node, (g.Conv2d, g.Linear)):
            within_half_a_last_bit(node.weight, reference.nodes[name].weight, f"{name} weights")
        elif isinstance(node, g.IF):
            within_half_a_last_bit(node.output_amplitude, reference.nodes[name].output_amplitude,
                                   f"{name} amplitudes")


def nested_merge(conv2_gain: float) -> g.SpikingGraph:
    """c = IF(conv2(b) + a + b), b = IF(conv1(a)): the merge reads a and b both directly and
    through convs, so one amplitude per IF layer cannot serve it at its own scale."""
    rng = np.random.default_rng(0)
    weight = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    threshold = lambda: (rng.random(3) + 0.5).astype(np.float32)  # noqa: E731
    nodes = [g.Input("input", shape=(2, 4, 4)), g.Conv2d("conv0", weight=weight(3, 2, 3, 3), padding=1),
             g.IF("a", threshold=threshold()), g.Conv2d("conv1", weight=weight(3, 3, 3, 3), padding=1),
             g.IF("b", threshold=threshold()), g.Conv2d("conv2", weight=conv2_gain * weight(3, 3, 3, 3), padding=1),
             g.Add("add"), g.IF("c", threshold=threshold()), g.Flatten("flat"), g.Linear("fc", weight=weight(4, 48)),
             g.Output("output")]
    inputs = {"input": [], "conv0": ["input"], "a": ["conv0"], "conv1": ["a"], "b": ["conv1"], "conv2": ["b"],
              "add": ["conv2", "a", "b"], "c": ["add"], "flat": ["c"], "fc": ["flat"], "output": ["fc"]}
    return g.SpikingGraph({node.name: node for node in nodes}, inputs)


def fires_alike_on_torch_and_cpu(integer: g.SpikingGraph) -> None:
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32)
    runs = [snnverify.simulate(SNN(integer, 8, target=target), x, record=True) for target in ("torch", "cpu")]
    for name in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name])


def test_a_merge_reading_an_if_layer_directly_and_through_a_conv_quantises():
    """The nested merge quantises with no layer split: the merge reads a and b through rescale
    nodes whose integer weights are powers of two (exact), while conv1 and conv2 read a's and
    b's own 16-bit amplitudes; torch and cpu fire alike."""
    integer = snnverify.quantize(SNN(nested_merge(1.0), 8)).graph
    assert integer.inputs["add"] == ["conv2", "a.rescale.add", "b.rescale.add"] and integer.inputs["conv2"] == ["b"]
    assert not any(name.endswith(".amplitude") for name in integer.nodes)
    for layer in ("a", "b"):
        factor = integer.nodes[f"{layer}.rescale.add"].weight.ravel()
        assert np.all(factor == factor[0]) and factor[0] >= 1 and np.log2(factor[0]).is_integer()
        amplitude = integer.nodes[layer].output_amplitude
        assert amplitude.max() < 2**16 and len(np.unique(amplitude)) == 3  # per channel, not unit spikes
    fires_alike_on_torch_and_cpu(integer)


def test_a_merge_whose_conv_would_drag_its_input_ever_coarser_splits_that_input():
    """With conv2's weights beyond the 8-bit limit (scale 2^k < 1), each step coarser of b makes
    the merge coarser than b again: the scales never settle. b is split — conv2 reads unit
    spikes with b's amplitudes in its weights, the merge reads b through a node holding them —
    and the graph still quantises and fires alike on torch and cpu."""
    graph = nested_merge(1000.0)
    assert float(np.abs(graph.nodes["conv2"].weight).max()) > 127
    integer = snnverify.quantize(SNN(graph, 8)).graph
    assert len(np.unique(integer.nodes["b"].output_amplitude)) == 1  # unit spikes, at b's scale
    reference, _ = laid_out(graph)
    np.testing.assert_allclose(reference.nodes["b.rescale.add"].weight.ravel(), graph.nodes["b"].output_amplitude)
    fires_alike_on_torch_and_cpu(integer)


def test_a_merge_reading_a_pooled_if_layer_rescales_the_pooled_map_without_a_conv():
    """a → pool → conv1 → b → conv2 → add(conv2, pool): the merge reads a through its pool, so its
    rescale node scales the pooled map by 2^m. The kernel backends run it as one product per
    value (``scale_channels``), no conv (with that path removed the cpu backend runs a conv and
    this fails); conv1 reads the pool itself, a's 16-bit amplitudes summed in int32 (from rows of
    int16, which hold this conv's weights); torch, cpu and gpu fire alike."""
    rng = np.random.default_rng(2)
    weight = lambda *shape: (rng.standard_normal(shape) * 0.5).astype(np.float32)  # noqa: E731
    threshold = lambda: (rng.random(3) + 0.5).astype(np.float32)  # noqa: E731
    nodes = [g.Input("input", shape=(2, 8, 8)), g.Conv2d("conv0", weight=weight(3, 2, 3, 3), padding=1),
             g.IF("a", threshold=threshold()), g.AvgPool2d("pool", kernel_size=2, stride=2),
             g.Conv2d("conv1", weight=weight(3, 3, 3, 3), padding=1), g.IF("b", threshold=threshold()),
             g.Conv2d("conv2", weight=weight(3, 3, 3, 3), padding=1), g.Add("add"), g.IF("c", threshold=threshold()),
             g.Flatten("flat"), g.Linear("fc", weight=weight(4, 48)), g.Output("output")]
    inputs = {"input": [], "conv0": ["input"], "a": ["conv0"], "pool": ["a"], "conv1": ["pool"], "b": ["conv1"],
              "conv2": ["b"], "add": ["conv2", "pool"], "c": ["add"], "flat": ["c"], "fc": ["flat"],
              "output": ["fc"]}
    integer = snnverify.quantize(SNN(g.SpikingGraph({n.name: n for n in nodes}, inputs), 8)).graph
    assert integer.inputs["pool.rescale.add"] == ["pool"] and integer.inputs["conv1"] == ["pool"]
    assert integer.inputs["add"] == ["conv2", "pool.rescale.add"]
    factor = integer.nodes["pool.rescale.add"].weight.ravel()
    assert np.all(factor == factor[0]) and factor[0] >= 1 and np.log2(factor[0]).is_integer()
    assert integer.nodes["a"].output_amplitude.max() < 2**16
    conv1 = next(op for op in build_plan(integer).ops if op.name == "conv1")
    assert CPU_KERNELS.weight_layout(conv1).blocks.dtype == np.int16
    convs_run = []

    def recording_conv2d(x, weight, bias, node, out_shape, sparse, **layout):
        convs_run.append(node.name)
        return CPU_KERNELS.conv2d(x, weight, bias, node, out_shape, sparse, **layout)

    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    recording = dataclasses.replace(CPU_KERNELS, conv2d=recording_conv2d)
    _, _, spikes, _ = execute(build_plan(integer), recording, x, 8, True)
    assert "conv0" in convs_run and "pool.rescale.add" not in convs_run
    runs = [snnverify.simulate(SNN(integer, 8, target=target), x, record=True)[1] for target in ("torch", "gpu")]
    for name in spikes:
        for run in runs:
            np.testing.assert_array_equal(run[name], spikes[name])


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


def test_resnet18_merges_read_their_if_inputs_through_fused_rescale_nodes(comparison_log):
    """cifar_resnet18, calibrated with random weights: at its first strided merge the IF input
    would have had to move beyond SCALE_LIMIT at once, were it re-expressed at the merge's
    scale. Every merge reads its IF input through a rescale node instead; those merges are
    fused, the node read as the graded spike map it is (this comparison covers that path of
    the cpu kernel), and the integer network fires alike on torch and cpu."""
    from snnverify.jobs.speed import SHAPES, converted

    _, graph = converted("cifar_resnet18")
    integer = snnverify.quantize(SNN(graph, 2, target="cpu"))
    rescale_nodes = {name for name in integer.graph.nodes if ".rescale." in name}
    identity_shortcuts = {f"{source}.rescale.{name}" for name, node in graph.nodes.items() if isinstance(node, g.Add)
                          for source in graph.inputs[name] if isinstance(graph.nodes[source], g.IF)}
    assert rescale_nodes == identity_shortcuts and len(identity_shortcuts) == 5
    plan = build_plan(integer.graph)
    graded = {op.name for op in plan.ops if op.amplitude is not None and not isinstance(op.node, g.IF)}
    fused_shortcuts = {f.residual for f in plan.fusions.values() if f.shortcut_input}
    assert graded == rescale_nodes and rescale_nodes <= fused_shortcuts
    x = np.random.default_rng(0).standard_normal((1, *SHAPES["cifar_resnet18"])).astype(np.float32)
    compare(comparison_log, "torch vs cpu, integer (cifar_resnet18)",
            snnverify.simulate(SNN(integer.graph, 2, target="torch"), x, record=True),
            snnverify.simulate(integer, x, record=True))


# Burst layers (max_spikes B > 1): a step's graded spike is a·s with s ≤ B, and every bound on a
# sum that reads it counts B·max|a|.


@example(IFDrive(z=np.array([5.0, 0.5625, -1.0]), theta=np.array([0.5, 0.5, 0.5]), timesteps=4, max_spikes=3))
@given(if_drives())
def test_integer_burst_layer_count_is_the_identity_up_to_b_t(drive):
    """Quantised at an input scale that holds every drawn current and threshold exactly
    (dyadic, at most 8 fractional bits), an IF layer fires clip(floor(z·T/θ + 1/2), 0, B·T)
    times in integers — ties and saturation at B·T included (the example: z = 10θ fires B = 3
    every step; z = 1.125θ ties at 9/2 + 1/2 = 5 over T = 4; z < 0 stays silent)."""
    snn = snnverify.quantize(single_if_layer(drive.theta, drive.timesteps, drive.max_spikes), input_scale=2.0**8)
    layer = snn.graph.nodes["if"]
    np.testing.assert_array_equal(layer.threshold, drive.theta * 2**8)  # exact: the integer run is the identity's
    _, spikes = snnverify.simulate(snn, drive.z[None].astype(np.float32), record=True)
    assert spikes["if"].dtype == g.spike_dtype(layer) and spikes["if"].max(initial=0) <= drive.max_spikes
    expected = [expected_count(z, t, drive.timesteps, drive.max_spikes) for z, t in zip(drive.z, drive.theta)]
    np.testing.assert_array_equal(spikes["if"].sum(axis=0, dtype=np.int64)[0], expected)


def amplified(burst: int) -> g.SpikingGraph:
    """Input → IF(θ = 2, a = 2^10, B) → Linear(2^40) → Output, in integers: the Linear layer's
    sum reaches B·2^50, below 2^53 for B ≤ 7 only."""
    ints = lambda *values: np.array(values, np.int64)  # noqa: E731
    nodes = [g.Input("input", shape=(1,)), g.IF("if", threshold=ints(2), amplitude=ints(2**10), max_spikes=burst),
             g.Linear("fc", weight=ints(2**40).reshape(1, 1)), g.Output("output")]
    return g.SpikingGraph({node.name: node for node in nodes}, {"if": ["input"], "fc": ["if"], "output": ["fc"]})


def test_exact_range_counts_b_spikes_per_step():
    """With T = 1, B = 7 runs, every spike of the burst summed exactly (z = 14 = 7θ fires 7:
    the output is 7·2^50); B = 8 may reach 8·2^50 = 2^53 and is refused, naming the Linear
    layer, for any input — the bound is B·max|a|, not max|a| (2^50 for the binary neuron)."""
    x = np.array([[14.0]], np.float32)
    output, spikes = snnverify.simulate(SNN(amplified(7), 1), x, record=True)
    assert spikes["if"][:, 0, 0].tolist() == [7] and output[0, 0] == 7 * 2.0**50
    ExactRange(amplified(1)).check(x, 1)
    for check in (lambda: ExactRange(amplified(8)).check(np.zeros((1, 1), np.float32), 1),
                  lambda: snnverify.simulate(SNN(amplified(8), 1), x)):
        with pytest.raises(ValueError, match=r"value of 'fc' \(Linear\) may reach 9\.01e\+15 .* beyond 2\^53"):
            check()


def gathered(burst: int) -> g.SpikingGraph:
    """conv0 → IF a (B) → conv1 (16 input channels, 3×3, every weight 1) → IF b → fc: conv1's
    integer weights sum to 64·9·16 = 9216 per output, and a's 16-bit amplitudes (46906 at
    most) fit an int32 gather with B = 1 (4.3·10^8), not with B = 8 (3.5·10^9)."""
    rng = np.random.default_rng(3)
    nodes = [g.Input("input", shape=(2, 4, 4)),
             g.Conv2d("conv0", weight=rng.standard_normal((16, 2, 1, 1)).astype(np.float32)),
             g.IF("a", threshold=(rng.random(16) + 0.5).astype(np.float32), max_spikes=burst),
             g.Conv2d("conv1", weight=np.ones((2, 16, 3, 3), np.float32), padding=1),
             g.IF("b", threshold=np.ones(2, np.float32)), g.Flatten("flat"),
             g.Linear("fc", weight=rng.standard_normal((3, 32)).astype(np.float32)), g.Output("output")]
    inputs = {"conv0": ["input"], "a": ["conv0"], "conv1": ["a"], "b": ["conv1"], "flat": ["b"], "fc": ["flat"],
              "output": ["fc"]}
    return g.SpikingGraph({node.name: node for node in nodes}, inputs)


def test_int32_gather_bound_counts_b_spikes():
    """A conv reading a burst layer gathers at most gain(W)·B·max|a| per output: quantize keeps
    that within int32 by coarsening the amplitudes (by 2 here, still above 12 bits) where B
    spikes would overflow it; the binary layer keeps its 16-bit amplitudes."""
    peaks = {}
    for burst in (1, 8):
        integer = snnverify.quantize(SNN(gathered(burst), 4)).graph
        peaks[burst] = int(integer.nodes["a"].output_amplitude.max())
        assert gain(integer.nodes["conv1"].weight) == 9216
        assert 9216 * burst * peaks[burst] <= np.iinfo(np.int32).max
        x = np.random.default_rng(4).standard_normal((2, 2, 4, 4)).astype(np.float32)
        _, spikes = snnverify.simulate(SNN(integer, 4), x, record=True)
        assert spikes["a"].dtype == g.spike_dtype(integer.nodes["a"]) and spikes["a"].max() <= burst
    assert peaks[1] == 46906 and 2**11 <= peaks[8] < peaks[1] and abs(2 * peaks[8] - peaks[1]) <= 1
