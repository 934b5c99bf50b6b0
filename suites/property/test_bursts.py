"""Burst IF neurons (``max_spikes`` B > 1) on the kernel backends.

Per step v ← v + I[t], then B times: if v ≥ θ, v ← v − θ and s ← s + 1. The cpu and gpu
backends make those comparisons and subtractions in the reference's order, so their counts are
the torch reference's, bit for bit (float32 where every sum is exact, and integer graphs); the
readers of a burst layer — a conv, a linear layer, a pool, a residual merge, the output — take
its graded map a·s, each value one product of the count and the amplitude. Recorded spikes are
the counts (uint8), and a run's spike count is their sum.
"""


import numpy as np
import pytest
from hypothesis import event, given, settings

import snnverify
from snnverify import graph as g
from snnverify.api import SNN
from snnverify.runtime.plan import build_plan, channels_last_currents, execute, spike_maps_read_fused
from snnverify.strategies import if_drives, spiking_graphs

from .test_backends import SIMULATOR_WORK, UNFUSED, compare, quantized
from .test_fusion import by_name, dense_plan
from .test_if_identity import expected_count

TARGETS = ("torch", "cpu", "gpu")


def runs(graph: g.SpikingGraph, x: np.ndarray, steps: int) -> dict[str, snnverify.runtime.RunResult]:
    return {target: SNN(graph, steps, target=target).run(x, steps, record=True) for target in TARGETS}


def assert_identical(results: dict) -> None:
    """Every backend's output, spikes (values and dtype: :func:`~snnverify.graph.spike_dtype`)
    and spike counts (the sum of the recorded spikes) are the first backend's."""
    (first, reference), *others = results.items()
    for name, spikes in reference.spikes.items():
        assert reference.spike_counts[name] == spikes.sum(dtype=np.int64), name
    for target, result in others:
        np.testing.assert_array_equal(result.output, reference.output, err_msg=f"{target} vs {first}")
        assert result.spike_counts == reference.spike_counts, f"{target} vs {first}"
        assert list(result.spikes) == list(reference.spikes)
        for name, spikes in result.spikes.items():
            assert spikes.dtype == reference.spikes[name].dtype, f"{target}: {name}"
            np.testing.assert_array_equal(spikes, reference.spikes[name], err_msg=f"{target} vs {first}: {name}")


def single_layer(theta: np.ndarray, burst: int) -> g.SpikingGraph:
    """Input (n,) → IF → Output: the input current drives the IF layer, the output reads its
    graded map a·s directly."""
    nodes = [g.Input("input", shape=(len(theta),)), g.IF("if", threshold=theta, max_spikes=burst), g.Output("output")]
    return g.SpikingGraph({node.name: node for node in nodes}, {"if": ["input"], "output": ["if"]})


@pytest.mark.parametrize("burst", [2, 8, g.MAX_BURST])
@pytest.mark.parametrize("integer", [False, True])
def test_a_saturated_burst_layer_fires_b_spikes_every_step(burst, integer):
    """Currents of B·θ and more: B spikes at every step, the counts at the top of their range
    (255 for B = MAX_BURST, the largest a uint8 holds), and the output the graded map B·θ."""
    theta = np.array([2, 4, 8], np.int64) if integer else np.array([0.5, 1.0, 0.375], np.float32)
    graph = single_layer(theta, burst)
    assert graph.integer == integer
    x = (burst * theta * np.array([[1.0], [1.5], [8.0]])).astype(np.float32)  # batch 3
    steps = 5
    results = runs(graph, x, steps)
    assert_identical(results)
    spikes = results["cpu"].spikes["if"]
    assert spikes.dtype == np.uint8 and spikes.shape == (steps, 3, 3)
    assert (spikes == burst).all()
    assert results["cpu"].spike_counts == {"if": burst * steps * x.size}
    np.testing.assert_array_equal(results["cpu"].output, np.broadcast_to(burst * theta, x.shape).astype(np.float32))


