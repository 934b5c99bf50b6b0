"""The certification checks: one function per clause id, each returning a :class:`Verdict`.

A check reaches the converter only through a harness (:class:`snnverify.certify.runner.Harness`):
``harness.convert(key, model, cal_loader, T, train_loader)`` and ``harness.run(converted, x, T)``,
which time-limit every call and turn a crash, a hang or NaN outputs into :class:`ConverterFailure`.
Probe networks have fixed weights, so their outputs are known in closed form.
"""

from __future__ import annotations

import json
import math
import operator
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

import snnverify
from snnverify.util import progress

REFERENCES_DIR = Path(__file__).resolve().parents[2] / "references"
POLICY = json.loads((REFERENCES_DIR / "certification.json").read_text())
PROBE_T = int(POLICY["probe_timesteps"])
PROBE_TOLERANCE = float(POLICY["probe_tolerance"])  # |SNN − ANN| ≤ tol·max|ANN| on probe outputs
MISMATCH_LIMIT = float(POLICY["mismatch_rate_limit"])  # spike mismatch rate allowed (exact threshold ties)


class ConverterFailure(Exception):
    """The converter crashed, hung, or returned something unusable; ``str`` is the reason."""


@dataclass
class Verdict:
    id: str
    verdict: str  # "pass" | "fail" | "skip"
    reason: str
    measured: dict = field(default_factory=dict)


def passed(clause: str, ok: bool, reason: str, **measured) -> Verdict:
    return Verdict(clause, "pass" if ok else "fail", reason, measured)


# ---------------------------------------------------------------- probe networks


def _linear(weight, bias=None) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def semantics_probe() -> nn.Module:
    """x → relu(1·x) → (h, −h): the hidden neuron's current is the input, z = x."""
    return nn.Sequential(_linear([[1.0]]), nn.ReLU(), _linear([[1.0], [-1.0]]))


class ResidualProbe(nn.Module):
    """h0 = relu(x); h = relu(W h0) with W = [[1, −1], [−1, 1]]; y = relu(h + h0); out = y.
    ``relu``: "modules" (one module per call site), "shared" (one module, three calls) or
    "functional" (``F.relu``). Closed form: out = relu(relu(W·relu(x)) + relu(x))."""

    def __init__(self, relu: str = "modules"):
        super().__init__()
        self.kind = relu
        self.fc0 = _linear([[1.0, 0.0], [0.0, 1.0]])
        self.fc1 = _linear([[1.0, -1.0], [-1.0, 1.0]])
        self.out = _linear([[1.0, 0.0], [0.0, 1.0]])
        if relu == "modules":
            self.relu0, self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        elif relu == "shared":
            self.relu = nn.ReLU()

    def forward(self, x):
        h0 = self._relu(self.fc0(x), 0)
        h = self._relu(self.fc1(h0), 1)
        return self.out(self._relu(h + h0, 2))

    def _relu(self, x, site: int):
        if self.kind == "functional":
            return F.relu(x)
        return (self.relu if self.kind == "shared" else getattr(self, f"relu{site}"))(x)


def closed_form_residual(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    h0 = x.clamp(min=0)
    return ((h0 @ w.T).clamp(min=0) + h0).clamp(min=0)


def maxpool_probe() -> nn.Module:
    """x [1, 2, 2] → relu → 2×2 max-pool → flatten → (m, −m): out = max(relu(x))·(1, −1)."""
    return nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), _linear([[1.0], [-1.0]]))


