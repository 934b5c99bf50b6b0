"""Small helpers shared across the package: progress bars, batches, training, atomic writes."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

#: optimizers of :func:`fit`
OPTIMIZERS = ("sgd", "adam", "adamw")


def progress(iterable: Iterable, desc: str, total: int | None = None):
    """A tqdm bar for a long loop; hidden when stderr is not a terminal (CI logs stay readable)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=None, dynamic_ncols=True)


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels) from a loader batch that is ``(x, y, ...)`` or a bare ``x``."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


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
) -> list[float]:
    """Minimise cross-entropy of ``forward(x)`` against the labels; returns the mean loss per epoch.

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
            loss = nn.functional.cross_entropy(forward(x.to(device)), y.to(device))
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


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