@pytest.mark.parametrize("integer", [False, True])
def test_a_tie_at_the_kth_comparison_fires(integer):
    """I = (k − 1/2)·θ, k = 1 … B + 1 (B = 4), so v = θ/2 + I lands exactly on k·θ at the first
    step: the k-th comparison meets v = θ and fires, min(k, B) spikes; one unit u below, k − 1.
    At k = B + 1 the B-th subtraction leaves v = θ, a spike the step has no comparison left
    for. The second step: v = (k − 1/2)·θ fires k − 1 (v = (B + 3/2)·θ at k = B + 1: B), and
    v = (k + 1/2)·θ − 2u fires min(k, B)."""
    burst, unit = 4, (1 if integer else 2.0**-10)
    theta = 8 if integer else 1.0  # u < θ/4: v = (k + 1/2)·θ − 2u stays above k·θ
    ks = np.arange(1, burst + 2)
    on_tie = (ks - 0.5) * theta
    x = np.concatenate([on_tie, on_tie - unit]).astype(np.float32)[None]
    thresholds = np.full(x.shape[1], theta, np.int64 if integer else np.float32)
    results = runs(single_layer(thresholds, burst), x, 2)
    assert_identical(results)
    first, second = results["cpu"].spikes["if"][:, 0]
    capped = np.minimum(ks, burst)
    np.testing.assert_array_equal(first, np.concatenate([capped, ks - 1]))
    np.testing.assert_array_equal(second, np.concatenate([np.minimum(ks - 1, burst), capped]))


@settings(max_examples=40, deadline=None)
@given(if_drives(max_neurons=8, max_timesteps=16))
def test_drives_fire_alike_on_every_backend_and_as_the_closed_form(drive):
    """:func:`~snnverify.strategies.if_drives`: exact ties (at any of a burst's comparisons),
    saturation and silence; every backend fires the reference's spikes at every step, and each
    neuron clip(floor(z·T/θ + 1/2), 0, B·T) in all."""
    x = drive.z[None].astype(np.float32)
    results = runs(single_layer(drive.theta.astype(np.float32), drive.max_spikes), x, drive.timesteps)
    assert_identical(results)
    totals = results["cpu"].spikes["if"].sum(axis=0, dtype=np.int64)[0]
    expected = [expected_count(z, t, drive.timesteps, drive.max_spikes) for z, t in zip(drive.z, drive.theta)]
    np.testing.assert_array_equal(totals, expected)
    event(f"B {'= 1' if drive.max_spikes == 1 else '> 1'}")


def reader_graph(integer: bool, head: str, seed: int = 0) -> g.SpikingGraph:
    """A burst layer ``if0`` (B = 3) read by a conv, by a two-input merge that the fused kernel
    absorbs (``if2 = IF(conv_b(if1) + if0)``: its graded map a residual current) and by a pool
    (an average pool; a sum pool in integer mode, as quantize makes them); the conv of that
    pooled map feeds a second burst layer ``if3`` (B = 2), merged with a pooled binary map; a
    third burst layer ``if4`` (B = 5) is read by a linear layer (``head`` "linear") or by the
    output itself ("output"). Weights are multiples of 1/8 (integers in integer mode): every sum
    is exact, so the torch reference fires the same spikes, ties included."""
    rng = np.random.default_rng(seed)

    def weights(*shape):
        values = rng.integers(-8, 9, shape)
        return values.astype(np.int64) if integer else (values / 8).astype(np.float32)

    def thresholds(*values):
        return np.array(values, np.int64) * 2 if integer else np.array(values, np.float32) / 4

    pool = g.SumPool2d if integer else g.AvgPool2d
    nodes = [g.Input("input", shape=(2, 6, 6)), g.Conv2d("stem", weight=weights(4, 2, 3, 3), padding=1),
             g.IF("if0", threshold=thresholds(1, 2, 3, 1), max_spikes=3),
             g.Conv2d("conv_a", weight=weights(4, 4, 3, 3), padding=1, bias=weights(4)),
             g.IF("if1", threshold=thresholds(2, 2, 1, 3)),
             g.Conv2d("conv_b", weight=weights(4, 4, 3, 3), padding=1), g.Add("add1"),
             g.IF("if2", threshold=thresholds(1, 1, 2, 2)),
             pool("pool0", kernel_size=2, stride=2), g.Conv2d("conv_p", weight=weights(4, 4, 1, 1)),
             g.IF("if3", threshold=thresholds(1, 3, 2, 1), max_spikes=2),
             pool("pool2", kernel_size=2, stride=2), g.Add("add2"), g.Flatten("flat"),
             g.Linear("fc1", weight=weights(5, 36), bias=weights(5)),
             g.IF("if4", threshold=thresholds(1, 2, 1, 2, 3), max_spikes=5)]
    inputs = {"input": [], "stem": ["input"], "if0": ["stem"], "conv_a": ["if0"], "if1": ["conv_a"],
              "conv_b": ["if1"], "add1": ["conv_b", "if0"], "if2": ["add1"], "pool0": ["if0"], "conv_p": ["pool0"],
              "if3": ["conv_p"], "pool2": ["if2"], "add2": ["pool2", "if3"], "flat": ["add2"], "fc1": ["flat"],
              "if4": ["fc1"]}
    if head == "linear":
        nodes.append(g.Linear("fc2", weight=weights(3, 5)))
        inputs["fc2"] = ["if4"]
    nodes.append(g.Output("output"))
    inputs["output"] = [nodes[-2].name]
    return g.SpikingGraph({node.name: node for node in nodes}, inputs)


