"""Pass 2 — fold every BatchNorm into the convolution or linear layer before it.

In eval mode BN computes y = γ·(x − μ)/√(σ² + ε) + β. With x = W⋆u + b this is
y = (s·W)⋆u + s·(b − μ) + β with s = γ/√(σ² + ε), per output channel; a BN without affine
parameters has γ = 1, β = 0. The arithmetic is done in float64 and rounded once to float32.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from snnverify.convert.trace import sole_caller, unique_module_name
from snnverify.util import progress, split_batch

_FOLDABLE = (nn.Conv2d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of canonical ``gm`` with every BatchNorm folded into the conv/linear feeding it.

    Raises ValueError naming the BatchNorm when it cannot be folded: its input is not a
    conv/linear layer, that layer's output is also used elsewhere, or it has no running stats.
    """
    gm = copy.deepcopy(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), BATCHNORMS):
            continue
        bn = gm.get_submodule(node.target)
        source = node.args[0]
        layer = gm.get_submodule(source.target) if source.op == "call_module" else None
        if not isinstance(layer, _FOLDABLE):
            raise ValueError(
                f"BatchNorm {node.target!r} follows {source.name!r}, not a Conv2d or Linear layer; it cannot be folded"
            )
        if len(source.users) != 1:
            raise ValueError(f"BatchNorm {node.target!r}: the output of {source.target!r} is also used unnormalised")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"BatchNorm {node.target!r} has no running statistics (track_running_stats=False)")
        if sole_caller(gm, source):
            gm.add_submodule(source.target, fuse(layer, bn))
        else:  # the same conv module is called elsewhere, maybe without this BN
            name = unique_module_name(gm, f"{source.target}_folded")
            gm.add_submodule(name, fuse(layer, bn))
            source.target = name
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


@torch.no_grad()
def recalibrate_batchnorm(gm: fx.GraphModule, loader, device) -> fx.GraphModule:
    """A copy of ``gm`` whose BatchNorm running statistics are re-estimated on ``loader``:
    the per-channel mean and unbiased variance of each BatchNorm's input over all samples
    (accumulated in float64, every sample weighted equally); other parameters are unchanged.

    Used after max-pool → average-pool: the swap shrinks the activations that follow, and
    BatchNorm layers still normalising with the old statistics would wreck the network
    before QCFS training ever sees it. Layers are re-estimated one at a time, in order, so
    each sees inputs normalised with its predecessors' new statistics."""
    gm = copy.deepcopy(gm).to(device).eval()
    for bn in [m for m in gm.modules() if isinstance(m, BATCHNORMS)]:
        total, squares, count = 0.0, 0.0, 0

        def accumulate(module, args):
            nonlocal total, squares, count
            z = args[0].detach().double().transpose(0, 1).reshape(args[0].shape[1], -1)
            total, squares, count = total + z.sum(1), squares + (z * z).sum(1), count + z.shape[1]

        handle = bn.register_forward_pre_hook(accumulate)
        try:
            for batch in progress(loader, desc="BatchNorm recalibration"):
                gm(split_batch(batch)[0].to(device))
        finally:
            handle.remove()
        mean = total / count
        bn.running_mean.copy_(mean)
        bn.running_var.copy_((squares - count * mean * mean) / max(count - 1, 1))
    return gm


def fuse(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    """A new layer equal to ``bn(layer(x))`` in eval mode, always with a bias."""
    if bn.num_features != layer.weight.shape[0]:
        raise ValueError(f"BatchNorm has {bn.num_features} features but the layer before it has {layer.weight.shape[0]}")
    with torch.no_grad():
        weight = layer.weight.double()
        bias = layer.bias.double() if layer.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
        gamma = bn.weight.double() if bn.affine else torch.ones_like(bias)
        beta = bn.bias.double() if bn.affine else torch.zeros_like(bias)
        scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
        fused = copy.deepcopy(layer)
        if fused.bias is None:
            fused.bias = nn.Parameter(torch.empty(weight.shape[0], dtype=layer.weight.dtype))
        fused.weight.copy_(weight * scale.view(-1, *[1] * (weight.dim() - 1)))
        fused.bias.copy_((bias - bn.running_mean.double()) * scale + beta)
    return fused
