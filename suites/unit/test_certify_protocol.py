"""The adapter protocol: one clear error naming what is missing, and the selection order."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from snnverify.certify import protocol
from snnverify.certify.adapters.reference import ReferenceAdapter
from snnverify.certify.protocol import ProtocolError, check_adapter, load_adapter, resolve_spec


def test_an_object_without_the_protocol_is_one_error_naming_everything_missing():
    with pytest.raises(ProtocolError) as error:
        check_adapter(SimpleNamespace(name="x", semantics={"reset": "subtract"}, capabilities={"gpu", "teleport"}))
    message = str(error.value)
    for missing in ("version", "semantics['v_init']", "semantics['fire']", "unknown ['teleport']", "convert("):
        assert missing in message
    assert "name" not in message.split("invalid:")[1].split(";")[0]


def test_the_reference_adapter_follows_the_protocol():
    adapter = check_adapter(ReferenceAdapter())
    assert adapter.capabilities <= set(protocol.CAPABILITIES)


def test_the_readme_example_adapter_converts_and_runs_fresh_by_protocol():
    """examples/rate_if_adapter.py, loaded as a user would (by file), converts a small network
    and its runs give T steps of 0/1 spikes per layer, the same twice."""
    import torch
    from torch import nn

    from snnverify.certify.protocol import check_converted

    adapter = load_adapter(str(Path(__file__).resolve().parents[2] / "examples" / "rate_if_adapter.py") + ":RateIF")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(16, 4)
    converted = check_converted(adapter.convert(model, [(x, torch.zeros(16))], 8), adapter)
    output, spikes = converted.run(x, 8)
    again, _ = converted.run(x, 8)
    assert output.shape == (16, 3) and torch.equal(output, again)
    (layer,) = spikes.values()
    assert layer.shape == (8, 16, 8) and set(layer.unique().tolist()) <= {0.0, 1.0}


def test_selection_order(monkeypatch, tmp_path):
    monkeypatch.setattr(protocol, "_entry_points", lambda: {})
    assert resolve_spec(None, {}) == "reference"
    monkeypatch.setattr(protocol, "_entry_points", lambda: {"theirs": object()})
    assert resolve_spec(None, {}) == "theirs"
    assert resolve_spec(None, {"SNNVERIFY_CONVERTER": "sinabs"}) == "sinabs"
    assert resolve_spec("spikingjelly", {"SNNVERIFY_CONVERTER": "sinabs"}) == "spikingjelly"
    monkeypatch.setattr(protocol, "_entry_points", lambda: {"a": object(), "b": object()})
    with pytest.raises(ProtocolError, match="several converters.*a, b"):
        resolve_spec(None, {})


def test_specs_by_name_module_and_file(monkeypatch, tmp_path):
    assert load_adapter("reference").name == "reference"
    assert load_adapter("snnverify.certify.mutants:ResetToZero").name == "mutant-ResetToZero"
    path = tmp_path / "mine.py"
    path.write_text("from snnverify.certify.adapters.reference import ReferenceAdapter\n"
                    "class Mine(ReferenceAdapter):\n    name = 'mine'\nINSTANCE = Mine()\n"
                    "ReferenceAdapter = object\n")
    assert load_adapter(f"{path}:Mine").name == "mine"
    assert load_adapter(f"{path}:INSTANCE").name == "mine"
    with pytest.raises(ProtocolError, match="has no object 'Missing'"):
        load_adapter(f"{path}:Missing")
    monkeypatch.setattr(protocol, "_entry_points", lambda: {})
    with pytest.raises(ValueError, match="unknown converter 'nope'; known names: .*reference"):
        load_adapter("nope")
    monkeypatch.setattr(protocol, "_entry_points",
                        lambda: {"installed": SimpleNamespace(load=lambda: ReferenceAdapter)})
    assert load_adapter(None, {}).name == "reference"
    with pytest.raises(ProtocolError, match="missing or invalid: name"):
        load_adapter(f"{path}:ReferenceAdapter", {})  # a class that is not an adapter itself


def test_an_entry_point_that_is_not_an_adapter_is_named(monkeypatch):
    monkeypatch.setattr(protocol, "_entry_points", lambda: {"bad": SimpleNamespace(load=lambda: object())})
    with pytest.raises(ProtocolError, match="converter adapter object does not follow"):
        load_adapter("bad", {})
