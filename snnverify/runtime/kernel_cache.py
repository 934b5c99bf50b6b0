"""Where Numba keeps the compiled CPU and Loihi 2 kernels: one per-user directory, keyed by the
content of the runtime's sources, so that every checkout of the same code shares them.

Compiling the kernels takes minutes (the fused IF(conv) kernel alone ~1 minute per dtype on
one core); Numba's default cache lives in the checkout's ``__pycache__``, so each fresh clone
compiled them all again. Here a kernel's cache sits under

    <root>/<digest of snnverify/runtime/**/*.py>/<its module's directory within the runtime>/

with <root> = ``$SNNVERIFY_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/snnverify/numba``, else
``~/.cache/snnverify/numba``. The digest covers every source a kernel can inline (Numba's own
stamp covers only the kernel's file: an edited helper in another file left a stale kernel).
Numba's version, the Python version and the CPU stay part of each entry's key, as always.
``$NUMBA_CACHE_DIR``, when set, still wins. Only the :data:`KEEP` most recently used digests
are kept; deleting the root at any time is safe.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

from numba.core.caching import CacheImpl, UserProvidedCacheLocator, _CacheLocator, _SourceFileBackedLocatorMixin

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


def install() -> None:
    """Put :class:`RuntimeCacheLocator` first among Numba's locators, after only the one for
    ``$NUMBA_CACHE_DIR``. Must run before the kernels are decorated (``snnverify.runtime``
    does it on import); idempotent."""
    locators = CacheImpl._locator_classes
    if RuntimeCacheLocator not in locators:
        locators.insert(locators.index(UserProvidedCacheLocator) + 1, RuntimeCacheLocator)
