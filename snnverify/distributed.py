"""Data parallelism under ``torchrun``: one process per GPU (nccl) or per CPU share (gloo).

Without torchrun (no ``WORLD_SIZE`` in the environment) everything runs in one process and these
helpers reduce to plain loaders and sums. Training shards each epoch with a
:class:`~torch.utils.data.DistributedSampler`; evaluation gives process ``r`` of ``n`` the samples
``r, r + n, r + 2n, …`` so that every test sample is counted exactly once, and all-reduces the
integer counts, which makes the distributed accuracy equal the single-process one exactly.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from snnverify.api import SNN
from snnverify.util import progress, split_batch


def init(device: torch.device) -> tuple[int, int]:
    """Join the process group that torchrun describes; returns ``(rank, world_size)``."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


class _EpochLoader:
    """A DataLoader over a DistributedSampler that moves the sampler to the next epoch on each pass."""

    def __init__(self, loader: DataLoader):
        self.loader, self.epoch = loader, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(self.loader)


def train_loader(dataset: Dataset, batch_size: int, seed: int):
    """Shuffled training batches of this process's share (all of them in one process)."""
    rank, size = world()
    if size == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    sampler = DistributedSampler(dataset, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    return _EpochLoader(DataLoader(dataset, batch_size=batch_size, sampler=sampler))


def eval_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    """This process's evaluation samples, in order: ``rank, rank + size, …``."""
    rank, size = world()
    part = dataset if size == 1 else Subset(dataset, list(range(rank, len(dataset), size)))
    return DataLoader(part, batch_size=batch_size, shuffle=False)


def _all_reduce(counts: dict[str, int]) -> dict[str, int]:
    if not dist.is_initialized():
        return counts
    keys = sorted(counts)
    tensor = torch.tensor([counts[k] for k in keys], dtype=torch.int64)
    dist.all_reduce(tensor)  # gloo reduces CPU tensors; nccl needs them on the device
    return dict(zip(keys, tensor.tolist()))


def count(model_or_snn, loader, timesteps: int | None = None, device=None) -> dict[str, int]:
    """Integer counts over every process's share: ``correct``, ``samples`` and, for an SNN,
    ``spikes`` and ``neuron_steps`` (IF neurons × T × samples), in all and per IF layer (``layers``)."""
    correct = samples = spikes = 0
    with torch.no_grad():
        if isinstance(model_or_snn, SNN):
            t = model_or_snn.timesteps if timesteps is None else timesteps
            shapes = model_or_snn.graph.shapes
            layers = {layer.name: int(np.prod(shapes[layer.name])) for layer in model_or_snn.graph.neuron_layers}
            per_layer = dict.fromkeys(layers, 0)
            for batch in progress(loader, desc=f"SNN evaluation (T={t})"):
                x, y = split_batch(batch)
                result = model_or_snn.run(x, t)
                for name, spikes in result.spike_counts.items():
                    per_layer[name] += int(spikes)
                correct += int((np.asarray(result.output).argmax(1) == y.numpy()).sum())
                samples += len(y)
            counts = _all_reduce({"correct": correct, "samples": samples, **{f"spikes:{k}": v for k, v in per_layer.items()}})
            per_layer = {name: counts.pop(f"spikes:{name}") for name in layers}
            counts["spikes"] = sum(per_layer.values())
            counts["neuron_steps"] = sum(layers.values()) * t * counts["samples"]
            counts["layers"] = {name: {"spikes": per_layer[name], "neuron_steps": layers[name] * t * counts["samples"]}
                                for name in layers}
            return counts
        model = model_or_snn.eval()
        for batch in progress(loader, desc="ANN evaluation"):
            x, y = split_batch(batch)
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            samples += len(y)
    return _all_reduce({"correct": correct, "samples": samples})
