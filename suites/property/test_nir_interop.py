"""NIR interop with real third-party simulators (the ``interop`` extra: snnTorch, sinabs, Norse).

Our direction: a residual network exported in plain mode, imported by each tool, simulated by
its own simulator for T steps on the same constant input, and compared spike by spike with
(a) our simulation of the *tool's* semantics — our ``from_nir`` of the same file, with the IF
fields set to what the tool does — which must agree exactly, and (b) our own normative
semantics (v[0] = θ/2, ≥, reset by subtraction), whose deviation is measured, named and
asserted to be the deviation between our simulations of the two semantics.

What each tool does with a NIR IF node (read from its installed source, confirmed here):
* Norse 1.1.0: NIR semantics — v[0] = 0, fire on v > θ, reset to v_reset (0).
* snnTorch 1.0.0: a *leaky* neuron, ``Leaky(beta=0.9)``: v ← 0.9·v + I, fire on v > θ, reset by
  subtraction, v[0] = 0. Its importer also builds the layer with ``init_hidden=False``, whose
  (spikes, membrane) tuple the next layer cannot take: simulating needs ``init_hidden = True``
  set on the imported layers (asserted below, then done).
* sinabs 2.0.3: ``IAFSqueeze``: fire on v ≥ θ (floor(v/θ) spikes per step), reset by
  subtraction, v[0] = 0, membrane clipped below at −θ.
The test networks keep every per-step current below θ and non-negative, so at most one spike
per step and no clipping occur; the deviations measured are those of the neuron rules alone.

Other direction: networks built in each tool, exported with its NIR exporter, imported with
``from_nir(dt=...)`` and simulated by us, compared with the tool's own simulation.
"""

import numpy as np
import pytest
import torch

import snnverify
from snnverify import graph as g
from snnverify.api import SNN

T = 16


def residual_mlp(seed: int) -> g.SpikingGraph:
    """input → fc1 → if1 → fc2 → if2 → fc3 → (+ if1) → if3 → head → output, dyadic non-negative
    weights; per-step currents stay in [0, θ). if2 has θ = 2: plain export folds its amplitude
    into fc3's weights; if1 (θ = 1, read by the merge) needs no Scale node."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: (rng.integers(0, 2, size=shape) / 8).astype(np.float32)  # noqa: E731
    theta = lambda value: np.full(6, value, np.float32)  # noqa: E731
    nodes = [g.Input("input", shape=(4,)), g.Linear("fc1", weight=w(6, 4), bias=w(6)), g.IF("if1", threshold=theta(1)),
             g.Linear("fc2", weight=w(6, 6), bias=w(6)), g.IF("if2", threshold=theta(0.5)),
             g.Linear("fc3", weight=w(6, 6), bias=w(6)), g.Add("add"), g.IF("if3", threshold=theta(2)),
             g.Linear("head", weight=w(3, 6), bias=w(3)), g.Output("output")]
    inputs = {"fc1": ["input"], "if1": ["fc1"], "fc2": ["if1"], "if2": ["fc2"], "fc3": ["if2"], "add": ["if1", "fc3"],
              "if3": ["add"], "head": ["if3"], "output": ["head"]}
    return g.SpikingGraph({n.name: n for n in nodes}, inputs)


def inputs_for(seed: int) -> np.ndarray:
    return (np.random.default_rng(100 + seed).integers(0, 9, size=(3, 4)) / 8).astype(np.float32)


def our_spikes(graph: g.SpikingGraph, x: np.ndarray) -> dict[str, np.ndarray]:
    return snnverify.simulate(SNN(graph, T), x, record=True)[1]


def with_neurons(graph: g.SpikingGraph, **fields) -> g.SpikingGraph:
    """``graph`` with every IF layer's fields replaced (arrays given per layer as scalars)."""
    def value(layer, v):
        return np.full_like(layer.threshold, v) if isinstance(v, (int, float)) else v
    return graph.with_nodes({layer.name: g.replace(layer, **{k: value(layer, v) for k, v in fields.items()})
                             for layer in graph.neuron_layers})