def batchnorm_probe() -> nn.Module:
    """x [1, 1, 1] → 1×1 conv (w = 1) → BatchNorm (μ = 0.5, σ² = 0.25, γ = 2, β = 0.25) → relu → (y, −y):
    y = relu(4·(x − 0.5) + 0.25)."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(0.25)
        bn.weight.fill_(2.0)
        bn.bias.fill_(0.25)
    return nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), _linear([[1.0], [-1.0]])).eval()


def mlp_probe() -> nn.Module:
    """Two hidden layers of four neurons with fixed mixed-sign weights (run, T, NIR and GPU checks)."""
    return nn.Sequential(
        _linear([[1.0, 0.5], [-0.5, 1.0], [0.25, 0.25], [1.0, -1.0]], [0.0, 0.1, 0.0, 0.2]), nn.ReLU(),
        _linear([[0.5, 0.5, 0.0, 0.25], [0.0, 1.0, -0.5, 0.5], [1.0, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]),
        nn.ReLU(), _linear([[1.0, -1.0, 0.5, 0.0], [0.0, 0.5, 1.0, -0.5]]))


def probe_grid(shape: tuple[int, ...], n: int = 64, seed: int = 0, low: float = -1.0) -> torch.Tensor:
    """``n`` inputs uniform in [low, 1], multiples of 1/64 (exact in float32), plus the all-ones input."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(int(64 * low), 65, (n - 1, *shape), generator=generator).float() / 64
    return torch.cat([x, torch.ones(1, *shape)])


def loader_of(x: torch.Tensor, batch: int = 256) -> list:
    """A calibration 'loader': (inputs, dummy labels) batches."""
    return [(x[i:i + batch], torch.zeros(len(x[i:i + batch]), dtype=torch.long)) for i in range(0, len(x), batch)]


# ---------------------------------------------------------------- semantics.declared

Interval = tuple[Fraction, bool, Fraction | None, bool]  # (lo, lo closed, hi or None = ∞, hi closed)
RULES = [(reset, v_init, fire) for reset in ("subtract", "zero") for v_init in ("half", "zero") for fire in ("ge", "gt")]


def _intersect(a: Interval | None, b: Interval | None) -> Interval | None:
    if a is None or b is None:
        return None
    lo, lo_closed = max((a[0], a[1]), (b[0], b[1]), key=lambda e: (e[0], not e[1]))
    his = [h for h in ((a[2], a[3]), (b[2], b[3])) if h[0] is not None]
    hi, hi_closed = min(his, key=lambda e: (e[0], e[1])) if his else (None, False)
    if hi is not None and (lo > hi or (lo == hi and not (lo_closed and hi_closed))):
        return None
    return (lo, lo_closed, hi, hi_closed)


def _constraint(c: int, v0: Fraction, op: str, k: int) -> Interval | None:
    """The ratios r ≥ 0 with v0 + r·c ``op`` k (op in <, ≤, ≥, >)."""
    if c == 0:
        return (Fraction(0), True, None, False) if {"<": operator.lt, "<=": operator.le, ">=": operator.ge,
                                                    ">": operator.gt}[op](v0, k) else None
    bound = (k - v0) / c
    if op in ("<", "<="):
        return _intersect((Fraction(0), True, None, False), (Fraction(0), True, bound, op == "<="))
    return (max(bound, Fraction(0)), op == ">=" or bound < 0, None, False)


def feasible_ratios(train: list[int], rule: tuple[str, str, str]) -> Interval | None:
    """The ratios r = z/θ for which a neuron of ``rule`` under constant current z emits ``train``
    (spikes at t = 1..T), or None. Closed forms, with v0 = 1/2 ("half") or 0 in units of θ:
    subtract, ≥: N(t) = clip(⌊r·t + v0⌋, 0, t); subtract, >: N(t) = clip(⌈r·t + v0⌉ − 1, 0, t);
    zero reset: first spike at the first t with v0 + r·t ≥ 1 (> 1), then every p steps, p the
    first k with r·k ≥ 1 (> 1)."""
    reset, v_init, fire = rule
    v0 = Fraction(1, 2) if v_init == "half" else Fraction(0)
    below, at_least = ("<", ">=") if fire == "ge" else ("<=", ">")
    interval: Interval | None = (Fraction(0), True, None, False)
    if any(s not in (0, 1) for s in train):
        return None
    T = len(train)
    if reset == "subtract":
        count = 0
        for t, s in enumerate(train, start=1):
            count += s
            if count < t:
                interval = _intersect(interval, _constraint(t, v0, below, count + 1))
            if count > 0:
                interval = _intersect(interval, _constraint(t, v0, at_least, count))
        return interval
    times = [t for t, s in enumerate(train, start=1) if s]
    if not times:
        return _constraint(T, v0, below, 1)
    first = times[0]
    interval = _intersect(_constraint(first, v0, at_least, 1), _constraint(first - 1, v0, below, 1))
    gaps = {b - a for a, b in zip(times, times[1:])}
    if len(gaps) > 1:
        return None
    if gaps:
        (p,) = gaps
        interval = _intersect(interval, _constraint(p, Fraction(0), at_least, 1))
        interval = _intersect(interval, _constraint(p - 1, Fraction(0), below, 1))
    return _intersect(interval, _constraint(T - times[-1], Fraction(0), below, 1))


