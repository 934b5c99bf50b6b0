"""The compiled kernels are cached per user and keyed by the runtime's sources, so that every
checkout of the same code shares them, and an edit to any runtime source (a helper a kernel
inlines included) is never served a stale kernel."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from numba.core.caching import CacheImpl, UserProvidedCacheLocator

import snnverify
from snnverify.runtime import kernel_cache
from snnverify.runtime.cpu import dense
from snnverify.runtime.kernel_cache import RuntimeCacheLocator, sources_digest

PACKAGE = Path(snnverify.__file__).parent


def test_the_digest_follows_every_runtime_source_by_content(tmp_path):
    runtime = tmp_path / "runtime"
    shutil.copytree(PACKAGE / "runtime", runtime, ignore=shutil.ignore_patterns("__pycache__"))
    before = sources_digest(runtime)
    helper = runtime / "cpu" / "gather.py"  # inlined into the event kernels, not one itself
    os.utime(helper, (1, 1))
    assert sources_digest(runtime) == before, "a new mtime with the same bytes must keep the kernels"
    helper.write_bytes(helper.read_bytes() + b"\n")
    assert sources_digest(runtime) != before
    helper.write_bytes(helper.read_bytes()[:-1])
    (runtime / "cpu" / "gather.py").rename(runtime / "cpu" / "gather2.py")
    assert sources_digest(runtime) != before, "a renamed file is another source tree"


def test_runtime_kernels_are_cached_under_the_root_by_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNVERIFY_KERNEL_CACHE", str(tmp_path))
    py_func = dense.scale_channels_kernel.py_func
    locator = RuntimeCacheLocator.from_function(py_func, dense.__file__)
    digest = sources_digest(PACKAGE / "runtime")
    assert Path(locator.get_cache_path()) == tmp_path / digest / "cpu"
    assert locator.get_source_stamp() == digest
    assert (tmp_path / digest / "cpu").is_dir()


def test_functions_outside_the_runtime_and_unwritable_roots_fall_back_to_numba(tmp_path, monkeypatch):
    def elsewhere(x):
        return x

    monkeypatch.setenv("SNNVERIFY_KERNEL_CACHE", str(tmp_path))
    assert RuntimeCacheLocator.from_function(elsewhere, __file__) is None
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("SNNVERIFY_KERNEL_CACHE", str(blocker))  # a root that cannot be a directory
    assert RuntimeCacheLocator.from_function(dense.scale_channels_kernel.py_func, dense.__file__) is None


def test_numba_cache_dir_still_wins_and_install_is_idempotent():
    kernel_cache.install()
    locators = CacheImpl._locator_classes
    assert locators.count(RuntimeCacheLocator) == 1
    assert locators.index(RuntimeCacheLocator) == locators.index(UserProvidedCacheLocator) + 1


def test_only_the_most_recent_digests_are_kept(tmp_path):
    for age in range(kernel_cache.KEEP + 3):
        old = tmp_path / f"digest{age}"
        old.mkdir()
        os.utime(old, (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "current").mkdir()
    os.utime(tmp_path / "current", (1, 1))  # the oldest of all, and still kept
    kernel_cache._prune.__wrapped__(tmp_path, "current")
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted(["current"] + [f"digest{age}" for age in range(kernel_cache.KEEP - 1)])


def test_a_second_checkout_of_the_same_code_loads_the_kernels_without_compiling(tmp_path):
    """Two copies of the package at different paths: the second process finds the first's
    kernel in the cache (Numba counts a cache hit and no miss)."""
    script = textwrap.dedent("""
        import numpy as np
        from snnverify.runtime.cpu.dense import scale_channels_kernel
        out = np.empty((3, 5), np.float32)
        scale_channels_kernel(np.ones((3, 5), bool), np.arange(5, dtype=np.float32), out)
        assert (out == np.arange(5)).all()
        stats = scale_channels_kernel.stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
    """)
    environment = {**os.environ, "SNNVERIFY_KERNEL_CACHE": str(tmp_path / "cache")}
    environment.pop("NUMBA_CACHE_DIR", None)
    counts = []
    for checkout in ("first", "second"):
        shutil.copytree(PACKAGE, tmp_path / checkout / "snnverify", ignore=shutil.ignore_patterns("__pycache__"))
        run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / checkout, capture_output=True, text=True,
                             env={**environment, "PYTHONPATH": str(tmp_path / checkout)}, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        counts.append(tuple(map(int, run.stdout.split()[-2:])))
    assert counts == [(0, 1), (1, 0)], f"(cache hits, misses) per checkout: {counts}"
    assert not list((tmp_path / "first" / "snnverify").rglob("*.nbi")), "nothing is cached in the checkout"
    np.testing.assert_equal(sorted(p.name for p in (tmp_path / "cache").iterdir()),
                            [sources_digest(PACKAGE / "runtime")])
