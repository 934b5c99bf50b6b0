"""Distributed evaluation (two gloo processes on CPU) counts exactly what one process counts."""

import json
import pickle

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

import snnverify
from snnverify import data, distributed, models
from snnverify.api import SNN

TIMESTEPS = 4


def network():
    """A small ResNet with seeded random weights on digits, and its SNN (calibration only)."""
    torch.manual_seed(0)
    splits = data.load_dataset("digits", seed=0)
    ann = models.small_resnet(10, 1).eval()
    snn = snnverify.convert(ann, DataLoader(splits.cal, batch_size=90), timesteps=TIMESTEPS, qcfs_epochs=0,
                            finetune_epochs=0)
    return ann, snn.graph, splits.test


def counts(ann, graph, test) -> dict:
    loader = distributed.eval_loader(test, batch_size=50)
    return {"ann": distributed.count(ann, loader), "snn": distributed.count(SNN(graph, TIMESTEPS), loader)}


def worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        with open(f"{folder}/network.pkl", "rb") as file:
            ann, graph, test = pickle.load(file)
        assert distributed.world() == (rank, 2)
        shard = len(distributed.eval_loader(test, batch_size=50).dataset)
        train = distributed.train_loader(test, batch_size=50, seed=0)
        epochs = []
        for _ in range(2):
            iter(train)  # each pass moves the sampler to the next epoch
            epochs.append([int(i) for i in train.loader.sampler])
        result = {**counts(ann, graph, test), "shard": shard, "epochs": epochs}
        with open(f"{folder}/rank{rank}.json", "w") as file:
            json.dump(result, file)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_count_what_one_process_counts(tmp_path):
    ann, graph, test = network()
    single = counts(ann, graph, test)
    assert distributed.world() == (0, 1)
    assert single["ann"]["samples"] == single["snn"]["samples"] == len(test) == 360
    most = max(layer.max_spikes for layer in graph.neuron_layers)  # spikes per neuron and step, at most
    assert 0 < single["snn"]["spikes"] < most * single["snn"]["neuron_steps"]
    with open(tmp_path / "network.pkl", "wb") as file:
        pickle.dump((ann, graph, test), file)
    mp.spawn(worker, args=(str(tmp_path),), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["shard"] for r in ranks] == [180, 180]  # each process saw half the test set
    for result in ranks:  # after the all-reduce every process holds the totals
        assert result["ann"] == single["ann"]
        assert result["snn"] == single["snn"]
    # training: each epoch splits the samples between the processes, in a new order every epoch
    for epoch in range(2):
        first, second = (set(r["epochs"][epoch]) for r in ranks)
        assert not first & second and first | second == set(range(len(test)))
    assert ranks[0]["epochs"][0] != ranks[0]["epochs"][1]
    # and a SNN accuracy computed from them equals the public API's
    assert single["snn"]["correct"] / single["snn"]["samples"] == snnverify.evaluate(
        SNN(graph, TIMESTEPS), DataLoader(test, batch_size=50))
