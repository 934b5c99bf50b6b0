"""Spiking graph ↔ NIR 1.0.8 files (``nir.write`` / ``nir.read``, HDF5).

Two export modes:

* ``"lossless"`` — for snnverify itself. Every node maps to its NIR counterpart (Input, Conv2d,
  Affine or Linear, AvgPool2d/SumPool2d, Flatten, IF, Output; an Add becomes an identity
  ``Scale`` node with several incoming edges, the NIR form of a sum), parameters are written in
  their own dtype (float32, or int64 in a quantised graph), and what NIR cannot say is kept in
  node metadata under the key ``"snnverify"``: the per-channel IF threshold, graded amplitude,
  v[0] = θ/2, the ≥ rule, reset by subtraction (and any foreign-semantics field), the burst size
  ``max_spikes`` of every IF layer, Input/Output scales, whether a layer has a bias, and the Add
  nodes. The graph's metadata holds the format version, the node order, the default T and a
  SHA-256 digest of the whole graph, so that a file whose content was changed (or corrupted
  into another valid file) is rejected instead of read as a different network. ``from_nir(to_nir(g)) == g`` exactly: same names, edges in the
  same order, every array bit for bit.

  NIR's IF fires at most once per step and has no burst. Another framework reading a lossless
  file sees a burst layer (``max_spikes`` B > 1) as a plain NIR IF that fires at most once per
  step, unless it reads the node's metadata, where ``"snnverify": {"max_spikes": B}`` names it.
* ``"plain"`` — for other frameworks: NIR only, no metadata. What changes meaning (each measured
  by suites/property/test_nir_interop.py):

  - graded amplitude a: folded into the next layer's weights W'[o, c] = W[o, c]·a_c when every
    reader of the IF layer is a Conv2d or Linear; otherwise a ``Scale`` node "<layer>.amplitude"
    multiplies the spikes (none when a = 1);
  - the ≥ rule: NIR fires on v > θ, so v_threshold is written as the largest float32 below θ
    (θ − 1/2 for integer θ): for float32 membranes v > θ⁻ ⟺ v ≥ θ, exact for a simulator that
    compares float32 values, as all the tested ones do;
  - v[0] = θ/2: NIR has no initial membrane; simulators start at 0 (approximation, measured);
  - reset by subtraction: NIR 1.0.8 resets to v_reset; written as v_reset = 0 (changes meaning
    whenever v − θ ≠ 0 after a spike, measured);
  - residual Adds: several edges into the reader (an identity Scale stays only where that would
    duplicate an edge); Input and Output scales ≠ 1 become Scale nodes.

  Burst layers are refused, by name and B: a NIR IF fires at most once per step, and no NIR
  node sums several spikes of one neuron within a step, so a plain file could only change
  every spike count above one silently.

Import (:func:`read`) takes our lossless files and NIR graphs from other frameworks: IF
(R ≠ 1 as an input gain, v_reset, strict >), LIF (needs dt: β = 1 − dt/τ, γ = R·dt/τ,
v_leak = 0), Affine, Linear, Scale (diagonal Linear, or a depthwise 1×1 Conv2d when constant
per channel), Conv2d, AvgPool2d, SumPool2d, Flatten (to 1-d; start_dim 0, or 1 as written by
torch-based exporters). A node with several incoming edges reads their sum through an inserted
Add "<node>.sum". Neurons of foreign graphs start at v = 0 and emit unit spikes. Anything else
— unknown or unsupported node types, missing fields, shape mismatches, cycles, files that are
not NIR — raises :class:`NIRFormatError` naming the file and the node.

This module imports :mod:`snnverify.graph` only (no runtime, converter or API).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import h5py
import nir
import numpy as np

from snnverify import graph as g

FORMAT_VERSION = 1
METADATA_KEY = "snnverify"
MODES = ("lossless", "plain")


class NIRFormatError(ValueError):
    """A NIR file that snnverify cannot import as it is: the message names the file and node."""


# ----------------------------------------------------------------------------------------------
# export


@dataclass
class _Export:
    """What an exporter needs besides its node."""

    graph: g.SpikingGraph
    shapes: dict[str, g.Shape]
    mode: str
    dtype: np.dtype  # float32, or int64 in a quantised graph

    def input_shape(self, name: str) -> g.Shape:
        return self.shapes[self.graph.inputs[name][0]]


def _channelwise(values: np.ndarray, shape: g.Shape) -> np.ndarray:
    """A per-channel array broadcast to a full (no-batch) shape, channel first."""
    return np.ascontiguousarray(np.broadcast_to(values.reshape(-1, *[1] * (len(shape) - 1)), shape))


def _export_input(node: g.Input, ctx: _Export):
    return nir.Input(input_type={"input": np.array(node.shape)}), {"scale": float(node.scale)}


def _export_output(node: g.Output, ctx: _Export):
    return nir.Output(output_type={"output": np.array(ctx.input_shape(node.name))}), {"scale": float(node.scale)}


def _export_conv2d(node: g.Conv2d, ctx: _Export):
    bias = np.zeros(node.weight.shape[0], node.weight.dtype) if node.bias is None else node.bias
    conv = nir.Conv2d(input_shape=tuple(ctx.input_shape(node.name)[1:]), weight=node.weight, stride=node.stride,
                      padding=node.padding, dilation=node.dilation, groups=node.groups, bias=bias)
    return conv, {"bias": node.bias is not None}


def _export_linear(node: g.Linear, ctx: _Export):
    if node.bias is None:
        return nir.Linear(weight=node.weight), {}
    return nir.Affine(weight=node.weight, bias=node.bias), {}


def _export_pool(node: g.AvgPool2d, ctx: _Export):
    kind = nir.SumPool2d if isinstance(node, g.SumPool2d) else nir.AvgPool2d
    return kind(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride),
                padding=np.array(node.padding)), {}


def _export_flatten(node: g.Flatten, ctx: _Export):
    return nir.Flatten(input_type={"input": np.array(ctx.input_shape(node.name))}, start_dim=0, end_dim=-1), {}


def _export_add(node: g.Add, ctx: _Export):
    """An identity Scale: NIR sums the signals of a node's incoming edges."""
    return nir.Scale(scale=np.ones(ctx.shapes[node.name], ctx.dtype)), {}