def _contains(interval: Interval | None, value: Fraction) -> bool:
    if interval is None:
        return False
    lo, lo_closed, hi, hi_closed = interval
    above = value > lo or (value == lo and lo_closed)
    return above and (hi is None or value < hi or (value == hi and hi_closed))


def rule_name(rule) -> str:
    return f"reset={rule[0]}, v_init={rule[1]}, fire={rule[2]}"


SEMANTICS_AMPLITUDES = sorted({Fraction(k, 16) for k in range(17)} | {Fraction(2 * k + 1, 32) for k in range(16)})
SEMANTICS_T = 16


def check_semantics(harness) -> Verdict:
    """Constant currents z = a (a multiple of 1/32 in [0, 1]) into one IF neuron calibrated on
    x = 1, so that θ maps to z = 1 for a data-normalising converter (scale s = 1). For each of
    the 8 rules the scales s with r = s·a consistent with every observed train are intersected.
    Pass: the declared rule holds at s = 1, or (a threshold not set by calibration) at some s
    while no other rule holds at s = 1. Leak or drift match no rule."""
    clause = "semantics.declared"
    declared = tuple(harness.adapter.semantics[k] for k in ("reset", "v_init", "fire"))
    x = torch.tensor([[float(a)] for a in SEMANTICS_AMPLITUDES])
    converted = harness.convert("semantics", semantics_probe(), loader_of(torch.ones(8, 1)), SEMANTICS_T)
    _, spikes = harness.run(converted, x, SEMANTICS_T)
    if not spikes:
        return passed(clause, False, "no spiking layer recorded")
    layer, hidden = next(iter(spikes.items()))
    trains = hidden.reshape(hidden.shape[0], len(x), -1)[:, :, 0].T  # [amplitudes, T]
    scales: dict[tuple, Interval | None] = {}
    for rule in RULES:
        total: Interval | None = (Fraction(0), True, None, False)
        for a, train in zip(SEMANTICS_AMPLITUDES, trains):
            ratios = feasible_ratios([int(v) if float(v).is_integer() else 2 for v in train], rule)
            if a == 0:
                total = total if ratios is not None and _contains(ratios, Fraction(0)) else None
                continue
            total = _intersect(total, None if ratios is None else
                               (ratios[0] / a, ratios[1], None if ratios[2] is None else ratios[2] / a, ratios[3]))
        scales[rule] = total
    at_one = [rule for rule in RULES if _contains(scales[rule], Fraction(1))]
    anywhere = [rule for rule in RULES if scales[rule] is not None]
    measured = {"layer": layer, "timesteps": SEMANTICS_T, "amplitudes": len(x),
                "rules_at_calibrated_scale": [rule_name(r) for r in at_one],
                "rules_at_some_scale": [rule_name(r) for r in anywhere],
                "spike_counts": [int(c) for c in np.asarray(trains).sum(1)]}
    if declared in at_one:
        return passed(clause, True, f"behaves as declared ({rule_name(declared)}) at the calibrated threshold", **measured)
    if at_one:
        return passed(clause, False, f"declares {rule_name(declared)} but behaves as {rule_name(at_one[0])}", **measured)
    if declared in anywhere:
        lo, _, hi, _ = scales[declared]
        return passed(clause, True, f"behaves as declared ({rule_name(declared)}) with a threshold not set by "
                      f"calibration (z/θ = s·x, s in [{float(lo):.4g}, {float(hi) if hi else math.inf:.4g}])",
                      **measured)
    if anywhere:
        return passed(clause, False, f"declares {rule_name(declared)} but behaves as {rule_name(anywhere[0])}",
                      **measured)
    return passed(clause, False, "spike trains match no reset/v[0]/threshold rule (leak, drift, graded or "
                  "multi-spike output)", **measured)


