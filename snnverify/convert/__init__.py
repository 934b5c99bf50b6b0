"""ANN → spiking graph, one pure pass per module.

``trace`` (torch.fx, canonical form; BatchNorm statistics re-estimated when max-pools were
swapped for average pools) → ``qcfs`` (ReLU → QCFS, λ calibrated, then trained with the
BatchNorm layers in place) → ``fold_bn`` (BatchNorm into conv/linear) → ``to_if`` (QCFS → IF,
add → merge node) → ``bias_correction`` (each layer's mean error against the QCFS ANN into its
bias, label-free) → ``finetune`` (BPTT with the atan surrogate). Each pass returns a new
object. The labelled training the stages spend is a budget in epochs (``budget``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import fx, nn

from snnverify import graph as g
from snnverify.convert import budget
from snnverify.convert.bias_correction import correct_biases
from snnverify.convert.finetune import finetune
from snnverify.convert.fold_bn import fold_batchnorm, recalibrate_batchnorm
from snnverify.convert.qcfs import QCFS, insert_qcfs, train_qcfs
from snnverify.convert.to_if import to_spiking_graph
from snnverify.convert.trace import trace
from snnverify.train import OPTIMIZERS
from snnverify.util import split_batch


@dataclass(frozen=True)
class ConversionOptions:
    """Settings of the conversion pipeline (all keyword options of ``snnverify.convert``).

    ``budget_epochs`` E: labelled epochs over the training set, QCFS training and BPTT
    fine-tuning together (:mod:`snnverify.convert.budget`). Options left at None take the
    measured recipe for E; explicit stage epochs must add up to E (else a ValueError).
    ``threshold_lr`` defaults to ``qcfs_lr`` when that is given. ``rate_penalty`` ρ ≥ 0 trades
    accuracy for sparsity in every training stage: QCFS training adds ρ · r̄ to the loss,
    r̄ = Σ a/λ / (neurons · batch) the mean firing rate of the IF neurons the activations become
    (:func:`~snnverify.convert.qcfs.train_qcfs`; burst neurons fire B·r̄, θ being λ/B), and BPTT
    fine-tuning ρ · the SNN's spike rate
    (:func:`~snnverify.convert.finetune.finetune`); 0 leaves the training unchanged.
    ``finetune_rate_penalty`` sets BPTT's ρ apart from QCFS training's (None: the same ρ): BPTT
    raises the rate the QCFS stage reached unless its own ρ holds it down.
    ``correction_horizons`` H: after conversion and before BPTT, each IF layer's mean error
    against the QCFS ANN, averaged over the readouts at the T's in H, moves into the bias that
    feeds it (:mod:`~snnverify.convert.bias_correction`, on ``correction_images`` unlabelled
    calibration images; () skips it; None takes the recipe's). It runs each IF layer's prefix
    of the graph on the reference executor for max(H) steps: seconds on the small ResNets,
    minutes on ResNet-18 on a CPU (``device`` moves it to a GPU).
    ``max_spikes`` B: each QCFS activation becomes a burst IF layer with θ = a = λ/B that fires
    up to B spikes per step (:class:`~snnverify.graph.IF`), resolving λ/(B·T) in T steps as a
    binary layer does in B·T; 1 gives the binary neuron (None: the recipe's).
    """

    budget_epochs: int | None = None  # labelled epochs, all stages; None: the stages' sum
    levels: int | None = None  # QCFS quantisation levels L used while training the ANN
    percentile: float | None = None  # calibration percentile that initialises λ per channel; None: the recipe's
    qcfs_epochs: int | None = None  # epochs of QCFS training with labels (0: calibration only)
    qcfs_lr: float | None = None  # learning rate of weights and biases in QCFS training
    threshold_lr: float | None = None  # learning rate of the thresholds λ in QCFS training
    qcfs_optimizer: str | None = None  # "sgd" (momentum 0.9), "adam" or "adamw"
    finetune_epochs: int | None = None  # epochs of BPTT fine-tuning of the SNN (0 disables it)
    finetune_lr: float | None = None  # Adam learning rate for BPTT fine-tuning
    finetune_horizons: tuple[int, ...] | None = None  # T's whose readouts BPTT trains; None: the recipe's
    correction_horizons: tuple[int, ...] | None = None  # T's whose mean error bias correction removes; (): none
    correction_images: int = 256  # calibration images bias correction reads
    max_spikes: int | None = None  # B: spikes per step at most of every IF layer (θ = λ/B); None: the recipe's
    rate_penalty: float = 0.0  # ρ: every training stage minimises cross-entropy + ρ · (mean firing rate)
    finetune_rate_penalty: float | None = None  # ρ of BPTT fine-tuning alone; None: rate_penalty

    def __post_init__(self):
        for name in ("budget_epochs", "levels", "qcfs_epochs", "finetune_epochs", "correction_images", "max_spikes"):
            value, low = getattr(self, name), 1 if name in ("levels", "correction_images", "max_spikes") else 0
            required = name == "correction_images"  # the others' None means "the recipe's"
            if (value is not None or required) and (isinstance(value, bool) or not isinstance(value, int)
                                                    or value < low):
                raise ValueError(f"conversion option {name} must be an integer >= {low}, got {value!r}")
        if self.qcfs_optimizer not in (None, *OPTIMIZERS):
            raise ValueError(f"conversion option qcfs_optimizer must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.qcfs_optimizer!r}")
        if self.percentile is not None and (isinstance(self.percentile, bool)
                                            or not isinstance(self.percentile, (int, float))
                                            or not 0 < self.percentile <= 100):
            raise ValueError(f"conversion option percentile must be in (0, 100], got {self.percentile!r}")
        for name in ("qcfs_lr", "threshold_lr", "finetune_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"conversion option {name} must be > 0, got {value!r}")
        for name, may_be_empty in (("finetune_horizons", False), ("correction_horizons", True)):
            value = getattr(self, name)
            if value is None:
                continue
            if (isinstance(value, (str, bytes)) or not (value or may_be_empty)
                    or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in value)):
                raise ValueError(f"conversion option {name} must be a {'' if may_be_empty else 'non-empty '}"
                                 f"sequence of integers >= 1, got {value!r}")
            object.__setattr__(self, name, tuple(sorted(set(value))))
        for name in ("rate_penalty", "finetune_rate_penalty"):
            value = getattr(self, name)
            if name == "finetune_rate_penalty" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"conversion option {name} must be a finite number >= 0, got {value!r}")
        budget.split(self.budget_epochs, self.qcfs_epochs, self.finetune_epochs)  # contradictions raise here

    def resolved(self) -> ConversionOptions:
        """These options with the budget, both stages' epochs and every None filled in."""
        qcfs, finetune = budget.split(self.budget_epochs, self.qcfs_epochs, self.finetune_epochs)
        chosen = budget.recipe(qcfs + finetune)
        fill = {name: getattr(chosen, name) for name in ("levels", "qcfs_optimizer", "qcfs_lr", "threshold_lr",
                                                          "finetune_lr", "finetune_horizons", "correction_horizons",
                                                          "max_spikes", "percentile")
                if getattr(self, name) is None}
        if "threshold_lr" in fill and self.qcfs_lr is not None:
            fill["threshold_lr"] = self.qcfs_lr  # a learning rate given by hand applies to λ too
        if self.rate_penalty and not qcfs + finetune:
            raise ValueError(f"conversion option rate_penalty={self.rate_penalty!r} acts in training, and this "
                             "conversion trains nothing (qcfs_epochs=0, finetune_epochs=0)")
        if self.finetune_rate_penalty and not finetune:
            raise ValueError(f"conversion option finetune_rate_penalty={self.finetune_rate_penalty!r} acts in BPTT "
                             "fine-tuning, and this conversion has finetune_epochs=0")
        if self.finetune_rate_penalty is None:
            fill["finetune_rate_penalty"] = self.rate_penalty
        return replace(self, budget_epochs=qcfs + finetune, qcfs_epochs=qcfs, finetune_epochs=finetune, **fill)


@dataclass
class Conversion:
    """Everything the pipeline produced: the spiking graph and the ANNs it came from."""

    graph: g.SpikingGraph
    traced_ann: fx.GraphModule  # canonical ANN (max-pools swapped for average pools, BN recalibrated)
    qcfs_ann: fx.GraphModule  # QCFS activations, trained, then BN folded
    options: ConversionOptions  # resolved: every field set
    training: dict  # labelled training spent: {"epochs", "samples", "qcfs": {...}, "finetune": {...}}
    bias_correction: dict | None = None  # {"horizons", "images", "corrected", "uncorrected"}; None: not run

    @property
    def info(self) -> dict:
        return {"options": asdict(self.options), "training": self.training, "bias_correction": self.bias_correction,
                "neuron_layers": len(self.graph.neuron_layers)}


class _Counted:
    """A loader that counts the samples it yields (for the training record)."""

    def __init__(self, loader):
        self.loader, self.samples = loader, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.samples += len(split_batch(batch)[0])
            yield batch


def convert_model(
    model: nn.Module, cal_loader, timesteps: int, device=None, train_loader=None, options: ConversionOptions | None = None
) -> Conversion:
    """Run the whole pipeline. ``train_loader`` (default: ``cal_loader``) feeds QCFS training and BPTT."""
    timesteps = g.check_timesteps(timesteps)
    options = (options or ConversionOptions()).resolved()
    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        example = split_batch(next(iter(cal_loader)))[0]
    except StopIteration:
        raise ValueError("the calibration loader is empty; conversion needs calibration data") from None
    traced = trace(model, example)
    if traced.meta["max_pools_replaced"]:
        traced = recalibrate_batchnorm(traced, cal_loader, device).cpu()
    qcfs = insert_qcfs(traced, cal_loader, options.levels, options.percentile, device)
    qcfs_data, finetune_data = _Counted(train_loader or cal_loader), _Counted(train_loader or cal_loader)
    # trained before folding: in the ANN's own parametrisation (see train_qcfs), then folded
    qcfs = fold_batchnorm(train_qcfs(qcfs, qcfs_data, options.qcfs_epochs, options.qcfs_lr, device,
                                     options.qcfs_optimizer, options.threshold_lr, options.rate_penalty).cpu())
    graph, correction = to_spiking_graph(qcfs, options.max_spikes), None
    if options.correction_horizons:
        graph, correction = correct_biases(graph, qcfs, cal_loader, options.correction_horizons,
                                           options.correction_images, device)
    horizons = options.finetune_horizons or (timesteps,)  # the recipe's, else convert's T
    graph = finetune(graph, finetune_data, horizons, options.finetune_epochs, options.finetune_lr, device,
                     options.finetune_rate_penalty)
    training = {"epochs": options.qcfs_epochs + options.finetune_epochs,
                "samples": qcfs_data.samples + finetune_data.samples,
                "qcfs": {"epochs": options.qcfs_epochs, "samples": qcfs_data.samples},
                "finetune": {"epochs": options.finetune_epochs, "samples": finetune_data.samples,
                             "horizons": list(horizons), "rate_penalty": options.finetune_rate_penalty}}
    return Conversion(graph=graph, traced_ann=traced, qcfs_ann=qcfs, options=options, training=training,
                      bias_correction=correction)


__all__ = ["QCFS", "budget", "correct_biases", "Conversion", "ConversionOptions", "convert_model", "finetune", "fold_batchnorm", "insert_qcfs",
           "to_spiking_graph", "recalibrate_batchnorm", "trace", "train_qcfs"]
