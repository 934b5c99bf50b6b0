"""``snnverify nightly``: the asv benchmarks on this commit, the dashboard, and a regression gate.

1. ``asv run --python=same --set-commit-hash HEAD`` in the existing environment (no network,
   nothing installed); the default grid fits 15 minutes on 2 cores, ``SNNVERIFY_BENCH_FULL=1``
   runs the full one.
2. ``asv publish``: the static dashboard in asv's ``html_dir``, made to render without network.
   asv's page asks public CDNs for jQuery, flot, bootstrap and a few small scripts; the same
   libraries are pinned in ``tools/dashboard/package-lock.json`` and installed by
   ``bash tools/dashboard-libs`` (run first by this job: quick and offline once installed), copied
   to ``<html_dir>/vendor/`` and the pages pointed at the copies (:data:`LIBRARIES`). A library
   not installed, or a CDN resource the table does not know (a newer asv), stops the job with the
   file or URL named. asv's page reads its results (json) with XMLHttpRequest, which browsers refuse
   to file:// pages: view it with ``python -m asv preview`` (a local web server), or from disk in
   Chromium started with ``--allow-file-access-from-files``.
3. The gate: this run against the previous stored run of the same machine, benchmark by
   benchmark (:mod:`snnverify.report.asv`); a value worse by more than ``--threshold`` percent,
   or a benchmark that fails, makes the job exit 1. The comparison is written to
   ``reports/asv/nightly.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from html import escape
from html.parser import HTMLParser
from pathlib import Path

from snnverify.report.asv import compare, read_runs, units
from snnverify.util import atomic_write, provenance

#: the checkout's npm project of the dashboard's libraries, and the command that installs them
DASHBOARD = Path(__file__).resolve().parents[2] / "tools" / "dashboard"
INSTALL = "bash tools/dashboard-libs"

#: each resource asv 0.6's index.html loads from a CDN -> (npm package, file in the package); the
#: versions are pinned in tools/dashboard/package.json. jquery, bootstrap, flot-orderbars and
#: blueimp-md5 are the CDNs' bytes (the same SRI hashes); npm's flot 0.8.3 has no minified files, so
#: the plain ones stand in; stupidtable 1.0.1 is not on npm: stupid-table-plugin 1.1.3 (same
#: author and API, the closest version there) stands in.
LIBRARIES = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": ("flot", "jquery.flot.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": ("flot", "jquery.flot.time.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js":
        ("flot", "jquery.flot.selection.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js":
        ("flot", "jquery.flot.categories.js"),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js":
        ("flot-orderbars", "js/jquery.flot.orderBars.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js":
        ("stupid-table-plugin", "stupidtable.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": ("blueimp-md5", "js/md5.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": ("bootstrap", "dist/js/bootstrap.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css":
        ("bootstrap", "dist/css/bootstrap.min.css"),
}

#: ``<link rel>`` values whose target the browser fetches to draw the page; other relations
#: (alternate, canonical, author, ...) name pages a reader may follow, like ``<a href>``
FETCHED_RELATIONS = {"stylesheet", "icon", "apple-touch-icon", "preload", "modulepreload", "prefetch", "manifest"}
#: attributes that tie a tag to the CDN's copy: a file:// page fetches nothing in CORS mode, and
#: the lock file's integrity hashes pin the installed bytes instead
CDN_ATTRIBUTES = {"integrity", "crossorigin", "referrerpolicy"}


class _Resources(HTMLParser):
    """The tags of a page that make the browser fetch a URL to draw it: every ``src``, and the
    ``href`` of a ``<link>`` of a fetched relation; ``(tag, tag text, attributes, URL)`` each."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, list, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        values = dict(attrs)
        relations = set((values.get("rel") or "").lower().split())
        for name, value in attrs:
            if value and (name == "src" or (tag == "link" and name == "href" and relations & FETCHED_RELATIONS)):
                self.found.append((tag, self.get_starttag_text(), attrs, value))


def resources(text: str) -> list[tuple[str, str, list, str]]:
    """The resource tags of an html page (:class:`_Resources`)."""
    parser = _Resources()
    parser.feed(text)
    parser.close()
    return parser.found