def record_hooks(module: torch.nn.Module, names: list[str], pick) -> tuple[dict, list]:
    """Forward hooks that append ``pick(output)`` of the submodules named ``names``."""
    seen = {name: [] for name in names}
    handles = [getattr(module, name).register_forward_hook(
        lambda _m, _i, out, name=name: seen[name].append(pick(out).detach().clone())) for name in names]
    return seen, handles


def compare(comparison_log, check, ours, theirs):
    assert sorted(ours) == sorted(theirs)
    where = {name: int((ours[name] != theirs[name]).sum()) for name in ours}
    comparison_log.record(check, sum(s.size for s in ours.values()), sum(where.values()),
                          {k: v for k, v in where.items() if v})
    return sum(where.values())


def plain_export(nir, tmp_path, seed):
    """The residual MLP of ``seed``, its inputs, the path of our plain NIR export of it, that
    file as read by ``nir`` (for a tool's importer) and the names of its IF layers."""
    graph = residual_mlp(seed)
    path = str(tmp_path / "plain.nir")
    snnverify.to_nir(SNN(graph, T), path, mode="plain")
    return graph, inputs_for(seed), path, nir.read(path), [layer.name for layer in graph.neuron_layers]


def check_both_semantics(comparison_log, tool, graph, path, x, theirs, tool_semantics):
    """(a) identical to our simulation of the tool's semantics; (b) the deviation from our own
    semantics equals the deviation between our simulations of the two."""
    imported = snnverify.from_nir(path).graph
    modelled = our_spikes(tool_semantics(imported), x)
    assert compare(comparison_log, f"interop {tool}: tool vs our model of its semantics", modelled, theirs) == 0
    normative = our_spikes(graph, x)
    deviation = compare(comparison_log, f"interop {tool}: tool vs snnverify semantics (measured)", normative, theirs)
    assert deviation == sum(int((normative[k] != modelled[k]).sum()) for k in normative)
    return deviation


SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_norse_simulates_our_plain_export_with_nir_semantics(comparison_log, tmp_path, seed):
    nir = pytest.importorskip("nir")
    norse = pytest.importorskip("norse.torch", reason="Norse (interop extra) not installed")
    graph, x, path, nir_graph, names = plain_export(nir, tmp_path, seed)
    module = norse.from_nir(nir_graph)
    seen, _ = record_hooks(module, names, lambda out: out[0] > 0)
    state = None
    with torch.no_grad():
        for _ in range(T):
            _, state = module(torch.from_numpy(x), state)
    theirs = {name: torch.stack(steps).numpy() for name, steps in seen.items()}
    # Norse = NIR: v[0] = 0, fire on v > θ (θ written one float32 step low: ≥ θ), reset to 0
    deviation = check_both_semantics(comparison_log, "Norse", graph, path, x, theirs, lambda imported: imported)
    assert deviation > 0  # v[0] = θ/2 and reset by subtraction matter on this network


@pytest.mark.parametrize("seed", SEEDS)
def test_snntorch_simulates_our_plain_export_as_leaky_neurons(comparison_log, tmp_path, seed):
    nir = pytest.importorskip("nir")
    pytest.importorskip("snntorch", reason="snnTorch (interop extra) not installed")
    from snntorch.import_nir import import_from_nir

    graph, x, path, nir_graph, names = plain_export(nir, tmp_path, seed)
    module = import_from_nir(nir_graph)
    with pytest.raises(TypeError, match="must be Tensor, not tuple"):  # snnTorch 1.0.0's importer bug
        module(torch.from_numpy(x))
    for name in names:
        layer = getattr(module, name)
        assert float(layer.beta) == pytest.approx(0.9)  # NIR IF imported as a leaky neuron
        layer.init_hidden = True
        layer.reset_mem()
    seen, _ = record_hooks(module, names, lambda out: out > 0)
    with torch.no_grad():
        for _ in range(T):
            module(torch.from_numpy(x))
    theirs = {name: torch.stack(steps).numpy() for name, steps in seen.items()}
    # snnTorch: v ← 0.9·v + I, fire on v > θ, reset by subtraction, v[0] = 0
    check_both_semantics(comparison_log, "snnTorch", graph, path, x, theirs,
                         lambda imported: with_neurons(imported, leak=0.9, v_reset=None))


