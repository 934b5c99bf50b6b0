"""Pass 3 — replace every ReLU by the QCFS activation (Bu et al., ICLR 2022) and train it.

QCFS: a = λ·clip(floor(z·L/λ + 1/2)/L, 0, 1), with a learnable per-channel λ and the floor
passed straight through in the backward pass. An IF neuron with θ = λ, v[0] = θ/2 and reset
by subtraction, driven by a constant current z for T = L steps, emits exactly the QCFS level
count, which is why the converted network matches this ANN (see ``snnverify.graph.IF``).

λ starts at a high percentile of each channel's pre-activations on the calibration data
(a few thousand sampled positions per batch); channels that never activate get the layer's
largest λ, so every threshold is positive.

The output over its threshold, a/λ ∈ [0, 1], is the firing rate of the IF neuron the
activation becomes (spikes per step), so training can trade accuracy for fewer spikes by
penalising its mean over all neurons (``rate_penalty`` of :func:`train_qcfs`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import torch
from torch import fx, nn

from snnverify.convert.fold_bn import BATCHNORMS
from snnverify.train import fit
from snnverify.util import progress, split_batch


class QCFS(nn.Module):
    """Quantisation-clip-floor-shift activation with per-channel λ (channel = dim 1)."""

    def __init__(self, lam: torch.Tensor, levels: int):
        super().__init__()
        if levels < 1:
            raise ValueError(f"QCFS levels L must be >= 1, got {levels}")
        self.levels = levels
        self.lam = nn.Parameter(lam.detach().clone().float())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lam = self.lam.view(-1, *[1] * (z.dim() - 2))
        # z·L first, then /λ: at an exact tie z·L/λ + 1/2 ∈ ℤ this division is exact whenever
        # z·L is, so the floor agrees with the IF neuron's count; z/λ·L would round below it.
        y = torch.clamp(z * self.levels / lam, 0, self.levels) + 0.5
        y = y + (torch.floor(y) - y).detach()  # floor with a straight-through gradient
        return y / self.levels * lam

    def extra_repr(self) -> str:
        return f"channels={self.lam.numel()}, levels={self.levels}"


def relu_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.ReLU)]


@torch.no_grad()
def calibrate(gm: fx.GraphModule, loader, percentile: float, device, samples_per_batch: int = 2048) -> dict[str, torch.Tensor]:
    """Per-channel ``percentile`` of the input of every ReLU module, over the loader's batches."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    sites = [n.target for n in relu_nodes(gm)]
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in sites}
    generator = torch.Generator().manual_seed(0)

    def record(name):
        def hook(module, args):
            z = args[0].detach().transpose(0, 1).reshape(args[0].shape[1], -1)  # [C, positions]
            keep = torch.randperm(z.shape[1], generator=generator)[:samples_per_batch]
            samples[name].append(z[:, keep.to(z.device)].float().cpu())

        return hook

    handles = [gm.get_submodule(name).register_forward_pre_hook(record(name)) for name in sites]
    gm.to(device).eval()
    try:
        batches = 0
        for batch in progress(loader, desc="calibration"):
            gm(split_batch(batch)[0].to(device))
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
    if batches == 0:
        raise ValueError("the calibration loader yielded no batches; QCFS thresholds need calibration data")
    lams = {}
    for name in sites:
        lam = torch.from_numpy(np.percentile(torch.cat(samples[name], 1).numpy(), percentile, axis=1)).float()
        fallback = lam.max().item() if lam.max() > 0 else 1.0
        lams[name] = torch.where(lam > 0, lam, torch.full_like(lam, fallback))
    return lams


def insert_qcfs(gm: fx.GraphModule, loader, levels: int, percentile: float, device) -> fx.GraphModule:
    """A copy of ``gm`` with every ReLU module replaced by QCFS, λ from :func:`calibrate`."""
    lams = calibrate(gm, loader, percentile, device)
    gm = copy.deepcopy(gm)
    for name, lam in lams.items():
        gm.add_submodule(name, QCFS(lam, levels))
    gm.recompile()
    return gm


