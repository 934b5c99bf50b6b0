"""Deliberately broken adapters, each wrapping the reference converter and declaring what the
reference declares, so that the suite proves it catches each fault by a named clause.

Neuron faults edit the converted spiking graph (``snnverify.graph``) and simulate it on the torch
reference executor; structural faults edit the ANN before conversion; run faults wrap ``run``.
"""

from __future__ import annotations

import copy
import operator

import numpy as np
import torch
from torch import fx, nn

import snnverify
from snnverify import graph as g
from snnverify.certify.adapters.reference import ReferenceAdapter, ReferenceConverted


class Mutant(ReferenceAdapter):
    """The reference converter with one fault; ``catches`` names the clause that must fail."""

    catches = ""

    def __init__(self, **options):
        super().__init__(**options)
        self.name = f"mutant-{type(self).__name__}"

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def mutate(self, converted: ReferenceConverted):
        return converted

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        return self.mutate(super().convert(self.prepare(model), cal_loader, timesteps, train_loader))


def with_neurons(converted: ReferenceConverted, **changes) -> ReferenceConverted:
    """``converted`` with every IF layer's fields changed: ``changes[field](layer)`` gives the new value."""
    graph = converted.snn.graph
    layers = {n.name: g.replace(n, **{k: f(n) for k, f in changes.items()}) for n in graph.neuron_layers}
    return ReferenceConverted(snnverify.SNN(graph.with_nodes(layers), converted.snn.timesteps), converted.training)


class ResetToZero(Mutant):
    """v ← 0 after a spike, while declaring reset by subtraction."""

    catches = "semantics.declared"

    def mutate(self, converted):
        return with_neurons(converted, v_reset=lambda n: np.zeros_like(n.threshold))


class InitialZero(Mutant):
    """v[0] = 0, while declaring θ/2."""

    catches = "semantics.declared"

    def mutate(self, converted):
        return with_neurons(converted, v_init=lambda n: np.zeros_like(n.threshold))


class FireStrict(Mutant):
    """Fires on v > θ, while declaring v ≥ θ."""

    catches = "semantics.declared"

    def mutate(self, converted):
        return with_neurons(converted, fire_on=lambda n: ">")


class DroppedResidual(Mutant):
    """Every two-tensor add keeps only its first operand (the residual edge is dropped)."""

    catches = "residual.merge"

    def prepare(self, model):
        traced = fx.symbolic_trace(model)
        for node in list(traced.graph.nodes):
            if (node.op == "call_function" and node.target in (operator.add, torch.add)
                    and all(isinstance(a, fx.Node) for a in node.args[:2])):
                node.replace_all_uses_with(node.args[0])
                traced.graph.erase_node(node)
        traced.recompile()
        return traced


class BatchNormIgnored(Mutant):
    """BatchNorm layers are dropped before conversion."""

    catches = "batchnorm"

    def prepare(self, model):
        model = copy.deepcopy(model)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(parent, name, nn.Identity())
        return model


class _Wrapped:
    def __init__(self, inner: ReferenceConverted, run):
        self.inner, self.training, self._run = inner, inner.training, run

    def run(self, x, timesteps, device=None):
        return self._run(self.inner, x, timesteps)

    def to_nir(self, path):
        return self.inner.to_nir(path)


class TimestepsOffByOne(Mutant):
    """Simulates T + 1 steps when asked for T."""

    catches = "run.timesteps"

    def mutate(self, converted):
        return _Wrapped(converted, lambda inner, x, t: inner.run(x, t + 1))


class LastStepOutput(Mutant):
    """Reports the output layer's value at the last step only, not averaged over T:
    o[T] = T·mean_T − (T − 1)·mean_{T−1}."""

    catches = "residual.merge"

    def mutate(self, converted):
        def run(inner, x, t):
            output, spikes = inner.run(x, t)
            if t > 1:
                output = t * output - (t - 1) * inner.run(x, t - 1)[0]
            return output, spikes

        return _Wrapped(converted, run)


class StateCarriedOver(Mutant):
    """Each run starts from a membrane left by the previous batch: v[0] = θ·(1 + rate)/2 per
    channel, rate the previous run's spike rate of that channel."""

    catches = "run.fresh_state"

    def mutate(self, converted):
        carried: dict[str, np.ndarray] = {}

        def run(inner, x, t):
            state = with_neurons(inner, v_init=lambda n: carried.get(n.name, n.threshold / 2).astype(n.threshold.dtype))
            output, spikes = state.run(x, t)
            for layer in inner.snn.graph.neuron_layers:
                s = np.asarray(spikes[layer.name], dtype=np.float64)
                rate = np.moveaxis(s, 2, 0).reshape(s.shape[2], -1).mean(1)
                carried[layer.name] = layer.threshold * (1 + rate) / 2
            return output, spikes

        return _Wrapped(converted, run)


MUTANTS: list[type[Mutant]] = [ResetToZero, InitialZero, FireStrict, DroppedResidual, BatchNormIgnored,
                               TimestepsOffByOne, LastStepOutput, StateCarriedOver]
