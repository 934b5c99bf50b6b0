"""Public API, shaped like NeuroCUDA's ResNet-18 tutorial (``import snnverify as neurocuda`` works).

    snn = snnverify.convert(model, cal_loader, timesteps=32)
    snnverify.compile(snn, target="torch")
    accuracy = snnverify.evaluate(snn, test_loader)
    sparsity = snnverify.measure_sparsity(snn, test_loader)
    output, spikes = snnverify.simulate(snn, x, record=True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from snnverify import graph as g
from snnverify import nir_io
from snnverify.convert import Conversion, ConversionOptions, convert_model
from snnverify.runtime import Backend, RunResult, create_backend
from snnverify.runtime.quantize import quantize_graph
from snnverify.util import progress, split_batch


@dataclass(eq=False)
class SNN:
    """A converted spiking network: its graph, default T, and the backend it is compiled for."""

    graph: g.SpikingGraph
    timesteps: int  # default number of simulation steps T
    conversion: Conversion | None = None  # how it was made (None for graphs built by hand)
    target: str = "torch"
    options: dict = field(default_factory=dict)  # the backend's keyword options (e.g. loihi2_sim's reset)
    backend: Backend = field(init=False, repr=False)

    def __post_init__(self):
        self.timesteps = g.check_timesteps(self.timesteps)
        self.backend = create_backend(self.target, self.graph, **self.options)

    @property
    def training(self) -> dict | None:
        """Labelled training the conversion spent, {"epochs", "samples", ...} (None: built by hand)."""
        return None if self.conversion is None else self.conversion.training

    def run(self, x, timesteps: int | None = None, record: bool = False, device=None,
            horizons: tuple[int, ...] = ()) -> RunResult:
        """One batch through the compiled backend (T defaults to ``self.timesteps``); with
        ``horizons``, also the readouts of the first h steps for each h ≤ T."""
        timesteps = self.timesteps if timesteps is None else timesteps
        if horizons:
            return self.backend.run(x, timesteps, record, device, horizons=tuple(horizons))
        return self.backend.run(x, timesteps, record, device)


def convert(model: nn.Module, cal_loader, timesteps: int = 32, device=None, train_loader=None, **options) -> SNN:
    """Convert a trained ReLU ANN into an SNN.

    Traces ``model`` with torch.fx, folds BatchNorm, replaces every ReLU call site by QCFS
    (λ per channel from ``cal_loader``, then trained for ``qcfs_epochs``), converts to IF neurons
    (θ = λ, v[0] = θ/2, reset by subtraction) and fine-tunes by BPTT for ``finetune_epochs``
    (the loss averaged over the readouts at ``finetune_horizons``, by default ``timesteps``). ``budget_epochs=E`` spends E labelled epochs in all, split between the
    stages by the recipe measured best at E; ``snn.training`` records what was spent.
    ``options``: the fields of :class:`~snnverify.convert.ConversionOptions`.
    """
    unknown = set(options) - set(ConversionOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown conversion options {sorted(unknown)}; known: {sorted(ConversionOptions.__dataclass_fields__)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    conversion = convert_model(model, cal_loader, timesteps, device, train_loader, ConversionOptions(**options))
    return SNN(conversion.graph, timesteps, conversion)


def compile(snn: SNN, target: str = "torch", **options) -> SNN:  # noqa: A001 — the tutorial's name
    """Compile ``snn`` for ``target`` in place (and return it); unknown targets list the known ones.

    ``options`` go to the backend; only ``loihi2_sim`` takes any: ``reset="subtract"`` (default,
    the converted network's IF semantics on a programmable neuron) or ``"zero"`` (the published
    CUBA-LIF), and ``vth`` (threshold mantissa, 2^10). Unknown options are a TypeError."""
    if not isinstance(snn, SNN):
        raise TypeError(f"compile expects an SNN from snnverify.convert, got {type(snn).__name__}")
    snn.backend = create_backend(target, snn.graph, **options)
    snn.target, snn.options = target, dict(options)
    return snn


def quantize(snn: SNN, weight_bits: int = 8, amplitude_bits: int = 16, input_scale: float = 2.0**6) -> SNN:
    """An integer-mode copy of ``snn`` (compiled for the same target): integer weights with
    per-layer power-of-two scales, even integer thresholds, exact integer membranes — so every
    backend gives identical spikes. See :mod:`snnverify.runtime.quantize`. With
    ``weight_bits + amplitude_bits ≤ 16`` (8 and 8, say) a conv of spikes has weights W·a within
    16 bits, which the cpu backend gathers from int16 rows, up to 1.5× as fast on cores whose
    gathers wait on L2 (reports/speed, "int16 weight rows where W' fits them")."""
    if not isinstance(snn, SNN):
        raise TypeError(f"quantize expects an SNN, got {type(snn).__name__}")
    graph = quantize_graph(snn.graph, weight_bits, amplitude_bits, input_scale)
    return SNN(graph, snn.timesteps, snn.conversion, target=snn.target, options=dict(snn.options))


def simulate(snn: SNN, x, timesteps: int | None = None, record: bool = False, device=None):
    """Simulate one batch. Returns the output current averaged over T ([batch, classes] numpy);
    with ``record=True`` also ``{IF layer name: array [T, batch, ...]}``: bool, or a burst layer's
    spike counts as uint8 (:func:`snnverify.graph.spike_dtype`)."""
    result = snn.run(x, timesteps, record, device)
    return (result.output, result.spikes) if record else result.output


def to_nir(snn: SNN, path, mode: str = "lossless"):
    """Write ``snn`` as a NIR file (``nir.write``); returns the path.

    ``mode="lossless"``: for snnverify — what NIR cannot express (reset by subtraction,
    v[0] = θ/2, fire on ≥, graded amplitude, burst size ``max_spikes``, scales, integer dtypes,
    node names, T) is kept in node metadata under the key ``"snnverify"``, and ``from_nir``
    restores the network exactly (another framework runs a burst layer as a NIR IF, one spike
    per step at most, unless it reads that metadata).
    ``mode="plain"``: NIR only, for other frameworks; the meaning changes as documented in
    :mod:`snnverify.nir_io` (amplitude folded into the next weights, ≥ emulated by a threshold
    one float32 step lower, v[0] = 0, reset to zero); burst layers are refused."""
    if not isinstance(snn, SNN):
        raise TypeError(f"to_nir expects an SNN, got {type(snn).__name__}")
    return nir_io.write(snn.graph, path, mode, snn.timesteps)


def from_nir(path, dt: float | None = None, target: str = "torch", timesteps: int | None = None) -> SNN:
    """Read a NIR file — ours (lossless or plain) or another framework's — as an SNN compiled for
    ``target``. ``dt``: the time step for nodes with time constants (LIF); the argument, else the
    graph's metadata ``dt``, else an error asking for it. ``timesteps``: the default T, else the
    one written by ``to_nir``, else 1. Recorded spikes are keyed by the NIR node names. Files
    that cannot be imported raise :class:`NIRFormatError` naming the file and node."""
    imported = nir_io.read(path, dt)
    return SNN(imported.graph, imported.timesteps if timesteps is None else timesteps, target=target)


def evaluate(model_or_snn, loader, device=None, timesteps: int | None = None) -> float:
    """Fraction of correctly classified samples. An SNN predicts the argmax of its output current
    averaged over T; neuron state starts afresh for every batch. An ``nn.Module`` runs in eval mode."""
    if isinstance(model_or_snn, SNN):
        accuracy = snn_statistics(model_or_snn, loader, device, timesteps)["accuracy"]
        if accuracy != accuracy:  # NaN: no labels
            raise ValueError("evaluate needs (inputs, labels) batches")
        return accuracy
    if not isinstance(model_or_snn, nn.Module):
        raise TypeError(f"evaluate expects an SNN or a torch.nn.Module, got {type(model_or_snn).__name__}")
    model = model_or_snn.eval()
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    correct, total = 0, 0
    with torch.no_grad():
        for batch in progress(loader, desc="ANN evaluation"):
            x, y = split_batch(batch)
            if y is None:
                raise ValueError("evaluate needs (inputs, labels) batches")
            correct += int((model(x.to(device)).argmax(1).cpu() == y.cpu()).sum())
            total += len(y)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return correct / total


def accuracy_over_time(snn: SNN, loader, timesteps, device=None) -> dict[int, float]:
    """{T: accuracy} for every T in ``timesteps``, from one run of max T steps per batch: the
    readout of the first T steps is what a run of T steps returns (:attr:`RunResult.readouts`),
    so each value equals ``evaluate(snn, loader, timesteps=T)``."""
    if not isinstance(snn, SNN):
        raise TypeError(f"accuracy_over_time expects an SNN, got {type(snn).__name__}")
    if isinstance(timesteps, (int, np.integer)) or not len(timesteps):
        raise ValueError(f"timesteps must be a non-empty list of T, got {timesteps!r}")
    longest = max(g.check_timesteps(t) for t in timesteps)
    horizons = g.check_horizons(timesteps, longest)
    correct, total = dict.fromkeys(horizons, 0), 0
    for batch in progress(loader, desc=f"SNN evaluation (T={','.join(map(str, horizons))})"):
        x, y = split_batch(batch)
        if y is None:
            raise ValueError("accuracy_over_time needs (inputs, labels) batches")
        readouts = snn.run(x, longest, device=device, horizons=horizons).readouts
        labels = y.cpu().numpy()
        for h in horizons:
            correct[h] += int((readouts[h].argmax(1) == labels).sum())
        total += len(y)
    if total == 0:
        raise ValueError("accuracy_over_time: the loader yielded no samples")
    return {h: correct[h] / total for h in horizons}


def measure_sparsity(snn: SNN, loader, device=None, timesteps: int | None = None) -> float:
    """1 − (number of spikes) / (number of IF neurons · T · number of samples), over all IF
    neurons, all T steps and all samples: for binary neurons the fraction of neuron-timesteps
    without a spike. A burst step (``max_spikes`` B > 1) carries up to B spikes, all counted, so
    with burst layers the value lies below that fraction, and below 0 where layers average more
    than one spike per step (down to 1 − B)."""
    return snn_statistics(snn, loader, device, timesteps)["sparsity"]


def snn_statistics(snn: SNN, loader, device=None, timesteps: int | None = None) -> dict[str, float]:
    """Accuracy and sparsity (as :func:`evaluate` and :func:`measure_sparsity`) in one pass."""
    if not isinstance(snn, SNN):
        raise TypeError(f"expected an SNN from snnverify.convert, got {type(snn).__name__}")
    timesteps = snn.timesteps if timesteps is None else g.check_timesteps(timesteps)
    shapes = snn.graph.shapes
    neurons = sum(int(np.prod(shapes[layer.name])) for layer in snn.graph.neuron_layers)
    spikes, samples, correct, labelled = 0, 0, 0, 0
    for batch in progress(loader, desc=f"SNN evaluation (T={timesteps})"):
        x, y = split_batch(batch)
        result = snn.run(x, timesteps, device=device)
        spikes += sum(result.spike_counts.values())
        samples += len(x)
        if y is not None:
            correct += int((result.output.argmax(1) == y.cpu().numpy()).sum())
            labelled += len(y)
    if samples == 0:
        raise ValueError("the loader yielded no samples")
    return {
        "accuracy": correct / labelled if labelled else float("nan"),
        "sparsity": 1.0 - spikes / (neurons * timesteps * samples) if neurons else float("nan"),
    }
