"""Host arrays reused from one run of a compiled network to the next.

Memory fresh from the operating system costs a page fault per 4 KiB page the first time it is
written: on a virtual machine about 6 ms for a 12.8 MB spike map, several times what the IF
kernel that fills it costs (reports/speed, "The small pooled network"). A backend keeps a
:class:`BufferPool`; while a run holds it :meth:`~BufferPool.active`, the kernel table's host
functions take their outputs from :func:`empty` and :func:`zeros`, which hand out the memory of
arrays that nothing reads any more.

An array is reused only when nothing at all refers to it: every array :func:`empty` hands out is
a view of one *lease* (an array over the pooled memory), every view of it keeps the lease alive,
and the memory goes back to the pool when the lease is collected. So an array a caller holds (a
recorded spike map is a view of an IF layer's output), one a later op of the run still reads,
or one another thread's run is writing, is never handed out again: runs stay reentrant, and no
rule about which signals alias which is needed.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections import defaultdict
from contextvars import ContextVar

import numpy as np

#: free memory a pool keeps at most; beyond it, memory a lease returns is freed as without a pool
CAPACITY_BYTES = 1 << 30

_ACTIVE: ContextVar["BufferPool | None"] = ContextVar("snnverify_buffer_pool", default=None)


class BufferPool:
    """Blocks of memory by size in bytes: free ones, and leased ones whose lease is alive."""

    def __init__(self, capacity_bytes: int = CAPACITY_BYTES):
        self.capacity_bytes = capacity_bytes
        self._free: dict[int, list[np.ndarray]] = defaultdict(list)
        self._free_bytes = 0
        self._leases: dict[int, weakref.ref] = {}  # id(lease) -> its weak reference (which holds the callback)
        # a lease may be collected in any thread, also inside empty() (a collection it triggers)
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def active(self):
        """:func:`empty` and :func:`zeros` draw from this pool in this thread until the block ends."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised array: pooled memory of exactly its size when some is free."""
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        if size == 0:
            return np.empty(shape, dtype)
        with self._lock:
            blocks = self._free.get(size)
            if blocks:
                block = blocks.pop()
                self._free_bytes -= size
            else:
                block = np.empty(size, np.uint8)
            # the lease's base is a memoryview, not an array, so numpy bases every view of it on
            # the lease itself: the lease lives exactly as long as any view of this memory
            lease = np.frombuffer(memoryview(block), dtype)
            self._leases[id(lease)] = weakref.ref(lease, lambda ref, key=id(lease): self._returned(key, block))
        return lease.reshape(shape)

    def _returned(self, key: int, block: np.ndarray) -> None:
        with self._lock:
            del self._leases[key]
            if self._free_bytes + block.nbytes <= self.capacity_bytes:
                self._free[block.nbytes].append(block)
                self._free_bytes += block.nbytes

    @property
    def free_bytes(self) -> int:
        return self._free_bytes


def empty(shape, dtype) -> np.ndarray:
    """``np.empty``, from the active :class:`BufferPool` when the caller runs in one."""
    pool = _ACTIVE.get()
    return np.empty(shape, dtype) if pool is None else pool.empty(shape, dtype)


def zeros(shape, dtype) -> np.ndarray:
    """``np.zeros``, from the active :class:`BufferPool` when the caller runs in one."""
    pool = _ACTIVE.get()
    if pool is None:
        return np.zeros(shape, dtype)
    out = pool.empty(shape, dtype)
    out.fill(0)
    return out
