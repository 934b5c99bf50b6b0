"""The backend equivalence properties on a real GPU, at scale (``pytest -m gpu``; needs an
NVIDIA GPU and NUMBA_ENABLE_CUDASIM=0 — tools/gpu-check sets it). Without a GPU these tests
fail with the gpu target's error rather than skip: a GPU check that did not run is not a pass.
The converted ResNet-18 comes first: it alone makes the 10^7 comparisons, and a leased GPU's time is short."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify.api import SNN
from snnverify.models import cifar_resnet18
from snnverify.strategies import spiking_graphs

from .test_backends import compare, quantized, spikes_on

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def resnet18_graph():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    loader = DataLoader(TensorDataset(x, torch.zeros(64).long()), batch_size=32)
    # random weights: bias correction (minutes on ResNet-18 on a CPU) has nothing to correct
    return snnverify.convert(cifar_resnet18(), loader, timesteps=32, qcfs_epochs=0, finetune_epochs=0,
                             correction_horizons=()).graph


@pytest.mark.parametrize("mode", ["float32", "integer"])
def test_converted_resnet18_cifar_shaped_identical(comparison_log, resnet18_graph, mode):
    graph = resnet18_graph if mode == "float32" else snnverify.quantize(SNN(resnet18_graph, 32)).graph
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    compare(comparison_log, f"gpu: cpu vs gpu, ResNet-18 CIFAR, {mode}", spikes_on(graph, "cpu", x, 32),
            spikes_on(graph, "gpu", x, 32))
    total = comparison_log.totals[f"gpu: cpu vs gpu, ResNet-18 CIFAR, {mode}"]["compared"]
    assert total >= 10**7


@settings(max_examples=50)
@given(spiking_graphs(dyadic=False, wide=True, max_size=16, max_timesteps=32, max_blocks=3))
def test_cpu_and_gpu_identical_float32_on_wide_layers_at_scale(comparison_log, case):
    """16–80 channels: the CPU kernels' packed and blocked layouts, which ResNet-18 reaches only in part."""
    compare(comparison_log, "gpu: cpu vs gpu, float32, wide layers", spikes_on(case.graph, "cpu", case.x, case.timesteps),
            spikes_on(case.graph, "gpu", case.x, case.timesteps))


@settings(max_examples=200)
@given(spiking_graphs(dyadic=False, max_channels=16, max_size=16, max_timesteps=32, max_blocks=5))
def test_cpu_and_gpu_identical_float32_at_scale(comparison_log, case):
    compare(comparison_log, "gpu: cpu vs gpu, float32", spikes_on(case.graph, "cpu", case.x, case.timesteps),
            spikes_on(case.graph, "gpu", case.x, case.timesteps))


@settings(max_examples=200)
@given(spiking_graphs(dyadic=False, max_channels=16, max_size=16, max_timesteps=32, max_blocks=5))
def test_cpu_and_gpu_identical_integer_at_scale(comparison_log, case):
    graph = quantized(case)
    compare(comparison_log, "gpu: cpu vs gpu, integer", spikes_on(graph, "cpu", case.x, case.timesteps),
            spikes_on(graph, "gpu", case.x, case.timesteps))
