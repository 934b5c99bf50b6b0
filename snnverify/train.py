"""The labelled training loop shared by ANN training (``snnverify run``), QCFS training and
BPTT fine-tuning."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from snnverify.util import progress, split_batch

#: optimizers of :func:`fit`
OPTIMIZERS = ("sgd", "adam", "adamw")


def fit(
    forward: Callable[[torch.Tensor], torch.Tensor],
    parameters: list,
    loader,
    epochs: int,
    lr: float,
    device,
    desc: str,
    optimizer: str = "sgd",
    after_step: Callable[[], None] | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> list[float]:
    """Minimise cross-entropy of ``forward(x)`` against the labels, plus ``extra_loss()`` (called
    after each forward pass, e.g. a penalty on what hooks recorded during it) when given; returns
    the mean loss per epoch.

    ``forward`` returns logits [batch, K], or [H, batch, K] for H readouts of the same batch
    (an SNN stopped at several T): the loss is then the mean of the H cross-entropies.

    ``sgd``: SGD, momentum 0.9, weight decay 5e-4 (the QCFS recipe); ``adam``: Adam, no decay;
    ``adamw``: AdamW, decoupled weight decay 0.01. All with a cosine learning-rate schedule over
    all steps. ``parameters`` may be torch parameter groups (dicts with their own ``lr``).
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if epochs == 0:
        return []
    if optimizer == "sgd":
        opt = torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=5e-4)
    elif optimizer == "adam":
        opt = torch.optim.Adam(parameters, lr=lr)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    steps = epochs * max(len(loader), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    losses = []
    for epoch in progress(range(epochs), desc=desc):
        total, count = 0.0, 0
        for batch in progress(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}"):
            x, y = split_batch(batch)
            if y is None:
                raise ValueError(f"{desc}: training needs (inputs, labels) batches, got inputs only")
            logits, labels = forward(x.to(device)), y.to(device)
            if logits.dim() == 3:  # [H, batch, K]: every readout against the same labels
                logits, labels = logits.flatten(0, 1), labels.repeat(logits.shape[0])
            loss = nn.functional.cross_entropy(logits, labels)
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(y)
            count += len(y)
        losses.append(total / max(count, 1))
    return losses
