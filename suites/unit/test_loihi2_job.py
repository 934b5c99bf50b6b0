"""The Loihi 2 report: measured on a few digits images, rendered from its JSON."""

import itertools

import numpy as np

from snnverify.jobs import loihi2 as loihi2_job
from snnverify.report.loihi2 import render


def test_measure_and_render(digits_case):
    result = loihi2_job.measure(digits_case.snn.graph, digits_case.test_loader, timesteps=4, limit=20)
    assert result["samples"] == 20
    runs = result["runs"]
    assert set(runs) == {"float", "loihi2_subtract", "loihi2_zero"}
    assert runs["float"]["spike_mismatch_rate"] == 0 and runs["float"]["prediction_agreement_with_float"] == 1
    layers = [layer.name for layer in digits_case.snn.graph.neuron_layers]
    for run in runs.values():
        assert list(run["spike_mismatch_rate_per_layer"]) == layers
        assert 0 <= run["accuracy"] <= 1 and run["images_per_s"] > 0
    quantisation = result["quantisation"]
    assert [info["latency"] for info in quantisation["layers"].values()] == sorted(
        info["latency"] for info in quantisation["layers"].values())
    report = {"command": "snnverify loihi2 --limit 20", "dataset": "digits", "model": "small_resnet",
              "timesteps": 4, "ann_accuracy": 0.9, "versions": {"cpu_threads": 2},
              "settings": {"checkpoint": "ann.pt", "levels": 8, "qcfs_epochs": 1}, **result}
    markdown = render(report)
    assert "snnverify loihi2 --limit 20" in markdown
    assert sum(line.startswith("| loihi2_sim") for line in markdown.splitlines()) == 2
    assert all(f"| {name} |" in markdown for name in itertools.islice(layers, 3))


def test_conversion_cache_is_a_lossless_nir_file_keyed_by_settings(digits_case, tmp_path):
    cache = tmp_path / "conversion.nir"
    settings = {"levels": 8, "seed": 0}
    assert loihi2_job.read_cache(cache, settings) is None
    loihi2_job.write_cache(cache, digits_case.snn, settings, 0.5)
    graph, accuracy = loihi2_job.read_cache(cache, settings)
    assert accuracy == 0.5 and list(graph.nodes) == list(digits_case.snn.graph.nodes)
    for name, node in graph.nodes.items():
        original = digits_case.snn.graph.nodes[name]
        for field in ("weight", "threshold"):
            if hasattr(node, field):
                np.testing.assert_array_equal(getattr(node, field), getattr(original, field))
    assert loihi2_job.read_cache(cache, {**settings, "levels": 16}) is None
