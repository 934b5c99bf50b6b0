"""asv tracks of accuracy, sparsity and spikes per converter × T, from one fixed trained ANN.

The ANN is the committed Fashion-MNIST checkpoint ``reports/runs/fashion-mnist-small_resnet/ann.pt``
(92.84 % test accuracy); each converter setting converts it once in ``setup_cache``. Converters:
``percentile`` (thresholds from the 99.9th percentile of 5,000 calibration images, no training)
and ``qcfs`` (the same, then one QCFS epoch on 5,000 training images; L = 16). The default grid
evaluates the first 2,000 test images at T = 8, 32 on the ``cpu`` backend; the full grid all
10,000 at T = 4 … 64. Skipped when Fashion-MNIST is not installed. Run:
``asv run --python=same --bench bench_accuracy``.
"""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

import snnverify
from snnverify import data, models
from snnverify.api import SNN

from . import FULL, grid

CHECKPOINT = Path(__file__).resolve().parents[2] / "reports" / "runs" / "fashion-mnist-small_resnet" / "ann.pt"
CONVERTERS = {"percentile": {"qcfs_epochs": 0}, "qcfs": {"qcfs_epochs": 1}}
TEST_IMAGES = 10_000 if FULL else 2_000


def _splits():
    try:
        return data.load_dataset("fashion-mnist", download=False, seed=0)
    except data.DatasetNotFoundError:
        return None


def _test_loader(splits):
    return DataLoader(Subset(splits.test, range(TEST_IMAGES)), batch_size=250)


class FashionMNISTCheckpoint:
    params = [list(CONVERTERS), grid([8, 32], [4, 8, 16, 32, 64])]
    param_names = ["converter", "timesteps"]
    timeout = 1800
    number = 1
    repeat = 3
    rounds = 1

    def setup_cache(self):
        splits = _splits()
        if splits is None:
            return None
        torch.manual_seed(0)
        ann = models.load_checkpoint(models.small_resnet(10, 1), CHECKPOINT).eval()
        cal = DataLoader(splits.cal, batch_size=250, shuffle=True, generator=torch.Generator().manual_seed(1))
        train = DataLoader(Subset(splits.train, range(5000)), batch_size=128, shuffle=True,
                           generator=torch.Generator().manual_seed(2))
        graphs = {name: snnverify.convert(ann, cal, timesteps=32, train_loader=train, levels=16,
                                          finetune_epochs=0, **options).graph
                  for name, options in CONVERTERS.items()}
        return {"graphs": graphs, "ann_accuracy": 100 * snnverify.evaluate(ann, _test_loader(splits))}

    def setup(self, cache, converter, timesteps):
        if cache is None:
            raise NotImplementedError("Fashion-MNIST is not installed (see snnverify.data)")
        self.snn = SNN(cache["graphs"][converter], timesteps, target="cpu")
        self.reference = SNN(cache["graphs"][converter], timesteps, target="torch")
        self.test = _test_loader(_splits())
        self.x = next(iter(self.test))[0][:64]
        snnverify.simulate(self.snn, self.x[:1])  # compile the kernels outside the timing

    def time_simulate_batch(self, cache, converter, timesteps):
        snnverify.simulate(self.snn, self.x)

    def peakmem_simulate_batch(self, cache, converter, timesteps):
        snnverify.simulate(self.snn, self.x)

    def track_snn_accuracy(self, cache, converter, timesteps):
        return 100 * snnverify.evaluate(self.snn, self.test)

    track_snn_accuracy.unit = "%"

    def track_gap_to_ann_pp(self, cache, converter, timesteps):
        return cache["ann_accuracy"] - self.track_snn_accuracy(cache, converter, timesteps)

    track_gap_to_ann_pp.unit = "pp"

    def track_sparsity(self, cache, converter, timesteps):
        return 100 * snnverify.measure_sparsity(self.snn, self.test)

    track_sparsity.unit = "%"

    def track_spikes_differing_from_torch(self, cache, converter, timesteps):
        """Neuron-steps of the 64-image batch where the cpu backend and the torch reference
        differ (float32; only exact threshold ties may differ)."""
        _, ours = snnverify.simulate(self.snn, self.x, record=True)
        _, reference = snnverify.simulate(self.reference, self.x, record=True)
        return sum(int(np.sum(ours[k] != reference[k])) for k in ours)

    track_spikes_differing_from_torch.unit = "neuron-steps"
