"""The public API: what evaluate, measure_sparsity, simulate and compile return, and the clear
errors they give on bad input."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import snnverify
import snnverify as neurocuda  # the tutorial's spelling must work
from snnverify import graph as g
from snnverify.models import load_checkpoint, small_resnet
from snnverify.runtime.quantize import ExactRange


def tiny_loader(n=10, batch_size=4, shape=(1, 8, 8)):
    return DataLoader(TensorDataset(torch.randn(n, *shape), torch.randint(0, 10, (n,))), batch_size=batch_size)


def test_simulate_records_boolean_spikes_of_every_if_layer(digits_case):
    snn = digits_case.snn
    x, _ = next(iter(digits_case.test_loader))
    output, spikes = snnverify.simulate(snn, x[:5], timesteps=3, record=True)
    assert output.shape == (5, 10) and output.dtype == np.float32
    shapes = snn.graph.shapes
    assert list(spikes) == [layer.name for layer in snn.graph.neuron_layers]
    for name, train in spikes.items():
        assert train.dtype == np.bool_ and train.shape == (3, 5, *shapes[name])
    np.testing.assert_array_equal(snnverify.simulate(snn, x[:5], timesteps=3), output)


def test_measure_sparsity_is_the_fraction_of_silent_neuron_timesteps(digits_case):
    snn = digits_case.snn
    x, y = next(iter(digits_case.test_loader))
    loader = DataLoader(TensorDataset(x[:7], y[:7]), batch_size=3)  # last batch smaller
    _, spikes = snnverify.simulate(snn, x[:7], timesteps=5, record=True)
    silent = sum((~s).sum() for s in spikes.values())
    total = sum(s.size for s in spikes.values())
    assert snnverify.measure_sparsity(snn, loader, timesteps=5) == pytest.approx(silent / total, abs=1e-12)


def test_measure_sparsity_counts_every_spike_of_a_burst():
    """Input (2) → IF(θ = 1, B = 3) → Output, T = 4: currents 2.5 and 0.25 fire 3, 2, 3, 2 and
    0, 1, 0, 0 (v = 0.5 + 2·0.25) — 11 spikes in 8 neuron-steps (counts as uint8), sparsity 1 − 11/8 = −0.375,
    below 0: a burst step carries several spikes, all counted."""
    nodes = {"in": g.Input("in", shape=(2,)), "if": g.IF("if", threshold=np.ones(2, np.float32), max_spikes=3),
             "out": g.Output("out")}
    snn = snnverify.SNN(g.SpikingGraph(nodes, {"if": ["in"], "out": ["if"]}), 4)
    x = torch.tensor([[2.5, 0.25]])
    result = snn.run(x, record=True)
    assert result.spikes["if"].dtype == np.uint8
    assert result.spikes["if"][:, 0].tolist() == [[3, 0], [2, 1], [3, 0], [2, 0]]
    assert result.spike_counts == {"if": 11}
    loader = DataLoader(TensorDataset(x, torch.zeros(1).long()), batch_size=1)
    assert snnverify.measure_sparsity(snn, loader) == 1 - 11 / 8


def test_evaluate_counts_every_sample_with_a_smaller_last_batch(digits_case):
    snn = digits_case.snn
    x, y = next(iter(digits_case.test_loader))
    predictions = snnverify.simulate(snn, x[:10], timesteps=4).argmax(1)
    expected = (predictions == y[:10].numpy()).mean()
    loader = DataLoader(TensorDataset(x[:10], y[:10]), batch_size=4)
    assert snnverify.evaluate(snn, loader, timesteps=4) == pytest.approx(expected)
    # state is reset per batch: batching must not change any prediction
    assert snnverify.evaluate(snn, DataLoader(TensorDataset(x[:10], y[:10]), batch_size=10), timesteps=4) == \
        pytest.approx(expected)


def test_evaluate_an_ann_and_the_tutorial_spelling(digits_case):
    accuracy = neurocuda.evaluate(digits_case.ann, digits_case.test_loader, device="cpu")
    assert 0.8 < accuracy <= 1.0
    neurocuda.compile(digits_case.snn, target="torch")
    assert digits_case.snn.target == "torch"


def test_unknown_target_lists_the_known_ones(digits_case):
    with pytest.raises(ValueError, match=r"unknown target 'tpu'; known targets: .*torch"):
        snnverify.compile(digits_case.snn, target="tpu")
    assert digits_case.snn.target == "torch"  # unchanged


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "8"])
def test_timesteps_below_one_or_not_integer_are_rejected(digits_case, steps):
    x, _ = next(iter(digits_case.test_loader))
    with pytest.raises(ValueError, match="timesteps must be an integer >= 1"):
        snnverify.simulate(digits_case.snn, x[:2], timesteps=steps)
    with pytest.raises(ValueError, match="timesteps must be an integer >= 1"):
        snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=steps)


def test_wrong_input_shape_and_dtype_are_named(digits_case):
    with pytest.raises(ValueError, match=r"expects shape \[batch, 1, 8, 8\], got \[2, 1, 9, 8\]"):
        snnverify.simulate(digits_case.snn, torch.zeros(2, 1, 9, 8))
    with pytest.raises(TypeError, match="must be numeric"):
        snnverify.simulate(digits_case.snn, torch.zeros(2, 1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        snnverify.simulate(digits_case.snn, torch.full((2, 1, 8, 8), float("nan")))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_name_the_parameter(bad):
    model = small_resnet(10, 1)
    with torch.no_grad():
        model.layers[1][0].conv2.weight[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"'layers\.1\.0\.conv2\.weight' contains a non-finite value"):
        snnverify.convert(model, tiny_loader(), timesteps=4)


def test_empty_calibration_loader_is_an_error():
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0).long()), batch_size=4)
    with pytest.raises(ValueError, match="calibration loader is empty"):
        snnverify.convert(small_resnet(10, 1), empty, timesteps=4)


def test_unknown_conversion_option_is_named():
    with pytest.raises(TypeError, match="unknown conversion options \\['qcfs_epoch'\\]"):
        snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=4, qcfs_epoch=2)


@pytest.mark.parametrize("option, value", [("levels", 0), ("finetune_epochs", -1), ("qcfs_lr", 0.0),
                                           ("qcfs_optimizer", "rmsprop")])
def test_invalid_conversion_option_values_are_named(option, value):
    with pytest.raises(ValueError, match=option):
        snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=4, **{option: value})


def test_checkpoint_that_does_not_match_the_model(tmp_path):
    other = nn.Sequential(nn.Linear(3, 4))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    keys = len(small_resnet(10, 1).state_dict())
    message = rf"other\.pt.*does not match ResNet: {keys} missing keys \(conv1.weight, .*2 unexpected keys \(0.weight, 0.bias\)"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(small_resnet(10, 1), tmp_path / "other.pt")
    wrong_classes = small_resnet(5, 1)
    torch.save(wrong_classes.state_dict(), tmp_path / "five.pt")
    with pytest.raises(ValueError, match=r"five\.pt.*size mismatch for fc\.weight"):
        load_checkpoint(small_resnet(10, 1), tmp_path / "five.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt' is not a PyTorch state dict file"):
        load_checkpoint(small_resnet(10, 1), tmp_path / "junk.pt")


def test_checkpoint_round_trip_restores_the_model(tmp_path):
    torch.manual_seed(1)
    model = small_resnet(10, 1)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    restored = load_checkpoint(small_resnet(10, 1), tmp_path / "m.pt")
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name


def test_graph_validation_names_node_and_value():
    weight = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"node 'fc' .*expects input shape \(3,\), got \(4,\)"):
        g.SpikingGraph({"in": g.Input("in", shape=(4,)), "fc": g.Linear("fc", weight=weight),
                        "out": g.Output("out")}, {"fc": ["in"], "out": ["fc"]})
    with pytest.raises(ValueError, match=r"node 'n' \(IF\): threshold must be > 0, got -1.0"):
        g.IF("n", threshold=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"node 'fc': weight contains a non-finite value \(nan\)"):
        g.Linear("fc", weight=np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="does not come before it"):
        g.SpikingGraph({"in": g.Input("in", shape=(2,)), "a": g.Add("a"), "out": g.Output("out")},
                       {"a": ["in", "out"], "out": ["a"]})


def test_quantize_refuses_a_threshold_range_beyond_the_bit_budget():
    """if2 emits graded spikes of 10^4 into if4, whose threshold is 2^-12: a ratio of 4·10^7 that
    16 amplitude bits and 8 weight bits cannot hold, so if4's integer threshold would round to 0."""
    nodes = {"in": g.Input("in", shape=(1,)), "fc1": g.Linear("fc1", weight=np.ones((1, 1), np.float32)),
             "if2": g.IF("if2", threshold=[1e4]), "fc3": g.Linear("fc3", weight=np.ones((1, 1), np.float32)),
             "if4": g.IF("if4", threshold=[2.0**-12]), "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if2": ["fc1"], "fc3": ["if2"], "if4": ["fc3"], "out": ["if4"]})
    advice = r"rounds to below 2; raise input_scale or weight_bits \(or amplitude_bits, where spikes feed it\)"
    with pytest.raises(ValueError, match=r"cannot quantise IF layer 'if4': threshold 0.000244141 .*" + advice):
        snnverify.quantize(snnverify.SNN(graph, 4))


