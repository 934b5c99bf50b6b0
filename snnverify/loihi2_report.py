"""What a converted network does on Loihi 2: ``python -m snnverify.loihi2_report``.

Loads a trained ANN checkpoint, converts it once, and on the same test images measures, at one
T: the float SNN (the ``cpu`` backend), the ``loihi2_sim`` SNN with the subtractive-reset
programmable neuron and with the published CUBA-LIF (reset to zero); the spike mismatch rate of
each fixed-point run against the float SNN, per IF layer and overall (comparing layer k's spikes
in its own window, i.e. after the pipeline latency of k Dense stages); and the simulation speed
in images/s. Writes ``report.json`` and ``report.md`` (generated from the JSON) atomically.

The conversion can be cached (``--cache FILE``, a pickle of the spiking graph keyed by the
conversion settings), so that the figures can be re-measured without converting again.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import snnverify
from snnverify import api, data, models
from snnverify.util import atomic_write, progress, split_batch


def converted_graph(args) -> tuple:
    """(spiking graph, ANN accuracy or None) of the checkpoint, converted with the arguments'
    settings; reuses ``args.cache`` when it holds a conversion with the same settings."""
    settings = {k: getattr(args, k) for k in ("dataset", "model", "checkpoint", "levels", "qcfs_epochs",
                                              "percentile", "seed")}
    cache = Path(args.cache) if args.cache else None
    if cache and cache.exists():
        stored = pickle.loads(cache.read_bytes())
        if stored["settings"] == settings:
            return stored["graph"], stored["ann_accuracy"]
    torch.manual_seed(args.seed)
    splits = data.load_dataset(args.dataset, seed=args.seed)
    train, cal, test = data.make_loaders(splits, batch_size=128, eval_batch_size=500, seed=args.seed)
    ann = models.build_model(args.model, splits.num_classes, splits.input_shape[0])
    models.load_checkpoint(ann, args.checkpoint)
    ann.eval()
    ann_accuracy = api.evaluate(ann, test)
    snn = api.convert(ann, cal, timesteps=args.timesteps, train_loader=train, levels=args.levels,
                      qcfs_epochs=args.qcfs_epochs, percentile=args.percentile, finetune_epochs=0)
    if cache:
        atomic_write(cache, pickle.dumps({"settings": settings, "graph": snn.graph, "ann_accuracy": ann_accuracy}))
    return snn.graph, ann_accuracy
