"""Spikes are bit-identical across backends, at every layer and every step.

* cpu vs gpu (the CUDA kernels; under NUMBA_ENABLE_CUDASIM=1 on CPU-only machines), in
  float32 and in integer mode: both accumulate in one fixed order, so nothing may differ.
* torch vs cpu in integer mode: exact integer arithmetic, so nothing may differ.
* torch vs cpu in float32: torch sums in its own order; where that rounds differently at a
  threshold tie a spike can flip. The rate and the layers where flips occur are measured and
  reported in the test summary; on dyadic graphs, where every sum is exact, it must be zero.
Every test records how many neuron-timestep comparisons it made.
"""

import dataclasses
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import snnverify
from snnverify import graph as g
from snnverify.api import SNN
from snnverify.runtime.cpu import layouts
from snnverify.runtime.cpu.kernels import CPU_KERNELS
from snnverify.runtime.plan import build_plan, execute
from snnverify.runtime.quantize import ExactRange, gain
from snnverify.strategies import spiking_graphs

#: Multiply-accumulates per run of a generated graph that the cpu-vs-gpu tests allow: the CUDA
#: simulator interprets every one in Python, so a case stays within about a second (the
#: wide-layer test allows 4×). Without the bound, a rare draw of a few 80-channel convs ran for
#: over ten minutes.
SIMULATOR_WORK = 100_000

#: the cpu kernels without the fused IF(conv) kernel: every conv, then every IF layer, on its own
UNFUSED = dataclasses.replace(CPU_KERNELS, conv2d_if=None)


def spikes_on(graph, target, x, steps):
    snn = SNN(graph, steps, target=target)
    return snnverify.simulate(snn, x, record=True)


#: the bit budgets tried in turn, narrowest first, where quantize refuses a threshold as finer
#: than its input's resolution (its advice: more bits); each one after the drawn amplitude width
#: only where it is wider
WIDER_BUDGETS = [{"weight_bits": 8, "amplitude_bits": 16}, {"weight_bits": 16, "amplitude_bits": 16},
                 {"weight_bits": 16, "amplitude_bits": 24}]


def quantized(case, with_budget: bool = False, amplitude_bits: int = 16):
    """The integer-mode graph of a generated case (and, ``with_budget``, the bit budget it took).
    quantize takes every generated graph; one whose threshold is finer than the resolution of
    its input current at the budget drawn is refused, by name, with the advice to raise the bit
    budget (the limitation pinned in suites/unit/test_api.py): such a case is quantised with the
    narrowest of the wider budgets that holds it, never dropped. (Not simply the widest: wider
    integers make larger sums. A draw of 4-bit amplitudes, a burst layer of threshold 10^4, and
    a linear layer of 216 inputs after its pools, whose IF layer's threshold of 0.25 was too fine
    at 8 weight bits, went at 16 weight and 24 amplitude bits beyond 2^53 at T = 2, where the
    integer arithmetic stops being exact, and ExactRange refused the run.)"""
    snn = SNN(case.graph, case.timesteps)
    budgets = [{"weight_bits": 8, "amplitude_bits": amplitude_bits}]
    budgets += [b for b in WIDER_BUDGETS if b != budgets[0] and b["amplitude_bits"] >= amplitude_bits]
    for k, budget in enumerate(budgets):
        try:
            integer = snnverify.quantize(snn, **budget).graph
            break
        except ValueError as error:
            if "rounds to below 2; raise input_scale or weight_bits" not in str(error) or k == len(budgets) - 1:
                raise
    if k:
        event(f"quantised with {budget['weight_bits']} weight and {budget['amplitude_bits']} amplitude bits")
    return (integer, budget) if with_budget else integer


def compare(comparison_log, check, a, b, exact=True):
    """Record the comparison of two recordings; assert identity when ``exact``."""
    (out_a, spikes_a), (out_b, spikes_b) = a, b
    assert list(spikes_a) == list(spikes_b)
    where = {name: int((spikes_a[name] != spikes_b[name]).sum()) for name in spikes_a}
    compared = sum(s.size for s in spikes_a.values())
    comparison_log.record(check, compared, sum(where.values()), {k: v for k, v in where.items() if v})
    if exact:
        assert sum(where.values()) == 0, f"{check}: spike mismatches per layer {where}"
        np.testing.assert_array_equal(out_a, out_b)


