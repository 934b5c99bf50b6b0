"""asv benchmarks of the reference converter and torch executor on the embedded default.

Speed (``time_``) beside accuracy and sparsity (``track_``) for the same converted network:
small_resnet trained on digits, converted once in ``setup_cache``; and one step of BPTT
fine-tuning on it (forward over T steps, backward through time), the cost of ``finetune_epochs``. Run:
``asv run --python=same -E existing --bench bench_reference``.
"""

import torch
import torch.nn.functional as F

import snnverify
from snnverify import data, models
from snnverify.api import SNN
from snnverify.runtime.torch_ref import TorchExecutor
from snnverify.train import fit

from . import grid

TIMESTEPS = grid([8, 32], [4, 8, 16, 32, 64])


def _loaders():
    splits = data.load_dataset("digits", seed=0)
    return data.make_loaders(splits, batch_size=64, eval_batch_size=360, seed=0)


class DigitsSmallResNet:
    params = [TIMESTEPS]
    param_names = ["timesteps"]
    timeout = 900
    rounds = 1

    def setup_cache(self):
        torch.manual_seed(0)
        train, cal, test = _loaders()
        ann = models.small_resnet(10, 1)
        fit(ann, list(ann.parameters()), train, epochs=20, lr=0.1, device="cpu", desc="ANN training")
        snn = snnverify.convert(ann.eval(), cal, timesteps=8, train_loader=train, qcfs_epochs=5, finetune_epochs=1)
        return {"graph": snn.graph, "ann_state": ann.state_dict(),
                "ann_accuracy": snnverify.evaluate(ann, test)}

    def setup(self, cache, timesteps):
        torch.set_num_threads(torch.get_num_threads())
        self.snn = SNN(cache["graph"], timesteps)
        self.test = _loaders()[2]
        self.x, self.y = next(iter(self.test))
        self.executor = TorchExecutor(cache["graph"]).train()
        self.ann = models.small_resnet(10, 1)
        self.ann.load_state_dict(cache["ann_state"])
        self.ann.eval()

    def time_simulate_test_set(self, cache, timesteps):
        snnverify.simulate(self.snn, self.x, timesteps=timesteps)

    def time_bptt_step(self, cache, timesteps):
        """Forward over T steps and the backward pass through time, on a training batch of 64."""
        output = self.executor(self.x[:64], timesteps)[0]
        F.cross_entropy(output, self.y[:64]).backward()

    def time_ann_forward_test_set(self, cache, timesteps):
        with torch.no_grad():
            self.ann(self.x)

    def track_snn_accuracy(self, cache, timesteps):
        return 100 * snnverify.evaluate(self.snn, self.test, timesteps=timesteps)

    track_snn_accuracy.unit = "%"

    def track_gap_to_ann_pp(self, cache, timesteps):
        return 100 * cache["ann_accuracy"] - self.track_snn_accuracy(cache, timesteps)

    track_gap_to_ann_pp.unit = "pp"

    def track_sparsity(self, cache, timesteps):
        return 100 * snnverify.measure_sparsity(self.snn, self.test, timesteps=timesteps)

    track_sparsity.unit = "%"
