"""Where Numba keeps the compiled CPU and Loihi 2 kernels: one per-user directory, keyed by the
content of the runtime's sources, so that every checkout of the same code shares them.

Compiling the kernels takes minutes (the fused IF(conv) kernel alone ~20 s per signature on
one core); Numba's default cache lives in the checkout's ``__pycache__``, so each fresh clone
compiled them all again. Here a kernel's cache sits under

    <root>/<digest of snnverify/runtime/**/*.py>/<its module's directory within the runtime>/

with <root> = ``$SNNVERIFY_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/snnverify/numba``, else
``~/.cache/snnverify/numba``. The digest covers every source a kernel can inline (Numba's own
stamp covers only the kernel's file: an edited helper in another file left a stale kernel).
Numba's version, the Python version and the CPU stay part of each entry's key, as always.
``$NUMBA_CACHE_DIR``, when set, still wins. Only the :data:`KEEP` most recently used digests
are kept; deleting the root at any time is safe.

Processes that share the root (xdist workers, two checkouts at once) save one kernel's entries
one at a time, under a lock beside its index: see :func:`_save_one_at_a_time`; and one of them
compiles a signature while the others wait to load it: see :func:`_compile_once`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import shutil
from pathlib import Path

from filelock import FileLock
from numba.core import sigutils
from numba.core.compiler_lock import global_compiler_lock
from numba.core.dispatcher import Dispatcher
from numba.core.caching import (
    CacheImpl,
    IndexDataCacheFile,
    UserProvidedCacheLocator,
    _CacheLocator,
    _SourceFileBackedLocatorMixin,
)

RUNTIME = Path(__file__).resolve().parent  # snnverify/runtime/
#: Digests (source versions) kept under the root; older ones are removed when a new one starts.
KEEP = 8


def cache_root() -> Path:
    if os.environ.get("SNNVERIFY_KERNEL_CACHE"):
        return Path(os.environ["SNNVERIFY_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "snnverify" / "numba"


def sources_digest(directory: Path) -> str:
    """SHA-256 over the relative path and bytes of every ``*.py`` under ``directory``."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*.py")):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


@functools.cache
def _runtime_digest() -> str:
    return sources_digest(RUNTIME)


@functools.cache
def _prune(root: Path, current: str) -> None:
    """Remove all but the :data:`KEEP` most recently modified digests under ``root`` (never
    ``current``); another process may be removing them too."""
    try:
        others = sorted((p for p in root.iterdir() if p.is_dir() and p.name != current),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for stale in others[KEEP - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)


class RuntimeCacheLocator(_SourceFileBackedLocatorMixin, _CacheLocator):
    """A Numba cache locator for the functions defined in ``snnverify.runtime`` (see the
    module's docstring); ``None`` for any other function, or when the root is not writable, so
    that Numba falls back to its own locators."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        module_directory = Path(py_file).resolve().parent.relative_to(RUNTIME)
        self._root = cache_root()
        self._cache_path = str(self._root / _runtime_digest() / module_directory)

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return _runtime_digest()

    def ensure_cache_path(self):
        super().ensure_cache_path()
        _prune(self._root, _runtime_digest())

    @classmethod
    def from_function(cls, py_func, py_file):
        if not Path(py_file).resolve().is_relative_to(RUNTIME):
            return None
        return super().from_function(py_func, py_file)


_numba_save = IndexDataCacheFile.save


def _save_one_at_a_time(cache_file: IndexDataCacheFile, key, data) -> None:
    """Numba's ``IndexDataCacheFile.save`` under a lock on the kernel's index, for the
    kernels cached under :func:`cache_root`.

    Numba's save reads the index, names the new entry's data file after the first number the
    index does not use, rewrites the index, then writes the file, with no lock. Two processes
    saving two signatures of one kernel at once both read the same index, both pick
    ``<kernel>.1.nbc``, and whichever writes last wins each file: the index can then name, for
    one signature, the machine code of the other, which a later process loads and calls with
    the wrong argument types. With the lock, each save sees the entries of the saves before
    it, so no two signatures share a file.

    The index names the new file before the file is written. So that a load in between finds
    no file (a miss) rather than an old one of that name (left by an index Numba discarded as
    another version's), the kernel's data files that the index does not name are removed
    first."""
    if not Path(cache_file._cache_path).is_relative_to(cache_root()):
        return _numba_save(cache_file, key, data)
    with FileLock(f"{cache_file._index_path}.lock"):
        named = set(cache_file._load_index().values())
        prefix, _, suffix = cache_file._data_name_pattern.partition("{number:d}")
        for file in Path(cache_file._cache_path).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
            if file.name[len(prefix):-len(suffix)].isdigit() and file.name not in named:
                file.unlink(missing_ok=True)
        return _numba_save(cache_file, key, data)


_numba_compile = Dispatcher.compile

#: the compile locks this process holds (a nested compile of the same key must not wait on itself)
_compiling: set[str] = set()


def _compile_once(dispatcher: Dispatcher, sig):
    """Numba's ``Dispatcher.compile`` under a lock per kernel and signature, for the kernels
    cached under :func:`cache_root`.

    Numba looks in the cache, and on a miss compiles and saves. Two processes that need a new
    signature at once (the suite's xdist workers start on the same kernels) both miss and both
    compile it: the fused kernel's worker twice, ~35 s each. Under the lock the second waits
    for the first, then finds its entry in the cache and loads it. The lock is taken inside
    Numba's own (process-wide) compiler lock, so threads of one process never wait on each
    other's file locks; across processes, a compile waits only on the compile of a function it
    calls, never the other way, so no two wait on each other."""
    cache_file = getattr(dispatcher._cache, "_cache_file", None)
    index = getattr(cache_file, "_index_path", None)
    if index is None or not Path(index).is_relative_to(cache_root()):
        return _numba_compile(dispatcher, sig)
    args, _ = sigutils.normalize_signature(sig)
    if tuple(args) in dispatcher.overloads:  # (typing a call compiles again what exists: no lock for that)
        return dispatcher.overloads[tuple(args)].entry_point
    key = f"{index}.{hashlib.sha256(str(args).encode()).hexdigest()[:16]}.compiling"
    with global_compiler_lock:
        if key in _compiling:
            return _numba_compile(dispatcher, sig)
        _compiling.add(key)
        try:
            with FileLock(key):
                return _numba_compile(dispatcher, sig)
        finally:
            _compiling.discard(key)


def install() -> None:
    """Put :class:`RuntimeCacheLocator` first among Numba's locators, after only the one for
    ``$NUMBA_CACHE_DIR``, make saves under the root take turns (:func:`_save_one_at_a_time`),
    and compiles of one signature wait for each other (:func:`_compile_once`). Must run before
    the kernels are decorated (``snnverify.runtime`` does it on import); idempotent."""
    locators = CacheImpl._locator_classes
    if RuntimeCacheLocator not in locators:
        locators.insert(locators.index(UserProvidedCacheLocator) + 1, RuntimeCacheLocator)
    IndexDataCacheFile.save = _save_one_at_a_time
    Dispatcher.compile = _compile_once