# ---------------------------------------------------------------- structural probes


def _probe_error(harness, name: str, model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> dict:
    converted = harness.convert(name, model, loader_of(x), PROBE_T)
    output, spikes = harness.run(converted, x, PROBE_T)
    expected = expected.double().numpy()
    error = float(np.abs(output - expected).max())
    scale = float(np.abs(expected).max())
    return {"max_abs_error": error, "max_abs_expected": scale, "timesteps": PROBE_T, "inputs": len(x),
            "spiking_layers": len(spikes), "ok": error <= PROBE_TOLERANCE * scale}


def _structural(clause: str, what: str, harness, name, model, x, expected) -> Verdict:
    measured = _probe_error(harness, name, model, x, expected)
    ok = measured.pop("ok")
    return passed(clause, ok, f"{what}: max |SNN − closed form| = {measured['max_abs_error']:.4g} "
                  f"{'≤' if ok else '>'} {PROBE_TOLERANCE}·{measured['max_abs_expected']:.3g} at T = {PROBE_T}",
                  **measured)


def check_residual(harness) -> Verdict:
    x = probe_grid((2,))
    return _structural("residual.merge", "out = relu(relu(W·relu(x)) + relu(x))", harness, "residual",
                       ResidualProbe("modules"), x, closed_form_residual(x))


def check_shared_relu(harness) -> Verdict:
    x = probe_grid((2,))
    return _structural("relu.shared_module", "one ReLU module at three call sites", harness, "shared",
                       ResidualProbe("shared"), x, closed_form_residual(x))


def check_functional_relu(harness) -> Verdict:
    x = probe_grid((2,))
    return _structural("relu.functional", "F.relu at three call sites", harness, "functional",
                       ResidualProbe("functional"), x, closed_form_residual(x))


def check_maxpool(harness) -> Verdict:
    x = probe_grid((1, 2, 2))
    m = x.clamp(min=0).flatten(1).max(1).values
    return _structural("pool.max", "out = max(relu(x))·(1, −1)", harness, "maxpool", maxpool_probe(), x,
                       torch.stack([m, -m], 1))


def check_batchnorm(harness) -> Verdict:
    x = probe_grid((1, 1, 1), low=0.0)
    y = (4 * (x.flatten(1) - 0.5) + 0.25).clamp(min=0)
    return _structural("batchnorm", "out = relu(4·(x − 0.5) + 0.25)·(1, −1)", harness, "batchnorm",
                       batchnorm_probe(), x, torch.cat([y, -y], 1))


# ---------------------------------------------------------------- spikes and runs


def _mlp(harness):
    x = probe_grid((2,))
    return harness.convert("mlp", mlp_probe(), loader_of(x), PROBE_T), x


def check_binary(harness) -> Verdict:
    """Every recorded spike is 0 or 1; multi-spike or graded outputs are reported as such."""
    converted, x = _mlp(harness)
    _, spikes = harness.run(converted, x, PROBE_T)
    if not spikes:
        return passed("spikes.binary", False, "no spiking layer recorded: the network ran without spiking neurons")
    values = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in spikes.values()])
    binary = np.isin(values, (0.0, 1.0))
    measured = {"layers": len(spikes), "values": int(values.size), "non_binary_fraction": float(1 - binary.mean()),
                "max_value": float(values.max()), "integer_valued": bool(np.all(values == np.round(values)))}
    if binary.all():
        return passed("spikes.binary", True, "every spike is 0 or 1", **measured)
    kind = "multi-spike (integer counts > 1 per step)" if measured["integer_valued"] else "graded (non-integer)"
    return passed("spikes.binary", False, f"{kind} outputs in {100 * measured['non_binary_fraction']:.2f} % of "
                  f"neuron-steps, max {measured['max_value']:g}", **measured)


