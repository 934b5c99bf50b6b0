"""asv benchmarks. The default grid fits a nightly run (15 minutes on 2 cores); with
``SNNVERIFY_BENCH_FULL=1`` in the environment every benchmark runs its full grid."""

import os

FULL = os.environ.get("SNNVERIFY_BENCH_FULL") == "1"


def grid(default: list, full: list) -> list:
    """A parameter list: ``full`` with SNNVERIFY_BENCH_FULL=1, else ``default``."""
    return full if FULL else default
