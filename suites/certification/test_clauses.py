"""One test per certification clause id; a clause the converter cannot run is skipped with its reason."""

import pytest

from snnverify.certify import CLAUSES
from snnverify.certify.runner import certify_clause


def verdict_of(harness, clause_id):
    verdict = certify_clause(harness, clause_id)
    if verdict.verdict == "skip":
        pytest.skip(verdict.reason)
    assert verdict.verdict == "pass", f"{clause_id}: {verdict.reason}"


def test_every_clause_has_its_test():
    tested = {name[len("test_clause_"):].replace("__", ".") for name in globals() if name.startswith("test_clause_")}
    assert tested == set(CLAUSES)


def test_clause_semantics__declared(harness):
    verdict_of(harness, "semantics.declared")


def test_clause_residual__merge(harness):
    verdict_of(harness, "residual.merge")


def test_clause_relu__shared_module(harness):
    verdict_of(harness, "relu.shared_module")


def test_clause_relu__functional(harness):
    verdict_of(harness, "relu.functional")


def test_clause_pool__max(harness):
    verdict_of(harness, "pool.max")


def test_clause_batchnorm(harness):
    verdict_of(harness, "batchnorm")


def test_clause_accuracy__gap__T8(harness):
    verdict_of(harness, "accuracy.gap.T8")


def test_clause_accuracy__gap__T16(harness):
    verdict_of(harness, "accuracy.gap.T16")


def test_clause_accuracy__gap__T32(harness):
    verdict_of(harness, "accuracy.gap.T32")


def test_clause_spikes__binary(harness):
    verdict_of(harness, "spikes.binary")


def test_clause_run__fresh_state(harness):
    verdict_of(harness, "run.fresh_state")


def test_clause_run__timesteps(harness):
    verdict_of(harness, "run.timesteps")


def test_clause_nir__valid(harness):
    verdict_of(harness, "nir.valid")


def test_clause_nir__faithful(harness):
    verdict_of(harness, "nir.faithful")


def test_clause_gpu__cpu_equal(harness):
    verdict_of(harness, "gpu.cpu_equal")
