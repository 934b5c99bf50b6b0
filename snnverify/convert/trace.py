"""Pass 1 — trace a torch model with torch.fx into a canonical graph module.

In the canonical form every operation is one of

* ``call_module``: Conv2d, Linear, BatchNorm1d/2d, ReLU, AvgPool2d, Flatten;
* ``call_function``: ``operator.add`` of two traced values (a residual merge).

Canonicalisation rules:

* every ReLU call site — ``nn.ReLU`` modules, ``F.relu``, ``torch.relu``, ``x.relu()`` — gets its
  own fresh ``nn.ReLU`` submodule, so a module called twice (torchvision's BasicBlock) becomes two
  neuron layers with their own thresholds;
* max pooling is replaced by average pooling with the same window (count_include_pad=True);
  QCFS training then adapts the network to it (see :func:`trace` for why);
* adaptive average pooling becomes an AvgPool2d whose window the traced shapes fix;
* ``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(x.size(0), -1)`` and ``x.reshape(...)`` of
  that form become ``nn.Flatten``; Dropout and Identity are removed.

Anything else raises ValueError naming the module path (or the traced node) and its type.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp


def check_finite_parameters(model: nn.Module) -> None:
    """Raise ValueError naming the first parameter or buffer holding NaN or inf."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
            raise ValueError(f"model parameter {name!r} contains a non-finite value ({bad})")


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Trace ``model`` (a copy; the original is untouched) into canonical form.

    ``example`` is a batch of inputs, used to propagate shapes (stored as ``node.meta["tensor_meta"]``).

    Max-pool method: a max over spike trains is not the spike train of the max, and the
    spiking max-pools that fix this need lateral inhibition or gating that IF neurons with
    graded output do not have. We therefore swap MaxPool2d for AvgPool2d with the same window
    before QCFS training, which then trains the network with the average pool in place; the
    run report records the ANN accuracy before and after the swap.
    """
    check_finite_parameters(model)
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as error:  # fx raises several types for data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {error}") from error
    ShapeProp(gm).propagate(example)
    called: set[str] = set()  # module targets already called once
    gm.meta["max_pools_replaced"] = []
    for node in list(gm.graph.nodes):
        _canonicalise(gm, node, called)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    ShapeProp(gm).propagate(example)
    return gm


_KEPT_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
_REMOVED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


def _canonicalise(gm: fx.GraphModule, node: fx.Node, called: set[str]) -> None:
    if node.op in ("placeholder", "output"):
        return
    if node.op == "get_attr":
        raise ValueError(f"node {node.name!r}: the forward reads parameter {node.target!r} directly; use a module")
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        where = f"module {node.target!r} of type {type(module).__name__}"
        if isinstance(module, _KEPT_MODULES):
            if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
                raise ValueError(f"{where}: padding_mode={module.padding_mode!r} is not supported (only 'zeros')")
            if isinstance(module, nn.Conv2d) and isinstance(module.padding, str):
                raise ValueError(f"{where}: padding={module.padding!r} is not supported; give it as numbers")
            return
        if isinstance(module, nn.ReLU):
            if node.target in called:  # a reused ReLU module: this call site gets its own
                _swap(gm, node, nn.ReLU(), node.target)
            called.add(node.target)
        elif isinstance(module, _REMOVED_MODULES):
            node.replace_all_uses_with(node.args[0])
        elif isinstance(module, nn.MaxPool2d):
            _check_pool(where, module.dilation, module.ceil_mode, module.return_indices)
            _swap(gm, node, _avg_pool(where, module.kernel_size, module.stride, module.padding), node.target)
            gm.meta["max_pools_replaced"].append(node.target)
        elif isinstance(module, nn.AvgPool2d):
            _check_avg_pool(where, module.padding, module.ceil_mode, module.count_include_pad, module.divisor_override)
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            _swap(gm, node, _adaptive_pool(where, node, module.output_size), node.target)
        elif isinstance(module, nn.Flatten):
            if (module.start_dim, module.end_dim) != (1, -1):
                raise ValueError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
        else:
            raise ValueError(f"unsupported {where}")
        return

    base = _scope(node)
    where = f"{node.op} {node.target if isinstance(node.target, str) else getattr(node.target, '__name__', node.target)!r} (traced node {node.name!r})"
    if node.op == "call_function":
        target = node.target
        if target in _RELU_FUNCTIONS:
            _swap(gm, node, nn.ReLU(), f"{base}relu")
        elif target in _ADD_FUNCTIONS:
            if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
                raise ValueError(f"{where}: only the sum of two tensors is supported (no constants, no alpha)")
            node.target = operator.add
        elif target is torch.flatten:
            _flatten(gm, node, where, base)
        elif target is F.max_pool2d:
            args = _call_args(node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"])
            _check_pool(where, args.get("dilation", 1), args.get("ceil_mode", False), args.get("return_indices", False))
            pool = _avg_pool(where, args["kernel_size"], args.get("stride"), args.get("padding", 0))
            _swap(gm, node, pool, f"{base}pool")
            gm.meta["max_pools_replaced"].append(node.name)
        elif target is F.avg_pool2d:
            args = _call_args(node, ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"])
            padding = args.get("padding", 0)
            _check_avg_pool(where, padding, args.get("ceil_mode", False), args.get("count_include_pad", True), args.get("divisor_override"))
            _swap(gm, node, nn.AvgPool2d(args["kernel_size"], args.get("stride"), padding), f"{base}pool")
        elif target is F.adaptive_avg_pool2d:
            args = _call_args(node, ["input", "output_size"])
            _swap(gm, node, _adaptive_pool(where, node, args["output_size"]), f"{base}pool")
        else:
            raise ValueError(f"unsupported {where}")
    elif node.op == "call_method":
        if node.target == "relu":
            _swap(gm, node, nn.ReLU(), f"{base}relu")
        elif node.target == "flatten":
            _flatten(gm, node, where, base)
        elif node.target in ("view", "reshape"):
            if not _is_batch_flatten(node):
                raise ValueError(f"{where}: only x.{node.target}(x.size(0), -1) (a flatten) is supported")
            _swap(gm, node, nn.Flatten(), f"{base}flatten", args=(node.args[0],))
        elif node.target == "size" and all(u.op == "call_method" and u.target in ("view", "reshape") for u in node.users):
            return  # consumed by a view/reshape flatten; removed as dead code afterwards
        else:
            raise ValueError(f"unsupported {where}")


def _scope(node: fx.Node) -> str:
    """Qualified path of the module whose forward created ``node``, with a trailing dot."""
    stack = node.meta.get("nn_module_stack") or {}
    return f"{list(stack.values())[-1][0]}." if stack else ""


def unique_module_name(gm: fx.GraphModule, base: str) -> str:
    """``base``, or ``base_k`` with the smallest k that no submodule of ``gm`` uses yet."""
    existing = {name for name, _ in gm.named_modules()}
    if base not in existing:
        return base
    k = 1
    while f"{base}_{k}" in existing:
        k += 1
    return f"{base}_{k}"


def _swap(gm: fx.GraphModule, node: fx.Node, module: nn.Module, base: str, args=None) -> None:
    """Make ``node`` a call of ``module``: under the node's own module name when nothing else
    calls that module, else under a fresh name derived from ``base``."""
    if node.op == "call_module" and args is None and sole_caller(gm, node):
        gm.add_submodule(node.target, module)
        return
    name = unique_module_name(gm, base)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args=args if args is not None else (node.args[0],))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def sole_caller(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is the only call of its module."""
    return all(n is node or n.op != "call_module" or n.target != node.target for n in gm.graph.nodes)