def _same(a, b) -> bool:
    (out_a, spikes_a), (out_b, spikes_b) = a, b
    return (np.array_equal(out_a, out_b) and list(spikes_a) == list(spikes_b)
            and all(np.array_equal(spikes_a[k], spikes_b[k]) for k in spikes_a))


def check_fresh_state(harness) -> Verdict:
    """run(A), run(A), run(B), run(A) — and B first in a fresh order — give identical results for A."""
    converted, x = _mlp(harness)
    a, b = x[:16], x[16:32]
    first = harness.run(converted, a, PROBE_T)
    again = harness.run(converted, a, PROBE_T)
    harness.run(converted, b, PROBE_T)
    after_b = harness.run(converted, a, PROBE_T)
    ok = _same(first, again) and _same(first, after_b)
    return passed("run.fresh_state", ok, "identical results for identical runs, in any order" if ok else
                  "a run's result depends on the runs before it (state carried over)",
                  repeated_equal=_same(first, again), after_other_input_equal=_same(first, after_b))


def check_timesteps(harness) -> Verdict:
    """Spike arrays have exactly T steps; spikes grow with T and the output error does not grow."""
    converted, x = _mlp(harness)
    expected = mlp_probe()(x).detach().double().numpy()
    steps, errors, counts, problems = {}, {}, {}, []
    for t in (4, 16, 64):
        output, spikes = harness.run(converted, x, t)
        steps[t] = sorted({int(np.asarray(s).shape[0]) for s in spikes.values()})
        if steps[t] != [t]:
            problems.append(f"T = {t}: spike arrays have {steps[t]} steps")
        errors[t] = float(np.abs(output - expected).max())
        counts[t] = float(sum(np.asarray(s, dtype=np.float64).sum() for s in spikes.values()))
    if not counts[4] < counts[16] < counts[64]:
        problems.append(f"spike counts do not grow with T ({counts})")
    if not errors[64] < errors[4]:
        problems.append(f"output error does not shrink from T = 4 to 64 ({errors[4]:.4g} → {errors[64]:.4g})")
    return passed("run.timesteps", not problems, "; ".join(problems) or "spike arrays have T steps; spikes grow and "
                  "the output error shrinks with T", steps={str(k): v for k, v in steps.items()},
                  max_abs_error={str(k): v for k, v in errors.items()}, spikes={str(k): v for k, v in counts.items()})


# ---------------------------------------------------------------- NIR and GPU


def _nir_file(harness):
    converted, x = _mlp(harness)
    if "nir" not in harness.cache:
        # removed with the harness (or at exit): one folder per certification, none left behind
        harness.cache["nir folder"] = tempfile.TemporaryDirectory(prefix="snnverify-certify-")
        path = Path(harness.cache["nir folder"].name) / "mlp.nir"
        harness.cache["nir"] = harness.call(f"{harness.adapter.name}.to_nir", converted.to_nir, path) or path
    return converted, x, Path(harness.cache["nir"])


def check_nir_valid(harness) -> Verdict:
    import nir

    _, _, path = _nir_file(harness)
    try:
        graph = nir.read(path)
    except Exception as error:  # noqa: BLE001 — any failure to read is the verdict
        return passed("nir.valid", False, f"nir.read({path.name}) raised {type(error).__name__}: {error}")
    return passed("nir.valid", True, f"nir.read reads it: {len(graph.nodes)} nodes, {len(graph.edges)} edges",
                  nodes=len(graph.nodes), edges=len(graph.edges))


