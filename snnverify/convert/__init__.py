"""ANN → spiking graph, one pure pass per module.

``trace`` (torch.fx, canonical form; BatchNorm statistics re-estimated when max-pools were
swapped for average pools) → ``fold_bn`` (BatchNorm into conv/linear) → ``qcfs``
(ReLU → QCFS, λ calibrated, then trained) → ``to_if`` (QCFS → IF, add → merge node) →
``finetune`` (BPTT with the atan surrogate). Each pass returns a new object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import fx, nn

from snnverify import graph as g
from snnverify.convert.finetune import finetune
from snnverify.convert.fold_bn import fold_batchnorm, recalibrate_batchnorm
from snnverify.convert.qcfs import QCFS, insert_qcfs, train_qcfs
from snnverify.convert.to_if import to_spiking_graph
from snnverify.convert.trace import trace
from snnverify.util import split_batch


@dataclass(frozen=True)
class ConversionOptions:
    """Settings of the conversion pipeline (all keyword options of ``snnverify.convert``)."""

    levels: int = 8  # QCFS quantisation levels L used while training the ANN
    percentile: float = 99.9  # calibration percentile that initialises λ per channel
    qcfs_epochs: int = 1  # epochs of QCFS training with labels (0: calibration only)
    qcfs_lr: float = 0.01  # learning rate for QCFS training
    qcfs_optimizer: str = "sgd"  # "sgd" (the QCFS recipe) or "adam" (steadier on deep nets without BN)
    finetune_epochs: int = 1  # epochs of BPTT fine-tuning of the SNN (0 disables it)
    finetune_lr: float = 1e-4  # Adam learning rate for BPTT fine-tuning

    def __post_init__(self):
        for name in ("levels", "qcfs_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "levels" else 0):
                raise ValueError(f"conversion option {name} must be an integer >= {1 if name == 'levels' else 0}, got {value!r}")
        if self.qcfs_optimizer not in ("sgd", "adam"):
            raise ValueError(f"conversion option qcfs_optimizer must be 'sgd' or 'adam', got {self.qcfs_optimizer!r}")
        for name in ("qcfs_lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"conversion option {name} must be > 0, got {getattr(self, name)!r}")


@dataclass
class Conversion:
    """Everything the pipeline produced: the spiking graph and the ANNs it came from."""

    graph: g.SpikingGraph
    traced_ann: fx.GraphModule  # canonical ANN (max-pools swapped for average pools, BN recalibrated)
    qcfs_ann: fx.GraphModule  # BN folded, QCFS activations, trained
    options: ConversionOptions

    @property
    def info(self) -> dict:
        return {"options": asdict(self.options), "neuron_layers": len(self.graph.neuron_layers)}


def convert_model(
    model: nn.Module, cal_loader, timesteps: int, device=None, train_loader=None, options: ConversionOptions | None = None
) -> Conversion:
    """Run the whole pipeline. ``train_loader`` (default: ``cal_loader``) feeds QCFS training and BPTT."""
    timesteps = g.check_timesteps(timesteps)
    options = options or ConversionOptions()
    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        example = split_batch(next(iter(cal_loader)))[0]
    except StopIteration:
        raise ValueError("the calibration loader is empty; conversion needs calibration data") from None
    traced = trace(model, example)
    if traced.meta["max_pools_replaced"]:
        traced = recalibrate_batchnorm(traced, cal_loader, device).cpu()
    folded = fold_batchnorm(traced)
    qcfs = insert_qcfs(folded, cal_loader, options.levels, options.percentile, device)
    qcfs = train_qcfs(qcfs, train_loader or cal_loader, options.qcfs_epochs, options.qcfs_lr, device,
                      options.qcfs_optimizer)
    graph = to_spiking_graph(qcfs.cpu())
    graph = finetune(graph, train_loader or cal_loader, timesteps, options.finetune_epochs, options.finetune_lr, device)
    return Conversion(graph=graph, traced_ann=traced, qcfs_ann=qcfs, options=options)


__all__ = ["QCFS", "Conversion", "ConversionOptions", "convert_model", "finetune", "fold_batchnorm", "insert_qcfs",
           "to_spiking_graph", "recalibrate_batchnorm", "trace", "train_qcfs"]
