"""asv benchmarks: SNN simulation per backend on converted networks (T = 32 by default, T = 8 and
32 and the ResNet-18s in the full grid), and the ANN forward pass beside it (:class:`AnnForward`);
a network's first simulation from an empty kernel cache, compiles included (:class:`FirstRun`).

``time_simulate`` beside ``track_`` of what it produced (sparsity, and the agreement of the
backend's predictions with the torch reference), on the same batch, and beside two ratios
timed side by side in one call (so machine noise cancels): the backend's speed over the torch
reference executor, and its time over the ANN forward time (targets: cpu ≥ 2× torch; at
T = 32, the integer mode's SNN ≤ 8× the float ANN) — and the work behind the time, synaptic events per ANN MAC. The gpu target is
skipped in ``setup`` when no CUDA GPU is visible (asv style: params do not depend on what is
installed). Run: ``asv run --python=same -E existing --bench bench_backends``.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from numba import carray, njit

import snnverify
from snnverify import graph as g
from snnverify.api import SNN
from snnverify.runtime.cpu import CPU_KERNELS
from snnverify.runtime.cpu.gather import add_entries, spike_entries
from snnverify.runtime.cpu.intrinsics import add_vector, stack_buffer
from snnverify.runtime.cpu.layouts import WIDE, aligned_zeros, events_layout
from snnverify.graph import multiply_accumulates, synaptic_events
from snnverify.jobs.speed import SHAPES, converted, interleaved_best_times

from . import grid


MODELS = grid(["small_resnet", "small_resnet_pooled"], list(SHAPES))
BATCH = 16


class Simulation:
    """``arithmetic``: the converted network in float32, or its integer mode
    (``snnverify.quantize``; ``integer a8`` with 8-bit amplitudes, whose weights W·a the cpu
    gathers from int16 rows), timed against the same float ANN."""

    params = [MODELS, ["torch", "cpu", "gpu"], grid([32], [8, 32]), grid(["float32", "integer"],
                                                                        ["float32", "integer", "integer a8"])]
    param_names = ["model", "target", "timesteps", "arithmetic"]
    timeout = 1800
    number = 1
    repeat = 3
    rounds = 1  # one process per parameter set: asv's second round doubles the grid's time

    def setup_cache(self):
        return {model: converted(model) for model in self.params[0]}

    def setup(self, cache, model, target, timesteps, arithmetic):
        if target == "gpu":
            from numba import cuda

            if not cuda.is_available():
                raise NotImplementedError("no CUDA GPU visible to numba")
        ann, graph = cache[model]
        self.ann = ann
        self.snn = SNN(graph, timesteps, target=target)
        if arithmetic != "float32":
            self.snn = snnverify.quantize(self.snn, amplitude_bits=8 if arithmetic == "integer a8" else 16)
        self.reference = SNN(self.snn.graph, timesteps, target="torch")
        self.x = torch.randn(BATCH, *SHAPES[model], generator=torch.Generator().manual_seed(1))
        snnverify.simulate(self.snn, self.x[:1])  # compile the kernels outside the timing

    def time_simulate(self, cache, model, target, timesteps, arithmetic):
        snnverify.simulate(self.snn, self.x)

    def track_sparsity(self, cache, model, target, timesteps, arithmetic):
        _, spikes = snnverify.simulate(self.snn, self.x, record=True)
        return 100 * (1 - sum(s.sum() for s in spikes.values()) / sum(s.size for s in spikes.values()))

    track_sparsity.unit = "%"

    def track_agreement_with_torch(self, cache, model, target, timesteps, arithmetic):
        ours = snnverify.simulate(self.snn, self.x).argmax(1)
        reference = snnverify.simulate(self.reference, self.x).argmax(1)
        return 100 * float(np.mean(ours == reference))

    track_agreement_with_torch.unit = "%"

    def track_events_per_ann_mac(self, cache, model, target, timesteps, arithmetic):
        """The event-driven work beside the time: synaptic events (adds) per ANN multiply-accumulate."""
        _, spikes = snnverify.simulate(self.snn, self.x, record=True)
        return synaptic_events(self.snn.graph, spikes) / (len(self.x) * multiply_accumulates(self.snn.graph))

    track_events_per_ann_mac.unit = "events/MAC"

    def track_speedup_over_torch(self, cache, model, target, timesteps, arithmetic):
        seconds = interleaved_best_times({"torch": lambda: snnverify.simulate(self.reference, self.x),
                                          "backend": lambda: snnverify.simulate(self.snn, self.x)}, 2)
        return seconds["torch"] / seconds["backend"]

    track_speedup_over_torch.unit = "x"

    def track_time_over_ann_forward(self, cache, model, target, timesteps, arithmetic):
        def ann_forward():
            with torch.no_grad():
                self.ann(self.x)

        seconds = interleaved_best_times({"ann": ann_forward, "snn": lambda: snnverify.simulate(self.snn, self.x)}, 2)
        return seconds["snn"] / seconds["ann"]

    track_time_over_ann_forward.unit = "x"


class AnnForward:
    """The ANN's forward pass on the batch :class:`Simulation` runs (it depends on the model only)."""

    params = [MODELS]
    param_names = ["model"]
    number = 1
    repeat = 5
    rounds = 1

    def setup_cache(self):
        return {model: converted(model)[0] for model in MODELS}

    def setup(self, cache, model):
        self.ann = cache[model]
        self.x = torch.randn(BATCH, *SHAPES[model], generator=torch.Generator().manual_seed(1))

    def time_forward(self, cache, model):
        with torch.no_grad():
            self.ann(self.x)


