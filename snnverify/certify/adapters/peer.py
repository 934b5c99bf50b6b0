"""The client side of a converter run in a worker subprocess (snnverify/certify/worker.py) on
the peers' interpreter: ``$SNNVERIFY_PEERS_PYTHON``, else .venv-peers/bin/python (tools/peers-venv)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

ROOT = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).resolve().parents[1] / "worker.py"


def peers_python() -> Path:
    return Path(os.environ.get("SNNVERIFY_PEERS_PYTHON", ROOT / ".venv-peers" / "bin" / "python"))


def portable(model: nn.Module) -> nn.Module:
    """``model`` as torch modules only (an fx GraphModule when it has classes of its own), so that
    the worker unpickles it without snnverify."""
    if all(type(m).__module__.startswith("torch.") for m in model.modules()):
        return model
    return fx.symbolic_trace(model)


def _tensors(loader) -> dict[str, torch.Tensor] | None:
    if loader is None:
        return None
    xs, ys = [], []
    for batch in loader:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, torch.zeros(len(batch)))
        xs.append(x)
        ys.append(y)
    return {"x": torch.cat(xs), "y": torch.cat(ys).long()}


class Worker:
    """One worker process; ``request`` sends a JSON line and reads the answer."""

    def __init__(self):
        python = peers_python()
        if not python.exists():
            raise FileNotFoundError(f"the peers' interpreter {python} does not exist: run tools/peers-venv")
        self.folder = Path(tempfile.mkdtemp(prefix="snnverify-worker-"))
        self.process = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=open(self.folder / "stderr.log", "w"), text=True)

    def request(self, **message) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            tail = (self.folder / "stderr.log").read_text()[-800:]
            raise RuntimeError(f"the worker exited (code {self.process.poll()}): {tail}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(answer["error"])
        return answer

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class PeerConverted:
    def __init__(self, worker: Worker, training: dict):
        self.worker, self.training = worker, training
        self.runs = 0

    def run(self, x: torch.Tensor, timesteps: int):
        self.runs += 1
        x_path, out = self.worker.folder / "x.pt", self.worker.folder / f"run{self.runs}.npz"
        torch.save(x.detach().cpu().contiguous(), x_path)
        self.worker.request(op="run", x=str(x_path), timesteps=int(timesteps), out=str(out))
        with np.load(out) as arrays:
            output = arrays["output"]
            spikes = {}
            for key in sorted(k for k in arrays.files if k != "output"):
                _, kind, shape, name = key.split(":", 3)
                shape = json.loads(shape)
                spikes[name] = (np.unpackbits(arrays[key])[:int(np.prod(shape))].reshape(shape).astype(bool)
                                if kind == "packed" else arrays[key])
        out.unlink()
        return output, spikes

    def to_nir(self, path):
        self.worker.request(op="to_nir", path=str(Path(path).resolve()))
        return path


class PeerAdapter:
    """Base of the peers' adapters: ``converter`` names the worker's class, ``options`` go to it."""

    converter = ""
    options: dict = {}

    def __init__(self):
        self.worker: Worker | None = None
        self.version = self._installed_version()

    def _installed_version(self) -> str:
        python = peers_python()
        if not python.exists():
            return "not installed"
        probe = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({self.converter!r}))"],
                               capture_output=True, text=True, timeout=120)
        return probe.stdout.strip() or "not installed"

    def convert(self, model, cal_loader, timesteps, train_loader=None) -> PeerConverted:
        self.close()
        self.worker = Worker()
        folder = self.worker.folder
        torch.save(portable(model), folder / "model.pt")
        torch.save(_tensors(cal_loader), folder / "cal.pt")
        train = _tensors(train_loader)
        if train is not None:
            torch.save(train, folder / "train.pt")
        answer = self.worker.request(op="convert", converter=self.converter, model=str(folder / "model.pt"),
                                     cal=str(folder / "cal.pt"), train=str(folder / "train.pt") if train else None,
                                     timesteps=int(timesteps), options=self.options)
        return PeerConverted(self.worker, answer["training"])

    def close(self):
        if self.worker is not None:
            self.worker.close()
