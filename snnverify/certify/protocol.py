"""The converter adapter protocol, the closed capability list, and how an adapter is chosen.

An adapter is any object with ``name``, ``version``, ``semantics``, ``capabilities`` and
``convert(model, cal_loader, timesteps, train_loader=None) -> Converted``. A ``Converted`` has
``run(x, timesteps) -> (output, spikes)``, ``training`` and, with ``nir_export``, ``to_nir(path)``:

- ``output``: the decision scores ``[batch, classes]``, the output layer's value averaged over
  the T steps, so that it approximates the ANN's output;
- ``spikes``: ``{spiking layer: [T, batch, ...]}`` in forward order, the spikes per neuron and
  step: 0/1 (or bool), or counts 0…B for a burst neuron that fires up to B per step (counted
  as B spikes in the sparsity; the clause ``spikes.binary`` reports them); each ``run`` starts
  from fresh neuron state;
- ``training``: ``{"epochs": e, "samples": n}``, the labelled training conversion spent (zeros
  for post-training conversion);
- with ``gpu``: ``run(x, timesteps, device="cuda")`` runs on the GPU.

Selection, first match wins: an explicit spec (``--converter``), ``$SNNVERIFY_CONVERTER``, the
one installed entry point of the group ``snnverify.converters``, else the reference converter.
A spec is a built-in or entry-point NAME, ``package.module:object`` or ``path/file.py:object``;
a class is instantiated without arguments.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any, Protocol

import torch

#: The closed list of capabilities an adapter may declare (a missing one skips the checks needing it).
CAPABILITIES: dict[str, str] = {
    "residual": "residual merges (an add of two branches)",
    "maxpool": "max-pooling, converted exactly (not replaced by average pooling)",
    "batchnorm": "BatchNorm layers in the ANN",
    "functional_relu": "ReLU called as torch.nn.functional.relu",
    "shared_relu": "one ReLU module called at several places (torchvision's BasicBlock)",
    "nir_export": "Converted.to_nir(path) writes a NIR file",
    "gpu": "Converted.run(x, timesteps, device='cuda')",
}
#: The declared neuron: reset, initial membrane v[0] and threshold rule.
SEMANTICS: dict[str, tuple[str, ...]] = {
    "reset": ("subtract", "zero"),  # v ← v − θ·s, or v ← 0 on a spike
    "v_init": ("half", "zero"),  # v[0] = θ/2 or 0
    "fire": ("ge", "gt"),  # s = v ≥ θ or v > θ
}
ENV_VAR = "SNNVERIFY_CONVERTER"
ENTRY_POINT_GROUP = "snnverify.converters"
#: Adapters shipped with snnverify, by name.
BUILTIN: dict[str, str] = {
    "reference": "snnverify.certify.adapters.reference:ReferenceAdapter",
    "snnverify": "snnverify.certify.adapters.reference:ReferenceAdapter",
    "spikingjelly": "snnverify.certify.adapters.spikingjelly:SpikingJellyAdapter",
    "sinabs": "snnverify.certify.adapters.sinabs:SinabsAdapter",
    "neurocuda": "snnverify.certify.adapters.neurocuda:NeurocudaAdapter",
}


class ProtocolError(TypeError):
    """An object does not follow the adapter protocol; the message names everything missing."""


class Converted(Protocol):
    training: dict[str, int]

    def run(self, x: torch.Tensor, timesteps: int) -> tuple[Any, dict[str, Any]]: ...


class Adapter(Protocol):
    name: str
    version: str
    semantics: dict[str, str]
    capabilities: set[str]

    def convert(self, model: torch.nn.Module, cal_loader, timesteps: int, train_loader=None) -> Converted: ...


def check_adapter(adapter: Any) -> Any:
    """Return ``adapter`` if it follows the protocol, else raise ProtocolError listing every problem."""
    label = f"converter adapter {type(adapter).__name__}"
    problems = []
    for attribute, kind in (("name", str), ("version", str)):
        value = getattr(adapter, attribute, None)
        if not isinstance(value, kind) or not value:
            problems.append(f"{attribute} (a non-empty str, got {value!r})")
    semantics = getattr(adapter, "semantics", None)
    if not isinstance(semantics, dict):
        problems.append(f"semantics (a dict with keys {sorted(SEMANTICS)}, got {semantics!r})")
    else:
        for key, allowed in SEMANTICS.items():
            if semantics.get(key) not in allowed:
                problems.append(f"semantics[{key!r}] (one of {allowed}, got {semantics.get(key)!r})")
    capabilities = getattr(adapter, "capabilities", None)
    if not isinstance(capabilities, (set, frozenset)):
        problems.append(f"capabilities (a set from {sorted(CAPABILITIES)}, got {capabilities!r})")
    elif unknown := sorted(set(capabilities) - set(CAPABILITIES)):
        problems.append(f"capabilities: unknown {unknown} (known: {sorted(CAPABILITIES)})")
    if not callable(getattr(adapter, "convert", None)):
        problems.append("convert(model, cal_loader, timesteps, train_loader=None) method")
    if problems:
        raise ProtocolError(f"{label} does not follow the snnverify adapter protocol; missing or invalid: "
                            + "; ".join(problems))
    return adapter


def check_converted(converted: Any, adapter: Any) -> Any:
    """Return ``converted`` if it has ``run``, ``training`` and (with nir_export) ``to_nir``."""
    problems = []
    if not callable(getattr(converted, "run", None)):
        problems.append("run(x, timesteps) method")
    training = getattr(converted, "training", None)
    if not (isinstance(training, dict) and {"epochs", "samples"} <= set(training)):
        problems.append(f"training (a dict with 'epochs' and 'samples', got {training!r})")
    if "nir_export" in adapter.capabilities and not callable(getattr(converted, "to_nir", None)):
        problems.append("to_nir(path) method (nir_export is declared)")
    if problems:
        raise ProtocolError(f"{adapter.name}.convert returned a {type(converted).__name__} that does not follow "
                            "the Converted protocol; missing or invalid: " + "; ".join(problems))
    return converted


def _object_from(spec: str) -> Any:
    module_part, _, attribute = spec.rpartition(":")
    if module_part.endswith(".py") or os.sep in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise FileNotFoundError(f"converter spec {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"snnverify_adapter_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_part)
    if not hasattr(module, attribute):
        raise ProtocolError(f"converter spec {spec!r}: {module_part} has no object {attribute!r}")
    return getattr(module, attribute)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve_spec(spec: str | None = None, environ: dict | None = None) -> str:
    """The spec that selection picks: ``spec``, else ``$SNNVERIFY_CONVERTER``, else the one
    installed entry point, else ``"reference"``."""
    environ = os.environ if environ is None else environ
    if spec:
        return spec
    if environ.get(ENV_VAR):
        return environ[ENV_VAR]
    points = _entry_points()
    if len(points) > 1:
        raise ProtocolError(f"several converters are installed in the entry point group {ENTRY_POINT_GROUP!r} "
                            f"({', '.join(sorted(points))}): choose one with --converter or ${ENV_VAR}")
    return next(iter(points), "reference")


def load_adapter(spec: str | None = None, environ: dict | None = None) -> Any:
    """The adapter chosen by ``spec`` (or the selection order), checked against the protocol."""
    spec = resolve_spec(spec, environ)
    if spec in BUILTIN:
        target = _object_from(BUILTIN[spec])
    elif ":" in spec:
        target = _object_from(spec)
    elif spec in (points := _entry_points()):
        target = points[spec].load()
    else:
        raise ValueError(f"unknown converter {spec!r}; known names: {', '.join(sorted(set(BUILTIN) | set(points)))}, "
                         "or give package.module:object or path/to/file.py:object")
    return check_adapter(target() if isinstance(target, type) else target)
