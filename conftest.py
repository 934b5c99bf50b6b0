"""Loads the snnverify pytest plugin (options, markers, Hypothesis profiles, report header)."""

import os

# CPU-only machines run the CUDA kernels in Numba's simulator. This must happen before numba
# is first imported; the GPU check (tools/gpu-check) sets NUMBA_ENABLE_CUDASIM=0 itself.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

pytest_plugins = ["snnverify.pytest_plugin"]
