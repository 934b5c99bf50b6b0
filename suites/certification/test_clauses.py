"""One test per certification clause id; a clause the converter cannot run is skipped with its reason."""

import pytest

from snnverify.certify import CLAUSES
from snnverify.certify.runner import certify_clause


def verdict_of(session, clause_id):
    verdict = certify_clause(session, clause_id)
    if verdict.verdict == "skip":
        pytest.skip(verdict.reason)
    assert verdict.verdict == "pass", f"{clause_id}: {verdict.reason}"


def test_every_clause_has_its_test():
    tested = {name[len("test_clause_"):].replace("__", ".") for name in globals() if name.startswith("test_clause_")}
    assert tested == set(CLAUSES)


def test_clause_semantics__declared(session):
    verdict_of(session, "semantics.declared")


def test_clause_residual__merge(session):
    verdict_of(session, "residual.merge")


def test_clause_relu__shared_module(session):
    verdict_of(session, "relu.shared_module")


def test_clause_relu__functional(session):
    verdict_of(session, "relu.functional")


def test_clause_pool__max(session):
    verdict_of(session, "pool.max")


def test_clause_batchnorm(session):
    verdict_of(session, "batchnorm")


def test_clause_accuracy__gap__T8(session):
    verdict_of(session, "accuracy.gap.T8")


def test_clause_accuracy__gap__T16(session):
    verdict_of(session, "accuracy.gap.T16")


def test_clause_accuracy__gap__T32(session):
    verdict_of(session, "accuracy.gap.T32")


def test_clause_spikes__binary(session):
    verdict_of(session, "spikes.binary")


def test_clause_run__fresh_state(session):
    verdict_of(session, "run.fresh_state")


def test_clause_run__timesteps(session):
    verdict_of(session, "run.timesteps")


def test_clause_nir__valid(session):
    verdict_of(session, "nir.valid")


def test_clause_nir__faithful(session):
    verdict_of(session, "nir.faithful")


def test_clause_gpu__cpu_equal(session):
    verdict_of(session, "gpu.cpu_equal")
