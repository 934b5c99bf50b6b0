"""NIR round trips are exact, and plain NIR changes exactly what the docs say it changes.

* lossless: from_nir(to_nir(g)) has g's node names, order, types and edges (in order), every
  parameter with its dtype and max abs diff exactly 0.0 — on ≥ 1000 generated graphs with
  nested residual merges, float32 and integer, normative and foreign-semantics neurons;
* the round-tripped network gives bit-identical spikes and outputs on torch, cpu and gpu;
* Add nodes in every position NIR has no direct form for (chains, several readers, feeding
  Output, one source read twice) survive both modes;
* plain: importing our plain file gives exactly the spikes of our network with the NIR
  semantics applied (v[0] = 0, reset to zero): the amplitude folding, the ≥ emulation and the
  dissolved merges change nothing else; burst layers, which NIR's IF cannot fire, are refused
  by name (lossless files keep them, named in the node's metadata);
* converted real models (small ResNet on digits, torchvision resnet18) round-trip exactly.
Comparisons are counted in the comparison log like the backend equivalence tests.
"""

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import snnverify
from snnverify import graph as g
from snnverify.api import SNN
from snnverify.models import build_model
from snnverify.strategies import spiking_graphs

from .test_backends import quantized


def examples(count: int) -> settings:
    return settings(max_examples=count, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as path:
        yield Path(path)


def round_trip(graph, workdir, mode="lossless", timesteps=4, **read):
    path = workdir / f"{mode}.nir"
    snnverify.to_nir(SNN(graph, timesteps), path, mode=mode)
    return snnverify.from_nir(path, **read)


def assert_same_graph(comparison_log, check, a: g.SpikingGraph, b: g.SpikingGraph):
    """Same node order, names, types, edges in order; every field equal, arrays with the same
    dtype and shape and a max abs diff of exactly 0.0. Records the parameter values compared."""
    assert list(a.nodes) == list(b.nodes)
    assert a.inputs == b.inputs
    compared = 0
    for name, node in a.nodes.items():
        other = b.nodes[name]
        assert type(node) is type(other), name
        for field in dataclasses.fields(node):
            x, y = getattr(node, field.name), getattr(other, field.name)
            if isinstance(x, np.ndarray):
                assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, (name, field.name)
                assert x.size == 0 or np.max(np.abs(x - y)) == 0.0, (name, field.name)
                compared += x.size
            else:
                assert x == y and type(x) is type(y), (name, field.name, x, y)
    comparison_log.record(check, compared, 0)


@st.composite
def foreign_neurons(draw, graph: g.SpikingGraph) -> g.SpikingGraph:
    """``graph`` with some IF layers given foreign-semantics fields (leak, gain, v_init, v_reset, >)."""
    changes = {}
    for layer in graph.neuron_layers:
        if draw(st.booleans()):
            channels = layer.threshold.shape
            value = lambda: np.float32(draw(st.sampled_from([0.0, 0.25, 0.5, 0.75])))  # noqa: E731
            fields = {name: np.full(channels, value(), np.float32)
                      for name in ("v_init", "v_reset", "leak", "gain") if draw(st.booleans())}
            changes[layer.name] = g.replace(layer, fire_on=draw(st.sampled_from([">=", ">"])), **fields)
    return graph.with_nodes(changes)


@pytest.mark.parametrize("kind", ["float32", "integer", "foreign"])  # 3 × 334 graphs, run in parallel
def test_lossless_round_trip_is_exact(comparison_log, workdir, kind):
    @examples(334)
    @given(spiking_graphs(dyadic=False, max_size=4, max_blocks=2), st.data())
    def check(case, data):
        graph = case.graph
        if kind == "integer":
            graph = quantized(case)
        elif kind == "foreign":
            graph = data.draw(foreign_neurons(graph))
        back = round_trip(graph, workdir, timesteps=case.timesteps)
        assert back.timesteps == case.timesteps
        assert_same_graph(comparison_log, f"NIR lossless round trip, {kind} parameters", graph, back.graph)

    check()


def spikes(graph, target, x, steps):
    return snnverify.simulate(SNN(graph, steps, target=target), x, record=True)


def assert_same_spikes(comparison_log, check, a, b):
    (out_a, spikes_a), (out_b, spikes_b) = a, b
    assert list(spikes_a) == list(spikes_b)
    where = {name: int((spikes_a[name] != spikes_b[name]).sum()) for name in spikes_a}
    comparison_log.record(check, sum(s.size for s in spikes_a.values()), sum(where.values()),
                          {k: v for k, v in where.items() if v})
    assert sum(where.values()) == 0, f"{check}: spike mismatches per layer {where}"
    np.testing.assert_array_equal(out_a, out_b)


@pytest.mark.parametrize("target, count", [("torch", 30), ("cpu", 30), ("gpu", 24)])
def test_round_tripped_network_spikes_identically(comparison_log, workdir, target, count):
    tiny = target == "gpu"  # the CUDA simulator interprets every multiply-accumulate

    @examples(count)
    @given(spiking_graphs(dyadic=False, max_size=5 if tiny else 6, max_timesteps=4 if tiny else 8), st.booleans())
    def check(case, integer):
        graph = case.graph
        if integer:
            graph = quantized(case)
        back = round_trip(graph, workdir)
        assert_same_spikes(comparison_log, f"NIR lossless round trip, {target} spikes",
                           spikes(graph, target, case.x, case.timesteps),
                           spikes(back.graph, target, case.x, case.timesteps))

    check()


def nir_semantics(graph: g.SpikingGraph) -> g.SpikingGraph:
    """Our network with NIR 1.0.8's neuron: v[0] = 0 and reset to 0 (≥ and graded output kept:
    the plain export carries those over exactly)."""
    return graph.with_nodes({
        layer.name: g.replace(layer, v_init=np.zeros_like(layer.threshold), v_reset=np.zeros_like(layer.threshold))
        for layer in graph.neuron_layers
    })


@examples(40)
@given(spiking_graphs(dyadic=True, max_timesteps=8))
def test_plain_nir_changes_only_the_documented_semantics(comparison_log, workdir, case):
    """A graph with a burst layer is refused, naming the first one and its B (the documented
    limitation: a NIR IF fires at most once per step); the same graph with binary neurons in
    its place is exported and compared."""
    bursts = [layer for layer in case.graph.neuron_layers if layer.max_spikes > 1]
    graph = case.graph.with_nodes({layer.name: g.replace(layer, max_spikes=1) for layer in bursts})
    if bursts:
        with pytest.raises(ValueError, match=rf"IF layer '{bursts[0].name}' is a burst layer "
                                             rf"\(max_spikes={bursts[0].max_spikes}\): NIR's IF fires at most once"):
            round_trip(case.graph, workdir, mode="plain")
    back = round_trip(graph, workdir, mode="plain")
    assert [layer.name for layer in back.graph.neuron_layers] == [layer.name for layer in graph.neuron_layers]
    assert all(layer.fire_on == ">" for layer in back.graph.neuron_layers)
    assert_same_spikes(comparison_log, "NIR plain export vs our network under NIR semantics (torch)",
                       spikes(nir_semantics(graph), "torch", case.x, case.timesteps),
                       spikes(back.graph, "torch", case.x, case.timesteps))


def merge_graph(kind: str) -> g.SpikingGraph:
    """Hand-built merges that NIR has no direct form for (dyadic weights: every sum is exact)."""
    rng = np.random.default_rng(0)
    dyadic = lambda n: (rng.integers(-8, 9, size=(n, 3)) / 8).astype(np.float32)  # noqa: E731
    lin = lambda name, n=3: g.Linear(name, weight=dyadic(n))  # noqa: E731
    neuron = lambda name: g.IF(name, threshold=np.array([0.5, 0.75, 1.0], np.float32))  # noqa: E731
    nodes = [g.Input("input", shape=(3,)), lin("a"), neuron("sa"), lin("b"), neuron("sb")]
    inputs = {"a": ["input"], "sa": ["a"], "b": ["sa"], "sb": ["b"]}
    if kind == "chain":  # Add -> Add -> IF
        nodes += [g.Add("add1"), g.Add("add2"), neuron("out_if"), lin("head", 2), g.Output("output")]
        inputs |= {"add1": ["sa", "sb"], "add2": ["add1", "b"], "out_if": ["add2"], "head": ["out_if"],
                   "output": ["head"]}
    elif kind == "fan_out":  # one Add read by two neurons and a Linear
        nodes += [g.Add("add"), neuron("n1"), neuron("n2"), lin("c"), g.Add("add_out"), lin("head", 2),
                  g.Output("output")]
        inputs |= {"add": ["sa", "b"], "n1": ["add"], "n2": ["add"], "c": ["add"], "add_out": ["n1", "n2", "c"],
                   "head": ["add_out"], "output": ["head"]}
    elif kind == "to_output":  # Add -> Output
        nodes += [lin("c"), g.Add("add"), g.Output("output")]
        inputs |= {"c": ["sb"], "add": ["b", "c"], "output": ["add"]}
    elif kind == "same_source_twice":  # Add(Add(sa, b), sa): dissolving would read sa twice
        nodes += [g.Add("add1"), g.Add("add2"), neuron("out_if"), lin("head", 2), g.Output("output")]
        inputs |= {"add1": ["sa", "b"], "add2": ["add1", "sa"], "out_if": ["add2"], "head": ["out_if"],
                   "output": ["head"]}
    return g.SpikingGraph({n.name: n for n in nodes}, inputs)


@pytest.mark.parametrize("kind", ["chain", "fan_out", "to_output", "same_source_twice"])
def test_merges_without_a_direct_nir_form(comparison_log, workdir, kind):
    graph = merge_graph(kind)
    x = (np.random.default_rng(1).integers(-8, 17, size=(4, 3)) / 8).astype(np.float32)
    back = round_trip(graph, workdir)
    assert_same_graph(comparison_log, "NIR lossless round trip, hand-built merges", graph, back.graph)
    for target in ("torch", "cpu"):
        assert_same_spikes(comparison_log, f"NIR lossless round trip, hand-built merges, {target}",
                           spikes(graph, target, x, 8), spikes(back.graph, target, x, 8))
    plain = round_trip(graph, workdir, mode="plain")  # merges dissolved into edges, read back as Adds
    assert_same_spikes(comparison_log, "NIR plain export vs NIR semantics, hand-built merges (torch)",
                       spikes(nir_semantics(graph), "torch", x, 8), spikes(plain.graph, "torch", x, 8))


def test_same_source_twice_keeps_an_identity_node_in_plain_mode(workdir):
    import nir

    path = workdir / "twice.nir"
    snnverify.to_nir(SNN(merge_graph("same_source_twice"), 4), path, mode="plain")
    written = nir.read(str(path), type_check=False)
    assert len(set(written.edges)) == len(written.edges)
    assert any(isinstance(node, nir.Scale) for node in written.nodes.values())
    chain = workdir / "chain.nir"
    snnverify.to_nir(SNN(merge_graph("chain"), 4), chain, mode="plain")
    dissolved = nir.read(str(chain), type_check=False)
    # add2(add1(sa, sb), b): three edges into out_if; the spikes of sa and sb (also read by a
    # merge, so not foldable) pass through their amplitude Scale nodes
    assert sorted(s for s, t in dissolved.edges if t == "out_if") == ["b", "sa.amplitude", "sb.amplitude"]
    assert not any(name.startswith("add") for name in dissolved.nodes)


def test_converted_small_resnet_round_trips(comparison_log, workdir, digits_case):
    graph = digits_case.snn.graph
    back = round_trip(graph, workdir, timesteps=digits_case.snn.timesteps)
    assert_same_graph(comparison_log, "NIR lossless round trip, small_resnet (digits)", graph, back.graph)
    x, _ = next(iter(digits_case.test_loader))
    for target in ("torch", "cpu"):
        assert_same_spikes(comparison_log, f"NIR lossless round trip, small_resnet, {target}",
                           spikes(graph, target, x[:16], 8), spikes(back.graph, target, x[:16], 8))
    integer = snnverify.quantize(digits_case.snn).graph
    assert_same_graph(comparison_log, "NIR lossless round trip, small_resnet integer", integer,
                      round_trip(integer, workdir).graph)


def test_converted_torchvision_resnet18_round_trips(comparison_log, workdir):
    torch.manual_seed(0)
    ann = build_model("torchvision_resnet18", 10, 3).eval()
    x = torch.randn(8, 3, 32, 32)
    loader = DataLoader(TensorDataset(x, torch.zeros(8).long()), batch_size=8)
    graph = snnverify.convert(ann, loader, timesteps=2, qcfs_epochs=0, finetune_epochs=0).graph
    back = round_trip(graph, workdir, timesteps=2)
    assert_same_graph(comparison_log, "NIR lossless round trip, torchvision resnet18", graph, back.graph)
    assert len(graph.neuron_layers) == 17
    assert_same_spikes(comparison_log, "NIR lossless round trip, torchvision resnet18, torch",
                       spikes(graph, "torch", x[:1], 2), spikes(back.graph, "torch", x[:1], 2))


def test_lossless_file_names_the_burst_in_metadata_and_older_files_still_verify(workdir):
    """A burst layer is a NIR IF (what a foreign reader executes: one spike per step at most)
    whose snnverify metadata names max_spikes; from_nir restores it. A binary layer digests
    as before bursts existed: a file without the max_spikes entry still verifies, while
    removing it from a burst layer is caught by the digest."""
    import nir

    from snnverify import nir_io

    burst = merge_graph("chain").with_nodes({"sb": g.replace(merge_graph("chain").nodes["sb"], max_spikes=5)})
    path = workdir / "burst.nir"
    snnverify.to_nir(SNN(burst, 4), path)
    written = nir.read(str(path), type_check=False)
    assert isinstance(written.nodes["sb"], nir.IF)
    assert written.nodes["sb"].metadata["snnverify"]["max_spikes"] == 5
    assert written.nodes["sa"].metadata["snnverify"]["max_spikes"] == 1
    assert snnverify.from_nir(path).graph.nodes["sb"].max_spikes == 5
    for graph, readable in ((merge_graph("chain"), True), (burst, False)):
        older = nir_io.to_nir_graph(graph, timesteps=4)
        for node in older.nodes.values():
            node.metadata["snnverify"].pop("max_spikes", None)
        nir.write(str(path), older, compression=None)
        if readable:
            assert [layer.max_spikes for layer in snnverify.from_nir(path).graph.neuron_layers] == [1, 1, 1]
        else:
            with pytest.raises(nir_io.NIRFormatError, match="does not match the SHA-256 digest"):
                snnverify.from_nir(path)