@pytest.mark.parametrize("seed", SEEDS)
def test_sinabs_simulates_our_plain_export_with_subtraction_and_ge(comparison_log, tmp_path, seed):
    nir = pytest.importorskip("nir")
    pytest.importorskip("sinabs", reason="sinabs (interop extra) not installed")
    from sinabs.nir import from_nir as sinabs_from_nir

    graph, x, path, nir_graph, names = plain_export(nir, tmp_path, seed)
    batch = x.shape[0]
    module = sinabs_from_nir(nir_graph, batch_size=batch)
    seen, _ = record_hooks(module, names, lambda out: out)
    sequence = torch.from_numpy(np.repeat(x[:, None], T, axis=1)).flatten(0, 1)  # [batch·T, features]
    with torch.no_grad():
        module(sequence)
    (spikes,) = seen["if1"][:1]
    assert spikes.max() <= 1  # one spike per step at most on this network (no multi-spike)
    theirs = {name: steps[0].unflatten(0, (batch, T)).transpose(0, 1).numpy() > 0 for name, steps in seen.items()}
    # sinabs: fire on v ≥ θ (here θ⁻, one float32 step below θ), reset by subtraction, v[0] = 0
    check_both_semantics(comparison_log, "sinabs", graph, path, x, theirs,
                         lambda imported: with_neurons(imported, v_reset=None, fire_on=">="))


# --- their exports, our import ------------------------------------------------------------------


def dyadic_sequential(seed: int, neuron, container=torch.nn.Sequential) -> torch.nn.Module:
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in [(4, 6), (6, 3)]:
        linear = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(rng.integers(0, 3, size=(fan_out, fan_in)) / 8))
            linear.bias.copy_(torch.from_numpy(rng.integers(0, 2, size=fan_out) / 8))
        layers += [linear, neuron(fan_out)]
    return container(*layers)