def check_nir_faithful(harness) -> Verdict:
    """snnverify.from_nir simulates the file to the converter's own spikes, layer by layer in forward order."""
    converted, x, path = _nir_file(harness)
    _, own = harness.run(converted, x, PROBE_T)
    try:
        imported = snnverify.from_nir(path, dt=1.0)
        _, replayed = snnverify.simulate(imported, x, timesteps=PROBE_T, record=True)
    except Exception as error:  # noqa: BLE001
        return passed("nir.faithful", False, f"snnverify.from_nir cannot simulate the file: {type(error).__name__}: {error}")
    if len(own) != len(replayed):
        return passed("nir.faithful", False, f"the converter records {len(own)} spiking layers, the NIR file has "
                      f"{len(replayed)}", converter_layers=list(own), nir_layers=list(replayed))
    rates = {}
    for (name, a), b in zip(own.items(), replayed.values()):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        rates[name] = float(np.mean(a != b)) if a.shape == b.shape else 1.0
    worst = max(rates.values(), default=0.0)
    return passed("nir.faithful", worst <= MISMATCH_LIMIT, f"largest per-layer spike mismatch rate {worst:.3g} "
                  f"({'≤' if worst <= MISMATCH_LIMIT else '>'} {MISMATCH_LIMIT})", mismatch_rate=rates)


def check_gpu(harness) -> Verdict:
    if not torch.cuda.is_available():
        return Verdict("gpu.cpu_equal", "skip", "no CUDA device on this machine")
    converted, x = _mlp(harness)
    cpu = harness.run(converted, x, PROBE_T)
    gpu = harness.run(converted, x, PROBE_T, device="cuda")
    rates = {k: float(np.mean(np.asarray(cpu[1][k]) != np.asarray(gpu[1][k]))) for k in cpu[1]}
    worst = max(rates.values(), default=0.0)
    return passed("gpu.cpu_equal", worst <= MISMATCH_LIMIT, f"largest per-layer CPU/GPU spike mismatch rate {worst:.3g}",
                  mismatch_rate=rates)


# ---------------------------------------------------------------- accuracy


def _feeding_module(node: fx.Node) -> str | None:
    """The module whose output reaches ``node`` (through adds, along their first operand)."""
    while node.op != "call_module":
        if node.op != "call_function" or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
    return node.target


def modular_relus(model: nn.Module) -> fx.GraphModule:
    """The same ANN with every functional ReLU call made a call of its own ``nn.ReLU`` module,
    placed right after the module that feeds it (as a hand-written network would hold it)."""
    traced = fx.symbolic_trace(model)
    for count, node in enumerate([n for n in traced.graph.nodes
                                  if n.op == "call_function" and n.target in (F.relu, torch.relu)]):
        source = _feeding_module(node.args[0])
        parent_name, _, leaf = (source or "").rpartition(".")
        parent = traced.get_submodule(parent_name) if source else traced
        name = f"{leaf}_relu" if source else f"relu{count}"
        modules = list(parent._modules.items())
        position = [k for k, _ in modules].index(leaf) + 1 if source else len(modules)
        parent._modules.clear()
        parent._modules.update(modules[:position] + [(name, nn.ReLU())] + modules[position:])
        with traced.graph.inserting_after(node):
            module_call = traced.graph.call_module(f"{parent_name}.{name}".lstrip("."), (node.args[0],))
        node.replace_all_uses_with(module_call)
        traced.graph.erase_node(node)
    traced.recompile()
    return traced


def as_the_adapter_reads_it(model: nn.Module, adapter) -> nn.Module:
    """``model`` with its functional ReLUs made modules (:func:`modular_relus`) for an adapter
    that does not declare ``functional_relu`` (it would leave them unconverted), else ``model``."""
    if "functional_relu" in adapter.capabilities or not any(
            n.op == "call_function" and n.target in (F.relu, torch.relu) for n in fx.symbolic_trace(model).graph.nodes):
        return model
    return modular_relus(model)


def relu_sites(model: nn.Module) -> int:
    """Number of ReLU call sites in the ANN (functional calls and module calls)."""
    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    return sum(1 for n in traced.graph.nodes if (n.op == "call_function" and n.target in (F.relu, torch.relu))
               or (n.op == "call_module" and isinstance(modules[n.target], nn.ReLU)))


