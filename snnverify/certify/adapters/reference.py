"""The reference converter (``snnverify.convert``) behind the adapter protocol, through the public API only."""

from __future__ import annotations

import torch

import snnverify


def labelled_samples(loader) -> int:
    """Samples one epoch over ``loader`` sees (its dataset's length, else counted)."""
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return sum(len(batch[0] if isinstance(batch, (tuple, list)) else batch) for batch in loader)


class ReferenceConverted:
    """A converted SNN: ``run`` simulates on the torch reference executor (fresh state each call)."""

    def __init__(self, snn: snnverify.SNN, training: dict[str, int]):
        self.snn = snn
        self.training = training

    def run(self, x: torch.Tensor, timesteps: int, device=None):
        return snnverify.simulate(self.snn, x, timesteps=timesteps, record=True, device=device)

    def to_nir(self, path):
        return snnverify.to_nir(self.snn, path)


class ReferenceAdapter:
    """QCFS (L levels, λ per channel from calibration) → IF neurons: v[0] = θ/2, fire on ≥,
    reset by subtraction, binary spikes (``convert``'s burst neurons, several spikes per step,
    are no part of the certified semantics). With a ``train_loader``, ``qcfs_epochs`` of QCFS
    training and ``finetune_epochs`` of BPTT; without one, post-training conversion (no labels used).
    Max-pools are replaced by average pools, so ``maxpool`` is not declared."""

    name = "reference"
    semantics = {"reset": "subtract", "v_init": "half", "fire": "ge"}
    capabilities = {"residual", "batchnorm", "functional_relu", "shared_relu", "nir_export", "gpu"}

    def __init__(self, levels: int = 8, qcfs_epochs: int = 1, finetune_epochs: int = 0):
        self.version = snnverify.__version__
        self.levels, self.qcfs_epochs, self.finetune_epochs = levels, qcfs_epochs, finetune_epochs

    def convert(self, model, cal_loader, timesteps, train_loader=None) -> ReferenceConverted:
        epochs = (self.qcfs_epochs, self.finetune_epochs) if train_loader is not None else (0, 0)
        snn = snnverify.convert(model, cal_loader, timesteps=timesteps, train_loader=train_loader, levels=self.levels,
                                qcfs_epochs=epochs[0], finetune_epochs=epochs[1], max_spikes=1)
        samples = sum(epochs) * labelled_samples(train_loader) if train_loader is not None else 0
        return ReferenceConverted(snn, {"epochs": sum(epochs), "samples": samples})