def _call_args(node: fx.Node, names: list[str]) -> dict:
    values = dict(zip(names, node.args))
    values.update(node.kwargs)
    return values


def _flatten(gm, node, where, base):
    args = _call_args(node, ["input", "start_dim", "end_dim"])
    if (args.get("start_dim", 0), args.get("end_dim", -1)) != (1, -1):
        raise ValueError(f"{where}: only flatten(x, 1) is supported (start_dim=1, end_dim=-1)")
    _swap(gm, node, nn.Flatten(), f"{base}flatten")


def _is_batch_flatten(node: fx.Node) -> bool:
    shape = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) == 2 else ()
    if len(shape) != 2 or shape[1] != -1:
        return False
    size = shape[0]
    return isinstance(size, fx.Node) and size.op == "call_method" and size.target == "size" and size.args[1:] == (0,)


def _check_pool(where, dilation, ceil_mode, return_indices):
    if dilation not in (1, (1, 1)) or ceil_mode or return_indices:
        raise ValueError(f"{where}: max pooling with dilation, ceil_mode or return_indices is not supported")


def _avg_pool(where, kernel_size, stride, padding) -> nn.AvgPool2d:
    kernel = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
    pad = padding if isinstance(padding, tuple) else (padding, padding)
    if any(2 * p > k for p, k in zip(pad, kernel)):
        raise ValueError(f"{where}: padding {padding} exceeds half the kernel {kernel_size}")
    return nn.AvgPool2d(kernel_size, stride if stride else kernel_size, padding, count_include_pad=True)


def _check_avg_pool(where, padding, ceil_mode, count_include_pad, divisor_override):
    if ceil_mode or divisor_override is not None or (not count_include_pad and padding not in (0, (0, 0))):
        raise ValueError(f"{where}: average pooling with ceil_mode, divisor_override or count_include_pad=False is not supported")


def _adaptive_pool(where, node: fx.Node, output_size) -> nn.AvgPool2d:
    size = node.args[0].meta["tensor_meta"].shape[-2:]
    out = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    out = tuple(s if o is None else o for s, o in zip(size, out))
    if any(s % o for s, o in zip(size, out)):
        raise ValueError(f"{where}: input {tuple(size)} is not a multiple of output size {out}")
    kernel = tuple(s // o for s, o in zip(size, out))
    return nn.AvgPool2d(kernel, kernel)