def test_a_wider_bit_budget_can_leave_the_exact_range():
    """The bit budget cuts both ways. fc3 reads 4096 burst neurons (up to 4 spikes a step) of
    threshold 10^4 into if4, whose threshold is 0.25: at 4 amplitude bits if2's scale is 2^-10, so
    if4's integer threshold would round below 2, and quantize refuses it; at 8 weight and 16
    amplitude bits the graph quantises and its run stays exact; at 16 and 24 if4's membrane bound
    (T·Σ|W'|·4·max a) reaches 1.1·10^16 at T = 4, beyond 2^53, and ExactRange refuses the run
    by name, advising narrower widths among its remedies."""
    features = 4096
    nodes = {"in": g.Input("in", shape=(1,)), "fc1": g.Linear("fc1", weight=np.ones((features, 1), np.float32)),
             "if2": g.IF("if2", threshold=np.full(features, 1e4, np.float32), max_spikes=4),
             "fc3": g.Linear("fc3", weight=np.full((5, features), 0.5, np.float32)),
             "if4": g.IF("if4", threshold=np.full(5, 0.25, np.float32)), "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if2": ["fc1"], "fc3": ["if2"], "if4": ["fc3"], "out": ["if4"]})
    x, snn = np.zeros((1, 1), np.float32), snnverify.SNN(graph, 4)
    with pytest.raises(ValueError, match=r"cannot quantise IF layer 'if4': threshold 0.25 at scale 0.125 rounds"):
        snnverify.quantize(snn, amplitude_bits=4)
    ExactRange(snnverify.quantize(snn, weight_bits=8, amplitude_bits=16).graph).check(x, 4)
    wide = snnverify.quantize(snn, weight_bits=16, amplitude_bits=24).graph
    refusal = (r"membrane potential of 'if4' \(IF\) may reach 1.1e\+16 .*T = 4, beyond 2\^53.*"
               r"lower quantize's input_scale, weight_bits or amplitude_bits")
    with pytest.raises(ValueError, match=refusal):
        ExactRange(wide).check(x, 4)


