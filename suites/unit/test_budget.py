"""The training budget of ``convert``: how epochs are split and refused, what is recorded as
spent, and that the thresholds train at their own learning rate."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify import ConversionOptions
from snnverify.convert import budget, finetune, fold_batchnorm, insert_qcfs, trace, train_qcfs
from snnverify.convert.qcfs import QCFS
from snnverify.models import small_resnet
from snnverify.runtime.torch_ref import TorchExecutor


def tiny_loader(n=10, batch_size=4):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("given, stages", [
    ({"budget_epochs": 0}, (0, 0)),
    ({"budget_epochs": 3, "finetune_epochs": 1}, (2, 1)),
    ({"budget_epochs": 3, "qcfs_epochs": 3}, (3, 0)),
    ({"budget_epochs": 4, "qcfs_epochs": 1, "finetune_epochs": 3}, (1, 3)),
    ({"qcfs_epochs": 10, "finetune_epochs": 1}, (10, 1)),  # no budget: the stages' sum
])
def test_budget_and_stage_epochs_resolve_to_a_consistent_split(given, stages):
    options = ConversionOptions(**given).resolved()
    assert (options.qcfs_epochs, options.finetune_epochs) == stages
    assert options.budget_epochs == sum(stages)


@pytest.mark.parametrize("e", [0, 1, 2, 5, 7])
def test_a_budget_alone_is_spent_in_full_by_its_recipe(e):
    options = ConversionOptions(budget_epochs=e).resolved()
    chosen = budget.recipe(e)
    assert options.qcfs_epochs + options.finetune_epochs == e
    assert (options.finetune_epochs, options.levels, options.qcfs_optimizer, options.qcfs_lr, options.threshold_lr) == \
        (chosen.finetune_epochs, chosen.levels, chosen.qcfs_optimizer, chosen.qcfs_lr, chosen.threshold_lr)


@pytest.mark.parametrize("given", [
    {"budget_epochs": 2, "qcfs_epochs": 3},
    {"budget_epochs": 2, "finetune_epochs": 3},
    {"budget_epochs": 2, "qcfs_epochs": 1, "finetune_epochs": 0},
])
def test_contradicting_budget_and_stage_epochs_are_refused_with_the_values(given):
    with pytest.raises(ValueError, match=r"budget_epochs=2 contradicts qcfs_epochs=(3|1|None) and finetune_epochs="):
        snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=2, **given)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_budget_must_be_a_non_negative_integer(value):
    with pytest.raises(ValueError, match=f"budget_epochs must be an integer >= 0, got {value!r}"):
        ConversionOptions(budget_epochs=value)


def test_unknown_optimizer_lists_the_known_ones():
    with pytest.raises(ValueError, match="qcfs_optimizer must be one of sgd, adam, adamw, got 'lbfgs'"):
        ConversionOptions(qcfs_optimizer="lbfgs")


@pytest.mark.parametrize("qcfs, finetune", [(0, 0), (2, 0), (1, 2)])
def test_training_record_counts_the_labelled_samples_spent(qcfs, finetune):
    loader = tiny_loader(n=10, batch_size=4)  # batches of 4, 4, 2
    snn = snnverify.convert(small_resnet(10, 1), loader, timesteps=2, budget_epochs=qcfs + finetune,
                            finetune_epochs=finetune, finetune_horizons=(2,))
    assert snn.training["epochs"] == qcfs + finetune
    assert snn.training["samples"] == 10 * (qcfs + finetune)
    assert snn.training["qcfs"] == {"epochs": qcfs, "samples": 10 * qcfs}
    assert snn.training["finetune"] == {"epochs": finetune, "samples": 10 * finetune, "horizons": [2], "rate_penalty": 0.0}
    assert snn.conversion.info["training"] == snn.training


def test_horizons_readouts_are_the_runs_stopped_at_each_T():
    """One run of max H steps read out at every h equals a run of h steps (to float rounding:
    a running sum against one sum)."""
    snn = snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=2, budget_epochs=0)
    executor = TorchExecutor(snn.graph)
    x = next(iter(tiny_loader()))[0]
    readouts = executor(x, 7, horizons=(1, 3, 7))[0]
    assert readouts.shape == (3, len(x), 10)
    for h, readout in zip((1, 3, 7), readouts):
        torch.testing.assert_close(readout, executor(x, h)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"horizons must be integers in 1..7 \(the steps run\), got \(8,\)"):
        executor(x, 7, horizons=(8,))


def test_bptt_over_several_horizons_lowers_every_horizons_loss():
    """The mean loss over H = {1, 4} falls from the converted graph to the fine-tuned one at both
    horizons: the readout at each T is trained, not only the last."""
    loader = tiny_loader(n=16, batch_size=16)
    x, y = next(iter(loader))
    before = snnverify.convert(small_resnet(10, 1), loader, timesteps=4, budget_epochs=0)
    after = snnverify.convert(small_resnet(10, 1), loader, timesteps=4, budget_epochs=0,
                              finetune_epochs=0, finetune_horizons=(4, 1))
    assert after.conversion.options.finetune_horizons == (1, 4)  # sorted, duplicates dropped
    tuned = finetune(before.graph, [(x, y)] * 20, (1, 4), 1, 1e-2, "cpu")

    def losses(graph):
        with torch.no_grad():
            readouts = TorchExecutor(graph)(x, 4, horizons=(1, 4))[0]
        return [float(torch.nn.functional.cross_entropy(r, y)) for r in readouts]

    assert all(b > a for b, a in zip(losses(before.graph), losses(tuned)))


@pytest.mark.parametrize("value", [(), (0, 4), (2.5,), "48", (True,)])
def test_finetune_horizons_must_be_positive_integers(value):
    with pytest.raises(ValueError, match=r"finetune_horizons must be a non-empty sequence of integers >= 1, got "):
        ConversionOptions(finetune_horizons=value)


def test_a_graph_built_by_hand_has_no_training_record():
    snn = snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=2, budget_epochs=0)
    assert snnverify.api.SNN(snn.graph, 2).training is None


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_thresholds_train_at_their_own_learning_rate(optimizer):
    """Weights at a learning rate too small to move them and λ at a large one, then the
    reverse: only the parameters with the large rate change."""
    loader = tiny_loader()
    model = small_resnet(10, 1).eval()
    qcfs = insert_qcfs(fold_batchnorm(trace(model, next(iter(loader))[0])), loader, 8, 99.9, "cpu")

    def moved(trained):
        """The largest change of a λ and of a weight. λ of dead channels (at the floor 10^-4 that
        training keeps them above, whatever the learning rate) are left out."""
        lams = {n for n, m in qcfs.named_modules() if isinstance(m, QCFS)}
        after = dict(trained.named_parameters())
        change = {}
        for n, p in qcfs.named_parameters():
            delta = (after[n] - p).detach().abs()
            if n.rsplit(".", 1)[0] in lams:
                delta = delta[p > 2e-4]
            change[n] = float(delta.max()) if delta.numel() else 0.0
        return (max(v for n, v in change.items() if n.rsplit(".", 1)[0] in lams),
                max(v for n, v in change.items() if n.rsplit(".", 1)[0] not in lams))

    lam_change, weight_change = moved(train_qcfs(qcfs, loader, 1, 1e-12, "cpu", optimizer, threshold_lr=0.1))
    assert lam_change > 1e-4 and weight_change < 1e-8
    lam_change, weight_change = moved(train_qcfs(qcfs, loader, 1, 0.1, "cpu", optimizer, threshold_lr=1e-12))
    assert lam_change < 1e-8 and weight_change > 1e-4


def test_qcfs_training_normalises_with_the_anns_batchnorm_statistics_and_trains_gamma_and_beta():
    """QCFS training runs before folding, in the ANN's own parametrisation: every BatchNorm keeps
    the ANN's running statistics (a batch's statistics would replace them in train mode), while
    γ, β and the weights train."""
    loader = tiny_loader()
    model = small_resnet(10, 1).eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():  # statistics no batch of the loader has
        for bn in norms:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    qcfs = insert_qcfs(trace(model, next(iter(loader))[0]), loader, 8, 99.9, "cpu")
    trained = train_qcfs(qcfs, loader, 1, 0.05, "cpu", "sgd")
    before = {n: m for n, m in qcfs.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    after = dict(trained.named_modules())
    assert len(before) == len(norms)
    for name, bn in before.items():
        for statistic in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(after[name], statistic), getattr(bn, statistic)), (name, statistic)
        assert not torch.equal(after[name].weight, bn.weight) and not torch.equal(after[name].bias, bn.bias), name
