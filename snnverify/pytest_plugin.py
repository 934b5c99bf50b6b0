"""pytest plugin: the ``--converter`` option, Hypothesis profiles and the report header.

Profiles: ``dev`` (default: random, 50 examples), ``ci`` (derandomised, so a CI failure
reproduces), ``certify`` (derandomised, more examples). Choose with ``--hypothesis-profile``
or the environment variable ``SNNVERIFY_HYPOTHESIS_PROFILE``; CI=true selects ``ci``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("certify", max_examples=200, deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("SNNVERIFY_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    group = parser.getgroup("snnverify")
    group.addoption(
        "--converter",
        default=os.environ.get("SNNVERIFY_CONVERTER", "snnverify"),
        help="converter under certification (default: $SNNVERIFY_CONVERTER or the snnverify reference)",
    )


def pytest_report_header(config):
    import torch

    import snnverify

    return [
        f"snnverify {snnverify.__version__}, torch {torch.__version__}, "
        f"converter under test: {config.getoption('--converter')}, hypothesis profile: {settings._current_profile}"
    ]
