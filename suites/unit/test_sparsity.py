"""The rate penalty of QCFS training (``rate_penalty``): what it refuses, that it lowers the
firing rate, that the rate it penalises is the SNN's, and that without it nothing changes; and
the Pareto marking of ``snnverify sparsity``."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify import ConversionOptions
from snnverify.api import SNN
from snnverify.cli import main
from snnverify.convert import fold_batchnorm, insert_qcfs, trace, train_qcfs
from snnverify.convert.qcfs import QCFS, qcfs_rate
from snnverify.jobs.sparsity import bptt_penalty_name, finetune_stage, group_of, pareto_optimal
from snnverify.models import small_resnet
from snnverify.train import fit


def tiny_loader(n=32, batch_size=8, shape=(1, 8, 8)):
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *shape, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def qcfs_network(loader, levels=8):
    model = small_resnet(10, 1).eval()
    return insert_qcfs(fold_batchnorm(trace(model, next(iter(loader))[0])), loader, levels, 99.9, "cpu")


@pytest.mark.parametrize("name", ["rate_penalty", "finetune_rate_penalty"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, True, "0.1", None])
def test_rate_penalty_must_be_a_finite_non_negative_number(name, value):
    if name == "finetune_rate_penalty" and value is None:
        assert ConversionOptions(rate_penalty=0.5, finetune_epochs=1).resolved().finetune_rate_penalty == 0.5
        return
    with pytest.raises(ValueError, match=rf"conversion option {name} must be a finite number >= 0, got "):
        ConversionOptions(**{name: value})


def test_a_rate_penalty_without_training_is_refused():
    with pytest.raises(ValueError, match=r"rate_penalty=0.5 acts in training, and this conversion trains nothing "
                                         r"\(qcfs_epochs=0, finetune_epochs=0\)"):
        snnverify.convert(small_resnet(10, 1), tiny_loader(), timesteps=2, budget_epochs=0, rate_penalty=0.5)


def test_a_bptt_rate_penalty_without_bptt_is_refused():
    with pytest.raises(ValueError, match=r"finetune_rate_penalty=0.5 acts in BPTT fine-tuning, and this conversion "
                                         r"has finetune_epochs=0"):
        ConversionOptions(qcfs_epochs=1, finetune_epochs=0, finetune_rate_penalty=0.5).resolved()


def test_the_bptt_rate_penalty_acts_in_bptt_alone():
    """``finetune_rate_penalty`` leaves QCFS training as ρ has it (bit for bit) and changes BPTT,
    which records the penalty it applied."""
    loader = tiny_loader()
    snns = {}
    for bptt_penalty in (None, 5.0):
        torch.manual_seed(0)
        snns[bptt_penalty] = snnverify.convert(small_resnet(10, 1), loader, timesteps=2, qcfs_epochs=1,
                                               finetune_epochs=1, rate_penalty=0.5,
                                               finetune_rate_penalty=bptt_penalty)
    same, own = snns[None], snns[5.0]
    assert same.training["finetune"]["rate_penalty"] == 0.5 and own.training["finetune"]["rate_penalty"] == 5.0
    assert all(torch.equal(a, b) for a, b in zip(same.conversion.qcfs_ann.state_dict().values(),
                                                  own.conversion.qcfs_ann.state_dict().values()))
    assert any(not np.array_equal(a, b) for name, node in same.graph.nodes.items()
               for a, b in zip(node.parameters(), own.graph.nodes[name].parameters()))


class TinyResidual(nn.Module):
    """conv-BN-ReLU, then conv-BN added to its input and a ReLU, then a linear readout: a residual
    merge small enough for the CUDA simulator, which interprets every multiply-accumulate."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(torch.relu(self.bn2(self.conv2(a)) + a), 1))


def test_a_rate_penalised_conversion_spikes_identically_on_every_backend(comparison_log):
    """Penalised in both stages, with BPTT's own ρ, the network runs as every converted one
    does: in float32 the same spikes and output on the cpu kernels and the gpu kernels (in the
    CUDA simulator here; the torch reference sums in another order, DESIGN.md), quantised the same
    on the torch reference, cpu and gpu."""
    loader = tiny_loader(n=32)
    torch.manual_seed(0)
    snn = snnverify.convert(TinyResidual(), loader, timesteps=6, qcfs_epochs=1, finetune_epochs=1,
                            rate_penalty=3.0, finetune_rate_penalty=1.0)
    x = next(iter(loader))[0].numpy()
    for graph, kind, targets in ((snn.graph, "float32", ("cpu", "gpu")),
                                 (snnverify.quantize(snn).graph, "integer", ("torch", "cpu", "gpu"))):
        reference_output, reference = snnverify.simulate(SNN(graph, 6, target=targets[0]), x, record=True)
        assert sum(int(s.sum()) for s in reference.values()) > 0, "a silent network compares nothing"
        for target in targets[1:]:
            output, spikes = snnverify.simulate(SNN(graph, 6, target=target), x, record=True)
            flips = sum(int((spikes[name] != reference[name]).sum()) for name in reference)
            comparison_log.record(f"rate-penalised conversion, {kind}, {targets[0]} vs {target}",
                                  sum(s.size for s in reference.values()), flips)
            assert flips == 0
            np.testing.assert_array_equal(output, reference_output)