def test_quantize_refuses_thresholds_beyond_the_integer_range():
    """fc1 (weight 1, weight scale 2^6) takes the input at scale 2^6 to 2^12, so half of if2's
    threshold of 10^25 (v[0] = θ/2 is kept exact) would be 2.048·10^28 in integers, beyond
    2^62: refused by name, never cast (a float beyond int64 wraps silently)."""
    nodes = {"in": g.Input("in", shape=(1,)), "fc1": g.Linear("fc1", weight=np.ones((1, 1), np.float32)),
             "if2": g.IF("if2", threshold=[1e25]), "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if2": ["fc1"], "out": ["if2"]})
    with pytest.raises(ValueError, match=r"cannot quantise 'if2': its thresholds at scale 4096 reach 2.048e\+28"):
        snnverify.quantize(snnverify.SNN(graph, 4))


def test_negligible_weights_take_the_finest_scale_not_one_beyond_the_integer_range():
    """fc1's weights of 10^-30 would allow a weight scale near 2^106; the layer's output scale
    stops at 2^32 instead (its weights round to 0, as they are next to 2^-32), so if2's
    threshold of 1 is 2^32, not 2^112, and the graph quantises."""
    nodes = {"in": g.Input("in", shape=(1,)), "fc1": g.Linear("fc1", weight=np.full((1, 1), 1e-30, np.float32)),
             "if2": g.IF("if2", threshold=[1.0]), "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if2": ["fc1"], "out": ["if2"]})
    integer = snnverify.quantize(snnverify.SNN(graph, 4)).graph
    assert integer.nodes["fc1"].weight.tolist() == [[0]] and integer.nodes["if2"].threshold.tolist() == [2**32]


