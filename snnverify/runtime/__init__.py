"""Backends that execute a :class:`~snnverify.graph.SpikingGraph`, chosen from one registry.

A backend is registered under a target name with :func:`register_backend`; it is built from a
graph and exposes ``run(x, timesteps, record, device) -> RunResult``. The public
``snnverify.compile(snn, target=...)`` looks targets up here, so adding a backend is one
registration, not another branch in the API. ``cpu`` and ``gpu`` are one backend class
(:class:`~snnverify.runtime.plan.KernelBackend`) over two kernel tables.

Layout: ``torch_ref`` (the reference executor, which defines the semantics), ``plan`` (the
graph walked once for the kernel backends), ``cpu/`` (Numba CPU kernels, one file per job),
``cuda`` (Numba CUDA kernels), ``quantize`` (integer mode), ``loihi2`` (the Loihi 2 simulator),
``kernel_cache`` (where the compiled Numba kernels are kept), ``buffers`` (host arrays reused
from one run to the next).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from snnverify.graph import SpikingGraph, check_timesteps
from snnverify.runtime import kernel_cache

# before any kernel module is imported: their compiled kernels are cached per user, by content
kernel_cache.install()

#: target name -> module that registers it (imported on first use, so optional backends
#: cost nothing until asked for).
_BACKEND_MODULES = {
    "torch": "snnverify.runtime.torch_ref",
    "cpu": "snnverify.runtime.cpu",
    "gpu": "snnverify.runtime.cuda",
    "loihi2_sim": "snnverify.runtime.loihi2",
}
_BACKENDS: dict[str, Callable[..., "Backend"]] = {}


@dataclass
class RunResult:
    """What one simulation of a batch returns.

    ``output``: the output current averaged over T, [batch, classes] float32.
    ``spike_counts``: total number of spikes per IF layer over the batch and all T steps.
    ``spikes``: with ``record=True``, every IF layer's spikes [T, batch, ...]: bool arrays, or
    a burst layer's counts as uint8 (:func:`snnverify.graph.spike_dtype`).
    ``readouts``: with ``horizons``, {h: the output current averaged over the first h steps},
    what a run of h steps returns as ``output`` — bit for bit, but on the torch backend in
    float32, whose sums follow torch's order for T·B rows (there, to the last bit).
    """

    output: np.ndarray
    spike_counts: dict[str, int]
    spikes: dict[str, np.ndarray] | None = None
    readouts: dict[int, np.ndarray] | None = None


class Backend(Protocol):
    target: str

    def run(self, x: torch.Tensor, timesteps: int, record: bool = False, device=None,
            horizons: tuple[int, ...] = ()) -> RunResult: ...


def register_backend(target: str, make: Callable[..., "Backend"] | None = None):
    """Make a backend available as ``compile(snn, target=target)``: ``make(graph, **options)``
    builds it; without ``make``, a class decorator. A backend that takes keyword options lists
    their names in an attribute ``options``."""

    def decorate(make):
        if isinstance(make, type):
            make.target = target
        _BACKENDS[target] = make
        return make

    return decorate if make is None else decorate(make)


def check_device(target: str, device, runs_on: torch.device) -> None:
    """The one device rule of every backend: ``device`` is None or names the device the target
    runs on (a ValueError otherwise: never a silent run elsewhere)."""
    if device is None:
        return
    try:
        asked = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"target {target!r}: device={device!r} is not a device ({error})") from None
    if asked.type != runs_on.type or asked.index not in (None, runs_on.index):
        raise ValueError(f"target {target!r} runs on {runs_on}; got device={device!r}")


def known_targets() -> list[str]:
    return sorted(_BACKEND_MODULES)


def create_backend(target: str, graph: SpikingGraph, **options) -> Backend:
    """Build the backend registered as ``target`` for ``graph``. ``options`` are the backend's
    keyword options (its class attribute ``options`` names them; most backends take none)."""
    if target not in _BACKEND_MODULES:
        raise ValueError(f"unknown target {target!r}; known targets: {', '.join(known_targets())}")
    importlib.import_module(_BACKEND_MODULES[target])
    backend = _BACKENDS[target]
    known = getattr(backend, "options", ())
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"target {target!r} got unknown option(s) {unknown}; "
                        f"known: {list(known) if known else 'none'}")
    return backend(graph, **options)


def check_input(graph: SpikingGraph, x) -> torch.Tensor:
    """Validate a batch of inputs against the graph's input node; returns it as a float32 tensor."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not (x.dtype.is_floating_point or x.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise TypeError(f"input {graph.input_node.name!r} must be numeric, got dtype {x.dtype}")
    expected = graph.input_node.shape
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"input {graph.input_node.name!r} expects shape [batch, {', '.join(map(str, expected))}], "
            f"got {list(x.shape)}"
        )
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"input {graph.input_node.name!r} contains NaN or inf")
    return x.to(torch.float32)


def check_run(graph: SpikingGraph, x, timesteps, exact_range=None) -> tuple[torch.Tensor, int]:
    """(the input batch as float32, T) of a run, both checked; for an integer graph, its
    ``exact_range`` (:class:`~snnverify.runtime.quantize.ExactRange`) also checks that the run
    stays where integer arithmetic is exact."""
    x, timesteps = check_input(graph, x), check_timesteps(timesteps)
    if exact_range is not None:
        exact_range.check(x.numpy(), timesteps)
    return x, timesteps

