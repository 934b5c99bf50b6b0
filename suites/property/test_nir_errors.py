"""Bad NIR input is a clear error — a :class:`snnverify.NIRFormatError` naming the file and the
node — never a crash, another exception type, or a silently different network.

How a mutated file that still reads is told apart from a silently wrong one: a lossless file
carries a SHA-256 digest of the whole graph (node order, names, types, fields, dtypes, bytes,
edges, T) in its metadata. ``from_nir`` recomputes it from what it read, so a mutation either
(a) is rejected (corrupt HDF5, missing or changed content, digest mismatch) or (b) left the
network exactly as written (e.g. bytes in unused HDF5 space) — the fuzz test asserts that the
graph read is then identical to the original. Plain files have no digest (NIR has none); the
fuzz test asserts only that they raise NIRFormatError or import as a valid network.
"""

import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snnverify
from snnverify import graph as g
from snnverify import nir_io
from snnverify.api import SNN


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as path:
        yield Path(path)


@pytest.fixture(scope="module")
def valid(workdir) -> dict[str, bytes]:
    """A small residual network with conv, pool and merges, written in both modes."""
    rng = np.random.default_rng(0)
    theta = np.array([0.5, 1.0], np.float32)
    nodes = [
        g.Input("input", shape=(1, 4, 4), scale=2.0),
        g.Conv2d("conv", weight=rng.normal(size=(2, 1, 3, 3)).astype(np.float32), padding=1),
        g.IF("if1", threshold=theta),
        g.Conv2d("conv2", weight=rng.normal(size=(2, 2, 3, 3)).astype(np.float32), bias=np.ones(2, np.float32),
                 padding=1),
        g.Add("add"),
        g.IF("if2", threshold=theta),
        g.AvgPool2d("pool"),
        g.Flatten("flat"),
        g.Linear("fc", weight=rng.normal(size=(3, 8)).astype(np.float32)),
        g.Output("output"),
    ]
    inputs = {"conv": ["input"], "if1": ["conv"], "conv2": ["if1"], "add": ["if1", "conv2"], "if2": ["add"],
              "pool": ["if2"], "flat": ["pool"], "fc": ["flat"], "output": ["fc"]}
    graph = g.SpikingGraph({n.name: n for n in nodes}, inputs)
    files = {}
    for mode in ("lossless", "plain"):
        path = workdir / f"valid-{mode}.nir"
        snnverify.to_nir(SNN(graph, 4), path, mode=mode)
        files[mode] = path.read_bytes()
    files["graph"] = graph
    return files


def write_bytes(workdir, data: bytes, name="case.nir") -> Path:
    path = workdir / name
    path.write_bytes(data)
    return path


def expect_error(path, *fragments, **kwargs):
    with pytest.raises(snnverify.NIRFormatError) as caught:
        snnverify.from_nir(path, **kwargs)
    message = str(caught.value)
    for fragment in (str(path), *fragments):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_nir_format_error_is_a_value_error():
    assert issubclass(snnverify.NIRFormatError, ValueError)


def test_not_a_nir_file(workdir, valid):
    expect_error(write_bytes(workdir, b"weights,bias\n1,2\n"), "not a NIR file")
    expect_error(workdir / "missing.nir", "no such file")
    with h5py.File(workdir / "other.h5", "w") as f:
        f.create_dataset("data", data=np.arange(3))
    expect_error(workdir / "other.h5", "no 'node' group")


