"""Pass 5 — BPTT fine-tuning of the converted SNN with the atan surrogate gradient.

The loss is the cross-entropy of the output current averaged over the first h steps, averaged
over the horizons h ∈ H (one run of max H steps; H = {T} by default). Several horizons train one
SNN for every T at once: a loss at T = 4 alone raises accuracy at T = 4 and lowers it at large T,
where the rate of each neuron no longer matches the weights it was tuned with. Gradients flow back
through all steps of every IF layer (reset included) via
:class:`snnverify.runtime.torch_ref.IFNeurons`. Weights and biases train; thresholds stay
at the QCFS λ. Training runs on the reference executor itself, so what is fine-tuned is
exactly what is executed (this is the one place where ``convert`` imports ``runtime``).
"""

from __future__ import annotations

import math

from snnverify import graph as g
from snnverify.runtime.torch_ref import TorchExecutor
from snnverify.train import fit


def finetune(graph: g.SpikingGraph, loader, horizons: tuple[int, ...], epochs: int, lr: float,
             device, rate_penalty: float = 0.0) -> g.SpikingGraph:
    """A new graph with weights and biases trained by BPTT over ``max(horizons)`` steps (Adam).

    With ``rate_penalty`` ρ > 0 the loss per batch adds ρ · r, r = spikes / (IF neurons · T ·
    batch) over the run's T = max(horizons) steps: the spike rate that ``measure_sparsity``
    reports, its gradient through the surrogate. ρ = 0 trains exactly as without it."""
    horizons = tuple(g.check_timesteps(h) for h in horizons)
    if epochs == 0:
        return graph
    executor = TorchExecutor(graph).to(device).train()
    timesteps = max(horizons)
    neurons = sum(math.prod(graph.shapes[layer.name]) for layer in graph.neuron_layers)
    rates = []

    def forward(x):
        output, counts, _ = executor(x, timesteps, horizons=horizons)
        if rate_penalty:
            rates.append(sum(counts.values()) / (neurons * timesteps * len(x)))
        return output

    def penalty():
        return rate_penalty * rates.pop()

    fit(
        forward,
        [p for p in executor.parameters() if p.requires_grad],
        loader,
        epochs,
        lr,
        device,
        desc=f"BPTT fine-tuning (T={','.join(map(str, horizons))})",
        optimizer="adam",
        extra_loss=penalty if rate_penalty else None,
    )
    return executor.to_graph()
