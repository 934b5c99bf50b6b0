"""A converter that raises, hangs or returns NaNs fails with a reason, and the rest completes."""

import threading
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snnverify.certify import certify
from snnverify.certify.adapters.reference import ReferenceAdapter
from snnverify.certify.clauses import RULES, feasible_ratios

QUICK = ["semantics.declared", "spikes.binary", "run.fresh_state"]


class Raising(ReferenceAdapter):
    name = "raising"

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        raise RuntimeError("unsupported layer Linear")


class Hanging(ReferenceAdapter):
    name = "hanging"

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        converted = super().convert(model, cal_loader, timesteps, train_loader)
        converted.run = lambda x, t: threading.Event().wait(60)
        return converted


class NaNs(ReferenceAdapter):
    name = "nans"

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        converted = super().convert(model, cal_loader, timesteps, train_loader)
        inner = converted.run
        converted.run = lambda x, t: (np.full_like(inner(x, t)[0], np.nan), inner(x, t)[1])
        return converted


def test_raise_hang_and_nan_each_fail_with_a_reason_while_the_rest_completes():
    results = {a.name: certify(a, None, QUICK, time_limit_s=3) for a in (Raising(), Hanging(), NaNs(), ReferenceAdapter())}
    assert all(v.verdict == "fail" and "raised RuntimeError: unsupported layer Linear" in v.reason
               for v in results["raising"])
    hung = results["hanging"]
    assert all(v.verdict == "fail" for v in hung)
    assert "hung (no answer within 3 s)" in hung[0].reason and hung[1].reason.startswith("not run: ")
    assert all(v.verdict == "fail" and "NaN or infinite outputs" in v.reason for v in results["nans"])
    assert [v.verdict for v in results["reference"]] == ["pass"] * len(QUICK)


def test_a_missing_capability_skips_with_that_reason():
    class NoResidual(ReferenceAdapter):
        capabilities = {"batchnorm"}

    (verdict,) = certify(NoResidual(), None, ["residual.merge"])
    assert verdict.verdict == "skip" and verdict.reason == "reference does not declare residual"


def simulate(rule, r: Fraction, T: int) -> list[int]:
    """The neuron of ``rule`` under constant current r·θ, exactly (θ = 1)."""
    reset, v_init, fire = rule
    v, train = Fraction(1, 2) if v_init == "half" else Fraction(0), []
    for _ in range(T):
        v += r
        s = int(v >= 1 if fire == "ge" else v > 1)
        v = (v - s) if reset == "subtract" else (0 if s else v)
        train.append(s)
    return train


@given(st.sampled_from(RULES), st.fractions(0, 1, max_denominator=40), st.integers(1, 40))
def test_the_closed_forms_admit_the_ratio_that_made_a_train(rule, r, T):
    interval = feasible_ratios(simulate(rule, r, T), rule)
    lo, lo_closed, hi, hi_closed = interval
    assert (lo < r or (lo == r and lo_closed)) and (hi is None or r < hi or (r == hi and hi_closed))


@given(st.fractions(0, 1, max_denominator=64), st.integers(1, 64))
def test_the_normative_neuron_fires_clip_floor_zT_over_theta_plus_half(r, T):
    assert sum(simulate(("subtract", "half", "ge"), r, T)) == min(max(int(r * T + Fraction(1, 2)), 0), T)
