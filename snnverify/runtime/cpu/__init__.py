"""Numba CPU backend (``compile(snn, target="cpu")``): parallel kernels, event-driven synapses.

Layers fed by an IF layer are event-driven: the work grows with the number of spikes, not with
the dense input size. Static signals (the input image and layers fed only by it) are computed
once per batch, not T times. The accumulation order (:mod:`snnverify.runtime.plan`) is the
CUDA backend's, so float32 spikes agree bit for bit. An IF layer fed by an event-driven conv
(plus a residual, which may itself be an event-driven projection conv) runs as one fused
kernel that never stores the currents, and writes its spikes channels-last, the order in which
it computes them and in which the next fused kernel reads them.

One file per job:

- ``intrinsics``: the LLVM intrinsics the event kernels are built from
- ``layouts``: W' in blocks of output channels, as the gathers read it
- ``gather``: spike lists and the gathers (the event kernels' inner loops)
- ``events``: the event-driven conv kernel (linear layers run as 1×1 convs) and the fused IF(conv(spikes) [+ residual]) kernel
- ``dense``: dense convs, pooling, IF, adds
- ``transpose``: spike maps between channels-first and channels-last
- ``parallel``: how a kernel runs its workers in parallel
- ``kernels``: the host functions and the kernel table :data:`CPU_KERNELS`
"""

from snnverify.runtime.cpu.kernels import CPU_KERNELS
from snnverify.runtime.plan import register_kernels

register_kernels("cpu", CPU_KERNELS)

__all__ = ["CPU_KERNELS"]
