"""pytest plugin: the ``--converter`` option, Hypothesis profiles, the spike-comparison counts
and the report header.

Under pytest-xdist (``-n auto``) each worker counts its own comparisons and hands them to the
controller when it finishes, which sums them: the summary and ``--comparison-report`` cover
every worker.

Profiles: ``dev`` (default: random, 50 examples), ``ci`` (derandomised, so a CI failure
reproduces), ``certify`` (derandomised, more examples), ``gpu-check`` (derandomised, no shrinking:
tools/gpu-check on a leased GPU). Choose with ``--hypothesis-profile``
or the environment variable ``SNNVERIFY_HYPOTHESIS_PROFILE``; CI=true selects ``ci``.

A derandomised draw is a function of the test's source and of the literals in the project's
modules loaded by then: Hypothesis draws a few of its values from the constants it finds in
local non-test modules (``hypothesis.internal.constants_ast``). Changing a number anywhere in
``snnverify`` (a recipe's learning rate, say) therefore changes which cases the ``ci`` profile
draws, and the comparison counts with them; counts are comparable between two trees only where
the constants are the same. A failure still reproduces from its printed blob.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, Phase, settings

# No deadline and no too_slow health check in any profile: how long running an example takes
# (Numba compiles kernels on first use) and generating one takes (the load of a shared machine)
# is not a property of the code under test.
_UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=50, **_UNTIMED)
settings.register_profile("ci", max_examples=50, derandomize=True, print_blob=True, **_UNTIMED)
settings.register_profile("certify", max_examples=200, derandomize=True, print_blob=True, **_UNTIMED)
# A leased GPU's minutes are few: report a failing example as found rather than spend them shrinking it.
settings.register_profile("gpu-check", derandomize=True, print_blob=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_UNTIMED)
settings.load_profile(os.environ.get("SNNVERIFY_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    group = parser.getgroup("snnverify")
    group.addoption(
        "--converter",
        default=None,
        help="converter under certification by suites/certification: NAME, package.module:object or "
             "path/file.py:object (default: $SNNVERIFY_CONVERTER, the one installed snnverify.converters "
             "entry point, else the reference)",
    )
    group.addoption(
        "--comparison-report",
        default=None,
        help="write the spike comparisons counted by the equivalence tests to this JSON file",
    )


class ComparisonLog:
    """Counts the neuron-timestep comparisons the equivalence tests make, and the mismatches.

    ``record(check, compared, mismatched, where)``: ``where`` maps a layer name to its number
    of mismatches, so the summary can say where flips occur, not only how many."""

    def __init__(self):
        self.totals = defaultdict(lambda: {"compared": 0, "mismatched": 0, "cases": 0, "where": defaultdict(int)})
        self.report_path = None  # --comparison-report: rewritten after every record

    def write(self):
        from snnverify.util import atomic_write

        atomic_write(self.report_path, json.dumps(self.as_dict(), indent=2) + "\n")

    def record(self, check: str, compared: int, mismatched: int, where: dict[str, int] | None = None):
        total = self.totals[check]
        total["compared"] += int(compared)
        total["mismatched"] += int(mismatched)
        total["cases"] += 1
        for layer, count in (where or {}).items():
            total["where"][layer] += int(count)
        if self.report_path:  # a run killed at a time limit (tools/gpu-check) keeps what it compared
            self.write()

    def merge(self, counts: dict) -> None:
        """Add the counts of another log (its :meth:`as_dict`), as a worker's are added."""
        for check, other in counts.items():
            total = self.totals[check]
            for key in ("compared", "mismatched", "cases"):
                total[key] += int(other[key])
            for layer, count in other["where"].items():
                total["where"][layer] += int(count)
        if self.report_path:
            self.write()

    def as_dict(self) -> dict:
        return {
            check: {**t, "rate": t["mismatched"] / t["compared"] if t["compared"] else 0.0, "where": dict(t["where"])}
            for check, t in self.totals.items()
        }


_LOG = ComparisonLog()


@pytest.fixture(scope="session")
def comparison_log() -> ComparisonLog:
    return _LOG


#: the key under which an xdist worker hands its counts to the controller
_WORKER_OUTPUT = "snnverify_comparisons"


def pytest_configure(config):
    # a worker keeps its counts in memory: the controller writes the report of all of them
    worker = hasattr(config, "workerinput")
    _LOG.report_path = None if worker else config.getoption("--comparison-report")
    if worker:
        _share_the_cores(int(config.workerinput["workercount"]))


def pytest_collection_finish(session):
    # in a process that runs tests (not -n's controller, which collects none), before the first
    # one, and only where a Hypothesis test is among them: the imports take ~8 s a process
    if any(getattr(getattr(item, "obj", None), "is_hypothesis_test", False) for item in session.items):
        _import_every_snnverify_module()


def _share_the_cores(workers: int) -> None:
    """Give each of ``workers`` xdist workers its share of the cores for torch's and Numba's
    thread pools. Each pool otherwise starts one thread per core in every worker: more threads
    than cores, which wait on each other at every parallel region. (Tests that compare thread
    counts set their own.)"""
    import numba
    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def _import_every_snnverify_module() -> None:
    """Hypothesis (6.170) draws, with probability 0.05 per choice, a constant found in the
    source of the local modules loaded so far. A derandomised test's draws then depend on which
    snnverify modules earlier tests happened to import: the same test compared 47,372 and
    55,474 neuron-timesteps in two CI runs of one commit. Importing all of snnverify before any
    test runs gives every worker, in any order, the same draws (test modules are all collected
    first anyway; an adapter file that a test loads from a path still adds its few constants)."""
    import snnverify

    for module in pkgutil.walk_packages(snnverify.__path__, "snnverify."):
        if module.name not in _PROGRAMS:
            importlib.import_module(module.name)


#: modules that are programs, acting on import: the command line, and the certification worker
#: process (it points sys.stdout at stderr to keep its protocol stream clean)
_PROGRAMS = ("snnverify.__main__", "snnverify.certify.worker")


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker
        session.config.workeroutput[_WORKER_OUTPUT] = json.dumps(_LOG.as_dict())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the xdist controller: a worker finished; add its counts."""
    counts = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
    if counts:
        _LOG.merge(json.loads(counts))


def pytest_terminal_summary(terminalreporter, config):
    if not _LOG.totals:
        return
    terminalreporter.section("snnverify spike comparisons")
    for check, total in _LOG.as_dict().items():
        where = ", ".join(f"{k}: {v}" for k, v in sorted(total["where"].items(), key=lambda kv: -kv[1])[:5])
        terminalreporter.write_line(
            f"{check}: {total['compared']} neuron-timesteps compared in {total['cases']} cases, "
            f"{total['mismatched']} mismatched (rate {total['rate']:.3g})" + (f"; most in {where}" if where else "")
        )


def pytest_report_header(config):
    import torch

    import snnverify
    from snnverify.certify.protocol import resolve_spec

    return [
        f"snnverify {snnverify.__version__}, torch {torch.__version__}, "
        f"converter under test: {resolve_spec(config.getoption('--converter'))}, hypothesis profile: {settings._current_profile}"
    ]
