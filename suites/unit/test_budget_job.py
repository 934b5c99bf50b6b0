"""``snnverify budget`` with peers: a peer through its adapter at equal budget, a label-free peer,
a crashing peer, and the side-by-side table rendered from the rows."""

import argparse
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from snnverify.certify.adapters.reference import ReferenceAdapter
from snnverify.convert.budget import recipe
from snnverify.certify.clauses import ConverterFailure
from snnverify.jobs import budget as budget_job
from snnverify.models import small_resnet


class GuessesZero(ReferenceAdapter):
    """Trains like a peer that takes ``qcfs_epochs``; its SNN always answers class 0."""

    name = "guesses-zero"

    def __init__(self):
        super().__init__()
        self.options = {"qcfs_epochs": 1}

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        self.qcfs_epochs = self.options["qcfs_epochs"]
        converted = super().convert(model, cal_loader, timesteps, train_loader)
        inner = converted.run

        def run(x, t):
            output, spikes = inner(x, t)
            answer = torch.full_like(torch.as_tensor(output), -1.0)
            answer[:, 0] = 1.0
            return answer, spikes
        converted.run = run
        return converted


class LabelFree(GuessesZero):
    """Takes no ``qcfs_epochs``: it converts without labels whatever loader it is given."""

    name = "label-free"

    def __init__(self):
        super().__init__()
        del self.options

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        self.options = {"qcfs_epochs": 0}
        try:
            return super().convert(model, cal_loader, timesteps, None)
        finally:
            del self.options


class Crashes(GuessesZero):
    name = "crashes"

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        raise RuntimeError("unsupported layer AvgPool2d")


@pytest.fixture(scope="module")
def setting():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    return small_resnet(10, 1).eval(), loader, int((y == 0).sum()) / len(y)


def test_a_training_peer_spends_the_budget_and_is_scored_on_the_test_images(setting):
    model, loader, share_of_zeros = setting
    accuracy, training, version = budget_job.peer_accuracy(f"{__file__}:GuessesZero", 2, model, loader, loader,
                                                           loader, [1, 3], 60)
    assert training == {"epochs": 2, "samples": 24}
    assert accuracy == {"1": share_of_zeros, "3": share_of_zeros}


def test_a_label_free_peer_is_measured_once_at_budget_zero(setting):
    model, loader, share_of_zeros = setting
    spec = f"{__file__}:LabelFree"
    assert budget_job.peer_accuracy(spec, 1, model, loader, loader, loader, [2], 60) is None
    accuracy, training, _ = budget_job.peer_accuracy(spec, 0, model, loader, loader, loader, [2], 60)
    assert accuracy == {"2": share_of_zeros} and training == {"epochs": 0, "samples": 0}


def test_a_crashing_peer_is_a_failure_with_its_reason(setting):
    model, loader, _ = setting
    with pytest.raises(ConverterFailure, match="raised RuntimeError: unsupported layer AvgPool2d"):
        budget_job.peer_accuracy(f"{__file__}:Crashes", 1, model, loader, loader, loader, [2], 60)


class RecordsItsTraining(GuessesZero):
    """A training peer that writes the training images it is given, in their order, to the file
    named by ``$RECORDED_TRAINING``."""

    name = "records-its-training"

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        torch.save(torch.cat([x for x, _ in train_loader]), os.environ["RECORDED_TRAINING"])
        return super().convert(model, cal_loader, timesteps, train_loader)