@njit  # not cached: asv imports this file under another module name than a test run would
def _gather_rows(weights, entries, starts, out):
    """out[s] = Σ_e weights row entries[e] (64 lanes), e over stream s's entries — the CPU event
    kernel's inner loop (:func:`~snnverify.runtime.cpu.gather.add_entries`) alone, one thread."""
    acc = stack_buffer(out, WIDE)
    values = carray(acc, WIDE)
    for s in range(starts.shape[0] - 1):
        for k in range(WIDE):
            values[k] = 0
        add_entries(acc, weights, 0, 0, entries, starts[s], starts[s + 1], True, None)
        for k in range(WIDE):
            out[s, k] = values[k]


class EventGather:
    """The ceiling of the CPU event kernel: adds per second of its inner loop alone (one thread,
    no spike lists, no membrane update): 64 ascending random rows per stream (about what one
    output position gathers per step in a 64-channel ResNet layer) from a block of rows of 64
    float32 lanes of 32 KB (held in L1), 144 KB (a 3×3 conv's block with 64 input channels) and
    1.15 MB (512 input channels; held in L2 only). The simulation's rate (the events/s of
    ``snnverify speed``) is read against it: at this rate with no other cost, the simulation would take its synaptic events / this rate — the floor of the kernel's design."""

    params = [grid([576], [128, 576, 4608])]
    param_names = ["rows"]
    number = 1
    repeat = 5
    rounds = 1

    def setup(self, rows):
        rng = np.random.default_rng(0)
        streams, per_stream = 4096, 64
        self.weights = aligned_zeros((rows * WIDE,), np.float32)
        self.weights[:] = rng.standard_normal(rows * WIDE)
        self.entries = np.concatenate([np.sort(rng.choice(rows, per_stream, replace=False))
                                       for _ in range(streams)]).astype(np.int32)
        self.starts = np.arange(streams + 1, dtype=np.int64) * per_stream
        self.out = np.empty((streams, WIDE), np.float32)
        _gather_rows(self.weights, self.entries, self.starts, self.out)  # compile outside the timing

    def time_gather(self, rows):
        _gather_rows(self.weights, self.entries, self.starts, self.out)

    def track_adds_per_second(self, rows):
        seconds = interleaved_best_times({"gather": lambda: self.time_gather(rows)}, 3)["gather"]
        return len(self.entries) * WIDE / seconds / 1e9

    track_adds_per_second.unit = "G adds/s"


