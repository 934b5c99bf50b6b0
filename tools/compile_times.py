"""Where a cold run's compile time goes: the wall time of every Numba compile, per kernel, from
Numba's event API (``numba:compile``). A compile that calls another jitted function includes
that function's compile, so a kernel's time holds its workers' and helpers'.

As a pytest plugin, every process (xdist workers too) writes its compiles to
``$SNNVERIFY_COMPILE_TIMES/<worker>.json``; then summarise the folder:

    d=$(mktemp -d) && SNNVERIFY_COMPILE_TIMES=$d SNNVERIFY_KERNEL_CACHE=$(mktemp -d) CI=true \\
        PYTHONPATH=tools .venv/bin/python -m pytest -p compile_times -n auto --dist worksteal suites/
    .venv/bin/python tools/compile_times.py $d
"""

import atexit
import collections
import json
import os
import sys
import time
from pathlib import Path


def _record_compiles(folder: Path) -> None:
    from numba.core import event

    compiles, started = [], {}

    class Timer(event.Listener):
        def on_start(self, ev):
            started[id(ev.data["dispatcher"])] = time.perf_counter()

        def on_end(self, ev):
            dispatcher = ev.data["dispatcher"]
            function = dispatcher.py_func
            compiles.append((f"{function.__module__}.{function.__qualname__}", str(ev.data["args"]),
                             time.perf_counter() - started.pop(id(dispatcher))))

    event.register("numba:compile", Timer())
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    atexit.register(lambda: (folder / f"{worker}.json").write_text(json.dumps(compiles)))


def summary(folder: Path) -> str:
    """Per function: its compiles' seconds summed over all processes, and how many."""
    seconds, counts = collections.Counter(), collections.Counter()
    for path in sorted(folder.glob("*.json")):
        for name, _, spent in json.loads(path.read_text()):
            seconds[name] += spent
            counts[name] += 1
    return "\n".join(f"{spent:8.1f} s {counts[name]:3d}x  {name}" for name, spent in seconds.most_common())


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
elif os.environ.get("SNNVERIFY_COMPILE_TIMES"):
    _record_compiles(Path(os.environ["SNNVERIFY_COMPILE_TIMES"]))
