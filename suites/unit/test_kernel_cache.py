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
from numba.core.caching import CacheImpl, IndexDataCacheFile, UserProvidedCacheLocator

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


def test_processes_saving_one_kernels_signatures_at_once_keep_each_its_own_code(tmp_path):
    """Two processes save an entry of the same kernel's cache at the same moment, 40 times
    (numba's own save, unlocked, loses an entry in most rounds and points the index at the other
    process's code in about half of them). Every entry must survive, naming its own data."""
    script = textwrap.dedent("""
        import multiprocessing, os, sys
        from numba.core.caching import IndexDataCacheFile
        import snnverify.runtime  # installs the kernel cache

        def kernel_cache(round):
            return IndexDataCacheFile(cache_path=os.path.join(sys.argv[1], str(round)), filename_base="kernel",
                                      source_stamp="stamp")

        def save(signature, barrier):
            for round in range(40):
                barrier.wait()
                kernel_cache(round).save(signature, ("code for", signature, bytes(200_000)))

        if __name__ == "__main__":
            for round in range(40):
                os.makedirs(os.path.join(sys.argv[1], str(round)))
            fork = multiprocessing.get_context("fork")
            barrier = fork.Barrier(2)
            savers = [fork.Process(target=save, args=(signature, barrier)) for signature in "AB"]
            for saver in savers:
                saver.start()
            for saver in savers:
                saver.join()
                assert saver.exitcode == 0
            for round in range(40):
                cache = kernel_cache(round)
                print(round, *sorted((signature, cache.load(signature)[1]) for signature in cache._load_index()))
    """)
    environment = {**os.environ, "SNNVERIFY_KERNEL_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "kernels")], capture_output=True, text=True,
                         env=environment, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rounds = run.stdout.splitlines()
    assert rounds == [f"{round} ('A', 'A') ('B', 'B')" for round in range(40)], [
        line for line in rounds if not line.endswith("('A', 'A') ('B', 'B')")]


def test_processes_needing_one_new_signature_at_once_compile_it_once(tmp_path):
    """Two processes call a kernel for a signature not yet cached, at the same moment: one
    compiles it, the other waits and loads it (without the lock, both compile)."""
    script = textwrap.dedent("""
        import multiprocessing
        import numpy as np
        from snnverify.runtime.cpu.dense import scale_channels_kernel

        def run(barrier, results):
            barrier.wait()
            out = np.empty((3, 5), np.float32)
            scale_channels_kernel(np.ones((3, 5), bool), np.arange(5, dtype=np.float32), out)
            assert (out == np.arange(5)).all()
            stats = scale_channels_kernel.stats
            results.put((sum(stats.cache_hits.values()), sum(stats.cache_misses.values())))

        if __name__ == "__main__":
            fork = multiprocessing.get_context("fork")
            barrier, results = fork.Barrier(2), fork.Queue()
            processes = [fork.Process(target=run, args=(barrier, results)) for _ in range(2)]
            for process in processes:
                process.start()
            counts = sorted(results.get(timeout=240) for _ in processes)
            for process in processes:
                process.join()
                assert process.exitcode == 0
            print(*counts)
    """)
    environment = {**os.environ, "SNNVERIFY_KERNEL_CACHE": str(tmp_path / "cache")}
    environment.pop("NUMBA_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == "(0, 1) (1, 0)", f"(cache hits, misses) per process: {run.stdout}"


def test_a_load_while_an_entry_is_saved_finds_no_file_rather_than_an_old_one(tmp_path, monkeypatch):
    """An old data file that the index does not name (Numba discards another version's index
    and numbers its entries from 1 again) must not be read for the new entry in the moment
    between the index naming it and the new file being written."""
    monkeypatch.setenv("SNNVERIFY_KERNEL_CACHE", str(tmp_path))
    cache = IndexDataCacheFile(cache_path=str(tmp_path), filename_base="kernel", source_stamp="stamp")
    cache._save_data(cache._data_name(1), ("code for", "another version"))
    (tmp_path / "kernel.notes.nbc").write_bytes(b"not an entry")
    seen_meanwhile = []
    write = cache._save_data

    def load_first_then_write(name, data):
        seen_meanwhile.append(cache.load("signature"))
        write(name, data)

    monkeypatch.setattr(cache, "_save_data", load_first_then_write)
    cache.save("signature", ("code for", "signature"))
    assert seen_meanwhile == [None]
    assert cache.load("signature") == ("code for", "signature")
    assert (tmp_path / "kernel.notes.nbc").exists(), "only numbered data files are the kernel's entries"