def check_accuracy(harness, timesteps: int) -> Verdict:
    """Gap = ANN accuracy − SNN accuracy (pp) on the same test images, ≤ the policy's limit.
    One conversion (at the largest T) serves every T. Sparsity and time per image reported."""
    clause = f"accuracy.gap.T{timesteps}"
    data = harness.data
    limit = float(POLICY["max_gap_pp"][str(timesteps)])
    model = as_the_adapter_reads_it(data.model, harness.adapter)
    rewritten = model is not data.model
    converted = harness.convert("accuracy", model, data.cal_loader, max(data.timesteps), data.train_loader)
    correct, total, spikes, neuron_steps, elapsed = 0, 0, 0.0, 0, 0.0
    layers = 0
    for x, y in progress(data.test_batches, desc=f"{clause} ({harness.adapter.name})"):
        start = time.perf_counter()
        output, recorded = harness.run(converted, x, timesteps)
        elapsed += time.perf_counter() - start
        correct += int((np.asarray(output).argmax(1) == y.numpy()).sum())
        total += len(y)
        layers = len(recorded)
        for s in recorded.values():
            s = np.asarray(s, dtype=np.float64)
            spikes += float(s.sum())
            neuron_steps += s.size
    snn = correct / total
    gap = 100 * (data.ann_accuracy - snn)
    measured = {"dataset": data.name, "test_images": total, "ann_accuracy": data.ann_accuracy, "snn_accuracy": snn,
                "gap_pp": gap, "limit_pp": limit, "training": dict(converted.training), "spiking_layers": layers,
                "relu_sites": relu_sites(data.model), "functional_relus_rewritten_as_modules": rewritten,
                "sparsity": 1 - spikes / neuron_steps if neuron_steps else None,
                "ms_per_image": 1000 * elapsed / total}
    if layers == 0:
        return passed(clause, False, "no spiking layer recorded: the network ran as an ANN", **measured)
    return passed(clause, gap <= limit, f"gap {gap:.2f} pp {'≤' if gap <= limit else '>'} {limit} pp "
                  f"({100 * snn:.2f} % vs ANN {100 * data.ann_accuracy:.2f} % on {total} images; training "
                  f"{converted.training['epochs']} epochs, {converted.training['samples']} samples)", **measured)


@dataclass(frozen=True)
class Clause:
    id: str
    check: Callable
    needs: frozenset = frozenset()  # capabilities without which it is skipped
    doc: str = ""


CLAUSES: dict[str, Clause] = {c.id: c for c in [
    Clause("semantics.declared", check_semantics, doc="declared reset, v[0] and threshold rule, from spike trains"),
    Clause("residual.merge", check_residual, frozenset({"residual"}), "residual add, closed form"),
    Clause("relu.shared_module", check_shared_relu, frozenset({"shared_relu", "residual"}),
           "one ReLU module at several call sites"),
    Clause("relu.functional", check_functional_relu, frozenset({"functional_relu", "residual"}),
           "F.relu must not vanish"),
    Clause("pool.max", check_maxpool, frozenset({"maxpool"}), "max-pool, closed form"),
    Clause("batchnorm", check_batchnorm, frozenset({"batchnorm"}), "BatchNorm applied, closed form"),
    *[Clause(f"accuracy.gap.T{t}", (lambda s, t=t: check_accuracy(s, t)), doc=f"accuracy gap at T = {t}")
      for t in (8, 16, 32)],
    Clause("spikes.binary", check_binary, doc="a spike is 0 or 1"),
    Clause("run.fresh_state", check_fresh_state, doc="identical runs give identical results"),
    Clause("run.timesteps", check_timesteps, doc="T steps; behaviour changes with T"),
    Clause("nir.valid", check_nir_valid, frozenset({"nir_export"}), "nir.read reads the export"),
    Clause("nir.faithful", check_nir_faithful, frozenset({"nir_export"}), "from_nir replays the converter's spikes"),
    Clause("gpu.cpu_equal", check_gpu, frozenset({"gpu"}), "GPU spikes equal CPU spikes"),
]}