@njit  # not cached, as _gather_rows
def _spike_lists(spikes, channels, width, entries, starts):
    """The spike lists of every map of ``spikes`` [N, H·W·C] (channels-last), one after the
    other — the fused kernel's :func:`~snnverify.runtime.cpu.gather.spike_entries` alone, one
    thread. Returns the spikes listed."""
    total = 0
    for n in range(spikes.shape[0]):
        spike_entries(spikes[n].reshape(-1, channels), True, 0, channels, width, entries, starts)
        total += starts[-1]
    return total


class SpikeLists:
    """What a fused kernel pays per input map before its first add: the spike list of each
    channels-last map (16 channels per vector compress), 15 % spikes, one thread, 256 maps of
    16 channels at 28 × 28 (small_resnet's) or 64 at 32 × 32 (cifar_resnet18's first stage).
    A narrow layer feels it most: one compress per position of a 16-channel map, against about
    22 adds of 16 lanes (9 taps · 16 channels · 0.15) per output position of its conv."""

    params = [[16, 64]]
    param_names = ["channels"]
    number = 1
    repeat = 5
    rounds = 1

    def setup(self, channels):
        side = 28 if channels == 16 else 32
        self.width = side
        self.spikes = np.random.default_rng(0).random((256, side * side * channels)) < 0.15
        self.entries = np.empty(side * side * channels, np.int32)
        self.starts = np.empty(side * side + 1, np.int64)
        _spike_lists(self.spikes, channels, self.width, self.entries, self.starts)  # compile outside the timing

    def time_lists(self, channels):
        _spike_lists(self.spikes, channels, self.width, self.entries, self.starts)

    def track_flags_per_second(self, channels):
        seconds = interleaved_best_times({"lists": lambda: self.time_lists(channels)}, 3)["lists"]
        return self.spikes.size / seconds / 1e9

    track_flags_per_second.unit = "G flags/s"


class DenseConv:
    """The CPU's dense conv (:func:`~snnverify.runtime.cpu.dense.conv2d_dense_kernel`: a
    network's first conv, on the analog input) on the benchmark networks' stems, a batch of 32,
    all Numba threads: multiply-adds per second. ``small``: 1 → 16 channels, 3 × 3 at 28 × 28
    (small_resnet's); ``cifar``: 3 → 64, 3 × 3 at 32 × 32 (cifar_resnet18's); ``torchvision``:
    3 → 64, 7 × 7 of stride 2 at 32 × 32 (torchvision_resnet18's on CIFAR-shaped input)."""

    #: in channels, out channels, input side, kernel side, stride, padding
    STEMS = {"small": (1, 16, 28, 3, 1, 1), "cifar": (3, 64, 32, 3, 1, 1), "torchvision": (3, 64, 32, 7, 2, 3)}
    params = [list(STEMS)]
    param_names = ["stem"]
    number = 1
    repeat = 5
    rounds = 1

    def setup(self, stem):
        in_channels, out_channels, side, kernel, stride, padding = self.STEMS[stem]
        rng = np.random.default_rng(0)
        self.node = g.Conv2d("stem", weight=rng.standard_normal((out_channels, in_channels, kernel, kernel)).astype(
            np.float32), stride=(stride, stride), padding=(padding, padding))
        self.weight = events_layout(self.node.weight, self.node)
        self.bias = rng.standard_normal(out_channels).astype(np.float32)
        self.x = rng.standard_normal((32, in_channels, side, side)).astype(np.float32)
        self.out_shape = (32, *self.node.output_shape([self.x.shape[1:]]))
        self.time_conv(stem)  # compile outside the timing

    def time_conv(self, stem):
        CPU_KERNELS.conv2d(self.x, self.weight, self.bias, self.node, self.out_shape, False)

    def track_macs_per_second(self, stem):
        seconds = interleaved_best_times({"conv": lambda: self.time_conv(stem)}, 3)["conv"]
        return np.prod(self.out_shape) * np.prod(self.node.weight.shape[1:]) / seconds / 1e9

    track_macs_per_second.unit = "G MAC/s"


