"""How the CPU's large kernels run in parallel: a Numba ``prange`` loop over workers, each calling
the kernel's worker function through its address.

A kernel deals its jobs round-robin to ``workers`` workers (worker w takes jobs w, w + workers,
…), each with its own scratch. The worker is a plain ``@njit`` function; the kernel is a
``parallel=True`` function whose loop does nothing but call it once per worker, so that Numba's
parfor passes never walk the worker's body. The call goes through the worker's machine-code
address (:func:`call_worker`), not to the dispatcher, because of compile time: Numba links a
called dispatcher's LLVM module into each caller and optimises it there again, and a parallel
loop is two callers (its gufunc and the kernel around it), so the fused kernel's worker was
optimised three times: 45–48 s to compile a signature, of which 26–35 s the worker alone
(reports/speed, "A fused kernel's parallel loop cost 17 s a signature to compile"). Called
through its address, the worker is compiled once and the kernel around it in a second or two;
both are cached as before (the address is an argument, never a constant of the code).
"""

from __future__ import annotations

import numpy as np
from numba import typeof, types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic

#: (kernel, the arguments' type fingerprints) -> the address of the worker compiled for them
_addresses: dict = {}


@intrinsic
def call_worker(typingctx, address, arguments):
    """Call the compiled function at ``address`` (an integer) with the values of the tuple
    ``arguments``, in Numba's own calling convention; True if it raised. (A parallel loop's
    body drops the error status of what it calls, even of a direct call: the exception would
    vanish, and the worker's jobs stay half done.) The function must have been compiled for
    exactly these argument types and to return nothing: :func:`run_parallel` ensures it."""
    if not isinstance(address, types.Integer) or not isinstance(arguments, types.BaseTuple):
        return None

    def codegen(context, builder, signature, llvm_arguments):
        pointer, packed = llvm_arguments
        argument_types = list(signature.args[1])
        function_type = context.call_conv.get_function_type(types.none, argument_types)
        callee = builder.inttoptr(pointer, function_type.as_pointer())
        values = cgutils.unpack_tuple(builder, packed, len(argument_types))
        status, _ = context.call_conv.call_function(builder, callee, types.none, argument_types, values)
        return status.is_error

    return types.boolean(address, arguments), codegen


def run_parallel(kernel, worker, *arguments) -> None:
    """``failed = kernel(address, *arguments)``, whose ``prange`` loop over the workers w sets
    ``failed[w] = call_worker(address, (*arguments, w))`` (its arguments rebuilt in the loop, in
    the same types; ``failed`` allocated by the kernel, one entry per worker, each one written);
    ``address`` is that of ``worker`` compiled (or loaded from the kernel cache) for those types
    and an int64 index, once per types, found again by Numba's own type fingerprints of the
    arguments (a few µs; ``numba.typeof`` of a kernel's arguments takes ~0.4 ms). A worker that
    raised is run again, alone, to raise its exception here."""
    key = (kernel, tuple(compute_fingerprint(argument) for argument in arguments))
    address = _addresses.get(key)
    if address is None:
        signature = types.none(*(typeof(argument) for argument in arguments), types.int64)
        worker.compile(signature)
        compiled = worker.overloads[signature.args]
        address = _addresses[key] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    failed = kernel(address, *arguments)
    for index in np.flatnonzero(failed):
        worker(*arguments, np.int64(index))
        raise RuntimeError(f"{worker.__name__}: parallel worker {index} failed, but not when run again alone")