def test_truncated_file(workdir, valid):
    data = valid["lossless"]
    expect_error(write_bytes(workdir, data[: len(data) // 2]), "not readable as HDF5")


def mutate(workdir, valid, edit, mode="lossless") -> Path:
    path = write_bytes(workdir, valid[mode])
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def test_unknown_node_type(workdir, valid):
    def edit(f):
        del f["node/nodes/conv2/type"]
        f["node/nodes/conv2"].create_dataset("type", data="Conv3d", dtype=h5py.string_dtype())

    expect_error(mutate(workdir, valid, edit), "node 'conv2'", "unknown type 'Conv3d'")


def test_missing_field(workdir, valid):
    expect_error(mutate(workdir, valid, lambda f: f["node/nodes/fc"].__delitem__("weight")), "node 'fc'",
                 "lacks the field 'weight'")


def test_shape_mismatch_on_an_edge(workdir, valid):
    def edit(f):
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc"].create_dataset("weight", data=np.ones((3, 9), np.float32))

    expect_error(mutate(workdir, valid, edit, mode="plain"), "'fc'", "expects input shape (9,), got (8,)")


def test_float64_beyond_float32_range_is_named_without_an_overflow_warning(workdir, valid):
    """Checked before the cast: numpy's overflow RuntimeWarning would fail this test (pyproject
    turns RuntimeWarnings into errors), and the error names the node and the value."""
    def edit(f):
        weight = f["node/nodes/fc/weight"][()].astype(np.float64)
        weight[1, 2] = 1e39
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc"].create_dataset("weight", data=weight)

    expect_error(mutate(workdir, valid, edit, mode="plain"), "'fc'", "1e+39", "beyond float32's range")


def test_changed_parameter_fails_the_digest(workdir, valid):
    def edit(f):
        f["node/nodes/conv/weight"][0, 0, 0, 0] += 1

    expect_error(mutate(workdir, valid, edit), "SHA-256")


def two_layer() -> dict:
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}),
             "a": nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)),
             "b": nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    return nodes


def write_nir(workdir, nodes, edges, name="foreign.nir", metadata=None) -> Path:
    path = workdir / name
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata or {}, type_check=False))
    return path


def test_cycle_without_delay(workdir):
    path = write_nir(workdir, two_layer(), [("input", "a"), ("a", "b"), ("b", "a"), ("b", "output")])
    expect_error(path, "cycle", "['a', 'b']")


def test_duplicate_edge_and_dangling_edge(workdir):
    expect_error(write_nir(workdir, two_layer(), [("input", "a"), ("input", "a"), ("a", "b"), ("b", "output")]),
                 "duplicate edge ('input', 'a')")
    expect_error(write_nir(workdir, two_layer(), [("input", "a"), ("a", "ghost"), ("a", "b"), ("b", "output")]),
                 "names no node 'ghost'")


def test_declared_shape_mismatch(workdir):
    nodes = two_layer()
    nodes["output"] = nir.Output(output_type={"output": np.array([4])})
    expect_error(write_nir(workdir, nodes, [("input", "a"), ("a", "b"), ("b", "output")]), "node 'output'",
                 "declares input shape (4,)")


def test_unsupported_node_types_are_named(workdir):
    nodes = two_layer()
    nodes["b"] = nir.CubaLIF(tau_syn=np.ones(3), tau_mem=np.ones(3), r=np.ones(3), v_leak=np.zeros(3),
                             v_threshold=np.ones(3))
    expect_error(write_nir(workdir, nodes, [("input", "a"), ("a", "b"), ("b", "output")]), "node 'b'",
                 "CubaLIF", "synaptic state")


