"""Pass 5 — BPTT fine-tuning of the converted SNN with the atan surrogate gradient.

The loss is the cross-entropy of the output current averaged over T; gradients flow back
through all T steps of every IF layer (reset included) via
:class:`snnverify.runtime.torch_ref.AtanSpike`. Weights and biases train; thresholds stay
at the QCFS λ. Training runs on the reference executor itself, so what is fine-tuned is
exactly what is executed (this is the one place where ``convert`` imports ``runtime``).
"""

from __future__ import annotations

from snnverify import graph as g
from snnverify.runtime.torch_ref import TorchExecutor
from snnverify.train import fit


def finetune(graph: g.SpikingGraph, loader, timesteps: int, epochs: int, lr: float, device) -> g.SpikingGraph:
    """A new graph with weights and biases trained by BPTT over ``timesteps`` steps (Adam)."""
    timesteps = g.check_timesteps(timesteps)
    if epochs == 0:
        return graph
    executor = TorchExecutor(graph).to(device).train()
    fit(
        lambda x: executor(x, timesteps)[0],
        [p for p in executor.parameters() if p.requires_grad],
        loader,
        epochs,
        lr,
        device,
        desc=f"BPTT fine-tuning (T={timesteps})",
        optimizer="adam",
    )
    return executor.to_graph()