def _strict_threshold(node: g.IF) -> np.ndarray:
    """θ⁻ with v > θ⁻ ⟺ v ≥ θ: the next float32 below θ, or θ − 1/2 for integer θ."""
    if node.fire_on == ">":
        return node.threshold
    if node.threshold.dtype.kind == "i":
        return node.threshold - 0.5
    return np.nextafter(node.threshold, np.float32(-np.inf), dtype=np.float32)


def _export_if(node: g.IF, ctx: _Export):
    shape = ctx.shapes[node.name]
    if ctx.mode == "plain" and node.leak is not None:
        raise ValueError(f"IF layer {node.name!r} leaks (β = {node.leak[0]:g}, ...): plain NIR export writes IF "
                         f"neurons only; use mode='lossless'")
    if ctx.mode == "plain" and node.max_spikes > 1:
        raise ValueError(f"IF layer {node.name!r} is a burst layer (max_spikes={node.max_spikes}): NIR's IF fires at "
                         f"most once per step, so plain NIR export cannot write it; use mode='lossless'")
    threshold = node.threshold if ctx.mode == "lossless" else _strict_threshold(node)
    v_reset = np.zeros_like(node.threshold) if node.v_reset is None else node.v_reset
    gain = np.ones_like(node.threshold) if node.gain is None else node.gain
    neuron = nir.IF(r=_channelwise(gain, shape), v_threshold=_channelwise(threshold, shape),
                    v_reset=_channelwise(v_reset, shape))
    extra = {"fire_on": node.fire_on, "max_spikes": node.max_spikes}
    extra.update({name: getattr(node, name) for name in ("amplitude", *g.IF.EXTENSIONS)
                  if name != "fire_on" and getattr(node, name) is not None})
    return neuron, extra


#: our node type (exactly: SumPool2d is not an AvgPool2d here) -> exporter (node, context) ->
#: (NIR node, what NIR cannot hold)
EXPORTERS: dict[type, Callable[[Any, _Export], tuple[nir.NIRNode, dict]]] = {
    g.Input: _export_input,
    g.Output: _export_output,
    g.Conv2d: _export_conv2d,
    g.Linear: _export_linear,
    g.SumPool2d: _export_pool,
    g.AvgPool2d: _export_pool,
    g.Flatten: _export_flatten,
    g.Add: _export_add,
    g.IF: _export_if,
}


#: fields added to the graph after format 1 was defined, with the value they had implicitly
#: before, which leaves them out of the digest: a binary IF layer digests as it did before
#: bursts existed, so files written then still verify
_LATER_FIELDS = {"max_spikes": 1}


def graph_digest(graph: g.SpikingGraph, timesteps: int) -> str:
    """SHA-256 of everything that defines ``graph`` (node order, names, types, every field with
    its dtype and bytes, edges in order; :data:`_LATER_FIELDS` only where they differ from
    their implicit older value) and the default T."""
    digest = hashlib.sha256(f"T={timesteps};".encode())
    for name, node in graph.nodes.items():
        digest.update(f"{type(node).__name__}:{name}<-{json.dumps(graph.inputs[name])};".encode())
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            if field.name in _LATER_FIELDS and value == _LATER_FIELDS[field.name]:
                continue
            if isinstance(value, np.ndarray):
                digest.update(f"{field.name}={value.dtype.str}{value.shape}:".encode() + value.tobytes())
            else:
                digest.update(f"{field.name}={value!r};".encode())
    return digest.hexdigest()


