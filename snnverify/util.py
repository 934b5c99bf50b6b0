"""Small helpers shared across the package: progress bars, batches, atomic writes, provenance."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from tqdm.auto import tqdm


def progress(iterable: Iterable, desc: str, total: int | None = None):
    """A tqdm bar for a long loop; hidden when stderr is not a terminal (CI logs stay readable)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=None, dynamic_ncols=True)


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels) from a loader batch that is ``(x, y, ...)`` or a bare ``x``."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.
    The file gets the permissions of the one it replaces, else those ``open`` would give it (a
    temporary file is private to its owner until then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the mask means setting one; it is put back at once
    os.umask(mask)
    return mask


#: the repository this package lives in
REPOSITORY = Path(__file__).resolve().parents[1]


def repository_relative(argument: str) -> str:
    """``argument`` relative to the repository when it is an absolute path inside it (so that a
    recorded command runs from any clone), else unchanged."""
    flag, equals, value = argument.rpartition("=") if argument.startswith("--") else ("", "", argument)
    path = Path(value)
    if path.is_absolute() and path.resolve().is_relative_to(REPOSITORY):
        return flag + equals + str(path.resolve().relative_to(REPOSITORY))
    return argument


def commit() -> str:
    """HEAD's short hash, ``+dirty`` when a tracked file outside reports/ differs from it (a job
    writing its results does not make the code that produced them dirty); ``unknown`` outside a
    git checkout."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)reports")
        return git("rev-parse", "--short=10", "HEAD") + ("+dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict[str, str]:
    """Where a result comes from: UTC time, the repository's commit (:func:`commit`), and the machine."""
    import platform
    from datetime import datetime, timezone

    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU threads"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name(0)}"
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit(), "machine": machine}
