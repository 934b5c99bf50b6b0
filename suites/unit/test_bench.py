"""``snnverify bench``: its argument checks, and a tiny protocol end to end on digits."""

import json
import statistics

import pytest

from snnverify.cli import main
from snnverify.jobs import bench


@pytest.mark.parametrize("arguments, message", [
    (["no-such-protocol"], "unknown protocol"),
    (["fmnist-cpu", "--seeds", "1", "1"], "distinct"),
    (["fmnist-cpu", "--epochs", "-1"], "--epochs"),
    (["fmnist-cpu", "--target", "abacus"], "abacus"),
    (["fmnist-cpu", "--device", "nonsense"], "nonsense"),
])
def test_arguments_are_checked_before_any_work(arguments, message, tmp_path, capsys):
    assert main(["bench", *arguments, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_tiny_protocol_writes_every_seed_and_their_mean_and_std(tmp_path, monkeypatch):
    tiny = bench.Protocol(description="tiny", dataset="digits", model="small_resnet", epochs=1, train_subset=300,
                          qcfs_epochs=0, timesteps=[2, 4], seeds=[0, 1], convert_timesteps=4)
    monkeypatch.setitem(bench.PROTOCOLS, "tiny", tiny)
    assert main(["bench", "tiny", "--target", "torch", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "tiny" / "bench.json").read_text())
    seeds = [json.loads((tmp_path / "tiny" / f"seed{k}.json").read_text()) for k in (0, 1)]
    assert result["seeds"] == seeds and result["config"]["train_subset"] == 300
    assert all(s["samples"] == {"train": 300, "cal": 180, "test": 360} for s in seeds)
    for t in ("2", "4"):
        accuracies = [100 * s["counts"][t]["correct"] / 360 for s in seeds]
        assert result["snn_accuracy"][t]["mean"] == pytest.approx(statistics.mean(accuracies))
        assert result["snn_accuracy"][t]["std"] == pytest.approx(statistics.stdev(accuracies))
        for s in seeds:
            layers = s["counts"][t]["layers"]
            assert sum(c["spikes"] for c in layers.values()) == s["counts"][t]["spikes"]
            assert 0 <= s["sparsity"][t] <= 100
    for s in seeds:  # convert ran the protocol's recipe, not the budget's defaults where it is silent
        options = s["conversion"]["options"]
        assert {k: options[k] for k in ("levels", "qcfs_epochs", "qcfs_optimizer", "qcfs_lr", "finetune_epochs")} == \
            {"levels": tiny.levels, "qcfs_epochs": 0, "qcfs_optimizer": tiny.qcfs_optimizer, "qcfs_lr": tiny.qcfs_lr,
             "finetune_epochs": 0}
    assert seeds[0]["wall_time_s"]["compile_s"] >= 0
    assert result["commit"] and result["machine"] and result["command"].startswith("snnverify bench tiny --seeds 0 1 --device cpu --target torch")