def test_a_peer_trains_on_the_shuffles_every_conversion_gets_whatever_ran_before_it(tmp_path, monkeypatch):
    """A peer is handed the training data in the order a conversion gets it, right after the
    loaders are reseeded, whether the equal-budget control it is set against was made just
    before it (a sweep of the peer alone) or earlier, for a recipe of ours with the same
    optimizer and rate (AdamW at 1e-3): making that control draws from the loaders' shuffles."""
    generator = torch.Generator().manual_seed(1)
    images = TensorDataset(torch.randn(24, 1, 8, 8, generator=generator), torch.randint(0, 3, (24,), generator=generator))

    def toy_loaders(dataset, train_subset, test_subset, seed):
        train = DataLoader(images, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed))
        cal = DataLoader(images, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return None, train, cal, DataLoader(images, batch_size=8), 24, 24

    def draws_like_training(ann, train, test, epochs, optimizer, lr, seed):
        budget_job.reseed(seed, train)
        for _ in range(epochs):
            for _ in train:
                pass
        return 0.5

    monkeypatch.setattr(budget_job, "OUT", tmp_path)
    monkeypatch.setattr(budget_job, "loaders", toy_loaders)
    monkeypatch.setattr(budget_job, "trained_ann", lambda *args: (small_resnet(3, 1).eval(), "toy.pt"))
    monkeypatch.setattr(budget_job, "control", draws_like_training)
    seen = {}
    for recipes in ([], ["adamw-L8"]):
        monkeypatch.setenv("RECORDED_TRAINING", str(tmp_path / f"seen-{len(recipes)}.pt"))
        budget_job.sweep(argparse.Namespace(
            invocation="snnverify budget", seed=0, dataset="toy", model=budget_job.DEFAULT_MODEL, train_subset=None,
            test_subset=None, ann_epochs=1, convert_timesteps=2, budgets=[1], recipes=recipes,
            peers=[f"{__file__}:RecordsItsTraining"], timesteps=[2], time_limit=120))
        seen[tuple(recipes)] = torch.load(tmp_path / f"seen-{len(recipes)}.pt", weights_only=True)
    _, train, _, _, _, _ = toy_loaders("toy", None, None, 0)
    reseeded = torch.cat([x for x, _ in train])
    assert torch.equal(seen[()], reseeded) and torch.equal(seen[("adamw-L8",)], reseeded)


def test_side_by_side_table_marks_the_leader_at_each_T_and_lists_failures(tmp_path, monkeypatch):
    common = {"dataset": "toy", "train_images": 100, "test_images": 50, "convert_timesteps": 4, "ann_accuracy": 0.9,
              "date": "2026-01-01T00:00:00+00:00", "commit": "abc1234", "command": "snnverify budget", "seed": 0}
    ours = [{**common, "budget_epochs": e, "converter": "snnverify", "recipe": r, "options": {}, "control_accuracy": 0.9,
             "qcfs_ann_accuracy": 0.88, "snn_accuracy": acc, "gap_pp": {t: 100 * (0.9 - a) for t, a in acc.items()}}
             | {"torch_threads": threads}
            for e, r, acc, threads in [(1, "a", {"4": 0.70, "8": 0.86}, 2), (1, "b", {"4": 0.80, "8": 0.85}, 2),
                                       (1, "c", {"4": 0.95, "8": 0.95}, 1)]]
    peers = [{**common, "budget_epochs": 0, "converter": "free", "version": "1.0", "recipe": "peer",
              "control_accuracy": 0.9, "snn_accuracy": {"4": 0.75, "8": 0.87}, "gap_pp": {"4": 15.0, "8": 3.0}},
             {**common, "budget_epochs": 1, "converter": "broken", "recipe": "peer", "control_accuracy": 0.9,
              "failure": "convert hung (no answer within 60 s)", "torch_threads": 2}]
    (tmp_path / "toy.json").write_text(json.dumps({"rows": ours + peers}))
    monkeypatch.setattr(budget_job, "OUT", tmp_path)
    text = budget_job.render().read_text()
    side = text[text.index("### Beside the peers: 100 training / 50 test images"):]
    # the best of our recipes at each T on two threads (b at T=4, a at T=8), apart from the one
    # measured on one thread (c); at T=8 the label-free peer leads our two-thread rows
    assert "| 1 | snnverify (best recipe at each T), torch threads: 2 | 80.00 | 86.00 |" in side
    assert "| 1 | snnverify (best recipe at each T), torch threads: 1 | **95.00** | **95.00** |" in side
    assert "| 1 | free 1.0 (no labels) | 75.00 | 87.00 |" in side
    assert "| 1 | broken, torch threads: 2: FAIL, convert hung (no answer within 60 s) |" in side
    assert np.isclose(float(text.split("| free 1.0 | peer | 0 | not recorded |")[1].split("|")[6]), 15.0)  # gap@4


def test_each_architecture_has_a_results_file_of_its_own(tmp_path, monkeypatch):
    """The default model keeps reports/budget/<dataset>.json; another model's rows go to a file
    of their own, so winners are never chosen across architectures."""
    monkeypatch.setattr(budget_job, "OUT", tmp_path)
    assert budget_job.results_path("fashion-mnist", "small_resnet") == tmp_path / "fashion-mnist.json"
    assert budget_job.results_path("fashion-mnist", "small_resnet_pooled") == \
        tmp_path / "fashion-mnist-small_resnet_pooled.json"


def scored_row(converter: str, budget: int, accuracy: list[float], recipe: str = "peer", data=(100, 50),
               seed: int = 0) -> dict:
    return {"budget_epochs": budget, "converter": converter, "recipe": recipe, "train_images": data[0],
            "test_images": data[1], "snn_accuracy": dict(zip(map(str, budget_job.SCORED_T), accuracy)), "seed": seed,
            "options": {"recipe": recipe}}


def test_a_replicated_network_votes_by_its_means_over_enough_runs():
    """On a network scored by its replicates a recipe competes with at least ``MIN_RUNS`` runs,
    and misses a cell where its mean over the runs it shares with a peer is behind that peer's, or
    where its mean gap misses the target; one run behind is not a miss. Here the reference network
    ties ``steady`` and ``swinging`` on cells, so the replicated one decides: ``swinging`` is
    behind on its mean at T = 32, ``steady`` behind on one seed only; ``lucky`` leads on two seeds,
    too few to compete."""
    runs = budget_job.MIN_RUNS
    reference = [scored_row("snnverify", 5, [0.95] * 4, "steady"), scored_row("snnverify", 5, [0.96] * 4, "swinging"),
                 scored_row("snnverify", 5, [0.99] * 4, "lucky"), scored_row("trainer", 5, [0.90] * 4)]
    replicated = [scored_row("trainer", 5, [0.90] * 4, seed=seed) for seed in range(runs)]
    replicated += [scored_row("snnverify", 5, [0.91, 0.91, 0.91, 0.89 if seed == 0 else 0.91], "steady", seed=seed)
                   for seed in range(runs)]
    replicated += [scored_row("snnverify", 5, [0.93, 0.93, 0.93, 0.89 if seed < runs - 1 else 0.95], "swinging",
                              seed=seed) for seed in range(runs)]
    replicated += [scored_row("snnverify", 5, [0.99] * 4, "lucky", seed=seed) for seed in range(2)]
    by_recipe = budget_job.scored_rows(replicated, 5, every_seed=True)
    assert budget_job.replicate_score(by_recipe["steady"])[0] == 0
    assert budget_job.replicate_score(by_recipe["swinging"])[0] == 1
    winners = budget_job.joint_winners({"reference": reference, "replicated": replicated}, replicated=("replicated",))
    assert winners[5]["reference"]["recipe"] == "steady"
    # without the replicated network the reference one alone decides, by the mean: ``lucky``
    assert budget_job.joint_winners({"reference": reference})[5]["reference"]["recipe"] == "lucky"
    # a mean gap over its target is a miss, one run over it is not
    def gapped(over: set[int]) -> list[tuple[dict, list[dict]]]:
        return [({**row, "gap_pp": {"4": 0.0, "8": 0.0, "32": 0.3 if row["seed"] in over else 0.0}}, peers)
                for row, peers in by_recipe["steady"]]

    assert budget_job.replicate_score(gapped(set(range(1, runs))))[0] == 1
    assert budget_job.replicate_score(gapped({0}))[0] == 0


def test_a_default_row_competes_as_the_options_it_resolved_to():
    """A row of the recipe ``default`` records what ``convert`` resolved at its budget; it is
    scored beside the named recipes (here it leads the peer where the named one does not)."""
    rows = [scored_row("snnverify", 5, [0.90, 0.92, 0.93, 0.94], "default"),
            scored_row("snnverify", 5, [0.95, 0.95, 0.95, 0.90], "named"),
            scored_row("trainer", 5, [0.80, 0.90, 0.91, 0.93])]
    assert budget_job.winners(rows)[5]["recipe"] == "default"


def test_the_winner_is_the_best_mean_among_the_recipes_that_lead_every_peer_at_every_T():
    """``high-mean`` has the best mean but trails the label-free peer (whose E = 0 result
    stands at E = 5) at T = 32; ``leader`` is at or above every peer at every T (a tie counts),
    so it wins E = 5. At E = 1 no recipe leads the training peer everywhere: the best mean wins.
    Rows on smaller data, and a failed peer, are not compared."""
    rows = [scored_row("snnverify", 5, [0.90, 0.92, 0.93, 0.92], "high-mean"),
            scored_row("snnverify", 5, [0.80, 0.91, 0.92, 0.93], "leader"),
            scored_row("snnverify", 5, [0.70, 0.90, 0.91, 0.94], "worse-leader"),
            scored_row("snnverify", 5, [0.99, 0.99, 0.99, 0.99], "smaller-data", data=(10, 50)),
            scored_row("free", 0, [0.20, 0.40, 0.80, 0.93]),
            scored_row("trainer", 5, [0.79, 0.90, 0.91, 0.92]),
            scored_row("snnverify", 1, [0.85, 0.90, 0.90, 0.90], "a"),
            scored_row("snnverify", 1, [0.80, 0.88, 0.92, 0.91], "b"),
            scored_row("trainer", 1, [0.90, 0.89, 0.89, 0.89]),
            {**scored_row("crasher", 1, []), "failure": "convert raised"}]
    winners = budget_job.winners(rows)
    assert {b: r["recipe"] for b, r in winners.items()} == {5: "leader", 1: "a"}
    # a peer that trains, measured at E = 0 alone on other data, is not label-free: its E = 0
    # row does not stand at E = 5 (high-mean then misses no cell and wins)
    assert budget_job.winners(rows + [scored_row("free", 1, [0.1] * 4, data=(10, 5))])[5]["recipe"] == "high-mean"


def test_replicates_never_choose_the_winner_and_pair_with_the_peer_of_their_seed(tmp_path, monkeypatch):
    """A row of another seed is a replicate: it does not compete for the default (``lucky`` is
    best only on seed 1), and each of our seeds is set against the peer's row of the same seed
    (ours − peer: −2 pp on seed 0, +4 on seed 1: mean +1). A ``default`` row pairs with the
    named recipe whose options it resolved to; a seed without the peer's row is left out."""
    same = {"recipe": "named"}
    rows = [{**scored_row("snnverify", 5, [0.90, 0.90, 0.90, 0.90], "named"), "options": same},
            {**scored_row("snnverify", 5, [0.94, 0.94, 0.94, 0.94], "default", seed=1), "options": same},
            {**scored_row("snnverify", 5, [0.99, 0.99, 0.99, 0.99], "default", seed=2), "options": same},
            scored_row("snnverify", 5, [0.99, 0.99, 0.99, 0.99], "lucky", seed=1),
            scored_row("trainer", 5, [0.92, 0.92, 0.92, 0.92]),
            scored_row("trainer", 5, [0.90, 0.90, 0.90, 0.90], seed=1)]
    assert budget_job.winners(rows)[5]["recipe"] == "named"
    pairs = budget_job.paired_differences(rows)
    assert [(p["recipes"], p["runs"], p["peer"]) for p in pairs] == [(["default", "named"], [(0, None), (1, None)],
                                                                       "trainer")]
    differences = [a - b for a, b in zip(pairs[0]["ours"]["32"], pairs[0]["peer_accuracy"]["32"])]
    assert np.allclose(differences, [-0.02, 0.04])
    for r in rows:
        r.update(dataset="toy", convert_timesteps=4, ann_accuracy=0.9, control_accuracy=0.9, date="2026-01-01",
                 commit="abc1234", command="snnverify budget", gap_pp={})
    (tmp_path / "toy.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(budget_job, "OUT", tmp_path)
    text = budget_job.render().read_text()
    assert ("| 5 | default, named | trainer | 100 / 50 | 0 (–), 1 (–) | 32 | 92.00 | 91.00 | +1.00 (-2.00 … +4.00) "
            "| 1 / 0 / 1 |") in text


def test_rows_pair_and_compete_at_their_own_torch_thread_count():
    """The same command on another torch thread count trains another network: each of our rows
    is scored against the peer's row of its own count (a row that did not record its count,
    against every peer), a recipe measured on two counts scores the mean of its misses, and
    replicates pair run by run: a seed on one thread count against the peer's same run."""
    def at(row: dict, threads: int | None) -> dict:
        return {**row, "torch_threads": threads, "options": {"recipe": row["recipe"]}}

    rows = [at(scored_row("snnverify", 5, [0.94] * 4, "steady"), 1),
            at(scored_row("snnverify", 5, [0.92] * 4, "steady"), 2),  # behind the one-thread peer only
            at(scored_row("snnverify", 5, [0.99] * 4, "split"), 1),
            at(scored_row("snnverify", 5, [0.90] * 4, "split"), 2),
            at(scored_row("snnverify", 5, [0.92] * 4, "legacy"), None),
            at(scored_row("trainer", 5, [0.93] * 4), 1),
            at(scored_row("trainer", 5, [0.91] * 4), 2)]
    for seed in (1, 2):
        rows += [at(scored_row("snnverify", 5, [0.90 + seed / 100] * 4, "steady", seed=seed), 1),
                 at(scored_row("snnverify", 5, [0.80] * 4, "steady", seed=seed), 2),
                 at(scored_row("trainer", 5, [0.90] * 4, seed=seed), 1)]
    scored = budget_job.scored_rows(rows, 5)
    assert {recipe: [[p["torch_threads"] for p in peers] for _, peers in entries]
            for recipe, entries in scored.items()} == {"steady": [[1], [2]], "split": [[1], [2]], "legacy": [[1, 2]]}
    assert budget_job.score(scored["steady"]) == (0.0, pytest.approx(0.93))
    assert budget_job.score(scored["split"]) == (2.0, pytest.approx(0.945))  # 4 cells missed on two threads
    assert budget_job.score(scored["legacy"])[0] == 4.0
    assert budget_job.winners(rows)[5]["recipe"] == "steady"

    pairs = {p["recipes"][0]: p for p in budget_job.paired_differences(rows)}  # two threads: seed 0 alone
    assert {recipe: p["runs"] for recipe, p in pairs.items()} == {"split": [(0, 1), (0, 2)],
                                                                  "steady": [(0, 1), (0, 2), (1, 1), (2, 1)]}
    assert np.allclose([a - b for a, b in zip(pairs["steady"]["ours"]["32"], pairs["steady"]["peer_accuracy"]["32"])],
                       [0.01, 0.01, 0.01, 0.02])
    assert np.allclose([a - b for a, b in zip(pairs["split"]["ours"]["32"], pairs["split"]["peer_accuracy"]["32"])],
                       [0.06, -0.01])


class ModulesOnly(GuessesZero):
    """Declares no ``functional_relu``; records the ReLU call sites of the model it is given."""

    name = "modules-only"
    capabilities = {"residual", "batchnorm"}
    seen: dict = {}

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        graph = torch.fx.symbolic_trace(model).graph
        ModulesOnly.seen = {"functional": sum(n.op == "call_function" and "relu" in str(n.target) for n in graph.nodes),
                            "modules": sum(isinstance(m, torch.nn.ReLU) for m in model.modules())}
        return super().convert(model, cal_loader, timesteps, train_loader)


class NoSpikes(GuessesZero):
    name = "no-spikes"

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        converted = super().convert(model, cal_loader, timesteps, train_loader)
        inner = converted.run
        converted.run = lambda x, t: (inner(x, t)[0], {})
        return converted


def test_a_peer_without_functional_relu_gets_every_relu_as_a_module(setting):
    model, loader, _ = setting
    budget_job.peer_accuracy(f"{__name__}:ModulesOnly", 1, model, loader, loader, loader, [2], 60)
    assert ModulesOnly.seen["functional"] == 0 and ModulesOnly.seen["modules"] == 7  # small_resnet's 7 call sites


def test_a_peer_that_leaves_the_network_unconverted_fails(setting):
    model, loader, _ = setting
    with pytest.raises(ConverterFailure, match="no-spikes: the converted network has no spiking layer"):
        budget_job.peer_accuracy(f"{__file__}:NoSpikes", 1, model, loader, loader, loader, [2], 60)


def test_the_defaults_of_convert_are_the_winners_of_the_committed_sweep():
    """At every budget of the committed sweeps (both Fashion-MNIST networks on all 10,000 test
    images, digits by its means over seeds), ``convert``'s recipe is the winner's: its optimizer,
    learning rates, split, BPTT horizons, bias correction horizons, spikes per step and
    calibration percentile."""
    sweeps = Path(__file__).resolve().parents[2] / "reports" / "budget"
    winners = budget_job.default_winners({path.stem: json.loads(path.read_text())["rows"]
                                          for path in sweeps.glob("*.json")})
    assert {0, 1, 5} <= set(winners)
    for budget, rows in winners.items():
        row = rows[budget_job.DEFAULTS_FROM[0]]
        chosen, options = recipe(budget), row["options"]
        fields = ["finetune_epochs", "qcfs_optimizer", "qcfs_lr", "threshold_lr"]
        if options["qcfs_epochs"]:  # L matters only where QCFS trains
            fields.append("levels")
        if options["finetune_epochs"]:  # BPTT's rate only where BPTT runs
            fields.append("finetune_lr")
        assert {f: getattr(chosen, f) for f in fields} == {f: options[f] for f in fields}, f"budget {budget}"
        if options["finetune_epochs"]:
            assert list(chosen.finetune_horizons) == options["finetune_horizons"], f"budget {budget}"
        # label-free, so part of the recipe at every budget (rows from before the option have none)
        assert list(chosen.correction_horizons) == options.get("correction_horizons", []), f"budget {budget}"
        # the neuron too (rows from before burst neurons have binary ones)
        assert chosen.max_spikes == options.get("max_spikes", 1), f"budget {budget}"
        assert chosen.percentile == options["percentile"], f"budget {budget}"


def _add_rows(path: str, seed: int, recipes: list[str]) -> None:
    for recipe_name in recipes:
        budget_job.add_row(Path(path), {"dataset": "digits", "budget_epochs": 0, "converter": "snnverify",
                                        "recipe": recipe_name, "train_images": 10, "test_images": 5,
                                        "convert_timesteps": 4, "seed": seed})


def test_a_row_replaces_only_the_row_of_its_key_and_side_by_side_sweeps_lose_none(tmp_path):
    """Rows differing only in seed or torch thread count both stay; the same key replaces. Four
    processes adding 25 rows each to one file at once keep all 100 (the read-modify-write is
    under a lock; without it, a write that read the file before another's rename drops a row)."""
    path = tmp_path / "digits.json"
    _add_rows(str(path), 0, ["a"])
    _add_rows(str(path), 1, ["a"])
    budget_job.add_row(path, {**json.loads(path.read_text())["rows"][0], "note": "again"})
    # a rerun that records its thread count and reproduces a row that did not replaces that row
    # (the same measurement); one with other results stays beside it
    legacy = {**next(r for r in json.loads(path.read_text())["rows"] if r["seed"] == 0),
              "snn_accuracy": {"4": 0.5}, "control_accuracy": 0.6, "note": "results"}
    budget_job.add_row(path, legacy)
    budget_job.add_row(path, {**legacy, "torch_threads": 1})
    assert [r.get("torch_threads") for r in json.loads(path.read_text())["rows"] if r["seed"] == 0] == [1]
    budget_job.add_row(path, legacy)
    budget_job.add_row(path, {**legacy, "snn_accuracy": {"4": 0.4}, "torch_threads": 2})
    rows = json.loads(path.read_text())["rows"]
    assert sorted((r["seed"], r.get("torch_threads") or 0, r.get("note")) for r in rows) == [
        (0, 0, "results"), (0, 1, "results"), (0, 2, "results"), (1, 0, None)]

    context = multiprocessing.get_context("fork")  # the writers need nothing but this module
    writers = [context.Process(target=_add_rows, args=(str(path), 2 + w, [f"r{i}" for i in range(25)]))
               for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [writer.exitcode for writer in writers] == [0] * 4
    assert len(json.loads(path.read_text())["rows"]) == 4 + 100


def test_a_default_row_is_named_by_the_candidate_it_resolved_to():
    """A ``default`` row whose recorded options are exactly a candidate's, resolved at its budget,
    is that candidate (so it is compared with that candidate's rows on other networks); one
    recorded by another version of the options (a field missing or changed) stays ``default``.
    Where two candidates resolve alike (``p99.99`` leaves the rest to the E = 0 recipe, whose
    percentile is 99.99), the row takes the first name, not ``default``."""
    options = budget_job.resolved_options(1, budget_job.CANDIDATES["adamw-L8-B4"])
    row = {"recipe": "default", "budget_epochs": 1, "options": options}
    assert budget_job.recipe_of(row) == "adamw-L8-B4"
    assert budget_job.recipe_of({**row, "options": {**options, "max_spikes": 3}}) == "default"
    assert budget_job.recipe_of({**row, "options": {k: v for k, v in options.items() if k != "percentile"}}) == "default"
    assert budget_job.recipe_of({**row, "recipe": "adamw-L8"}) == "adamw-L8"
    at_zero = budget_job.resolved_options(0, budget_job.CANDIDATES["p99.99"])
    named = [n for n, o in budget_job.CANDIDATES.items() if n != "default" and not o.get("finetune_epochs")
             and budget_job.resolved_options(0, o) == at_zero]
    assert len(named) >= 2
    assert budget_job.recipe_of({"recipe": "default", "budget_epochs": 0, "options": at_zero}) == named[0]
