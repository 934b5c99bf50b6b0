"""Bias correction (``correction_horizons``): which layers it corrects and why, that it changes
nothing but those biases, that each corrected layer's mean error against the QCFS ANN shrinks,
and the prefix readout it measures with."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify import ConversionOptions
from snnverify import graph as g
from snnverify.convert import correct_biases
from snnverify.convert.qcfs import QCFS


class EveryPath(nn.Module):
    """One IF layer per way a current can reach a neuron: straight from a conv (``relu``),
    a merge of a conv and spikes (``relu2``), an average pool with zero padding, which would
    dilute a bias at the borders (``relu3``), a merge of spikes alone (``relu4``), and a pool
    without padding after a conv (``relu5``)."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.conv3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.pool, self.pool2 = nn.AvgPool2d(3, stride=1, padding=1), nn.AvgPool2d(2)
        self.relu, self.relu2, self.relu3, self.relu4, self.relu5 = (nn.ReLU() for _ in range(5))
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        a = self.relu(self.stem(x))
        b = self.relu2(self.conv(a) + a)
        c = self.relu3(self.pool(b))
        d = self.relu4(b + c)
        e = self.relu5(self.pool2(self.conv3(d)))
        return self.fc(torch.flatten(e, 1))


def every_path_conversion(**options):
    torch.manual_seed(0)
    model = EveryPath().eval()
    loader = DataLoader(TensorDataset(torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long)), batch_size=16)
    torch.manual_seed(1)  # the calibration's sampled positions
    return snnverify.convert(model, loader, timesteps=8, budget_epochs=0, **options)


def test_correction_shifts_the_biases_that_reach_a_layer_unchanged_and_nothing_else():
    plain = every_path_conversion(correction_horizons=())
    corrected = every_path_conversion(correction_horizons=(2, 8), correction_images=40)
    assert plain.conversion.bias_correction is None
    record = corrected.conversion.bias_correction
    assert record == {"horizons": [2, 8], "images": 40, "corrected": ["relu", "relu2", "relu5"],
                      "uncorrected": ["relu3", "relu4"]}
    changed = set()
    for name, node in plain.graph.nodes.items():
        other = corrected.graph.nodes[name]
        for field in ("weight", "threshold", "amplitude"):
            if getattr(node, field, None) is not None:
                np.testing.assert_array_equal(getattr(node, field), getattr(other, field), err_msg=name)
        if getattr(node, "bias", None) is not None and not np.array_equal(node.bias, other.bias):
            changed.add(name)
    assert changed == {"stem", "conv", "conv3"}  # relu, relu2 (the merge's conv operand), relu5 (through the pool)


def qcfs_means(qcfs_ann, x) -> dict[str, np.ndarray]:
    """Per QCFS module, its output's mean per channel over images and positions."""
    means = {}
    hooks = [m.register_forward_hook(lambda m, a, out, name=name: means.__setitem__(
        name, out.double().mean([0, *range(2, out.dim())]).numpy())) for name, m in qcfs_ann.named_modules()
        if isinstance(m, QCFS)]
    with torch.no_grad():
        qcfs_ann(x)
    for hook in hooks:
        hook.remove()
    return means


def mean_errors(graph, qcfs_ann, x, horizons) -> dict[str, float]:
    """Per IF layer, mean over channels of |ANN mean − SNN mean rate·a|, averaged over the
    horizons, from a recorded run of the whole graph on the torch backend."""
    spikes = snnverify.SNN(graph, max(horizons)).run(x, record=True).spikes
    targets, errors = qcfs_means(qcfs_ann, x), {}
    for layer in graph.neuron_layers:
        s = spikes[layer.name].astype(np.float64)
        per_h = [targets[layer.name] - s[:h].mean(axis=(0, 1, *range(3, s.ndim))) * layer.output_amplitude
                 for h in horizons]
        errors[layer.name] = float(np.abs(np.mean(per_h, axis=0)).mean())
    return errors


def test_each_corrected_layers_mean_error_on_the_calibration_images_shrinks(digits_case):
    snn, horizons = digits_case.snn, (4, 8)
    x = next(iter(digits_case.cal_loader))[0]
    loader = DataLoader(TensorDataset(x), batch_size=50)
    corrected, record = correct_biases(snn.graph, snn.conversion.qcfs_ann, loader, horizons, len(x), "cpu")
    assert record["corrected"] == [layer.name for layer in snn.graph.neuron_layers]
    before = mean_errors(snn.graph, snn.conversion.qcfs_ann, x, horizons)
    after = mean_errors(corrected, snn.conversion.qcfs_ann, x, horizons)
    for name in before:
        assert after[name] < before[name], (name, before[name], after[name])
    assert sum(after.values()) < sum(before.values()) / 2


def test_a_prefix_reads_out_the_layers_mean_graded_spike(digits_case):
    graph = digits_case.snn.graph
    x = next(iter(digits_case.test_loader))[0][:16]
    run = snnverify.SNN(graph, 6).run(x, record=True)
    for layer in graph.neuron_layers:
        prefix = graph.prefix(layer.name)
        assert layer.name in prefix.nodes and not set(prefix.nodes) - set(graph.nodes) - {f"{layer.name}:readout"}
        spikes = run.spikes[layer.name]  # [T, batch, C, positions...]
        expected = spikes.mean(axis=0) * layer.output_amplitude.reshape(-1, *[1] * (spikes.ndim - 3))
        np.testing.assert_allclose(snnverify.SNN(prefix, 6).run(x).output, expected, rtol=1e-6, atol=1e-7)


def test_a_prefix_needs_a_node_before_the_output():
    graph = g.SpikingGraph({"x": g.Input("x", shape=(2,)), "out": g.Output("out")}, {"out": ["x"]})
    for name in ("out", "missing"):
        with pytest.raises(ValueError, match=f"no node {name!r} to read out"):
            graph.prefix(name)


@pytest.mark.parametrize("option, value, message", [
    ("correction_horizons", (0, 4), "correction_horizons must be a sequence of integers >= 1, got "),
    ("correction_horizons", "48", "correction_horizons must be a sequence of integers >= 1, got '48'"),
    ("correction_horizons", (2.5,), "correction_horizons must be a sequence of integers >= 1, got "),
    ("correction_images", 0, "correction_images must be an integer >= 1, got 0"),
    ("correction_images", True, "correction_images must be an integer >= 1, got True"),
    ("correction_images", None, "correction_images must be an integer >= 1, got None"),
])
def test_bad_correction_options_are_refused_with_the_value(option, value, message):
    with pytest.raises(ValueError, match=message):
        ConversionOptions(**{option: value})