def test_gpu_target_without_a_gpu_is_an_error_not_a_cpu_run():
    """This machine has no CUDA GPU: with the simulator off, target='gpu' must refuse."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, snnverify\n"
        "from snnverify import graph as g\n"
        "from snnverify.api import SNN\n"
        "nodes = {'in': g.Input('in', shape=(2,)), 'n': g.IF('n', threshold=[1.0, 1.0]), 'out': g.Output('out')}\n"
        "snn = SNN(g.SpikingGraph(nodes, {'n': ['in'], 'out': ['n']}), 4)\n"
        "snnverify.compile(snn, target='gpu')\n"
    )
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}, capture_output=True, text=True)
    if probe.stdout.strip() == "True":
        pytest.skip("this machine has a CUDA GPU, so the no-GPU error cannot occur here")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "target 'gpu' needs a CUDA GPU and none is available" in result.stderr


@pytest.mark.parametrize("target, runs_on, other", [
    ("cpu", "cpu", "cuda"), ("loihi2_sim", "cpu", "cuda:0"), ("gpu", "cuda", "cpu"), ("gpu", "cuda:0", "cuda:3"),
])
def test_one_device_rule_for_every_target(target, runs_on, other):
    """``device`` is None or the device the target runs on; any other device is an error naming
    the target (never a silent run elsewhere), and so is a name that is no device. (A network of
    two small layers: the rule does not depend on the network, and the CUDA simulator runs the
    digits network's one image for a minute.)"""
    nodes = {"in": g.Input("in", shape=(4,)), "fc1": g.Linear("fc1", weight=np.full((3, 4), 0.5, np.float32)),
             "if1": g.IF("if1", threshold=np.ones(3, np.float32)),
             "fc2": g.Linear("fc2", weight=np.full((2, 3), 0.25, np.float32)), "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if1": ["fc1"], "fc2": ["if1"], "out": ["fc2"]})
    snn = snnverify.SNN(graph, 2, target=target)
    x = torch.ones(1, 4)
    assert np.all(snnverify.simulate(snn, x, device=runs_on) > 0)  # it ran, and the layer fired
    with pytest.raises(ValueError, match=f"target '{target}' runs on .*; got device='{other}'"):
        snnverify.simulate(snn, x, device=other)
    with pytest.raises(ValueError, match=f"target '{target}': device='tpu7' is not a device"):
        snnverify.simulate(snn, x, device="tpu7")


def _merge_with_tiny_weights():
    """if2's spikes, of amplitude 10^25 (2^15.05 at its scale 2^-68), merge with fc3, whose scale
    (input 2^6 times weight scale 2^6) is where its rescale node must take them: a factor of
    2^80, beyond 2^62."""
    nodes = {"in": g.Input("in", shape=(1,)), "fc1": g.Linear("fc1", weight=np.ones((1, 1), np.float32)),
             "if2": g.IF("if2", threshold=[1.0], amplitude=[1e25]),
             "fc3": g.Linear("fc3", weight=np.full((1, 1), 1.5, np.float32)), "add": g.Add("add"),
             "out": g.Output("out")}
    return g.SpikingGraph(nodes, {"fc1": ["in"], "if2": ["fc1"], "fc3": ["in"], "add": ["fc3", "if2"],
                                  "out": ["add"]})


def test_quantize_refuses_amplitudes_beyond_the_integer_range():
    """Never cast: numpy turns a float beyond int64 into an arbitrary integer, with a warning at most."""
    with pytest.raises(ValueError, match=r"cannot quantise 'if2.rescale.add': its weights at scale 1.2\d*e\+24 "
                                         r"reach 1.2\d*e\+24, beyond the integer range"):
        snnverify.quantize(snnverify.SNN(_merge_with_tiny_weights(), 4))


@pytest.mark.parametrize("target", ["torch", "cpu", "gpu"])
def test_integer_runs_beyond_exact_arithmetic_are_refused_by_node(target):
    """in → fc1 (weight 1, weight scale 2^6) → if2 → out at input scale 2^6: an input of 10^12
    is a current of 6.4·10^13 into if2 and 4.1·10^15 out of fc1, both below 2^53 ≈ 9·10^15, but
    T = 32 steps of it can take if2's membrane to 1.31·10^17; an input of 10^15 is beyond 2^53 at
    once. Below that, the same graph runs."""
    nodes = {"in": g.Input("in", shape=(1,)), "fc1": g.Linear("fc1", weight=np.ones((1, 1), np.float32)),
             "if2": g.IF("if2", threshold=[1.0]), "out": g.Output("out")}
    graph = g.SpikingGraph(nodes, {"fc1": ["in"], "if2": ["fc1"], "out": ["if2"]})
    snn = snnverify.quantize(snnverify.SNN(graph, 32), input_scale=2.0**6)
    snn = snnverify.compile(snn, target=target)
    with pytest.raises(ValueError, match=r"input current of 'in' \(Input\) may reach 6.4e\+16 .*T = 32, beyond 2\^53"):
        snnverify.simulate(snn, np.full((1, 1), 1e15, np.float32))
    with pytest.raises(ValueError, match=r"membrane potential of 'if2' \(IF\) may reach 1.31e\+17 .*T = 32"):
        snnverify.simulate(snn, np.full((1, 1), 1e12, np.float32))
    # at T = 1 the membrane stays below 2^53 (4.1·10^15 + θ + v[0])
    assert snnverify.simulate(snn, np.full((1, 1), 1e12, np.float32), timesteps=1).shape == (1, 1)
    assert snnverify.simulate(snn, np.full((1, 1), 2.0, np.float32)).shape == (1, 1)