def to_nir_graph(graph: g.SpikingGraph, mode: str = "lossless", timesteps: int = 1) -> nir.NIRGraph:
    """The NIR graph of ``graph`` in ``mode`` ("lossless" or "plain", see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown NIR export mode {mode!r}; known: {', '.join(MODES)}")
    bad = [name for name in graph.nodes if "/" in name or not name]
    if bad:
        raise ValueError(f"node name {bad[0]!r} cannot be a NIR node id (HDF5 group names hold no '/')")
    ctx = _Export(graph, graph.shapes, mode, np.dtype(np.int64) if graph.integer else np.dtype(np.float32))
    nodes, extras = {}, {}
    for name, node in graph.nodes.items():
        exporter = EXPORTERS.get(type(node))
        if exporter is None:
            raise TypeError(f"node {name!r}: no NIR mapping for {type(node).__name__}")
        nodes[name], extras[name] = exporter(node, ctx)
    if mode == "lossless":
        for name, node in graph.nodes.items():
            nodes[name].metadata = {METADATA_KEY: {"type": type(node).__name__, **extras[name]}}
        metadata = {METADATA_KEY: {"format": FORMAT_VERSION, "order": json.dumps(list(graph.nodes)),
                                   "timesteps": int(timesteps), "sha256": graph_digest(graph, timesteps)}}
        return nir.NIRGraph(nodes=nodes, edges=graph.edges, metadata=metadata, type_check=False)
    return _plain(graph, ctx, nodes)


def _plain(graph: g.SpikingGraph, ctx: _Export, nodes: dict[str, nir.NIRNode]) -> nir.NIRGraph:
    """Plain NIR: Adds dissolved into edges, amplitudes folded or scaled, scales made explicit."""
    inputs = {name: list(sources) for name, sources in graph.inputs.items()}

    def extra_node(after: str, suffix: str, node: nir.NIRNode) -> str:
        """Insert ``node`` between ``after`` and all its readers."""
        name = f"{after}.{suffix}"
        if name in nodes:
            raise ValueError(f"cannot name the {suffix} node of {after!r}: {name!r} is taken")
        nodes[name] = node
        for reader, sources in inputs.items():
            inputs[reader] = [name if s == after else s for s in sources]
        inputs[name] = [after]
        return name

    for name, node in graph.nodes.items():
        if isinstance(node, g.Input) and node.scale != 1:
            extra_node(name, "scale", nir.Scale(scale=np.full(node.shape, node.scale, np.float32)))
        elif isinstance(node, g.Output) and node.scale != 1:
            reader_shape = ctx.input_shape(name)
            scale = nir.Scale(scale=np.full(reader_shape, 1 / node.scale, np.float32))
            nodes[f"{name}.scale"] = scale
            inputs[f"{name}.scale"], inputs[name] = inputs[name], [f"{name}.scale"]
        elif isinstance(node, g.IF) and not np.all(node.output_amplitude == 1):
            readers = graph.users(name)
            if readers and all(isinstance(graph.nodes[r], (g.Conv2d, g.Linear)) for r in readers):
                for reader in readers:  # nodes[reader] holds the reader's own weights until now
                    folded = g.folded_weight(graph.nodes[reader], node.output_amplitude, ctx.shapes[name])
                    nodes[reader].weight = folded
            else:
                extra_node(name, "amplitude", nir.Scale(scale=_channelwise(node.output_amplitude, ctx.shapes[name])))
    kept = _dissolve_adds(graph, inputs)
    for add in set(n for n, node in graph.nodes.items() if isinstance(node, g.Add)) - kept:
        del nodes[add]
    edges = [(source, name) for name in nodes for source in inputs[name]]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _dissolve_adds(graph: g.SpikingGraph, inputs: dict[str, list[str]]) -> set[str]:
    """Rewire every reader of an Add to the Add's sources (recursively through Add chains),
    except where that would give a reader the same source twice: the Adds that feed such a
    reader are kept (as identity Scale nodes). Edits ``inputs``; returns the kept Adds."""
    adds = {name for name, node in graph.nodes.items() if isinstance(node, g.Add)}
    kept: set[str] = set()

    def expand(source: str) -> list[str]:
        if source in adds and source not in kept:
            return [s for inner in inputs[source] for s in expand(inner)]
        return [source]

    def feeding(name: str) -> set[str]:
        """The dissolved Adds whose sources would reach ``name``."""
        direct = {s for s in inputs[name] if s in adds and s not in kept}
        return direct.union(*(feeding(s) for s in direct))

    while True:
        rewired = {name: [s for source in sources for s in expand(source)]
                   for name, sources in inputs.items() if name not in adds or name in kept}
        clash = next((name for name, sources in rewired.items() if len(set(sources)) != len(sources)), None)
        if clash is None:
            inputs.clear()
            inputs.update(rewired)
            return kept
        kept |= feeding(clash)


def write(graph: g.SpikingGraph, path, mode: str = "lossless", timesteps: int = 1) -> Path:
    """Write ``graph`` as a NIR file (``nir.write``); returns the path."""
    nir.write(str(path), to_nir_graph(graph, mode, timesteps), compression=None)  # weights hardly compress
    return Path(path)


# ----------------------------------------------------------------------------------------------
# import


@dataclass
class _Import:
    """What an importer needs besides its NIR node."""

    name: str
    input_shape: g.Shape | None  # the shape arriving at the node (None for Input)
    extra: dict | None  # the node's lossless metadata, None in a foreign file
    dt: float | None
    where: str  # "file: node 'name' (Type)" for messages

    def error(self, message: str) -> NIRFormatError:
        return NIRFormatError(f"{self.where}: {message}")

    def need_dt(self) -> float:
        if self.dt is None:
            raise NIRFormatError(f"{self.where} has time constants: pass from_nir(path, dt=...) (the time step in "
                                 f"the units of τ), or store 'dt' in the graph's metadata")
        return self.dt


def _array(value, ctx: _Import, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" and array.dtype != np.bool_:
        raise ctx.error(f"{what} must be numeric, got {array.dtype}")
    return array


def _per_channel(value, shape: g.Shape, ctx: _Import, what: str) -> np.ndarray:
    """A NIR per-neuron parameter as one value per channel (first axis); it must not vary
    within a channel."""
    array = _array(value, ctx, what)
    if array.size == math.prod(shape):  # written flat, or with the same shape
        array = array.reshape(shape)
    try:
        full = np.broadcast_to(array, shape)
    except ValueError:
        raise ctx.error(f"{what} has shape {array.shape}, the layer has {shape}") from None
    rows = full.reshape(shape[0], -1)
    varies = np.nonzero(np.any(rows != rows[:, :1], axis=1))[0]
    if len(varies):
        raise ctx.error(f"{what} varies within channel {varies[0]}; snnverify layers have one value per channel")
    return np.ascontiguousarray(rows[:, 0])


def _import_input(node: nir.Input, ctx: _Import):
    shape = tuple(int(s) for s in _array(node.input_type["input"], ctx, "shape").ravel())
    return g.Input(ctx.name, shape=shape, scale=float((ctx.extra or {}).get("scale", 1.0)))


def _import_output(node: nir.Output, ctx: _Import):
    return g.Output(ctx.name, scale=float((ctx.extra or {}).get("scale", 1.0)))


def _padding(node: nir.Conv2d, ctx: _Import) -> tuple[int, int]:
    if isinstance(node.padding, str):
        if node.padding == "valid":
            return (0, 0)
        kernel = node.weight.shape[2:]
        if any(k % 2 == 0 for k in kernel) or any(int(d) != 1 for d in np.atleast_1d(node.dilation)):
            raise ctx.error(f"padding 'same' with kernel {kernel} is asymmetric; snnverify pads symmetrically")
        return (kernel[0] // 2, kernel[1] // 2)
    return _pair(node.padding, ctx, "padding")


def _pair(value, ctx: _Import, what: str) -> tuple[int, int]:
    """An int or (height, width) pair of a NIR node as two Python ints."""
    try:
        return tuple(int(v) for v in np.broadcast_to(_array(value, ctx, what), (2,)))
    except ValueError:
        raise ctx.error(f"{what} must be an int or a pair, got {value!r}") from None


def _import_conv2d(node: nir.Conv2d, ctx: _Import):
    weight = _array(node.weight, ctx, "weight")
    bias = _array(node.bias, ctx, "bias") if node.bias is not None else None
    if ctx.extra is not None and not ctx.extra.get("bias", True):
        bias = None
    return g.Conv2d(ctx.name, weight=weight, bias=bias, stride=_pair(node.stride, ctx, "stride"),
                    padding=_padding(node, ctx), dilation=_pair(node.dilation, ctx, "dilation"),
                    groups=int(node.groups))


def _import_affine(node: nir.Affine, ctx: _Import):
    return g.Linear(ctx.name, weight=_array(node.weight, ctx, "weight"), bias=_array(node.bias, ctx, "bias"))


def _import_linear(node: nir.Linear, ctx: _Import):
    return g.Linear(ctx.name, weight=_array(node.weight, ctx, "weight"))


def _import_pool(node, ctx: _Import):
    kind = g.SumPool2d if isinstance(node, nir.SumPool2d) else g.AvgPool2d
    return kind(ctx.name, kernel_size=_pair(node.kernel_size, ctx, "kernel_size"),
                stride=_pair(node.stride, ctx, "stride"), padding=_pair(node.padding, ctx, "padding"))


def _import_flatten(node: nir.Flatten, ctx: _Import):
    """Our Flatten makes the sample 1-d: NIR's start_dim 0 (no batch axis) or 1 (the torch
    convention with a batch axis, as nirtorch-based exporters write it), end_dim -1."""
    end = int(node.end_dim)
    last = len(ctx.input_shape) - 1 if ctx.input_shape else 0
    if int(node.start_dim) not in (0, 1) or end not in (-1, last, last + 1):
        raise ctx.error(f"flattens dims {node.start_dim}..{node.end_dim}; snnverify flattens whole samples "
                        f"(start_dim 0, end_dim -1)")
    return g.Flatten(ctx.name)


def _import_scale(node: nir.Scale, ctx: _Import):
    """Lossless Add: an identity Scale read as a merge. Otherwise y = s ⊙ x as a diagonal Linear
    (1-d) or a depthwise 1×1 Conv2d (per-channel constant s)."""
    if ctx.extra is not None and ctx.extra.get("type") == "Add":
        return g.Add(ctx.name)
    shape = ctx.input_shape
    scale = _array(node.scale, ctx, "scale")
    if len(shape) == 1:
        return g.Linear(ctx.name, weight=np.diag(np.broadcast_to(scale, shape)))
    per_channel = _per_channel(scale, shape, ctx, "scale")
    return g.Conv2d(ctx.name, weight=per_channel.reshape(-1, 1, 1, 1), groups=shape[0])


def _import_if(node: nir.IF, ctx: _Import):
    """NIR IF: v ← v + R·I; s = v > θ; v ← v_reset. Lossless files add our own fields."""
    shape = ctx.input_shape
    threshold = _per_channel(node.v_threshold, shape, ctx, "v_threshold")
    if ctx.extra is not None:  # our own neuron, exactly as written (files without max_spikes predate bursts)
        fields = {name: ctx.extra[name] for name in ("amplitude", *g.IF.EXTENSIONS, "max_spikes") if name in ctx.extra}
        return g.IF(ctx.name, threshold=threshold, **fields)
    gain = _per_channel(node.r, shape, ctx, "r")
    return _foreign_neuron(ctx, threshold, node.v_reset, shape, gain=None if np.all(gain == 1) else gain)


def _foreign_neuron(ctx: _Import, threshold, v_reset, shape, gain=None, leak=None) -> g.IF:
    threshold = threshold.astype(np.float32)
    like = lambda v: np.asarray(v, np.float32)  # noqa: E731
    return g.IF(ctx.name, threshold=threshold, amplitude=np.ones_like(threshold), v_init=np.zeros_like(threshold),
                v_reset=like(_per_channel(v_reset, shape, ctx, "v_reset")), fire_on=">",
                gain=None if gain is None else like(gain), leak=None if leak is None else like(leak))


def _import_lif(node: nir.LIF, ctx: _Import):
    """NIR LIF, τ·dv/dt = (v_leak − v) + R·I, by forward Euler with step dt:
    v[t] = β·v[t-1] + γ·I[t] with β = 1 − dt/τ, γ = R·dt/τ (v_leak must be 0)."""
    dt = ctx.need_dt()
    shape = ctx.input_shape
    if np.any(_array(node.v_leak, ctx, "v_leak") != 0):
        raise ctx.error("v_leak ≠ 0 is not supported (no resting potential in snnverify's neuron)")
    tau = _per_channel(node.tau, shape, ctx, "tau").astype(np.float64)
    if np.any(tau <= 0):
        raise ctx.error(f"tau must be > 0, got {tau[tau <= 0][0]}")
    r = _per_channel(node.r, shape, ctx, "r").astype(np.float64)
    threshold = _per_channel(node.v_threshold, shape, ctx, "v_threshold")
    return _foreign_neuron(ctx, threshold, node.v_reset, shape, gain=r * dt / tau, leak=1 - dt / tau)


#: NIR node type -> importer (NIR node, context) -> our node
IMPORTERS: dict[type, Callable[[Any, _Import], g.Node]] = {
    nir.Input: _import_input,
    nir.Output: _import_output,
    nir.Conv2d: _import_conv2d,
    nir.Affine: _import_affine,
    nir.Linear: _import_linear,
    nir.AvgPool2d: _import_pool,
    nir.SumPool2d: _import_pool,
    nir.Flatten: _import_flatten,
    nir.Scale: _import_scale,
    nir.IF: _import_if,
    nir.LIF: _import_lif,
}

#: NIR node types that exist but that snnverify cannot execute, with the reason
UNSUPPORTED = {
    "LI": "a leaky integrator without spikes (its output is the membrane), which snnverify's graph has no node for",
    "CubaLIF": "a current-based LIF with a synaptic state, which snnverify's neuron does not have",
    "CubaLI": "a current-based leaky integrator, which snnverify's graph has no node for",
    "I": "an integrator without spikes, which snnverify's graph has no node for",
    "Threshold": "a stateless threshold, which snnverify's graph has no node for",
    "Delay": "a delay, which snnverify's graph has no node for",
    "Conv1d": "a 1-d convolution, which snnverify's graph has no node for",
    "NIRGraph": "a nested subgraph, which snnverify does not flatten",
}

#: fields a NIR node type must have in the file (beyond "type"), from its constructor
_RENAMED = {"input_type": "shape", "output_type": "shape"}


def _required_fields(kind: type) -> list[str]:
    if kind is nir.Flatten:
        return ["start_dim", "end_dim"]
    return [_RENAMED.get(f.name, f.name) for f in dataclasses.fields(kind)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def _load(path: Path) -> dict:
    """The file's graph as the nested dict ``nir.read`` builds (one pass over the HDF5 file),
    checked on the way, so that a broken file is reported with the node and field at fault."""
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise NIRFormatError(f"{path}: no such file") from None
    except OSError as error:
        raise NIRFormatError(f"{path}: not a NIR file (not readable as HDF5: {error})") from None
    with handle, open(path, "rb") as raw_file:
        raw = _RawBytes(raw_file, raw_file.seek(0, 2))
        try:
            if not isinstance(handle.get("node"), h5py.Group):
                raise NIRFormatError(f"{path}: not a NIR file (no 'node' group at the root)")
            data = _read_group(handle["node"], f"{path}: graph", raw)
        except NIRFormatError:
            raise
        except Exception as error:  # h5py raises OSError, KeyError, ValueError, TypeError on corrupt files
            raise NIRFormatError(f"{path}: corrupt HDF5 ({type(error).__name__}: {error})") from error
    if data.get("type") != "NIRGraph":
        raise NIRFormatError(f"{path}: the root node is {data.get('type')!r}, not a NIRGraph")
    if not isinstance(data.get("nodes"), dict):
        raise NIRFormatError(f"{path}: the graph has no 'nodes' group")
    edges = data.get("edges")
    if not isinstance(edges, np.ndarray) or (edges.size and (edges.ndim != 2 or edges.shape[1] != 2)):
        raise NIRFormatError(f"{path}: the graph's edges must be an array of (source, target) pairs, got "
                             f"{getattr(edges, 'shape', edges)!r}")
    known = {kind.__name__: kind for kind in IMPORTERS}
    for name, node in data["nodes"].items():
        where = f"{path}: node {name!r}"
        kind = node.get("type") if isinstance(node, dict) else None
        if not isinstance(kind, str):
            raise NIRFormatError(f"{where} has no 'type' string")
        if kind in UNSUPPORTED:
            raise NIRFormatError(f"{where} is a NIR {kind}: {UNSUPPORTED[kind]}")
        if kind not in known:
            raise NIRFormatError(f"{where} has unknown type {kind!r}; supported: {', '.join(sorted(known))}")
        for field in _required_fields(known[kind]):
            if field not in node:
                raise NIRFormatError(f"{where} ({kind}) lacks the field {field!r}")
    return data


@dataclass
class _RawBytes:
    """The file read as bytes beside h5py, to check what libhdf5 would trust (its size, and the
    global heap collections already found intact)."""

    file: BinaryIO
    size: int
    intact_heaps: set[int] = dataclasses.field(default_factory=set)


def _check_string_heaps(item: h5py.Dataset, where: str, key: str, raw: _RawBytes) -> None:
    """Check the HDF5 global heap collections that hold a string dataset's variable-length
    strings before h5py reads them: libhdf5 loops forever on a collection whose objects do not
    tile it (a flipped size byte), so the layout is verified here from the file's raw bytes. A
    collection is "GCOL", version 1, reserved 3 bytes, its size (u64); then objects (index u16,
    references u16, reserved u32, size u64, data padded to 8 bytes) up to an index-0 object that
    holds exactly the free space left (absent when under 16 bytes are left). A contiguous string
    dataset stores per element (length u32, collection address u64, object index u32)."""
    offset = item.id.get_offset()
    if offset is None:
        return
    raw.file.seek(offset)
    elements = raw.file.read(16 * min(item.size, raw.size // 16))  # a header may claim more than the file holds
    addresses = {struct.unpack_from("<IQI", elements, 16 * i)[1] for i in range(len(elements) // 16)}
    for address in sorted(addresses - raw.intact_heaps):
        raw.file.seek(address)
        header = raw.file.read(16)
        strings = f"{where}: the strings of field {key!r}"
        if len(header) < 16 or header[:4] != b"GCOL" or header[4] != 1:
            raise NIRFormatError(f"{strings} point to {address}, where no global heap collection starts")
        end = address + struct.unpack_from("<Q", header, 8)[0]
        if end > raw.size:
            raise NIRFormatError(f"{strings}: the global heap at {address} runs past the end of the file")
        position = address + 16
        while position + 16 <= end:
            raw.file.seek(position)
            index, _, _, length = struct.unpack("<HHIQ", raw.file.read(16))
            if index == 0:
                if length != end - position:
                    raise NIRFormatError(f"{strings}: the global heap at {address} is corrupt (free space "
                                         f"{length} bytes, {end - position} left)")
                break
            position += 16 + (length + 7) // 8 * 8
        else:  # full: under 16 bytes left, no room for a free-space object
            if position > end:
                raise NIRFormatError(f"{strings}: the global heap at {address} is corrupt (objects overrun it)")
        raw.intact_heaps.add(address)


#: deflate never compresses by more than this factor
_DEFLATE_MAX_RATIO = 1032


def _check_size(item: h5py.Dataset, where: str, key: str, raw: _RawBytes) -> None:
    """A corrupt header can claim a dataset far larger than the file holds (reading it would
    exhaust memory or time): its size must fit in what is stored."""
    stored = item.id.get_storage_size()
    limit = raw.size if item.compression is None else _DEFLATE_MAX_RATIO * stored
    if item.size * item.dtype.itemsize > max(limit, 1024):
        raise NIRFormatError(f"{where}: field {key!r} claims {item.size} values of {item.dtype} "
                             f"({item.size * item.dtype.itemsize} bytes) but the file stores {stored} bytes for it")


def _read_group(group: h5py.Group, where: str, raw: _RawBytes) -> dict:
    """Every dataset of ``group`` (recursively); strings decoded. Each dataset is checked
    against the file's raw bytes (``raw``) before h5py reads it; a corrupt chunk fails here,
    with its name."""
    data = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            data[key] = _read_group(item, f"{where}/{key}", raw)
            continue
        try:
            _check_size(item, where, key, raw)
            if item.dtype.kind == "O":
                _check_string_heaps(item, where, key, raw)
            value = item[()]
        except NIRFormatError:
            raise
        except Exception as error:
            raise NIRFormatError(f"{where}: field {key!r} cannot be read ({type(error).__name__}: {error})") from error
        if isinstance(value, bytes):
            try:
                value = value.decode("utf8")
            except UnicodeDecodeError:
                raise NIRFormatError(f"{where}: field {key!r} is not UTF-8 text ({value!r})") from None
        data[key] = value
    return data


@dataclass
class Imported:
    """What :func:`read` returns: the graph, its default T, the time step used, and whether the
    file was one of our lossless files."""

    graph: g.SpikingGraph
    timesteps: int
    dt: float | None
    lossless: bool


def read(path, dt: float | None = None) -> Imported:
    """Import a NIR file (see the module docstring). ``dt``: the time step for nodes with time
    constants (LIF): the argument, else the graph's metadata ``dt``, else an error asking for it."""
    path = Path(path)
    data = _load(path)
    try:
        graph = nir.dict2NIRNode({**data, "type_check": False})  # what nir.read does after reading
    except Exception as error:  # nir raises AssertionError, KeyError, TypeError, ValueError on bad content
        raise NIRFormatError(f"{path}: not a valid NIR graph ({type(error).__name__}: {error})") from error
    try:
        return _from_nir_graph(graph, path, dt)
    except NIRFormatError:
        raise
    except Exception as error:  # a node's own validation (shapes, values) names the node
        raise NIRFormatError(f"{path}: {error}") from error


