"""The SNN approaches the QCFS ANN as T grows.

At T = 1 every IF layer sees a single step, so the SNN *is* the QCFS network with L = 1, for
any architecture. For larger T the rate code's error shrinks like 1/T: the deviation from the
QCFS network evaluated with L = T falls as T doubles, and the accuracy settles at the ANN's.
"""

import copy

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import snnverify
from snnverify.convert.qcfs import QCFS


def qcfs_with_levels(qcfs_ann, levels: int):
    network = copy.deepcopy(qcfs_ann)
    for module in network.modules():
        if isinstance(module, QCFS):
            module.levels = levels
    return network.eval()


def test_t1_snn_equals_qcfs_network_with_one_level(digits_case):
    x, _ = next(iter(digits_case.test_loader))
    with torch.no_grad():
        expected = qcfs_with_levels(digits_case.snn.conversion.qcfs_ann, 1)(x).numpy()
    output = snnverify.simulate(digits_case.snn, x, timesteps=1)
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)


def test_deviation_from_qcfs_with_l_equal_t_shrinks_as_t_grows(digits_case):
    x, _ = next(iter(digits_case.test_loader))
    deviations = {}
    for steps in (4, 16, 64):
        with torch.no_grad():
            expected = qcfs_with_levels(digits_case.snn.conversion.qcfs_ann, steps)(x).numpy()
        output = snnverify.simulate(digits_case.snn, x, timesteps=steps)
        deviations[steps] = np.abs(output - expected).mean()
    assert deviations[64] < deviations[16] < deviations[4], deviations
    assert deviations[64] < 0.25 * deviations[4], deviations  # about 1/T


def test_snn_accuracy_approaches_the_qcfs_ann(digits_case):
    qcfs_accuracy = snnverify.evaluate(digits_case.snn.conversion.qcfs_ann, digits_case.test_loader)
    gaps = {t: abs(qcfs_accuracy - snnverify.evaluate(digits_case.snn, digits_case.test_loader, timesteps=t))
            for t in (2, 32)}
    assert gaps[32] <= 0.015, gaps
    assert gaps[32] <= gaps[2], gaps


@settings(max_examples=25)
@given(st.integers(0, 2**31), st.integers(1, 3), st.sampled_from([1, 2, 3, 8]))
def test_t1_identity_holds_for_random_residual_networks(seed, depth, burst):
    """Random (untrained) ResNets: at T = 1 the SNN's output equals the L = 1 QCFS network's
    (the conversion's identity, so without the bias correction that moves away from it) — and
    with bursts of up to B spikes per step (θ = λ/B), the L = B QCFS network's."""
    from snnverify.models import ResNet
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    model = ResNet([4, 8, 8][:depth], [1] * depth, num_classes=3, in_channels=2)
    for module in model.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2)
    x = torch.randn(6, 2, 8, 8)
    snn = snnverify.convert(model, DataLoader(TensorDataset(x, torch.zeros(6).long()), batch_size=3),
                            timesteps=1, qcfs_epochs=0, finetune_epochs=0, correction_horizons=(), max_spikes=burst)
    with torch.no_grad():
        expected = qcfs_with_levels(snn.conversion.qcfs_ann, burst)(x).numpy()
    np.testing.assert_allclose(snnverify.simulate(snn, x), expected, rtol=1e-4, atol=1e-5)
