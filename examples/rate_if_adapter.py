"""A complete converter adapter, as an outside author would write one: one IF neuron per
``nn.ReLU`` module, its threshold the ReLU's peak on the calibration data (no training).

    snnverify certify --converter examples/rate_if_adapter.py:RateIF --quick
    pytest suites/certification --converter examples/rate_if_adapter.py:RateIF

The protocol it follows: snnverify/certify/protocol.py.
"""

import torch
from torch import nn

class IF(nn.Module):  # v[0] = θ/2, v += z, spike when v ≥ θ, v −= θ; emits θ·s
    def __init__(self, theta):
        super().__init__(); self.theta, self.v, self.record = theta, None, []
    def forward(self, z):
        self.v = self.theta / 2 + z if self.v is None else self.v + z
        s = (self.v >= self.theta).float(); self.v = self.v - self.theta * s
        self.record.append(s); return self.theta * s

class RateIF:
    name, version = "rate-if", "0.1"
    semantics = {"reset": "subtract", "v_init": "half", "fire": "ge"}
    capabilities = {"residual", "batchnorm"}

    def convert(self, model, cal_loader, timesteps, train_loader=None):
        peaks, hooks = {}, []
        for name, m in model.named_modules():
            if isinstance(m, nn.ReLU):
                hooks.append(m.register_forward_hook(lambda m, i, o, n=name: peaks.__setitem__(n, max(peaks.get(n, 0.0), float(o.max())))))
        with torch.no_grad():
            for x, _ in cal_loader: model(x)
        for h in hooks: h.remove()
        for name, m in list(model.named_modules()):
            for child, c in list(m.named_children()):
                full = f"{name}.{child}".lstrip(".")
                if full in peaks: setattr(m, child, IF(max(peaks[full], 1e-6)))
        return Converted(model)

class Converted:
    training = {"epochs": 0, "samples": 0}
    def __init__(self, net): self.net = net.eval()
    def run(self, x, timesteps):
        neurons = {n: m for n, m in self.net.named_modules() if isinstance(m, IF)}
        for m in neurons.values(): m.v, m.record = None, []
        with torch.no_grad():
            out = torch.stack([self.net(x) for _ in range(timesteps)]).mean(0)
        return out, {n: torch.stack(m.record) for n, m in neurons.items()}
