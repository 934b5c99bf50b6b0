"""asv benchmarks of the Loihi 2 simulator on the embedded default (digits, small ResNet).

``time_simulate`` (one test batch through ``loihi2_sim``) beside ``track_`` of what the fixed
point costs: the accuracy gap to the float SNN (``cpu`` backend) on the whole digits test set
and the spike mismatch rate on the timed batch, for both reset modes. The network is the one
``bench_reference`` trains and converts. Run:
``asv run --python=same -E existing --bench bench_loihi2``.
"""

import numpy as np

import snnverify
from snnverify.api import SNN

from . import grid
from . import bench_reference  # the module, not its class: asv would collect the class here a second time


class Loihi2Simulation:
    params = [["subtract", "zero"], grid([8], [8, 32])]
    param_names = ["reset", "timesteps"]
    timeout = 1200
    number = 1
    repeat = 3
    rounds = 1

    def setup_cache(self):
        return bench_reference.DigitsSmallResNet().setup_cache()["graph"]

    def setup(self, graph, reset, timesteps):
        self.chip = SNN(graph, timesteps, target="loihi2_sim", options={"reset": reset})
        self.float = SNN(graph, timesteps, target="cpu")
        self.test = bench_reference._loaders()[2]
        self.x, _ = next(iter(self.test))
        snnverify.simulate(self.chip, self.x[:1])  # compile the kernels outside the timing
        snnverify.simulate(self.float, self.x[:1])

    def time_simulate(self, graph, reset, timesteps):
        snnverify.simulate(self.chip, self.x)

    def track_accuracy_gap_to_float_pp(self, graph, reset, timesteps):
        return 100 * (snnverify.evaluate(self.float, self.test) - snnverify.evaluate(self.chip, self.test))

    track_accuracy_gap_to_float_pp.unit = "pp"

    def track_spike_mismatch(self, graph, reset, timesteps):
        _, chip = snnverify.simulate(self.chip, self.x, record=True)
        _, reference = snnverify.simulate(self.float, self.x, record=True)
        return 100 * sum(int(np.sum(chip[k] != reference[k])) for k in chip) / sum(s.size for s in chip.values())

    track_spike_mismatch.unit = "%"
