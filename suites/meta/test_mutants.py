"""The certification has teeth: every broken adapter fails its named clause; the reference passes all."""

import pytest

from snnverify.certify import CLAUSES, certify
from snnverify.certify.adapters.reference import ReferenceAdapter
from snnverify.certify.mutants import MUTANTS

PROBE_CLAUSES = [c for c in CLAUSES if not c.startswith("accuracy.")]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.__name__ for m in MUTANTS])
def test_every_mutant_is_caught_by_its_named_clause(mutant):
    verdicts = {v.id: v for v in certify(mutant(), None, PROBE_CLAUSES)}
    assert verdicts[mutant.catches].verdict == "fail", verdicts[mutant.catches].reason


def test_the_reference_converter_passes_every_clause_it_can_run():
    verdicts = certify(ReferenceAdapter(), None, PROBE_CLAUSES)
    assert [v.id for v in verdicts if v.verdict == "fail"] == []
    skipped = {v.id for v in verdicts if v.verdict == "skip"}
    assert skipped <= {"pool.max", "gpu.cpu_equal"}