def is_external(url: str) -> bool:
    """A URL outside the dashboard folder (protocol-relative included: from disk it names no file)."""
    return url.lower().startswith(("http://", "https://", "//"))


def pages(html_dir: Path) -> list[Path]:
    """The published html pages, not counting the copied libraries."""
    return [page for page in sorted(html_dir.rglob("*.html")) if "vendor" not in page.relative_to(html_dir).parts]


def external_resources(html_dir: Path) -> list[str]:
    """The URLs outside the dashboard folder that its pages fetch to render."""
    return sorted({url for page in pages(html_dir) for *_, url in resources(page.read_text(encoding="utf-8"))
                   if is_external(url)})


def install_libraries() -> Path:
    """Run ``tools/dashboard-libs`` (quick and offline when already installed); the folder it fills."""
    script = DASHBOARD.parent / "dashboard-libs"
    if script.is_file():
        status = subprocess.run(["bash", str(script)]).returncode
        if status:
            raise RuntimeError(f"{INSTALL} exited {status} (its message above): the dashboard's libraries "
                               "are not installed")
    return DASHBOARD / "node_modules"


def check_libraries(libs: Path) -> None:
    """Every file of :data:`LIBRARIES` is in ``libs`` (a node_modules folder), or an error naming one."""
    missing = [libs / package / file for package, file in LIBRARIES.values() if not (libs / package / file).is_file()]
    if missing:
        raise FileNotFoundError(f"dashboard library file {missing[0]} not found ({len(missing)} of {len(LIBRARIES)} "
                                f"missing); install the libraries with: {INSTALL} (in {DASHBOARD.parents[1]})")


def vendor(html_dir: Path, libs: Path) -> list[str]:
    """Copy the libraries that the published pages load from CDNs to ``html_dir/vendor/PACKAGE/FILE``
    and point the pages at the copies; the URLs replaced. Changes nothing when a page loads a URL
    that :data:`LIBRARIES` does not know or a library file is missing: raises, naming it."""
    found = {page: [tag for tag in resources(page.read_text(encoding="utf-8")) if is_external(tag[3])]
             for page in pages(html_dir)}
    for page, tags in found.items():
        for *_, url in tags:
            if url not in LIBRARIES:
                raise RuntimeError(f"{page} loads {url}, which LIBRARIES in {__name__} does not map to an npm "
                                   "package file (a newer asv?): add it there and the package to "
                                   "tools/dashboard/package.json")
    check_libraries(libs)
    used = sorted({url for tags in found.values() for *_, url in tags})
    target = html_dir / "vendor"
    for package in sorted({LIBRARIES[url][0] for url in used}):
        (target / package).mkdir(parents=True, exist_ok=True)
        for notice in (libs / package).glob("LICENSE*"):  # MIT: the notice travels with the copy
            shutil.copyfile(notice, target / package / notice.name)
    for url in used:
        package, file = LIBRARIES[url]
        (target / package / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(libs / package / file, target / package / file)
    for page, tags in found.items():
        text = page.read_text(encoding="utf-8")
        for tag, original, attrs, url in tags:
            local = Path(os.path.relpath(target / Path(*LIBRARIES[url]), page.parent)).as_posix()
            kept = [(name, local if value == url else value) for name, value in attrs if name not in CDN_ATTRIBUTES]
            text = text.replace(original, "<" + tag + "".join(
                f" {name}" if value is None else f' {name}="{escape(value)}"' for name, value in kept) + ">")
        if tags:
            page.write_text(text, encoding="utf-8")
    return used


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="asv.conf.json", help="asv configuration file")
    parser.add_argument("--threshold", type=float, default=10.0, help="percent worse that fails the gate")
    parser.add_argument("--bench", help="regular expression: only the benchmarks it matches")
    parser.add_argument("--machine", default=socket.gethostname(), help="asv machine name")
    parser.add_argument("--out", default="reports/asv/nightly.json", help="where the comparison is written")
    parser.add_argument("--dashboard-libs", help="node_modules folder holding the dashboard's libraries "
                        f"(default: this checkout's tools/dashboard/node_modules, installed first by {INSTALL})")