@pytest.mark.parametrize("head", ["linear", "output"])
@pytest.mark.parametrize("integer", [False, True])
def test_burst_layers_feed_a_conv_a_pool_a_merge_a_linear_layer_and_the_output(comparison_log, integer, head):
    """:func:`reader_graph` on torch, cpu and gpu, and on the cpu's unfused dense kernels:
    bit-identical spikes, counts and output; the plan reads each burst layer as a graded map
    (no events, never fused, bounded by B·max|a|), fuses the merge that adds one, and has the
    conv of one write its currents channels-last for the binary layer a fused conv reads."""
    graph = reader_graph(integer, head)
    plan = build_plan(graph)
    amplitude = {layer.name: float(np.abs(layer.output_amplitude).max()) for layer in graph.neuron_layers}
    for reader, source, area in (("conv_a", "if0", 1), ("conv_p", "if0", 4 if integer else 1)):
        op = by_name(plan, reader)
        assert not op.events and op.sparse and op.input_peak == area * 3 * amplitude[source], reader
        np.testing.assert_array_equal(op.weight, graph.nodes[reader].weight)  # W, the amplitude not folded in
    assert by_name(plan, "conv_b").events  # a binary layer's reader stays event-driven
    assert set(plan.fusions) == {"if2"} and plan.fusions["if2"].residual == "if0"
    assert spike_maps_read_fused(plan) == {"if1"}
    assert channels_last_currents(plan) == {"conv_a"}  # the sums of a burst map, in the order if1 writes
    x = np.random.default_rng(1).integers(-8, 17, (2, 2, 6, 6)).astype(np.float32) / (1 if integer else 8)
    steps = 6
    results = runs(graph, x, steps)
    assert_identical(results)
    spikes = results["cpu"].spikes
    for layer in graph.neuron_layers:  # none silent, no burst layer only binary or saturated throughout
        assert spikes[layer.name].dtype == g.spike_dtype(layer)
        assert 0 < spikes[layer.name].mean() < layer.max_spikes, layer.name
        assert layer.max_spikes == 1 or spikes[layer.name].max() > 1, layer.name
    unfused = execute(dense_plan(graph), UNFUSED, x, steps, record=True)
    compare(comparison_log, "cpu vs cpu unfused dense, burst readers", (results["cpu"].output, spikes),
            unfused[::2])


@pytest.mark.parametrize("value", [0, g.MAX_BURST + 1, 2.0, True, "2"])
def test_a_burst_size_outside_one_to_max_burst_is_refused_by_name(value):
    with pytest.raises(ValueError, match=r"node 'if0' \(IF\): max_spikes must be an integer in \[1, 255\]"):
        g.IF("if0", threshold=[1.0], max_spikes=value)


def test_burst_layers_are_normative_and_foreign_semantics_in_one_are_refused():
    """The plan and quantize take burst layers; foreign semantics in a burst layer are refused
    by name as in a binary one."""
    graph = single_layer(np.ones(2, np.float32), 3)
    g.require_normative(graph, "the plan")
    build_plan(graph)
    leaky = graph.with_nodes({"if": g.replace(graph.nodes["if"], leak=np.full(2, 0.5, np.float32))})
    with pytest.raises(ValueError, match="IF layer 'if' sets leak"):
        build_plan(leaky)


@settings(max_examples=30, deadline=None)
@given(spiking_graphs(dyadic=False, max_work=SIMULATOR_WORK))
def test_integer_graphs_with_bursts_fire_alike_on_cpu_gpu_and_torch(comparison_log, case):
    """Random integer graphs with burst layers (quantize bounds every sum with B·max|a| per
    spike map). Exact integer arithmetic: every backend's counts and output are torch's."""
    graph = quantized(case)
    event(f"burst layers: {sum(layer.max_spikes > 1 for layer in graph.neuron_layers)}")
    results = runs(graph, case.x, case.timesteps)
    assert_identical(results)
    for target in ("cpu", "gpu"):
        compare(comparison_log, f"torch vs {target}, integer with bursts",
                (results["torch"].output, results["torch"].spikes),
                (results[target].output, results[target].spikes))
