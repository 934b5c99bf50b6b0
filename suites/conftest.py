"""Shared fixtures: a small ResNet trained on digits and its conversion (built once per session)."""

import os
from dataclasses import dataclass

import pytest
import torch
from filelock import FileLock
from torch import nn

import snnverify
from snnverify import data, models
from snnverify.train import fit


@dataclass
class TrainedCase:
    ann: nn.Module
    snn: snnverify.SNN
    train_loader: object
    cal_loader: object
    test_loader: object


@pytest.fixture(scope="session")
def digits_case(tmp_path_factory) -> TrainedCase:
    """small_resnet trained 6 epochs on digits, converted with 1 epoch of QCFS training (L = 8)
    and no bias correction.

    The ANN is trained once per test run: the first xdist worker to need it trains it and saves
    its state dict beside the workers' temporary folders, the others load it (the same seeds
    would train the same weights, in twice the time)."""
    torch.manual_seed(0)
    splits = data.load_dataset("digits", seed=0)
    train, cal, test = data.make_loaders(splits, batch_size=64, eval_batch_size=128, seed=0)
    ann = models.small_resnet(splits.num_classes, splits.input_shape[0])
    run_folder = tmp_path_factory.getbasetemp()  # an xdist worker's is inside the run's
    shared = (run_folder.parent if os.environ.get("PYTEST_XDIST_WORKER") else run_folder) / "digits-ann.pt"
    with FileLock(f"{shared}.lock"):
        if shared.exists():
            ann.load_state_dict(torch.load(shared, weights_only=True))
        else:
            fit(ann, list(ann.parameters()), train, epochs=6, lr=0.1, device="cpu", desc="ANN training")
            torch.save(ann.state_dict(), f"{shared}.partial")
            os.replace(f"{shared}.partial", shared)
    ann.eval()
    torch.manual_seed(1)  # the same conversion in every worker, whether it trained the ANN or loaded it
    # no bias correction, binary neurons: the QCFS identities the convergence tests check (T = L
    # steps give the QCFS network) hold for the graph as converted, and correction moves its
    # biases on purpose (burst neurons have their own identity, T = 1 gives L = B)
    snn = snnverify.convert(ann, cal, timesteps=8, train_loader=train, qcfs_epochs=1, finetune_epochs=0,
                            correction_horizons=(), max_spikes=1)
    return TrainedCase(ann, snn, train, cal, test)