def test_a_rate_penalty_in_bptt_alone_lowers_the_snns_spike_rate():
    """No QCFS training, one BPTT epoch: the penalty on the SNN's own spike rate lowers the rate
    that ``measure_sparsity`` reports, and ρ = 0 records no penalty."""
    loader = tiny_loader(n=48)
    rates = {}
    for penalty in (0.0, 20.0):
        torch.manual_seed(0)
        snn = snnverify.convert(small_resnet(10, 1), loader, timesteps=4, qcfs_epochs=0, finetune_epochs=1,
                                finetune_lr=1e-2, rate_penalty=penalty)
        assert snn.training["finetune"]["rate_penalty"] == penalty
        rates[penalty] = 1 - snnverify.measure_sparsity(snn, loader, timesteps=4)
    assert 0 <= rates[20.0] < 0.5 * rates[0.0], rates


def test_a_large_rate_penalty_lowers_the_mean_rate_on_the_training_data():
    loader = tiny_loader()
    qcfs = qcfs_network(loader)
    rates = {}
    for penalty in (0.0, 10.0):
        torch.manual_seed(0)
        trained = train_qcfs(qcfs, loader, 3, 1e-3, "cpu", "adamw", 5e-2, rate_penalty=penalty)
        rates[penalty] = qcfs_rate(trained, loader, "cpu")
    assert 0 < rates[10.0] < 0.5 * rates[0.0], rates


