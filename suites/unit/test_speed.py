"""The work counts that ``snnverify speed`` reports beside its timings, the targets it reads, and
the reference executor's float32 arithmetic on a GPU."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from snnverify import graph as g
from snnverify.graph import multiply_accumulates, synaptic_events
from snnverify.jobs.speed import interleaved_best_times, parse_target
from snnverify.report import runs_on_gpu
from snnverify.runtime.torch_ref import TorchBackend


def conv_graph(conv: g.Conv2d, in_shape) -> g.SpikingGraph:
    channels = in_shape[0]
    nodes = {"in": g.Input("in", shape=in_shape), "stem": g.Conv2d("stem", weight=np.ones((channels, channels, 1, 1))),
             "if": g.IF("if", threshold=np.ones(channels)), conv.name: conv, "flat": g.Flatten("flat"),
             "out": g.Output("out")}
    return g.SpikingGraph(nodes, {"stem": ["in"], "if": ["stem"], conv.name: ["if"], "flat": [conv.name],
                                  "out": ["flat"]})


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_synaptic_events_count_every_spike_tap_that_lands_on_an_output(data):
    """Brute force: a conv with an all-ones kernel over the spike counts sums, at each output,
    the (spike, tap) pairs that reach it; each such pair is an add into C_out / groups channels."""
    groups = data.draw(st.integers(1, 2))
    channels = groups * data.draw(st.integers(1, 2))
    out_channels = groups * data.draw(st.integers(1, 3))
    height, width = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    kernel = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    stride, padding, dilation = ((data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))),
                                 (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))),
                                 (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))))
    span = [dilation[i] * (kernel[i] - 1) + 1 for i in range(2)]
    if height + 2 * padding[0] < span[0] or width + 2 * padding[1] < span[1]:
        return
    conv = g.Conv2d("conv", weight=np.ones((out_channels, channels // groups, *kernel)), stride=stride,
                    padding=padding, dilation=dilation, groups=groups)
    graph = conv_graph(conv, (channels, height, width))
    seed = data.draw(st.integers(0, 2**32 - 1))
    spikes = np.random.default_rng(seed).random((3, 2, channels, height, width)) < 0.4
    counts = torch.from_numpy(spikes.sum(axis=(0, 1, 2)).astype(np.float64))[None, None]
    pairs = F.conv2d(counts, torch.ones(1, 1, *kernel, dtype=torch.float64), stride=stride, padding=padding,
                     dilation=dilation).sum()
    assert synaptic_events(graph, {"if": spikes}) == int(pairs) * (out_channels // groups)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_synaptic_events_behind_pools_count_the_nonzero_pooled_values(data):
    """A conv or linear layer that reads an IF layer through one or two average pools (and
    flattening) is defined on the pooled map: each nonzero pooled value is one event. Brute
    force in torch: the map a·s pooled (zero padding counted), its nonzero values per position
    counted over steps and samples, then every (value, tap) pair that lands on an output as in
    the test above. Silent, saturated (every neuron firing) and burst layers, and a channel of
    amplitude 0 (whose pooled values are all 0), are drawn."""
    channels, height, width = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 8)), data.draw(st.integers(2, 8))
    pools, shape = [], (height, width)
    for k in range(data.draw(st.integers(1, 2))):
        kernel = (data.draw(st.integers(1, min(3, shape[0]))), data.draw(st.integers(1, min(3, shape[1]))))
        stride = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
        padding = (data.draw(st.integers(0, kernel[0] // 2)), data.draw(st.integers(0, kernel[1] // 2)))
        pools.append(g.AvgPool2d(f"pool{k}", kernel_size=kernel, stride=stride, padding=padding))
        shape = pools[-1].output_shape([(channels, *shape)])[1:]
    amplitude = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, -2.0, 3.0]), min_size=channels,
                                            max_size=channels)))
    burst = data.draw(st.sampled_from([1, 3]))
    rate = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    reader = data.draw(st.sampled_from(["conv", "linear"]))
    out_channels = data.draw(st.integers(1, 3))
    nodes = [g.Input("in", shape=(channels, height, width)),
             g.Conv2d("stem", weight=np.ones((channels, channels, 1, 1))),
             g.IF("if", threshold=np.ones(channels), amplitude=amplitude, max_spikes=burst), *pools]
    if reader == "conv":
        nodes.append(g.Conv2d("reader", weight=np.ones((out_channels, channels, 3, 3)), padding=1))
        nodes.append(g.Flatten("flat"))
    else:
        nodes.append(g.Flatten("flat"))
        nodes.append(g.Linear("reader", weight=np.ones((out_channels, channels * shape[0] * shape[1]))))
    nodes.append(g.Output("out"))
    names = [node.name for node in nodes]
    graph = g.SpikingGraph({node.name: node for node in nodes},
                           {name: [names[k - 1]] for k, name in enumerate(names) if k > 0})
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    spikes = (rng.random((3, 2, channels, height, width)) < rate) * rng.integers(1, burst + 1, (3, 2, channels, height,
                                                                                                width))
    spikes = spikes.astype(np.uint8 if burst > 1 else np.bool_)
    values = torch.from_numpy(spikes.reshape(6, channels, height, width) * amplitude[:, None, None])
    for pool in pools:
        values = F.avg_pool2d(values, pool.kernel_size, pool.stride, pool.padding, count_include_pad=True)
    nonzero = (values != 0).sum(dim=0).double()  # [C, H', W']
    if reader == "conv":
        pairs = F.conv2d(nonzero.sum(dim=0)[None, None], torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1).sum()
    else:
        pairs = nonzero.sum()
    assert synaptic_events(graph, {"if": spikes}) == int(pairs) * out_channels


def test_synaptic_events_of_a_linear_layer_and_of_silence():
    nodes = {"in": g.Input("in", shape=(4,)), "fc1": g.Linear("fc1", weight=np.ones((4, 4))),
             "if": g.IF("if", threshold=np.ones(4)), "fc2": g.Linear("fc2", weight=np.ones((3, 4))),
             "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if": ["fc1"], "fc2": ["if"], "out": ["fc2"]})
    spikes = np.zeros((5, 2, 4), bool)
    assert synaptic_events(graph, {"if": spikes}) == 0
    spikes[0, 0, 1] = spikes[3, 1, 2] = True
    assert synaptic_events(graph, {"if": spikes}) == 2 * 3  # fc1 reads the input, not spikes


def test_synaptic_events_count_a_burst_as_one_event():
    """A burst of 3 spikes is one graded value a·3 into each of fc2's 3 outputs: two firing
    neuron-steps are 2·3 operations however many spikes they carry."""
    nodes = {"in": g.Input("in", shape=(4,)), "fc1": g.Linear("fc1", weight=np.ones((4, 4))),
             "if": g.IF("if", threshold=np.ones(4), max_spikes=3), "fc2": g.Linear("fc2", weight=np.ones((3, 4))),
             "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if": ["fc1"], "fc2": ["if"], "out": ["fc2"]})
    spikes = np.zeros((5, 2, 4), np.uint8)
    spikes[0, 0, 1], spikes[3, 1, 2] = 3, 1
    assert synaptic_events(graph, {"if": spikes}) == 2 * 3


def test_multiply_accumulates_of_a_dense_pass():
    conv = g.Conv2d("conv", weight=np.ones((4, 3, 3, 3)), padding=1)
    graph = conv_graph(conv, (3, 5, 5))
    # stem: 3 outputs · 25 positions · 3 inputs; conv: 4 · 25 · (3 · 3 · 3)
    assert multiply_accumulates(graph) == 3 * 25 * 3 + 4 * 25 * 27


def test_interleaved_timing_runs_every_function_each_round():
    calls = []
    times = interleaved_best_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, fill=0)
    # a warm-up round of two calls each, then two rounds of two calls
    assert calls == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] * 2
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())


def test_a_short_function_is_called_until_it_fills_a_round_and_a_long_one_twice():
    calls = []
    interleaved_best_times({"short": lambda: calls.append("short"),
                            "long": lambda: (calls.append("long"), time.sleep(0.03))}, 2, fill=0.05, most_calls=40)
    # a call of nothing fills 0.05 s only past the cap; two 30 ms naps fill it
    assert calls == ["short"] * 2 + ["long"] * 2 + (["short"] * 40 + ["long"] * 2) * 2


def test_interleaved_times_on_the_cpu_clock_leave_out_waiting():
    """A call that sleeps takes wall time but no CPU time: the clock chosen is the one read."""
    nap = {"sleep": lambda: time.sleep(0.02)}
    assert interleaved_best_times(nap, 1, calls=1)["sleep"] >= 0.02
    assert interleaved_best_times(nap, 1, calls=1, clock=time.process_time)["sleep"] < 0.01


def test_speed_targets_name_a_backend_and_a_torch_device():
    assert parse_target("cpu") == ("cpu", None)
    with pytest.raises(ValueError, match="unknown target 'tensorrt' in 'tensorrt:cuda'"):
        parse_target("tensorrt:cuda")
    with pytest.raises(ValueError, match="'torch:abacus'.*'abacus' is not a torch device"):
        parse_target("torch:abacus")
    if torch.cuda.is_available():
        assert parse_target("torch:cuda") == ("torch", "cuda")
    else:  # never a quiet run on the CPU in place of the GPU asked for
        with pytest.raises(ValueError, match="'torch:cuda' needs a CUDA GPU"):
            parse_target("torch:cuda")


def test_the_reference_runs_float32_convolutions_whatever_torch_allows(monkeypatch):
    """cuDNN may round float32 convolutions to TF32 by default; the reference must not."""
    nodes = {"in": g.Input("in", shape=(2,)), "fc": g.Linear("fc", weight=np.ones((2, 2))),
             "if": g.IF("if", threshold=np.ones(2)), "out": g.Output("out")}
    backend = TorchBackend(g.SpikingGraph(nodes, {"fc": ["in"], "if": ["fc"], "out": ["if"]}))
    seen = []
    forward = backend.executor.forward
    monkeypatch.setattr(backend.executor, "forward", lambda *args, **kwargs: (
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)),
        forward(*args, **kwargs))[1])
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        backend.run(torch.ones(1, 2), 2)
        restored = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert seen == [(False, False)]
    assert restored == (True, True)  # what the caller allowed, back after the run


def test_a_row_runs_on_the_gpu_by_its_spelling_alone():
    """Reports are rendered on machines without a GPU: no device check, the spelling decides."""
    assert runs_on_gpu("gpu") and runs_on_gpu("gpu integer") and runs_on_gpu("torch:cuda")
    assert runs_on_gpu("torch:cuda:1 integer")
    assert not runs_on_gpu("torch") and not runs_on_gpu("cpu integer") and not runs_on_gpu("torch:cpu")


def test_speed_times_each_burst_size_on_its_own_conversion():
    """``--max-spikes 1 3``: the same network converted twice, once with binary IF layers and once
    with bursts of up to 3 (θ = λ/3), each timed and counted as its own target."""
    from snnverify.jobs.speed import converted, measure

    _, binary = converted("small_resnet")
    _, burst = converted("small_resnet", max_spikes=3)
    assert {layer.max_spikes for layer in binary.neuron_layers} == {1}
    assert {layer.max_spikes for layer in burst.neuron_layers} == {3}
    for layer in burst.neuron_layers:  # same λ = B·θ: the same calibration of the same weights
        np.testing.assert_allclose(3 * layer.threshold, binary.nodes[layer.name].threshold, rtol=1e-6)
    rows = {row["target"]: row for row in measure("small_resnet", ["torch"], [2], 2, 1, bursts=(1, 3))["snn"]}
    assert set(rows) == {"torch", "torch B3"}
    # up to 3 spikes a step: more spikes per neuron-step than the binary layers, never above 3
    assert rows["torch"]["spike_rate"] < rows["torch B3"]["spike_rate"] <= 3


def test_speed_times_each_amplitude_width_on_its_own_integer_network(monkeypatch):
    """``--integer --amplitude-bits 16 8``: the network quantised once per width, each timed as
    its own target (the default width unnamed)."""
    import snnverify
    from snnverify.jobs.speed import measure

    widths, quantize = [], snnverify.quantize
    monkeypatch.setattr(snnverify, "quantize", lambda snn, **bits: (widths.append(bits["amplitude_bits"]),
                                                                     quantize(snn, **bits))[1])
    rows = {row["target"]: row for row in measure("small_resnet", ["torch"], [2], 2, 1, integer=True,
                                                  amplitude_bits=(16, 8))["snn"]}
    assert set(rows) == {"torch", "torch integer", "torch integer a8"}
    assert widths == [16, 8]