def _from_nir_graph(graph: nir.NIRGraph, path: Path, dt: float | None) -> Imported:
    meta = graph.metadata.get(METADATA_KEY) if isinstance(graph.metadata, dict) else None
    lossless = meta is not None
    if lossless and int(meta.get("format", -1)) != FORMAT_VERSION:
        raise NIRFormatError(f"{path}: snnverify metadata format {meta.get('format')!r}, this version reads "
                             f"{FORMAT_VERSION}")
    if dt is None and isinstance(graph.metadata, dict) and "dt" in graph.metadata:
        dt = float(graph.metadata["dt"])
    if dt is not None and not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    tagged = sorted(name for name, node in graph.nodes.items() if METADATA_KEY in (node.metadata or {}))
    if tagged and not lossless:
        raise NIRFormatError(f"{path}: nodes {tagged[:3]} carry snnverify metadata but the graph's own (format, "
                             f"order, digest) is missing: a damaged lossless file")
    sources: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for source, target in graph.edges:
        for end in (source, target):
            if end not in graph.nodes:
                raise NIRFormatError(f"{path}: edge ({source!r}, {target!r}) names no node {end!r}")
        if source in sources[target]:
            raise NIRFormatError(f"{path}: duplicate edge ({source!r}, {target!r})")
        sources[target].append(source)
    order = _topological_order(graph, sources, path, json.loads(meta["order"]) if lossless else None)
    nodes: dict[str, g.Node] = {}
    inputs: dict[str, list[str]] = {}
    shapes: dict[str, g.Shape] = {}

    def add(node: g.Node, node_sources: list[str]):
        if node.name in nodes:
            raise NIRFormatError(f"{path}: node name {node.name!r} is used twice")
        nodes[node.name], inputs[node.name] = node, node_sources
        shapes[node.name] = node.output_shape([shapes[s] for s in node_sources])

    for name in order:
        nir_node = graph.nodes[name]
        kind = type(nir_node)
        extra = None
        if lossless:
            extra = (nir_node.metadata or {}).get(METADATA_KEY)
            if extra is None:
                raise NIRFormatError(f"{path}: node {name!r} lacks its snnverify metadata")
        node_sources = sources[name]
        if node_sources and not (lossless and extra.get("type") == "Add") and len(node_sources) > 1:
            merge = g.Add(f"{name}.sum")
            add(merge, node_sources)
            node_sources = [merge.name]
        ctx = _Import(name, shapes[node_sources[0]] if node_sources else None, extra, dt,
                      f"{path}: node {name!r} ({kind.__name__})")
        if kind not in IMPORTERS:
            raise ctx.error(f"type {kind.__name__} is not supported")
        if lossless and kind.__name__ not in _WRITTEN_AS.get(extra.get("type"), (extra.get("type"),)):
            raise ctx.error(f"metadata says {extra.get('type')!r} but the NIR node is a {kind.__name__}")
        if node_sources == [] and kind is not nir.Input:
            raise ctx.error("has no incoming edge")
        try:
            add(IMPORTERS[kind](nir_node, ctx), node_sources)
        except NIRFormatError:
            raise
        except (ValueError, TypeError) as error:
            raise ctx.error(str(error)) from error
        _check_declared_types(nir_node, ctx, shapes[name])
    try:
        result = g.SpikingGraph(nodes, inputs)
    except (ValueError, TypeError) as error:
        raise NIRFormatError(f"{path}: {error}") from error
    timesteps = int(meta["timesteps"]) if lossless else 1
    if lossless and graph_digest(result, timesteps) != meta.get("sha256"):
        raise NIRFormatError(f"{path}: the graph read does not match the SHA-256 digest written with it "
                             f"(the file was modified or is corrupt)")
    return Imported(result, timesteps, dt, lossless)


