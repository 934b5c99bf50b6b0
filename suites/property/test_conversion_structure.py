"""What the converter builds: one IF layer per ReLU call site, residual adds as merge nodes,
max-pool swapped for average pooling, and every supported spelling of an operation."""

import operator

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify import graph as g
from snnverify.convert.trace import trace


def loader(shape, n=8, classes=10):
    torch.manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, *shape), torch.randint(0, classes, (n,))), batch_size=4)


def quick_convert(model, shape, **options):
    options = {"qcfs_epochs": 0, "finetune_epochs": 0, **options}
    return snnverify.convert(model, loader(shape), timesteps=4, **options)


@pytest.fixture(scope="module")
def torchvision_snn():
    torch.manual_seed(0)
    return quick_convert(torchvision.models.resnet18(num_classes=10), (3, 32, 32))


def test_torchvision_resnet18_gets_two_neuron_layers_per_basic_block(torchvision_snn):
    graph = torchvision_snn.graph
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    for block in blocks:
        neurons = [n.name for n in graph.neuron_layers if n.name.startswith(block + ".")]
        assert neurons == [f"{block}.relu", f"{block}.relu_1"], neurons
        first, second = neurons
        # first neuron after bn1/conv1, second after the residual add
        assert isinstance(graph.nodes[graph.inputs[first][0]], g.Conv2d)
        merge = graph.nodes[graph.inputs[second][0]]
        assert isinstance(merge, g.Add) and len(graph.inputs[merge.name]) == 2
    assert len(graph.neuron_layers) == 1 + 2 * len(blocks)


def test_torchvision_resnet18_maxpool_becomes_average_pool(torchvision_snn):
    graph = torchvision_snn.graph
    pool = graph.nodes["maxpool"]
    assert isinstance(pool, g.AvgPool2d)
    assert (pool.kernel_size, pool.stride, pool.padding) == ((3, 3), (2, 2), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in torchvision_snn.conversion.traced_ann.modules())


def test_each_call_site_of_a_reused_relu_has_its_own_threshold(torchvision_snn):
    qcfs_ann = torchvision_snn.conversion.qcfs_ann
    first, second = qcfs_ann.get_submodule("layer1.0.relu"), qcfs_ann.get_submodule("layer1.0.relu_1")
    assert first is not second
    assert not torch.equal(first.lam, second.lam)  # calibrated on different pre-activations


class EverySpelling(nn.Module):
    """ReLU as a module, twice the same module, F.relu, torch.relu, x.relu(); flatten by view."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((2, 2))
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.act(self.conv(x))
        y = self.act(self.conv2(x)) + x
        y = F.relu(F.avg_pool2d(y, 2))
        y = torch.relu(self.pool(y)).relu()
        y = F.max_pool2d(y, 1)
        return self.fc(self.drop(y.view(y.size(0), -1)))


def test_every_relu_spelling_becomes_a_separate_neuron_layer():
    snn = quick_convert(EverySpelling(), (1, 8, 8))
    kinds = [type(n).__name__ for n in snn.graph.nodes.values()]
    assert kinds.count("IF") == 5
    assert kinds.count("Add") == 1 and kinds.count("AvgPool2d") == 3 and kinds.count("Flatten") == 1
    assert "Dropout" not in kinds


def test_traced_canonical_form_preserves_the_ann_function():
    model = EverySpelling().eval()
    x = torch.randn(6, 1, 8, 8)
    gm = trace(model, x)
    # max_pool2d(kernel 1) is the identity, so the canonical form must compute the same function
    torch.testing.assert_close(gm(x), model(x))
    ops = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert ops <= {operator.add}


@pytest.mark.parametrize(
    "module, message",
    [
        (nn.Sigmoid(), "'1' of type Sigmoid"),
        (nn.LeakyReLU(), "'1' of type LeakyReLU"),
        (nn.MaxPool2d(2, ceil_mode=True), "'1' of type MaxPool2d"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), "padding_mode='circular'"),
    ],
)
def test_unsupported_modules_name_the_module_path_and_type(module, message):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), module, nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 1, 6, 6))  # materialise the lazy layer
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        quick_convert(model, (1, 6, 6))


def test_unsupported_function_names_the_traced_node():
    class Tanh(nn.Module):
        def forward(self, x):
            return torch.tanh(x)

    with pytest.raises(ValueError, match="tanh"):
        quick_convert(Tanh(), (4,))


def test_converted_graph_names_match_module_paths(torchvision_snn):
    names = set(torchvision_snn.graph.nodes)
    assert {"conv1", "layer1.0.conv1", "layer1.0.relu", "layer1.0.relu_1", "fc", "maxpool", "avgpool", "flatten"} <= names


def test_batchnorm_statistics_are_reestimated_after_a_max_pool_swap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.randn(12, 1, 8, 8)
    calibration = DataLoader(TensorDataset(x, torch.zeros(12).long()), batch_size=5)  # uneven last batch
    snn = snnverify.convert(model, calibration, timesteps=2, qcfs_epochs=0, finetune_epochs=0)
    traced = snn.conversion.traced_ann
    assert traced.meta["max_pools_replaced"] == ["2"]
    with torch.no_grad():
        features = model[3](F.avg_pool2d(model[1](model[0](x)), 2))
    bn = traced.get_submodule("4")
    torch.testing.assert_close(bn.running_mean, features.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, features.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert not torch.equal(model[4].running_mean, bn.running_mean)  # the user's model is untouched


def test_no_recalibration_without_a_max_pool(torchvision_snn):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    snn = quick_convert(model.eval(), (1, 8, 8))
    assert torch.equal(snn.conversion.traced_ann.get_submodule("1").running_mean, model[1].running_mean)