_DOUBLEWIDE = 2 * WIDE  # a global, so that Numba sees a constant


@njit  # not cached, as _gather_rows
def _add_one_row(row, adds, wide):
    """Σ of ``adds`` copies of ``row``'s first 64 (4 accumulator registers) or, with ``wide``,
    128 lanes (8 registers), each add depending on the previous one of its register."""
    acc = stack_buffer(row, _DOUBLEWIDE)
    values = carray(acc, _DOUBLEWIDE)
    for k in range(_DOUBLEWIDE):
        values[k] = 0
    if wide:
        for _ in range(adds):
            add_vector(acc, row, 0, _DOUBLEWIDE)
    else:
        for _ in range(adds):
            add_vector(acc, row, 0, WIDE)
    return values[0]


class AddChains:
    """The core's own bound under :class:`EventGather`: one thread adds one row (in L1), again
    and again, into register accumulators — 4 chains of 16 float32 lanes (a 64-lane gather) or
    8 (128 lanes). An AVX-512 add takes 4 cycles and a core starts 2 per cycle, so 4 chains are
    bound by the latency (16 lanes per cycle) and 8 by the throughput (32): the most any
    gather that keeps one neuron's sum in one lane can do, whatever its memory traffic."""

    params = [[64, 128]]
    param_names = ["lanes"]
    number = 1
    repeat = 5
    rounds = 1
    adds = 20_000_000

    def setup(self, lanes):
        self.row = aligned_zeros((_DOUBLEWIDE,), np.float32)
        self.row[:] = 1
        _add_one_row(self.row, 10, lanes > WIDE)  # compile outside the timing

    def time_add(self, lanes):
        _add_one_row(self.row, self.adds, lanes > WIDE)

    def track_adds_per_second(self, lanes):
        seconds = interleaved_best_times({"add": lambda: self.time_add(lanes)}, 3)["add"]
        return self.adds * lanes / seconds / 1e9

    track_adds_per_second.unit = "G adds/s"


_FIRST_RUN = """
import sys, time
import torch
import snnverify
from snnverify.api import SNN
from snnverify.jobs.speed import SHAPES, converted

ann, graph = converted(sys.argv[1])
snn = SNN(graph, 2, target="cpu")
x = torch.randn(2, *SHAPES[sys.argv[1]], generator=torch.Generator().manual_seed(1))
start = time.perf_counter()
snnverify.simulate(snn, x, 2)
print(time.perf_counter() - start)
"""


class FirstRun:
    """What a user waits for on a new machine or after an upgrade: a network's first
    ``simulate`` on the cpu target, in a fresh process with an empty kernel cache, so that every
    kernel it runs is compiled (small_resnet: the fused IF(conv) of spikes and the sparse and
    dense convs in float32; small_resnet_pooled adds the pools and the fused conv of a pooled
    map). Seconds, one sample: a compile takes tens of seconds, far above the host's noise."""

    params = [["small_resnet", "small_resnet_pooled"]]
    param_names = ["model"]
    timeout = 900
    number = 1
    repeat = 1
    rounds = 1

    def track_first_simulate_seconds(self, model):
        with tempfile.TemporaryDirectory() as cache:
            environment = {**os.environ, "SNNVERIFY_KERNEL_CACHE": cache}
            environment.pop("NUMBA_CACHE_DIR", None)
            run = subprocess.run([sys.executable, "-c", _FIRST_RUN, model], env=environment, capture_output=True,
                                 text=True, check=True, timeout=self.timeout)
        return float(run.stdout.split()[-1])

    track_first_simulate_seconds.unit = "seconds"