def asv(*arguments: str, config: Path, check: bool = True) -> int:
    """Run an asv command with this interpreter (the environment asv measures). asv drops
    PYTHONPATH but passes ASV_PYTHONPATH on: the benchmarks import the checkout being gated,
    whichever copy of the package is installed."""
    command = [sys.executable, "-m", "asv", *arguments, "--config", str(config)]
    print("$", " ".join(command[2:]), flush=True)
    path = os.pathsep.join(p for p in (str(config.parent), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(command, check=check, cwd=config.parent, env={**os.environ, "ASV_PYTHONPATH": path}).returncode


def gate(results_dir: Path, machine: str, commit: str, threshold: float) -> dict:
    """This commit's run against the machine's previous one: the rows and the verdict."""
    runs = [run for run in read_runs(results_dir) if run.machine == machine]
    current = [run for run in runs if run.commit.startswith(commit)]
    if not current:
        raise RuntimeError(f"no asv results for commit {commit} on machine {machine!r} in {results_dir}")
    previous = [run for run in runs if not run.commit.startswith(commit)]
    result = {"machine": machine, "commit": current[-1].commit, "threshold_percent": 100 * threshold,
              "previous_commit": previous[-1].commit if previous else None, "rows": []}
    if previous:
        result["rows"] = compare(previous[-1], current[-1], threshold, units(results_dir))
    result["regressions"] = sum(row["regression"] for row in result["rows"])
    return result


def main(args: argparse.Namespace) -> int:
    config_path = Path(args.config).resolve()
    if not config_path.is_file():
        raise FileNotFoundError(f"asv configuration {config_path} not found")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not JSON: {error}") from None
    if not args.threshold > 0:
        raise ValueError(f"--threshold must be > 0 percent, got {args.threshold}")
    if args.bench is not None:
        try:
            re.compile(args.bench)
        except re.error as error:
            raise ValueError(f"--bench {args.bench!r} is not a regular expression: {error}") from None
    root = config_path.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f"{root} is not a git checkout (asv stores results per commit): {error}") from None
    libs = Path(args.dashboard_libs).resolve() if args.dashboard_libs else install_libraries()
    check_libraries(libs)  # before the benchmarks run, not after

    asv("machine", "--yes", "--machine", args.machine, config=config_path)
    selection = ["--bench", args.bench] if args.bench else []
    start = time.perf_counter()
    run_status = asv("run", "--python=same", "--set-commit-hash", commit, "--machine", args.machine, *selection,
                     config=config_path, check=False)  # non-zero when a benchmark failed: reported below
    run_seconds = time.perf_counter() - start  # the grid's budget is 15 minutes on 2 cores
    asv("publish", config=config_path)
    html = root / config.get("html_dir", "html")
    vendor(html, libs)
    external = external_resources(html)

    result = gate(root / config.get("results_dir", "results"), args.machine, commit, args.threshold / 100)
    origin = provenance()
    result.update(created=origin["created"], hardware=origin["machine"], asv_run_status=run_status,
                  asv_run_seconds=round(run_seconds, 1),
                  dashboard=os.path.relpath(html / "index.html", root),
                  dashboard_loads=external, full_grid=os.environ.get("SNNVERIFY_BENCH_FULL") == "1")
    atomic_write(root / args.out, json.dumps(result, indent=2) + "\n")
    for row in result["rows"]:
        if row["regression"]:
            print(f"REGRESSION {row['benchmark']} ({row['params']}): {row['old']:.4g} -> {row['new']:.4g}, "
                  f"{100 * row['worse_by']:.1f} % worse")
    if result["previous_commit"] is None:
        print("gate: no previous run on this machine to compare with")
    print(f"dashboard: {html / 'index.html'} (loads {len(external)} resources from the network; "
          f"view: python -m asv preview --config {config_path})")
    print(f"gate: {result['regressions']} regressions over {args.threshold:g} % against "
          f"{result['previous_commit'] or 'nothing'}; {root / args.out}")
    if run_status:
        print(f"gate: asv run exited {run_status}: a benchmark failed (see its output above)")
    return 1 if result["regressions"] or run_status else 0