#: the NIR types our lossless nodes are written as, where the name differs
_WRITTEN_AS = {"Linear": ("Affine", "Linear"), "Add": ("Scale",)}


def _check_declared_types(nir_node, ctx: _Import, shape: g.Shape) -> None:
    """A NIR node's declared input/output shape, where it has one, must match what arrives and
    what the graph computes (NIR 1.0.8's Conv2d declares C_in = weight.shape[1], wrong for
    groups > 1: its input is checked by the graph itself; a Flatten written with the torch
    convention, start_dim 1, declares a 2-d output for the 1-d one it means)."""
    declared_out = (nir_node.output_type or {}).get("output")
    declared_in = (nir_node.input_type or {}).get("input")
    if (declared_in is not None and ctx.input_shape is not None and not isinstance(nir_node, nir.Conv2d)
            and np.size(declared_in)):
        declared = tuple(int(s) for s in np.ravel(declared_in))
        if declared != ctx.input_shape and math.prod(declared) != math.prod(ctx.input_shape):
            raise ctx.error(f"declares input shape {declared}, its incoming edges carry {ctx.input_shape}")
    if declared_out is not None and not isinstance(nir_node, nir.Input) and np.size(declared_out):
        declared = tuple(int(s) for s in np.ravel(declared_out))
        flatten_ok = isinstance(nir_node, nir.Flatten) and math.prod(declared) == math.prod(shape)  # see below
        if declared not in (shape, (math.prod(shape),)) and not flatten_ok:
            raise ctx.error(f"declares output shape {declared}, the graph computes {shape}")


