"""The CUDA kernels compile for a real GPU, on a machine without one.

The CUDA simulator runs kernels as plain Python, so it cannot see what only the compiler
sees: a type that does not unify, an unsupported call, an accumulator array that spills to
local memory. Here every kernel of ``snnverify.runtime.cuda`` is compiled to sm_90 PTX
(the H100/H200) with the simulator off, in a subprocess (the test session runs under the
simulator), with the argument types the backend passes in float32 and integer mode.
"""

import os
import subprocess
import sys
import textwrap

COMPILE_EVERY_KERNEL = textwrap.dedent("""
    import types
    import numba.cuda.dispatcher
    from numba import cuda, types as t
    # Device functions ask the current device for its compute capability; there is none here.
    numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
    from snnverify.runtime import cuda as backend

    def array(dtype, ndim):
        return t.Array(dtype, ndim, "C")

    pair = t.UniTuple(t.int64, 2)
    signatures = []
    for kind, dtype in (("f", t.float32), ("i", t.int64)):
        scalars = (t.int64,) * 6 + (dtype, array(dtype, 4))
        signatures += [  # currents and pooled maps run dense, spike maps event-driven
            (backend._SYNAPSES[kind], (array(dtype, 4), array(dtype, 5), array(dtype, 1)) + scalars),
            (backend._EVENT_SYNAPSES[kind], (array(t.uint32, 5), array(dtype, 5), array(dtype, 1)) + scalars)]
        signatures += [
            (backend._sum_pool2d_kernel, (array(dtype, 4), pair, pair, pair, dtype, array(dtype, 4))),
            # binary spikes and a burst layer's counts: one kernel
            *((backend._if_layer_kernel, (array(dtype, 2), t.boolean, array(dtype, 1), array(dtype, 1), t.int64,
                                          t.int64, t.int64, array(spikes, 2))) for spikes in (t.boolean, t.uint8)),
            # graded spikes (of a boolean map or of counts) and a scaling of values: one kernel
            *((backend._scale_channels_kernel, (array(spikes, 2), array(dtype, 1), array(dtype, 2)))
              for spikes in (t.boolean, t.uint8)),
            (backend._scale_channels_kernel, (array(dtype, 2), array(dtype, 1), array(dtype, 2))),
            (backend._add_into_kernel, (array(dtype, 2), array(dtype, 2), t.boolean, t.int64)),
        ]
    signatures += [(backend._divide_kernel, (array(t.float32, 1), t.float32, array(t.float32, 1))),
                   (backend._pack_spikes_kernel, (array(t.boolean, 4), t.int64, array(t.uint32, 5))),
                   *((backend._count_kernel, (array(spikes, 1), array(t.int64, 1))) for spikes in (t.boolean, t.uint8))]
    for kernel, signature in signatures:
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
        name = kernel.py_func.__name__
        assert ".entry" in ptx, name
        # the conv kernels' accumulators and staged tiles must live in registers and shared memory
        assert not name.startswith("conv2d") or "ld.local" not in ptx, \
            f"{name}{signature}: accumulators spill to local memory"
        print(name, "ok")
""")


def test_every_cuda_kernel_compiles_to_sm90_ptx():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    result = subprocess.run([sys.executable, "-c", COMPILE_EVERY_KERNEL], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = result.stdout.split("\n")
    assert compiled.count("conv2d ok") == 2 and compiled.count("conv2d_events ok") == 2
    assert len([line for line in compiled if line.endswith(" ok")]) == 22