def test_lif_needs_a_time_step(workdir):
    nodes = two_layer()
    nodes["b"] = nir.LIF(tau=np.full(3, 2e-3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    edges = [("input", "a"), ("a", "b"), ("b", "output")]
    expect_error(write_nir(workdir, nodes, edges), "node 'b' (LIF)", "dt=")
    assert snnverify.from_nir(write_nir(workdir, nodes, edges), dt=1e-3).graph.nodes["b"].leak[0] == 0.5
    with_dt = write_nir(workdir, nodes, edges, name="with-dt.nir", metadata={"dt": 1e-3})
    layer = snnverify.from_nir(with_dt).graph.nodes["b"]
    assert layer.leak[0] == 0.5 and layer.gain[0] == 0.5 and layer.fire_on == ">"
    with pytest.raises(ValueError, match="dt must be a positive number"):
        snnverify.from_nir(with_dt, dt=-1.0)


def test_torch_convention_flatten_and_scale_nodes_import(workdir):
    """start_dim 1 (the batch-axis convention of torch-based exporters) flattens the sample;
    Scale becomes a depthwise 1×1 convolution (constant per channel) or a diagonal Linear."""
    nodes = {"input": nir.Input(input_type={"input": np.array([2, 2, 2])}),
             "scale": nir.Scale(scale=np.stack([np.full((2, 2), 0.5), np.full((2, 2), 2.0)]).astype(np.float32)),
             "flat": nir.Flatten(input_type={"input": np.array([2, 2, 2])}, start_dim=1),
             "gain": nir.Scale(scale=np.arange(8, dtype=np.float32)),
             "output": nir.Output(output_type={"output": np.array([8])})}
    path = write_nir(workdir, nodes, [("input", "scale"), ("scale", "flat"), ("flat", "gain"), ("gain", "output")])
    snn = snnverify.from_nir(path)
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    expected = (x * np.array([0.5, 2.0], np.float32)[:, None, None]).reshape(1, 8) * np.arange(8)
    np.testing.assert_array_equal(snnverify.simulate(snn, x, timesteps=1), expected)
    nodes["scale"] = nir.Scale(scale=np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    expect_error(write_nir(workdir, nodes, [("input", "scale"), ("scale", "flat"), ("flat", "gain"),
                                            ("gain", "output")], name="varies.nir"),
                 "node 'scale'", "varies within channel 0")


def test_foreign_semantics_are_refused_by_cpu_and_quantize(workdir):
    nodes = two_layer()
    nodes["b"] = nir.IF(r=np.ones(3), v_threshold=np.ones(3))
    path = write_nir(workdir, nodes, [("input", "a"), ("a", "b"), ("b", "output")])
    snn = snnverify.from_nir(path)
    with pytest.raises(ValueError, match="IF layer 'b' sets v_init, v_reset, fire_on"):
        snnverify.compile(snn, target="cpu")
    with pytest.raises(ValueError, match="quantize executes only the normative IF neuron"):
        snnverify.quantize(snn)


def free_space_object(data: bytes, collection: int) -> int:
    """Where the index-0 (free space) object of the global heap collection at ``collection``
    starts: after the objects, each a 16-byte header and its data padded to 8 bytes."""
    position = collection + 16
    while struct.unpack_from("<H", data, position)[0] != 0:
        position += 16 + (struct.unpack_from("<Q", data, position + 8)[0] + 7) // 8 * 8
    return position


#: damage to the global heap collection of the file's strings -> what the error says
HEAP_DAMAGE = {
    "free space size 0": "is corrupt (free space 0 bytes",
    "object size": "is corrupt",
    "collection version": "where no global heap collection starts",
    "collection size": "runs past the end of the file",
}


def test_a_damaged_string_heap_is_an_error_not_a_hang(workdir, valid):
    """Damage the global heap collection that holds the file's strings (the nodes' types and the
    edges). libhdf5 reports most damage itself, but on a free-space object of size 0 it loops
    forever, holding the GIL (it steps to the object's end: no step). The reader checks each
    collection before h5py reads a string: every case is a NIRFormatError naming the field and
    the collection. Read in a subprocess, so that a hang fails the test instead of freezing it."""
    collection = valid["lossless"].index(b"GCOL")
    paths = {}
    for damage in HEAP_DAMAGE:
        data = bytearray(valid["lossless"])
        if damage == "free space size 0":
            struct.pack_into("<Q", data, free_space_object(data, collection) + 8, 0)
        elif damage == "object size":  # the first object's size, 8 bytes more: the objects after it shift
            size = struct.unpack_from("<Q", data, collection + 16 + 8)[0]
            struct.pack_into("<Q", data, collection + 16 + 8, size + 8)
        elif damage == "collection version":
            data[collection + 4] = 2
        else:
            struct.pack_into("<Q", data, collection + 8, 2 * len(data))
        paths[damage] = str(write_bytes(workdir, bytes(data), f"heap-{damage.replace(' ', '-')}.nir"))
    read_each = ("import json, sys\nfrom snnverify import nir_io\nerrors = {}\n"
                 "for damage, path in json.loads(sys.argv[1]).items():\n"
                 "    try:\n        nir_io.read(path)\n    except nir_io.NIRFormatError as error:\n"
                 "        errors[damage] = str(error)\nprint(json.dumps(errors))")
    try:
        done = subprocess.run([sys.executable, "-c", read_each, json.dumps(paths)], capture_output=True, text=True,
                              timeout=120, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("reading files with a damaged string heap did not finish in 120 s")
    errors = json.loads(done.stdout)
    for damage, message in HEAP_DAMAGE.items():
        assert damage in errors, f"{damage}: read without an error"
        error = errors[damage]
        assert paths[damage] in error and str(collection) in error and message in error, (damage, error)
        assert "the strings of field '" in error, (damage, error)


# --- fuzzing ------------------------------------------------------------------------------


def all_items(f: h5py.File) -> list[str]:
    names = []
    f.visit(names.append)
    return names


@st.composite
def mutations(draw, size: int):
    """How to damage a valid file of ``size`` bytes: truncate it, flip bytes, or edit it with
    h5py (delete an item, change a node's type, change an array's shape)."""
    kind = draw(st.sampled_from(["truncate", "flip", "delete", "retype", "reshape"]))
    if kind == "truncate":
        return kind, draw(st.integers(0, size - 1))
    if kind == "flip":
        flips = draw(st.integers(1, 8))
        return kind, [(draw(st.integers(0, size - 1)), draw(st.integers(1, 255))) for _ in range(flips)]
    return kind, (draw(st.integers(0, 10**6)), draw(st.sampled_from(
        ["Affine", "Linear", "IF", "LIF", "Scale", "Conv2d", "Flatten", "Output", "Input", "Threshold", "Foo"])))


def damaged(workdir, data: bytes, mutation, name: str) -> Path:
    kind, detail = mutation
    if kind == "truncate":
        return write_bytes(workdir, data[:detail], name)
    if kind == "flip":
        mutated = bytearray(data)
        for position, bits in detail:
            mutated[position] ^= bits
        return write_bytes(workdir, bytes(mutated), name)
    path = write_bytes(workdir, data, name)
    apply_edit(path, (kind, *detail))
    return path


def apply_edit(path: Path, edit) -> None:
    kind, pick, new_type = edit
    with h5py.File(path, "r+") as f:
        items = [n for n in all_items(f) if n.startswith("node")]
        if kind == "delete":
            del f[items[pick % len(items)]]
        elif kind == "retype":
            types = [n for n in items if n.endswith("/type")]
            target = types[pick % len(types)]
            del f[target]
            f.create_dataset(target, data=new_type, dtype=h5py.string_dtype())
        else:
            arrays = [n for n in items if isinstance(f[n], h5py.Dataset) and f[n].ndim >= 1]
            target = arrays[pick % len(arrays)]
            value = f[target][()]
            del f[target]
            f.create_dataset(target, data=np.concatenate([value, value[:1]]) if pick % 2 else value[1:])


@pytest.mark.parametrize("mode", ["lossless", "plain"])
def test_fuzzed_files_raise_nir_format_error_or_read_exactly(workdir, valid, mode):
    outcomes = {"rejected": 0, "identical": 0, "valid plain": 0}

    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutations(len(valid[mode])))
    def check(mutation):
        kind = mutation[0]
        path = damaged(workdir, valid[mode], mutation, f"fuzz-{mode}.nir")
        try:
            snn = snnverify.from_nir(path)
        except snnverify.NIRFormatError as error:
            assert str(path) in str(error)
            outcomes["rejected"] += 1
            return
        if mode == "lossless":  # read without error: it must be the network that was written
            original = valid["graph"]
            assert nir_io.graph_digest(snn.graph, snn.timesteps) == nir_io.graph_digest(original, 4), kind
            outcomes["identical"] += 1
        else:  # plain NIR has no digest: it must at least be a valid network that runs
            snnverify.simulate(snn, np.zeros((1, 1, 4, 4), np.float32), timesteps=2)
            outcomes["valid plain"] += 1

    check()
    assert outcomes["rejected"] > 0