def _topological_order(graph: nir.NIRGraph, sources: dict[str, list[str]], path: Path,
                       written: list[str] | None) -> list[str]:
    """Kahn's algorithm; a cycle is an error (NIR needs a Delay to close one, which snnverify does not execute)."""
    # ties broken by the written order, else by first appearance in the edge list (exporters,
    # ours included, write edges in a topological order; h5py lists nodes alphabetically)
    order = written if written is not None else list(dict.fromkeys(
        [end for edge in graph.edges for end in edge] + list(graph.nodes)))
    if written is not None and sorted(written) != sorted(graph.nodes):
        raise NIRFormatError(f"{path}: the metadata's node order does not list the graph's nodes")
    rank = {name: i for i, name in enumerate(order)}
    remaining = {name: len(s) for name, s in sources.items()}
    readers: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for name, node_sources in sources.items():
        for source in node_sources:
            readers[source].append(name)
    ready = sorted((n for n, count in remaining.items() if count == 0), key=rank.get)
    result = []
    while ready:
        name = ready.pop(0)
        result.append(name)
        for reader in readers[name]:
            remaining[reader] -= 1
            if remaining[reader] == 0:
                ready.append(reader)
                ready.sort(key=rank.get)
    if len(result) != len(order):
        cycle = {n for n, count in remaining.items() if count > 0}
        while True:  # drop what merely hangs off the cycle downstream
            tails = {n for n in cycle if not any(r in cycle for r in readers[n])}
            if not tails:
                break
            cycle -= tails
        cycle = sorted(cycle)
        raise NIRFormatError(f"{path}: the edges form a cycle (without a delay) through nodes {cycle}")
    return result
