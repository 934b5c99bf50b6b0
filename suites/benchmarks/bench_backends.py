"""asv benchmarks: SNN simulation per backend, T = 8 and 32, on converted networks.

``time_simulate`` beside ``track_`` of what it produced (sparsity, and the agreement of the
backend's predictions with the torch reference), on the same batch, and beside two ratios
timed side by side in one call (so machine noise cancels): the backend's speed over the torch
reference executor, and its time over the ANN forward time (targets: cpu ≥ 2× torch; at
T = 32, SNN ≤ 8× the ANN) — and the work behind the time, synaptic events per ANN MAC. The gpu target is
skipped in ``setup`` when no CUDA GPU is visible (asv style: params do not depend on what is
installed). Run: ``asv run --python=same -E existing --bench bench_backends``.
"""

import numpy as np
import torch

import snnverify
from snnverify.api import SNN
from snnverify.speed import SHAPES, converted, interleaved_best_times, multiply_accumulates, synaptic_events


class Simulation:
    params = [["small_resnet", "cifar_resnet18"], ["torch", "cpu", "gpu"], [8, 32]]
    param_names = ["model", "target", "timesteps"]
    timeout = 1800
    number = 1
    repeat = 3

    def setup_cache(self):
        return {model: converted(model) for model in SHAPES}

    def setup(self, cache, model, target, timesteps):
        if target == "gpu":
            from numba import cuda

            if not cuda.is_available():
                raise NotImplementedError("no CUDA GPU visible to numba")
        ann, graph = cache[model]
        self.ann = ann
        self.snn = SNN(graph, timesteps, target=target)
        self.reference = SNN(graph, timesteps, target="torch")
        self.x = torch.randn(16, *SHAPES[model], generator=torch.Generator().manual_seed(1))
        snnverify.simulate(self.snn, self.x[:1])  # compile the kernels outside the timing

    def time_simulate(self, cache, model, target, timesteps):
        snnverify.simulate(self.snn, self.x)

    def time_ann_forward(self, cache, model, target, timesteps):
        with torch.no_grad():
            self.ann(self.x)

    def track_sparsity(self, cache, model, target, timesteps):
        _, spikes = snnverify.simulate(self.snn, self.x, record=True)
        return 100 * (1 - sum(s.sum() for s in spikes.values()) / sum(s.size for s in spikes.values()))

    track_sparsity.unit = "%"

    def track_agreement_with_torch(self, cache, model, target, timesteps):
        ours = snnverify.simulate(self.snn, self.x).argmax(1)
        reference = snnverify.simulate(self.reference, self.x).argmax(1)
        return 100 * float(np.mean(ours == reference))

    track_agreement_with_torch.unit = "%"

    def track_events_per_ann_mac(self, cache, model, target, timesteps):
        """The event-driven work beside the time: synaptic events (adds) per ANN multiply-accumulate."""
        _, spikes = snnverify.simulate(self.snn, self.x, record=True)
        return synaptic_events(self.snn.graph, spikes) / (len(self.x) * multiply_accumulates(self.snn.graph))

    track_events_per_ann_mac.unit = "events/MAC"

    def track_speedup_over_torch(self, cache, model, target, timesteps):
        seconds = interleaved_best_times({"torch": lambda: snnverify.simulate(self.reference, self.x),
                                          "backend": lambda: snnverify.simulate(self.snn, self.x)}, 2)
        return seconds["torch"] / seconds["backend"]

    track_speedup_over_torch.unit = "x"

    def track_time_over_ann_forward(self, cache, model, target, timesteps):
        def ann_forward():
            with torch.no_grad():
                self.ann(self.x)

        seconds = interleaved_best_times({"ann": ann_forward, "snn": lambda: snnverify.simulate(self.snn, self.x)}, 2)
        return seconds["snn"] / seconds["ann"]

    track_time_over_ann_forward.unit = "x"
