"""The main job: train (or load) an ANN, convert it, and measure the SNN against it over T.

Writes ``<out_dir>/<name>/report.json`` (machine-readable results), ``report.md`` and
``accuracy_vs_T.png`` (both generated from the JSON by :mod:`snnverify.report`), and the
trained ANN as ``ann.pt`` so that a later run can reuse it with ``--checkpoint``.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy
import torch
import torchvision

import snnverify
from snnverify import api, data, models
from snnverify.report import write_run_report
from snnverify.util import atomic_write, fit


@dataclass
class RunConfig:
    """Everything that determines a run; stored in the report."""

    dataset: str = "digits"
    model: str = "small_resnet"
    name: str | None = None  # folder name under out_dir; default "<dataset>-<model>"
    out_dir: str = "reports/runs"
    checkpoint: str | None = None  # load the ANN from here instead of training it
    epochs: int = 30  # ANN training epochs
    lr: float = 0.1  # ANN training learning rate (SGD, momentum 0.9, cosine)
    batch_size: int = 64
    eval_batch_size: int = 256
    timesteps: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    convert_timesteps: int = 8  # T used for BPTT fine-tuning inside convert()
    levels: int = 8
    percentile: float = 99.9
    qcfs_epochs: int = 10
    qcfs_lr: float = 0.01
    qcfs_optimizer: str = "sgd"
    finetune_epochs: int = 1
    finetune_lr: float = 1e-4
    cal_size: int | None = None  # dataset default when None
    seed: int = 0
    device: str = "cpu"  # torch device for training and conversion
    target: str = "cpu"  # backend that evaluates the SNN (torch, cpu, gpu)
    quantize: bool = True  # also evaluate the integer-mode SNN (8-bit weights)
    download: bool = True

    def __post_init__(self):
        self.name = self.name or f"{self.dataset}-{self.model}"
        if not self.timesteps:
            raise ValueError("timesteps: give at least one T")
        for t in self.timesteps:
            snnverify.graph.check_timesteps(t)


def run(config: RunConfig) -> dict:
    """Run the main job; returns the report dictionary (also written to disk)."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    wall: dict[str, float] = {}
    splits = data.load_dataset(config.dataset, download=config.download, cal_size=config.cal_size, seed=config.seed)
    train_loader, cal_loader, test_loader = data.make_loaders(
        splits, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=config.seed
    )
    model = models.build_model(config.model, splits.num_classes, splits.input_shape[0]).to(device)
    out = Path(config.out_dir) / config.name

    start = time.perf_counter()
    if config.checkpoint:
        models.load_checkpoint(model, config.checkpoint)
    else:
        model.train()
        fit(model, list(model.parameters()), train_loader, config.epochs, config.lr, device, desc="ANN training")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "ann.pt", _state_dict_bytes(model))
    wall["ann_training"] = time.perf_counter() - start

    start = time.perf_counter()
    ann_accuracy = api.evaluate(model, test_loader, device=device)
    wall["ann_evaluation"] = time.perf_counter() - start

    start = time.perf_counter()
    snn = api.convert(
        model,
        cal_loader,
        timesteps=config.convert_timesteps,
        device=device,
        train_loader=train_loader,
        levels=config.levels,
        percentile=config.percentile,
        qcfs_epochs=config.qcfs_epochs,
        qcfs_lr=config.qcfs_lr,
        qcfs_optimizer=config.qcfs_optimizer,
        finetune_epochs=config.finetune_epochs,
        finetune_lr=config.finetune_lr,
    )
    wall["conversion"] = time.perf_counter() - start
    traced_ann_accuracy = api.evaluate(snn.conversion.traced_ann, test_loader, device=device)
    qcfs_ann_accuracy = api.evaluate(snn.conversion.qcfs_ann, test_loader, device=device)

    api.compile(snn, config.target)
    evaluation_device = device if config.target == "torch" else None
    snn_accuracy, sparsity, wall["snn_evaluation"] = {}, {}, {}
    for t in config.timesteps:
        start = time.perf_counter()
        statistics = api.snn_statistics(snn, test_loader, device=evaluation_device, timesteps=t)
        snn_accuracy[str(t)], sparsity[str(t)] = statistics["accuracy"], statistics["sparsity"]
        wall["snn_evaluation"][str(t)] = time.perf_counter() - start
    quantized_accuracy = {}
    if config.quantize:
        integer_snn = api.quantize(snn)
        for t in config.timesteps:
            quantized_accuracy[str(t)] = api.evaluate(integer_snn, test_loader, device=evaluation_device, timesteps=t)

    report = {
        "name": config.name,
        "command": " ".join(["snnverify", *sys.argv[1:]]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": config.dataset,
        "model": config.model,
        "timesteps": config.timesteps,
        "samples": {"train": len(splits.train), "cal": len(splits.cal), "test": len(splits.test)},
        "config": asdict(config),
        "ann_accuracy": ann_accuracy,
        "traced_ann_accuracy": traced_ann_accuracy,
        "qcfs_ann_accuracy": qcfs_ann_accuracy,
        "training": snn.training,
        "snn_accuracy": snn_accuracy,
        "sparsity": sparsity,
        "gap_pp": {t: 100 * (ann_accuracy - a) for t, a in snn_accuracy.items()},
        "target": config.target,
        "quantized_snn_accuracy": quantized_accuracy,
        "neuron_layers": len(snn.graph.neuron_layers),
        "wall_time_s": wall,
        "versions": {
            "snnverify": snnverify.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": numpy.__version__,
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
        },
    }
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_run_report(out / "report.json")
    return report


def _state_dict_bytes(model) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()
