"""Every reference file is data with a citation: a source, accuracies in percent, T as keys."""

import json
from pathlib import Path

import pytest

REFERENCES = sorted((Path(__file__).resolve().parents[2] / "references").glob("*.json"))
T_KEYED = ("snn", "gap_pp", "gap_std_pp", "sparsity", "max_gap_pp")


def check_t_keys(where: str, table: dict) -> None:
    for key, value in table.items():
        assert key.isdigit() and int(key) > 0, f"{where}: T key {key!r} is not a positive integer"
        assert isinstance(value, (int, float)), f"{where}[{key}] = {value!r} is not a number"


@pytest.mark.parametrize("path", REFERENCES, ids=[p.name for p in REFERENCES])
def test_reference_schema_and_citation(path):
    reference = json.loads(path.read_text())
    assert isinstance(reference.get("source"), str) and reference["source"].strip(), f"{path.name}: no source"
    for key in T_KEYED:
        if key in reference:
            check_t_keys(f"{path.name}:{key}", reference[key])
    for name, model in reference.get("models", {}).items():
        where = f"{path.name}:models.{name}"
        assert reference.get("unit") == "percent top-1 accuracy", f"{path.name}: models without the percent unit"
        assert 0 <= model["ann"] <= 100, f"{where}.ann = {model['ann']}"
        assert model["snn"], f"{where}: no SNN accuracy"
        for key in T_KEYED:
            if key in model:
                check_t_keys(f"{where}.{key}", model[key])
        assert all(0 <= a <= 100 for a in model["snn"].values()), f"{where}.snn outside 0..100: {model['snn']}"


def test_derived_accuracies_match_the_published_gaps():
    """Where a file publishes gaps and derives accuracies, they agree to the printed digits."""
    for path in REFERENCES:
        for name, model in json.loads(path.read_text()).get("models", {}).items():
            for t, gap in model.get("gap_pp", {}).items() if "gap_std_pp" in model else []:
                assert model["ann"] - gap == pytest.approx(model["snn"][t], abs=0.005), (path.name, name, t)


def test_the_check_catches_a_bad_key_and_a_missing_source(tmp_path):
    with pytest.raises(AssertionError, match="positive integer"):
        check_t_keys("x", {"0": 1.0})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"source": " ", "models": {}}))
    with pytest.raises(AssertionError, match="no source"):
        test_reference_schema_and_citation(bad)