def simulate_import(path, x, dt=None):
    snn = snnverify.from_nir(path, dt=dt)
    return snn, snnverify.simulate(snn, x, timesteps=T, record=True)[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_norse_lif_export_imports_and_reproduces_norse(comparison_log, tmp_path, seed):
    nir = pytest.importorskip("nir")
    norse = pytest.importorskip("norse.torch", reason="Norse (interop extra) not installed")
    from norse.torch.module.lif_box import LIFBoxCell, LIFBoxParameters

    # Norse 1.1.0 writes τ = dt/τ_inv, the time constant in steps, not in seconds (1/τ_inv): its
    # files mean what they say only for dt = 1, which is what Norse's own importer assumes too
    dt = 1.0  # τ = 2 steps: β = 1 − dt/τ = 1/2, γ = R·dt/τ = 1/2, exact in float32
    params = LIFBoxParameters(tau_mem_inv=torch.tensor(0.5), v_th=torch.tensor(0.25), v_leak=torch.tensor(0.0),
                              v_reset=torch.tensor(0.0))
    model = dyadic_sequential(seed, lambda n: LIFBoxCell(params, dt=dt), container=norse.SequentialState)
    x = inputs_for(seed)
    graph = norse.to_nir(model, torch.from_numpy(x[0]), dt=dt)  # a batch axis here would be written as a shape axis
    assert [float(np.ravel(n.tau)[0]) for n in graph.nodes.values() if isinstance(n, nir.LIF)] == [2.0, 2.0]
    path = tmp_path / "norse.nir"
    nir.write(str(path), graph, compression=None)  # 0-d parameters take no compression filter
    snn, ours = simulate_import(path, x, dt=dt)
    names = [layer.name for layer in snn.graph.neuron_layers]
    assert len(names) == 2, names
    assert [(float(layer.leak[0]), float(layer.gain[0])) for layer in snn.graph.neuron_layers] == [(0.5, 0.5)] * 2
    seen, _ = record_hooks(model, names, lambda out: out[0] > 0)
    state = None
    with torch.no_grad():
        for _ in range(T):
            _, state = model(torch.from_numpy(x), state)
    theirs = {name: torch.stack(steps).numpy() for name, steps in seen.items()}
    assert compare(comparison_log, "interop Norse export → snnverify (LIF, dt)", ours, theirs) == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_sinabs_iaf_export_imports_with_nir_semantics_and_the_difference_is_measured(comparison_log, tmp_path,
                                                                                     seed):
    """sinabs writes its subtracting, ≥-firing IAF as a NIR IF (reset to 0, >): read as NIR says,
    the spikes differ from sinabs' own; read with sinabs' rules they agree exactly."""
    nir = pytest.importorskip("nir")
    pytest.importorskip("sinabs", reason="sinabs (interop extra) not installed")
    import sinabs.layers as sl
    from sinabs.nir import to_nir as sinabs_to_nir

    batch, x = 3, inputs_for(seed)
    model = dyadic_sequential(seed, lambda n: sl.IAFSqueeze(batch_size=batch, spike_threshold=2.0,
                                                            min_v_mem=-2.0))
    sequence = torch.from_numpy(np.repeat(x[:, None], T, axis=1)).flatten(0, 1)
    graph = sinabs_to_nir(model, sequence[:batch])
    path = tmp_path / "sinabs.nir"
    nir.write(str(path), graph, compression=None)  # 0-d parameters take no compression filter
    for layer in model:
        if isinstance(layer, sl.IAFSqueeze):
            layer.reset_states()
    snn, ours = simulate_import(path, x)
    names = [layer.name for layer in snn.graph.neuron_layers]
    module_names = {name: name for name in names}
    seen, _ = record_hooks(model, list(module_names), lambda out: out)
    with torch.no_grad():
        model(sequence)
    assert max(float(steps[0].max()) for steps in seen.values()) <= 1
    theirs = {name: seen[name][0].unflatten(0, (batch, T)).transpose(0, 1).numpy() > 0 for name in names}
    deviation = compare(comparison_log, "interop sinabs export → snnverify as NIR (reset to 0, >): measured",
                        ours, theirs)
    sinabs_rules = with_neurons(snn.graph, v_reset=None, fire_on=">=")
    modelled = snnverify.simulate(SNN(sinabs_rules, T), x, record=True)[1]
    assert compare(comparison_log, "interop sinabs export → snnverify with sinabs' rules", modelled, theirs) == 0
    assert deviation == sum(int((modelled[k] != ours[k]).sum()) for k in ours)


def test_snntorch_export_fails_nir_type_checking():
    """snnTorch 1.0.0 writes a Leaky layer as a NIR LIF with scalar parameters, whose declared
    input shape () clashes with the Linear before it under nir 1.0.8's type inference: its
    exporter cannot produce a file for even a two-layer network. (When this starts passing
    through, replace this test by a comparison like the Norse and sinabs ones.)"""
    pytest.importorskip("snntorch", reason="snnTorch (interop extra) not installed")
    import snntorch
    from snntorch.export_nir import export_to_nir

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), snntorch.Leaky(beta=0.5, init_hidden=True))
    with pytest.raises(ValueError, match=r"type mismatch: 0.output: \[\[6\]\] -> 1.input: \[\]"):
        export_to_nir(model, torch.zeros(4))
