"""``convert(..., max_spikes=B)``: burst IF layers with θ = a = λ/B, and the pieces of the
pipeline that must follow them (bias correction's readouts, BPTT's surrogate)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify import ConversionOptions
from snnverify.convert import budget, finetune
from snnverify.convert.qcfs import QCFS
from snnverify.models import small_resnet
from snnverify.runtime.torch_ref import TorchExecutor, if_neurons


def tiny_loader(n=16, batch_size=16):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("burst", [1, 3, 4])
def test_every_if_layer_fires_bursts_of_b_at_a_bth_of_lambda(burst):
    snn = snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=4, budget_epochs=0,
                            correction_horizons=(), max_spikes=burst)
    qcfs = {name: m for name, m in snn.conversion.qcfs_ann.named_modules() if isinstance(m, QCFS)}
    layers = snn.graph.neuron_layers
    assert sorted(layer.name for layer in layers) == sorted(qcfs)
    for layer in layers:
        lam = qcfs[layer.name].lam.detach().numpy()
        assert layer.max_spikes == burst
        np.testing.assert_array_equal(layer.threshold, lam / np.float32(burst))
        np.testing.assert_array_equal(layer.output_amplitude, layer.threshold)
    assert snn.conversion.options.max_spikes == burst


@pytest.mark.parametrize("budget_epochs", [0, 1, 5])
def test_the_recipe_gives_max_spikes_and_percentile_when_none_is_given(budget_epochs):
    options = ConversionOptions(budget_epochs=budget_epochs).resolved()
    assert options.max_spikes == budget.recipe(budget_epochs).max_spikes
    assert options.percentile == budget.recipe(budget_epochs).percentile
    assert ConversionOptions(budget_epochs=budget_epochs, percentile=97.5).resolved().percentile == 97.5


@pytest.mark.parametrize("value", [0, -1.0, 100.5, True, "99.9"])
def test_percentile_must_be_in_0_to_100(value):
    with pytest.raises(ValueError, match=rf"conversion option percentile must be in \(0, 100\], got {value!r}"):
        ConversionOptions(percentile=value)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "4"])
def test_max_spikes_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=f"max_spikes must be an integer >= 1, got {value!r}"):
        ConversionOptions(max_spikes=value)


@pytest.mark.parametrize("value", [0, 256, 2.5, True])
def test_an_if_layer_refuses_a_burst_outside_1_to_255(value):
    with pytest.raises(ValueError, match=r"node 'x' \(IF\): max_spikes must be an integer in \[1, 255\], got "):
        snnverify.graph.IF("x", threshold=np.ones(2, np.float32), max_spikes=value)


def test_a_burst_neurons_surrogate_sums_one_term_per_comparison():
    """∂s/∂v of a burst neuron is the sum of the binary neuron's surrogate at v, v − θ, …,
    v − (B − 1)·θ: at v = 2θ (the second comparison's threshold) it is larger than the binary
    neuron's, which sits on the tail of its surrogate there."""
    theta = torch.tensor([1.0])

    def slope(burst):
        z = torch.tensor([[2.0]], requires_grad=True)
        if_neurons(z, theta, 1, static=True, max_spikes=burst).sum().backward()
        return float(z.grad)

    assert slope(4) > slope(1) > 0


def test_bptt_trains_a_burst_network():
    """BPTT fine-tuning lowers the loss of a burst network's readout (the surrogate's gradient
    reaches the weights through the bursts)."""
    loader = tiny_loader()
    x, y = next(iter(loader))
    before = snnverify.convert(small_resnet(10, 1), loader, timesteps=2, budget_epochs=0, correction_horizons=(),
                               max_spikes=4).graph
    tuned = finetune(before, [(x, y)] * 20, (2,), 1, 1e-2, "cpu")
    assert all(layer.max_spikes == 4 for layer in tuned.neuron_layers)

    def loss(graph):
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(TorchExecutor(graph)(x, 2)[0], y))

    assert loss(tuned) < loss(before)