@contextmanager
def recording_rates(gm: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every QCFS call in a forward pass of ``gm`` appends its rates a/λ (one
    tensor [batch, C, ...], differentiable) to the list it yields."""
    rates: list[torch.Tensor] = []

    def record(module, args, output):
        rates.append(output / module.lam.view(-1, *[1] * (output.dim() - 2)))

    handles = [m.register_forward_hook(record) for m in gm.modules() if isinstance(m, QCFS)]
    try:
        yield rates
    finally:
        for handle in handles:
            handle.remove()


def mean_rate(rates: list[torch.Tensor]) -> torch.Tensor:
    """The mean rate over all neurons recorded, Σ a/λ / (number of neurons · samples): every
    neuron weighs the same, as in ``snnverify.measure_sparsity`` (sparsity = 1 − rate)."""
    return sum(r.sum() for r in rates) / sum(r.numel() for r in rates)


@torch.no_grad()
def qcfs_rate(gm: nn.Module, loader, device) -> float:
    """The mean rate a/λ of the QCFS network's neurons over the loader's samples."""
    total, count = 0.0, 0
    gm.to(device).eval()
    with recording_rates(gm) as rates:
        for batch in progress(loader, desc="QCFS rates"):
            gm(split_batch(batch)[0].to(device))
            total += float(sum(r.sum() for r in rates))
            count += sum(r.numel() for r in rates)
            rates.clear()
    if count == 0:
        raise ValueError("qcfs_rate: the loader yielded no samples or the network has no QCFS activation")
    return total / count


def train_qcfs(gm: fx.GraphModule, loader, epochs: int, lr: float, device, optimizer: str = "sgd",
               threshold_lr: float | None = None, rate_penalty: float = 0.0) -> fx.GraphModule:
    """Train a copy of the QCFS network with labels (cosine schedule): weights and biases at
    ``lr``, the thresholds λ at ``threshold_lr`` (default ``lr``) without weight decay.

    BatchNorm layers keep their running statistics (eval mode) and train γ and β, so the
    network trains as the ANN did, in its own parametrisation, and is folded afterwards. The
    folded network is the same function, but its weights carry γ/σ: a gradient step on them is
    not the step the ANN's training took, and on cifar_resnet18 (Fashion-MNIST at 32 × 32) SGD
    at 0.01 diverged from the first step (gradient norm 16, then 185 and 6,428; accuracy to
    chance), as did AdamW at 1e-3, where the same steps with BatchNorm in place stay stable.

    With ``rate_penalty`` ρ > 0 the loss per batch is cross-entropy + ρ · r̄, where
    r̄ = Σ a/λ / (number of neurons · batch) is the mean firing rate the SNN will have
    (:func:`mean_rate`); ρ = 0 trains exactly as without the penalty.

    λ is kept ≥ 1e-4 after every step so that the thresholds it becomes stay positive.
    """
    gm = copy.deepcopy(gm).to(device).train()
    for module in gm.modules():
        if isinstance(module, BATCHNORMS):
            module.eval()  # normalise with the ANN's statistics, never update them
    lams = [m.lam for m in gm.modules() if isinstance(m, QCFS)]
    chosen = {id(lam) for lam in lams}
    weights = [p for p in gm.parameters() if id(p) not in chosen]
    groups = [{"params": weights}, {"params": lams, "lr": lr if threshold_lr is None else threshold_lr,
                                    "weight_decay": 0.0}]

    def keep_positive():
        with torch.no_grad():
            for lam in lams:
                lam.clamp_(min=1e-4)

    def penalty() -> torch.Tensor:
        rate = mean_rate(rates)
        rates.clear()  # the next forward pass records afresh
        return rate_penalty * rate

    # without a penalty no hook is registered and no term added: the default trains as before
    with recording_rates(gm) if rate_penalty else nullcontext([]) as rates:
        fit(gm, groups, loader, epochs, lr, device, desc="QCFS training", optimizer=optimizer,
            after_step=keep_positive, extra_loss=penalty if rate_penalty else None)
    return gm.eval()
