"""Shared fixtures: a small ResNet trained on digits and its conversion (built once per session)."""

from dataclasses import dataclass

import pytest
import torch
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
def digits_case() -> TrainedCase:
    """small_resnet trained 6 epochs on digits, converted with 1 epoch of QCFS training (L = 8)."""
    torch.manual_seed(0)
    splits = data.load_dataset("digits", seed=0)
    train, cal, test = data.make_loaders(splits, batch_size=64, eval_batch_size=128, seed=0)
    ann = models.small_resnet(splits.num_classes, splits.input_shape[0])
    fit(ann, list(ann.parameters()), train, epochs=6, lr=0.1, device="cpu", desc="ANN training")
    ann.eval()
    snn = snnverify.convert(ann, cal, timesteps=8, train_loader=train, qcfs_epochs=1, finetune_epochs=0)
    return TrainedCase(ann, snn, train, cal, test)