@settings(max_examples=80)
@given(spiking_graphs(max_work=SIMULATOR_WORK))
def test_cpu_and_gpu_spikes_identical_float32(comparison_log, case):
    compare(comparison_log, "cpu vs gpu, float32", spikes_on(case.graph, "cpu", case.x, case.timesteps),
            spikes_on(case.graph, "gpu", case.x, case.timesteps))


@settings(max_examples=120)
@given(spiking_graphs(dyadic=False, max_work=SIMULATOR_WORK))
def test_cpu_and_gpu_spikes_identical_float32_arbitrary_weights(comparison_log, case):
    compare(comparison_log, "cpu vs gpu, float32 (non-dyadic)", spikes_on(case.graph, "cpu", case.x, case.timesteps),
            spikes_on(case.graph, "gpu", case.x, case.timesteps))


@settings(max_examples=50)
@given(spiking_graphs(dyadic=False, max_work=SIMULATOR_WORK))
def test_cpu_and_gpu_spikes_identical_integer(comparison_log, case):
    graph = quantized(case)
    compare(comparison_log, "cpu vs gpu, integer", spikes_on(graph, "cpu", case.x, case.timesteps),
            spikes_on(graph, "gpu", case.x, case.timesteps))


@settings(max_examples=60)
@given(spiking_graphs(dyadic=False, max_size=12, max_timesteps=16))
def test_torch_and_cpu_spikes_identical_integer(comparison_log, case):
    graph = quantized(case)
    compare(comparison_log, "torch vs cpu, integer", spikes_on(graph, "torch", case.x, case.timesteps),
            spikes_on(graph, "cpu", case.x, case.timesteps))


@settings(max_examples=60)
@given(spiking_graphs(dyadic=True, max_size=12, max_timesteps=16))
def test_torch_and_cpu_identical_when_every_sum_is_exact(comparison_log, case):
    compare(comparison_log, "torch vs cpu, float32 (dyadic: exact sums)",
            spikes_on(case.graph, "torch", case.x, case.timesteps), spikes_on(case.graph, "cpu", case.x, case.timesteps))


@settings(max_examples=60)
@given(spiking_graphs(dyadic=False, max_size=12, max_timesteps=16))
def test_torch_vs_cpu_float32_deviation_is_measured(comparison_log, case):
    """Not asserted away: the flips are counted per layer and reported in the summary. What is
    asserted is only that the two runs compare the same layers and shapes."""
    compare(comparison_log, "torch vs cpu, float32 (non-dyadic)", spikes_on(case.graph, "torch", case.x, case.timesteps),
            spikes_on(case.graph, "cpu", case.x, case.timesteps), exact=False)


# Wide layers: 16–80 output channels, where the CPU kernels gather 4 or 2 positions at once
# (16, 32 channels) or use blocks of 16 and 64 channels; the narrow graphs above never reach them.

@settings(max_examples=24, deadline=None)
@given(spiking_graphs(dyadic=False, wide=True, max_size=3, max_timesteps=3, max_blocks=1,
                     max_work=4 * SIMULATOR_WORK))
def test_cpu_and_gpu_spikes_identical_float32_wide_layers(comparison_log, case):
    compare(comparison_log, "cpu vs gpu, float32 (non-dyadic, wide layers)",
            spikes_on(case.graph, "cpu", case.x, case.timesteps), spikes_on(case.graph, "gpu", case.x, case.timesteps))


@settings(max_examples=25)
@given(spiking_graphs(dyadic=False, wide=True, max_size=8, max_timesteps=8))
def test_torch_and_cpu_spikes_identical_integer_wide_layers(comparison_log, case):
    graph = quantized(case)
    compare(comparison_log, "torch vs cpu, integer (wide layers)", spikes_on(graph, "torch", case.x, case.timesteps),
            spikes_on(graph, "cpu", case.x, case.timesteps))


@settings(max_examples=25)
@given(spiking_graphs(dyadic=True, wide=True, max_size=8, max_timesteps=8))
def test_torch_and_cpu_identical_when_every_sum_is_exact_wide_layers(comparison_log, case):
    compare(comparison_log, "torch vs cpu, float32 (dyadic: exact sums, wide layers)",
            spikes_on(case.graph, "torch", case.x, case.timesteps), spikes_on(case.graph, "cpu", case.x, case.timesteps))


def row_types(plan) -> dict[str, str]:
    """Per conv of an integer plan fed by spikes or pooled spikes: the type of the weight rows
    the cpu backend gathers (int16 and int32 rows sum in int32, int64 rows in int64)."""
    return {op.name: CPU_KERNELS.weight_layout(op).blocks.dtype.name for op in plan.ops
            if op.sparse and isinstance(op.node, g.Conv2d)}


