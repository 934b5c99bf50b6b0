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

from snnverify import graph as g
from snnverify.runtime.torch_ref import TorchExecutor
from snnverify.train import fit


def finetune(graph: g.SpikingGraph, loader, horizons: tuple[int, ...], epochs: int, lr: float,
             device) -> g.SpikingGraph:
    """A new graph with weights and biases trained by BPTT over ``max(horizons)`` steps (Adam)."""
    horizons = tuple(g.check_timesteps(h) for h in horizons)
    if epochs == 0:
        return graph
    executor = TorchExecutor(graph).to(device).train()
    fit(
        lambda x: executor(x, max(horizons), horizons=horizons)[0],
        [p for p in executor.parameters() if p.requires_grad],
        loader,
        epochs,
        lr,
        device,
        desc=f"BPTT fine-tuning (T={','.join(map(str, horizons))})",
        optimizer="adam",
    )
    return executor.to_graph()
