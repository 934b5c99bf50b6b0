"""``snnverify run``, the main job: train (or load) an ANN, convert it, and measure the SNN
against it over T.

Writes ``<out_dir>/<name>/report.json`` (machine-readable results), ``report.md`` and
``accuracy_vs_T.png`` (both generated from the JSON by :mod:`snnverify.report`), and the
trained ANN as ``ann.pt`` so that a later run can reuse it with ``--checkpoint``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
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
from snnverify.convert import ConversionOptions
from snnverify.report import write_run_report
from snnverify.runtime import known_targets
from snnverify.runtime.quantize import check_amplitude_bits
from snnverify.train import fit
from snnverify.util import atomic_write, provenance, repository_relative


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
    amplitude_bits: int = 16  # its amplitudes' bits (quantize's amplitude_bits)
    download: bool = True

    def __post_init__(self):
        """Every setting checked here, before any work starts."""
        self.name = self.name or f"{self.dataset}-{self.model}"
        if self.dataset not in data.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(sorted(data.DATASETS))}")
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; known: {', '.join(models.MODELS)}")
        if self.target not in known_targets():
            raise ValueError(f"unknown target {self.target!r}; known targets: {', '.join(known_targets())}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device {self.device!r} is not a torch device (for example cpu, cuda, cuda:1)") from None
        if not self.timesteps:
            raise ValueError("timesteps: give at least one T")
        for t in [*self.timesteps, self.convert_timesteps]:
            snnverify.graph.check_timesteps(t)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be {'>= 0' if name == 'epochs' else '>= 1'}, got {value}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_amplitude_bits(self.amplitude_bits)
        # the conversion's own checks, now rather than after training
        shared = {f.name for f in dataclasses.fields(ConversionOptions)} & {f.name for f in dataclasses.fields(self)}
        ConversionOptions(**{name: getattr(self, name) for name in shared})
        if self.checkpoint is not None:
            models.read_state_dict(self.checkpoint)


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
    start = time.perf_counter()
    snn.run(next(iter(test_loader))[0][:1], config.timesteps[0], device=evaluation_device)  # one-off JIT compilation
    wall["compile_s"] = time.perf_counter() - start
    snn_accuracy, sparsity, wall["snn_evaluation"] = {}, {}, {}
    for t in config.timesteps:
        start = time.perf_counter()
        statistics = api.snn_statistics(snn, test_loader, device=evaluation_device, timesteps=t)
        snn_accuracy[str(t)], sparsity[str(t)] = statistics["accuracy"], statistics["sparsity"]
        wall["snn_evaluation"][str(t)] = time.perf_counter() - start
    quantized_accuracy = {}
    if config.quantize:
        integer_snn = api.quantize(snn, amplitude_bits=config.amplitude_bits)
        for t in config.timesteps:
            quantized_accuracy[str(t)] = api.evaluate(integer_snn, test_loader, device=evaluation_device, timesteps=t)

    report = {
        "name": config.name,
        "command": " ".join(["snnverify", *map(repository_relative, sys.argv[1:])]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": provenance()["commit"],
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


_HELP = {
    "dataset": "digits (embedded default), fashion-mnist or cifar10",
    "model": "small_resnet, resnet20, cifar_resnet18 or torchvision_resnet18",
    "checkpoint": "load the ANN state dict from this file instead of training",
    "timesteps": "T values at which the SNN is evaluated",
    "convert_timesteps": "T used by BPTT fine-tuning during conversion",
    "levels": "QCFS quantisation levels L",
    "download": "allow downloading a missing dataset",
    "amplitude_bits": "bits of the integer-mode SNN's amplitudes (quantize's; with 8, its weights W·a fit the cpu "
                      "backend's int16 rows)",
    "target": f"backend that evaluates the SNN ({', '.join(known_targets())})",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`RunConfig` field, with the field's default."""
    for item in dataclasses.fields(RunConfig):
        flag = "--" + item.name.replace("_", "-")
        # the field's own default (an instance would have filled in derived values, like name)
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        if item.name == "timesteps":
            parser.add_argument(flag, type=int, nargs="+", default=default, help=_HELP[item.name])
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=_HELP.get(item.name))
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str)
            if item.name == "cal_size":  # default None, but an int when given
                kind = int
            parser.add_argument(flag, type=kind, default=default, help=_HELP.get(item.name, f"default {default}"))


def main(args: argparse.Namespace) -> int:
    config = RunConfig(**{item.name: getattr(args, item.name) for item in dataclasses.fields(RunConfig)})
    report = run(config)
    print(f"ANN accuracy {100 * report['ann_accuracy']:.2f} %, QCFS ANN {100 * report['qcfs_ann_accuracy']:.2f} %")
    for t in report["timesteps"]:
        print(f"T = {t:3d}: SNN accuracy {100 * report['snn_accuracy'][str(t)]:.2f} % "
              f"(gap {report['gap_pp'][str(t)]:+.2f} pp), {1 - report['sparsity'][str(t)]:.3f} spikes per neuron-step")
    print(f"report: {os.path.join(config.out_dir, report['name'], 'report.md')}")
    return 0
