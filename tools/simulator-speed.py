"""The CUDA simulator's speed, side by side in one process: numba-cuda's own blocks (an OS
thread per CUDA thread) against snnverify's greenlet blocks (snnverify.runtime.cuda), on the
same generated graphs (the cpu-vs-gpu strategy, derandomised); the spikes must agree.

    .venv/bin/python tools/simulator-speed.py DRAWS LAST   # the last LAST of DRAWS graphs, 2 rounds
"""

import os
import sys
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from numba.cuda.simulator import kernel, kernelapi  # noqa: E402


def installed():
    return kernel.BlockManager.run, kernel.BlockThread.syncthreads, kernelapi.threading


NUMBA_OWN = installed()
import snnverify  # noqa: E402
import snnverify.runtime.cuda  # noqa: E402,F401  (installs the greenlet blocks)
from snnverify.api import SNN  # noqa: E402
from snnverify.strategies import spiking_graphs  # noqa: E402

RUNNERS = {"numba-cuda's threads": NUMBA_OWN, "greenlets": installed()}


def generated_graphs(draws: int) -> list:
    cases = []

    @settings(max_examples=draws, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(spiking_graphs(dyadic=False, max_work=100_000))
    def collect(case):
        cases.append(case)

    collect()
    return cases


def main(draws: int, last: int) -> None:
    cases = generated_graphs(draws)[-last:]
    times, results = {name: [] for name in RUNNERS}, {}
    for _ in range(2):
        for name, runner in RUNNERS.items():
            kernel.BlockManager.run, kernel.BlockThread.syncthreads, kernelapi.threading = runner
            start = time.perf_counter()
            results[name] = [snnverify.simulate(SNN(c.graph, c.timesteps, target="gpu"), c.x, record=True)
                             for c in cases]
            times[name].append(time.perf_counter() - start)
    for (out_a, spikes_a), (out_b, spikes_b) in zip(*results.values()):
        assert np.array_equal(out_a, out_b) and all(np.array_equal(spikes_a[k], spikes_b[k]) for k in spikes_a)
    compared = sum(s.size for _, spikes in results["greenlets"] for s in spikes.values())
    print(f"{len(cases)} graphs, {compared} neuron-timesteps, spikes identical")
    for name, seconds in times.items():
        print(f"{name}: {', '.join(f'{t:.2f} s' for t in seconds)}")
    own, ours = (min(t) for t in times.values())
    print(f"ratio of the fastest rounds: {own / ours:.1f}×")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