@settings(max_examples=80)
@given(spiking_graphs(dyadic=False, wide=True, max_size=8, max_timesteps=12), st.data())
def test_cpu_integer_spikes_alike_with_narrow_and_wide_accumulators(comparison_log, case, data):
    """The cpu backend gathers an integer conv of spikes or pooled spikes in int32 where every
    output's Σ|W'| times the input's peak fits, from int16 rows where every |W'| fits them too
    (:func:`~snnverify.runtime.cpu.layouts.row_dtype`): spikes and output are those of the same
    plan gathered in int64 throughout, every layer and step, fused and not. The int32 limit is
    drawn among the layers' bounds, the largest |w| of int16 rows among the layers' largest
    weights (or none), and the amplitudes quantised to 16 bits or fewer (so that W' = W·a fits
    int16 rows in more layers): any mix of int16, int32 and int64 layers runs (a fused conv and
    its shortcut in different types included), not only the mix the defaults make."""
    graph = quantized(case, amplitude_bits=data.draw(st.sampled_from([16, 12, 8, 4]), label="amplitude bits"))
    x = np.asarray(case.x)
    ExactRange(graph).check(x, case.timesteps)  # (the run is one the backends take)
    bounds = sorted({gain(op.weight) * op.input_peak for op in build_plan(graph).ops
                     if op.sparse and isinstance(op.node, g.Conv2d)})
    limit = data.draw(st.sampled_from([np.iinfo(np.int32).max, *(b for b in bounds if b < 2**31)]), label="limit")
    largest = sorted({int(np.abs(op.weight).max(initial=0)) for op in build_plan(graph).ops
                      if op.sparse and isinstance(op.node, g.Conv2d)})
    narrow_limit = data.draw(st.sampled_from([np.iinfo(np.int16).max, -1, *(w for w in largest if w < 2**15)]),
                             label="int16 limit")
    row_dtype = layouts.row_dtype
    with mock.patch.object(layouts, "row_dtype", lambda weight, peak: row_dtype(weight, peak, limit, narrow_limit)):
        plan = build_plan(graph)
        types = set(row_types(plan).values())
        event(f"event-driven convs with rows of {', '.join(sorted(types))}" if types else "no event-driven conv")
        narrow = execute(plan, CPU_KERNELS, x, case.timesteps, True)
    with mock.patch.object(layouts, "row_dtype", lambda weight, peak: weight.dtype):
        plan = build_plan(graph)
        assert set(row_types(plan).values()) <= {"int64"}
        wide = execute(plan, CPU_KERNELS, x, case.timesteps, True)
    compare(comparison_log, "cpu integer, int16 and int32 vs int64 accumulators", narrow[::2], wide[::2])


@pytest.mark.parametrize("weight, rows", [(2**15 - 1, "int16"), (2**15, "int32")])
@pytest.mark.parametrize("fused", [True, False])
def test_rows_at_the_edge_of_int16_fire_as_torch_does(weight, rows, fused):
    """A layer of weights ±(2^15 − 1) has int16 rows, one of 2^15 int32 rows (which int16 would
    wrap to −2^15); all of its inputs spike at once, so its gather adds every row, and the
    neurons of positive weights fire at the first step, those of negative ones stay silent, in
    the fused kernel and in the sparse conv that feeds a separate IF layer, as in torch's
    reference."""
    ints = lambda *values: np.array(values, np.int64)  # noqa: E731
    nodes = [g.Input("input", shape=(1, 1, 1)), g.Conv2d("conv0", weight=ints(2, 2, 2).reshape(3, 1, 1, 1)),
             g.IF("if0", threshold=ints(2, 2, 2), amplitude=ints(1, 1, 1)),
             g.Conv2d("conv1", weight=ints(weight, weight, weight, -weight, -weight, -weight).reshape(2, 3, 1, 1)),
             g.IF("if1", threshold=ints(2 * weight, 2)), g.Flatten("flat"), g.Output("output")]
    inputs = {"input": [], "conv0": ["input"], "if0": ["conv0"], "conv1": ["if0"], "if1": ["conv1"],
              "flat": ["if1"], "output": ["flat"]}
    graph = g.SpikingGraph({node.name: node for node in nodes}, inputs)
    plan = build_plan(graph)
    assert row_types(plan) == {"conv1": rows}
    x = np.ones((1, 1, 1, 1), np.float32)
    assert "if1" in plan.fusions
    _, _, spikes, _ = execute(plan, CPU_KERNELS if fused else UNFUSED, x, 2, True)
    expected = spikes_on(graph, "torch", x, 2)[1]
    assert expected["if1"][0].reshape(-1).tolist() == [True, False]
    for name in spikes:
        np.testing.assert_array_equal(spikes[name], expected[name])