def test_zero_penalty_trains_bitwise_as_plain_cross_entropy_training():
    """ρ = 0 is the default and must leave QCFS training as it was: the same weights, bit for
    bit, as ``fit`` on cross-entropy alone with the same parameter groups and seed."""
    loader = tiny_loader()
    qcfs = qcfs_network(loader)
    torch.manual_seed(0)
    penalised = train_qcfs(qcfs, loader, 2, 1e-3, "cpu", "adamw", 5e-2, rate_penalty=0.0)
    plain = copy.deepcopy(qcfs)
    lams = [m.lam for m in plain.modules() if isinstance(m, QCFS)]
    weights = [p for p in plain.parameters() if all(p is not lam for lam in lams)]

    def keep_positive():
        with torch.no_grad():
            for lam in lams:
                lam.clamp_(min=1e-4)

    torch.manual_seed(0)
    fit(plain.train(), [{"params": weights}, {"params": lams, "lr": 5e-2, "weight_decay": 0.0}], loader, 2, 1e-3,
        "cpu", "plain", optimizer="adamw", after_step=keep_positive)
    expected, got = plain.state_dict(), penalised.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_convert_records_the_penalty_and_its_default_changes_nothing():
    loader = tiny_loader()
    snns = {}
    for options in ({}, {"rate_penalty": 0.0}, {"rate_penalty": 1.0}):
        torch.manual_seed(0)
        snns[str(options)] = snnverify.convert(small_resnet(10, 1), loader, timesteps=2, qcfs_epochs=1,
                                               finetune_epochs=0, **options)
    default, zero, one = snns.values()
    assert default.conversion.info["options"]["rate_penalty"] == 0.0
    assert one.conversion.info["options"]["rate_penalty"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(default.conversion.qcfs_ann.state_dict().values(),
                                                  zero.conversion.qcfs_ann.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(default.conversion.qcfs_ann.state_dict().values(),
                                                      one.conversion.qcfs_ann.state_dict().values()))


@pytest.mark.parametrize("burst", [1, 4])
def test_the_rate_penalised_is_the_spike_rate_of_the_snn(burst):
    """One neuron layer driven by the input: at T = L its IF neurons spike exactly as many
    times as the QCFS levels, so the QCFS rate a/λ is 1 − the SNN's measured sparsity; burst
    neurons of up to B spikes per step (θ = λ/B) do so at B·T = L, firing B times that rate."""
    loader = tiny_loader(n=40)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    snn = snnverify.convert(model, loader, timesteps=8, levels=8, budget_epochs=0, correction_horizons=(),
                            max_spikes=burst)
    rate = qcfs_rate(snn.conversion.qcfs_ann, loader, "cpu")
    assert 0.05 < rate < 0.95
    sparsity = snnverify.measure_sparsity(snn, loader, timesteps=8 // burst)
    assert burst * rate == pytest.approx(1 - sparsity, abs=1e-3)


def test_pareto_optimal_rows_have_no_row_at_least_as_good_in_gap_and_rate_and_better_in_one():
    rows = [(0.1, 0.12), (0.3, 0.08), (0.2, 0.10), (0.4, 0.09), (0.1, 0.13), (1.5, 0.05)]
    assert pareto_optimal(rows) == [True, True, True, False, False, True]


def test_rows_group_by_their_training_stages():
    """A row's group is its ANN, data and both stages' settings: another QCFS learning rate or a
    BPTT penalty of its own is another group; a sweep over ρ applied in both stages is one."""
    def row(penalty, qcfs_lr=1e-3, bptt_penalty=None):
        options = {"levels": 8, "qcfs_optimizer": "adamw", "qcfs_lr": qcfs_lr, "threshold_lr": 5e-2,
                   "finetune_epochs": 1, "finetune_horizons": [32]}
        return {"ann": "a.pt", "budget_epochs": 2, "train_images": 10, "test_images": 10, "seed": 0, "penalty": penalty,
                "options": options, "training": {"finetune": {"rate_penalty": penalty if bptt_penalty is None
                                                              else bptt_penalty}}}

    assert group_of(row(0.3)) == group_of(row(1.0))  # ρ in BPTT too
    assert group_of(row(0.3)) != group_of(row(0.3, qcfs_lr=1e-4))
    assert group_of(row(0.3, bptt_penalty=1.0)) == group_of(row(0.5, bptt_penalty=1.0)) != group_of(row(0.3))
    assert group_of(row(0.3, bptt_penalty=0.0)) != group_of(row(0.3))
    assert [bptt_penalty_name(finetune_stage(r)[2]) for r in (row(0.3), row(0.3, bptt_penalty=1.0),
                                                               row(0.3, bptt_penalty=0.0))] == [
        "ρ in BPTT too", "ρ = 1 in BPTT", "no rate penalty in BPTT"]


def test_sparsity_job_writes_rows_a_pareto_table_and_a_plot(tmp_path):
    out = tmp_path / "sparsity"
    arguments = ["sparsity", "--dataset", "digits", "--ann-epochs", "1", "--train-subset", "128", "--test-subset",
                 "64", "--penalties", "0", "3", "--timesteps", "4", "8", "--timing-batch", "8", "--repeats", "1",
                 "--out-dir", str(out)]
    assert main(arguments) == 0
    rows = json.loads((out / "digits-small_resnet.json").read_text())["rows"]
    assert [r["penalty"] for r in rows] == [0.0, 3.0]
    assert [r["options"]["rate_penalty"] for r in rows] == [0.0, 3.0]
    for r in rows:
        assert (r["train_images"], r["test_images"], r["timing_batch"]) == (128, 64, 8)
        assert r["command"].startswith("snnverify ") and r["commit"] and r["date"]
        for t in ("4", "8"):
            m = r["by_timesteps"][t]
            assert m["spike_rate"] == pytest.approx(1 - m["sparsity"])
            assert m["gap_pp"] == pytest.approx(100 * (r["ann_accuracy"] - m["snn_accuracy"]), abs=1e-3)
            assert m["time_ratio"] == pytest.approx(m["snn_s_per_image"] / m["ann_s_per_image"])
    readme = (out / "README.md").read_text()
    assert "## digits-small_resnet" in readme and "T = 4:" in readme and "| ρ | Pareto |" in readme
    assert readme.count("**yes**") >= 2  # at least one Pareto-optimal row at each T
    assert (out / "digits-small_resnet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sparsity", "--render", "--out-dir", str(out)]) == 0  # again, from the JSON alone
    assert (out / "README.md").read_text() == readme
    # another L is another group: its row replaces neither of the recipe's L = 8
    assert main([*arguments[:arguments.index("--penalties")], "--penalties", "0", "--levels", "4",
                 *arguments[arguments.index("--timesteps"):]]) == 0
    rows = json.loads((out / "digits-small_resnet.json").read_text())["rows"]
    assert [(r["penalty"], r["options"]["levels"]) for r in rows] == [(0.0, 8), (3.0, 8), (0.0, 4)]
    readme = (out / "README.md").read_text()
    ran = rows[0]["options"]  # the rates the budget's recipe trained with, as the group's heading names them
    assert all(f"QCFS training at L = {levels} (AdamW at {ran['qcfs_lr']:g}, λ at {ran['threshold_lr']:g}):" in readme
               for levels in (4, 8))
    # a budget that ends in BPTT is another group too, its stages recorded and named
    assert main([*arguments[:arguments.index("--penalties")], "--penalties", "3", "--budget", "2",
                 "--finetune-epochs", "1", "--finetune-horizons", "4",
                 *arguments[arguments.index("--timesteps"):]]) == 0
    rows = json.loads((out / "digits-small_resnet.json").read_text())["rows"]
    assert len(rows) == 4 and rows[-1]["penalty"] == 3.0
    assert (rows[-1]["training"]["qcfs"]["epochs"], rows[-1]["training"]["finetune"]["epochs"]) == (1, 1)
    assert rows[-1]["training"]["finetune"]["horizons"] == [4]
    assert "then 1 epoch(s) of BPTT at T = 4" in (out / "README.md").read_text()
