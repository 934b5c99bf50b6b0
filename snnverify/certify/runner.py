"""Runs every clause against one converter: each converter call under a time limit; a crash,
a hang, an exception or NaN outputs become a FAIL with its reason, and the other clauses go on."""

from __future__ import annotations

import copy
import os
import platform
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import snnverify
from snnverify.certify.clauses import CLAUSES, ConverterFailure, Verdict
from snnverify.certify.protocol import check_converted
from snnverify.data import load_dataset
from snnverify.models import load_checkpoint, small_resnet
from snnverify.util import progress

TIME_LIMIT_S = 900.0  # default limit of one convert or run call
ROOT = Path(__file__).resolve().parents[2]
#: The trained small ResNets the accuracy clauses use (tools/train-digits-ann; reports/runs/.../README.md).
CHECKPOINTS = {
    "digits": ROOT / "references" / "checkpoints" / "digits-small_resnet.pt",
    "fashion-mnist": ROOT / "reports" / "runs" / "fashion-mnist-small_resnet" / "ann.pt",
}


@dataclass
class CertificationData:
    """The trained ANN and the images the accuracy clauses use."""

    name: str  # dataset
    model: nn.Module
    ann_accuracy: float  # on exactly test_batches
    cal_loader: DataLoader
    train_loader: DataLoader
    test_batches: list  # [(x, y)]
    timesteps: tuple[int, ...] = (8, 16, 32)
    info: dict = field(default_factory=dict)


def certification_data(dataset: str, checkpoint, test_images: int, cal_images: int, train_images: int,
                       seed: int = 0, batch_size: int = 100) -> CertificationData:
    """The small ResNet of ``checkpoint`` on the first ``test_images`` test images; calibration
    on ``cal_images`` of the calibration split, labelled training on ``train_images`` training images."""
    for label, value in (("test_images", test_images), ("cal_images", cal_images), ("train_images", train_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
    splits = load_dataset(dataset, download=False, seed=seed)
    model = load_checkpoint(small_resnet(splits.num_classes, splits.input_shape[0]), checkpoint).eval()
    generator = torch.Generator().manual_seed(seed)
    subset = lambda data, n: Subset(data, torch.randperm(len(data), generator=generator)[:min(n, len(data))].tolist())  # noqa: E731
    cal = DataLoader(subset(splits.cal, cal_images), batch_size=batch_size)
    train = DataLoader(subset(splits.train, train_images), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    test = Subset(splits.test, list(range(min(test_images, len(splits.test)))))
    batches = list(DataLoader(test, batch_size=batch_size))
    ann = snnverify.evaluate(model, batches)
    return CertificationData(dataset, model, ann, cal, train, batches, info={
        "dataset": dataset, "checkpoint": str(checkpoint), "test_images": len(test), "cal_images": len(cal.dataset),
        "train_images": len(train.dataset), "ann_accuracy": ann})


class Harness:
    """One converter under certification: guarded calls, conversions cached by probe name."""

    def __init__(self, adapter, data: CertificationData | None, time_limit_s: float = TIME_LIMIT_S):
        self.adapter, self.data, self.time_limit = adapter, data, float(time_limit_s)
        self.cache: dict = {}
        self.conversions: dict = {}
        self.hung: str | None = None

    def call(self, what: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` in a daemon thread; ConverterFailure on an exception or after the time limit
        (then the converter is considered hung and not called again; ``adapter.close()`` is called if it has one)."""
        if self.hung:
            raise ConverterFailure(f"not run: {self.hung}")
        result: dict = {}

        def target():
            try:
                result["value"] = fn(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 — reported as the verdict's reason
                result["error"] = error

        thread = threading.Thread(target=target, daemon=True, name=f"snnverify certify: {what}")
        thread.start()
        thread.join(self.time_limit)
        if thread.is_alive():
            self.hung = f"{what} hung (no answer within {self.time_limit:g} s)"
            if callable(getattr(self.adapter, "close", None)):
                self.adapter.close()
            raise ConverterFailure(self.hung)
        if "error" in result:
            error = result["error"]
            raise ConverterFailure(f"{what} raised {type(error).__name__}: {error}") from error
        return result["value"]

    def convert(self, key: str, model, cal_loader, timesteps: int, train_loader=None):
        if key not in self.conversions:
            try:
                converted = self.call(f"{self.adapter.name}.convert", self.adapter.convert, copy.deepcopy(model), cal_loader,
                                      timesteps, train_loader=train_loader)
                self.conversions[key] = check_converted(converted, self.adapter)
            except (ConverterFailure, TypeError) as failure:
                self.conversions[key] = ConverterFailure(str(failure))
        if isinstance(self.conversions[key], ConverterFailure):
            raise self.conversions[key]
        return self.conversions[key]

    def run(self, converted, x: torch.Tensor, timesteps: int, device=None):
        """(output float64 [batch, classes], {layer: array [T, batch, ...]}), validated."""
        kwargs = {} if device is None else {"device": device}
        answer = self.call(f"{self.adapter.name} run", converted.run, x, timesteps, **kwargs)
        if not (isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], dict)):
            raise ConverterFailure(f"run returned {type(answer).__name__}, not (output, spikes dict)")
        output = np.asarray(_numpy(answer[0]), dtype=np.float64)
        if output.ndim != 2 or output.shape[0] != len(x):
            raise ConverterFailure(f"run returned output of shape {output.shape}, not [batch={len(x)}, classes]")
        if not np.all(np.isfinite(output)):
            bad = int((~np.isfinite(output)).sum())
            raise ConverterFailure(f"run returned NaN or infinite outputs ({bad} of {output.size} values)")
        spikes = {str(k): _numpy(v) for k, v in answer[1].items()}
        for name, s in spikes.items():
            if not np.all(np.isfinite(np.asarray(s, dtype=np.float64))):
                raise ConverterFailure(f"run returned NaN or infinite spikes in layer {name!r}")
        return output, spikes


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def certify(adapter, data: CertificationData | None, clauses: list[str] | None = None,
            time_limit_s: float = TIME_LIMIT_S) -> list[Verdict]:
    """Every clause (or those named) against ``adapter``: skip without the capability or data, fail with the
    converter's failure as reason, else the clause's verdict."""
    harness = Harness(adapter, data, time_limit_s)
    verdicts = [certify_clause(harness, clause) for clause in
                progress(clauses or list(CLAUSES), desc=f"certify {adapter.name}")]
    if callable(getattr(adapter, "close", None)):
        adapter.close()
    return verdicts


def certify_clause(harness: Harness, clause_id: str) -> Verdict:
    """One clause: skip without the capability (or, for accuracy, without data); a converter
    failure is a FAIL with its reason."""
    clause = CLAUSES[clause_id]
    if missing := sorted(clause.needs - set(harness.adapter.capabilities)):
        return Verdict(clause.id, "skip", f"{harness.adapter.name} does not declare {', '.join(missing)}")
    if clause.id.startswith("accuracy.") and harness.data is None:
        return Verdict(clause.id, "skip", "no dataset given")
    try:
        return clause.check(harness)
    except ConverterFailure as failure:
        return Verdict(clause.id, "fail", str(failure))


def environment() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "snnverify": snnverify.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def report_dict(adapter_name: str, version: str, verdicts: list[Verdict], seed: int, **meta) -> dict:
    """The machine-readable report: converter, version, environment, seed, clauses (+ meta)."""
    return {"converter": adapter_name, "version": version, "environment": environment(), "seed": seed,
            "clauses": [asdict(v) for v in verdicts], **meta}