@pytest.mark.parametrize("bound, narrow", [(2**31 - 1, True), (2**31, False)])
@pytest.mark.parametrize("fused", [True, False])
def test_a_gather_at_the_edge_of_int32_fires_as_torch_does(bound, narrow, fused):
    """All of a layer's inputs spike at once, so its gather reaches Σ|W'| exactly: at 2^31 − 1
    the cpu backend sums in int32, at 2^31 (which int32 would wrap to −2^31, and the neuron
    would stay silent) in int64. Either way the neuron fires at the first step, as in torch's
    reference, in the fused kernel and in the sparse conv that feeds a separate IF layer."""
    ints = lambda *values: np.array(values, np.int64)  # noqa: E731
    nodes = [g.Input("input", shape=(1, 1, 1)), g.Conv2d("conv0", weight=ints(2, 2).reshape(2, 1, 1, 1)),
             g.IF("if0", threshold=ints(2, 2), amplitude=ints(1, 1)),
             g.Conv2d("conv1", weight=ints(2**30, bound - 2**30).reshape(1, 2, 1, 1)),
             g.IF("if1", threshold=ints(2**31 - 2)), g.Flatten("flat"), g.Output("output")]
    inputs = {"input": [], "conv0": ["input"], "if0": ["conv0"], "conv1": ["if0"], "if1": ["conv1"],
              "flat": ["if1"], "output": ["flat"]}
    graph = g.SpikingGraph({node.name: node for node in nodes}, inputs)
    plan = build_plan(graph)
    assert row_types(plan) == {"conv1": "int32" if narrow else "int64"}
    x = np.ones((1, 1, 1, 1), np.float32)
    assert "if1" in plan.fusions  # run by the fused kernel, unless the table has none
    _, _, spikes, _ = execute(plan, CPU_KERNELS if fused else UNFUSED, x, 2, True)
    expected = spikes_on(graph, "torch", x, 2)[1]
    assert spikes["if1"][0].all() and expected["if1"][0].all()
    for name in spikes:
        np.testing.assert_array_equal(spikes[name], expected[name])


@pytest.mark.parametrize("bound, narrow", [(2**31 - 4, True), (2**31, False)])
def test_a_gather_of_pooled_spikes_at_the_edge_of_int32_fires_as_torch_does(bound, narrow):
    """All four inputs of a 2×2 sum pool spike at once, so each pooled value is 4 and the conv
    that reads them reaches 4·Σ|W| exactly: at 2^31 − 4 the cpu backend gathers in int32, at
    2^31 (which int32 would wrap to −2^31) in int64, the pool's window area counted in the
    bound. Either way the neuron fires at the first step, as in torch's reference."""
    ints = lambda *values: np.array(values, np.int64)  # noqa: E731
    nodes = [g.Input("input", shape=(1, 2, 2)), g.Conv2d("conv0", weight=ints(2, 2).reshape(2, 1, 1, 1)),
             g.IF("if0", threshold=ints(2, 2), amplitude=ints(1, 1)), g.SumPool2d("pool", kernel_size=2, stride=2),
             g.Conv2d("conv1", weight=ints(2**28, bound // 4 - 2**28).reshape(1, 2, 1, 1)),
             g.IF("if1", threshold=ints(2**31 - 4)), g.Flatten("flat"), g.Output("output")]
    inputs = {"input": [], "conv0": ["input"], "if0": ["conv0"], "pool": ["if0"], "conv1": ["pool"],
              "if1": ["conv1"], "flat": ["if1"], "output": ["flat"]}
    graph = g.SpikingGraph({node.name: node for node in nodes}, inputs)
    plan = build_plan(graph)
    assert row_types(plan) == {"conv1": "int32" if narrow else "int64"}
    x = np.ones((1, 1, 2, 2), np.float32)
    _, _, spikes, _ = execute(plan, CPU_KERNELS, x, 2, True)
    expected = spikes_on(graph, "torch", x, 2)[1]
    assert spikes["if1"][0].all() and expected["if1"][0].all()
    for name in spikes:
        np.testing.assert_array_equal(spikes[name], expected[name])
